package leastconn

import (
	"crypto/tls"
	"fmt"
	"net"
	"net/http"
	"regexp"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/certmagic"
	"github.com/lbpool/lbpool/internal/upstream"
	"go.uber.org/zap"
)

// The registry holds every pool and backend of the process, reference-counted
// by the handlers that use them. Caddy provisions a new config before it
// cleans up the old one, so a backend that stays across a reload never drops
// to zero references and keeps its active count, health, admin state and
// counters. It plays the part caddy.UsagePool plays for reverse_proxy, with
// two levels (pool, backend) and a checker goroutine owned by each backend.
type registry struct {
	mu         sync.Mutex
	pools      map[string]*Pool
	transports map[upstream.Settings][]*sharedTransport
	seq        uint64
}

var defaultRegistry = &registry{
	pools:      make(map[string]*Pool),
	transports: make(map[upstream.Settings][]*sharedTransport),
}

// Pool is a named set of backends shared by every handler with that name.
type Pool struct {
	name     string
	refs     int                    // handlers holding the pool
	backends map[string]*Backend    // by backend key, every backend any handler or source holds
	sources  map[string]*source     // DNS sources by key; see discover.go
	leaving  map[*Backend]time.Time // static backends a reload removed, their requests finishing; when (leaving.go)
	draining bool                   // drainStatic runs
	leases   map[*lease]struct{}    // every handler's lease, to give each a new view
	specs    map[*poolSpec]int      // held specs and their holders
	spec     atomic.Pointer[poolSpec]
	fetcher  atomic.Pointer[statsFetcher] // nil without stats_uri; written under registry.mu
	queue    queue                        // requests waiting for a slot (queue.go)
	ejected  atomic.Int64                 // backends ejected now (outlier.go)
	outMu    sync.Mutex                   // serialises taking backends out (ejections, flap holds)
	fleet    atomic.Pointer[fleetSync]    // nil with state_sync off; written under registry.mu
	weigher  *weigher                     // nil without load_reports; guarded by registry.mu (loadreports.go)
	clock    atomic.Int64                 // ms since epoch of the latest least_time response (leasttime.go)
	spills   atomic.Uint64                // hashed requests sent past their key's first choice

	retrying        atomic.Int64  // retries in flight (retry.go)
	retriesTotal    atomic.Uint64 // retries started
	budgetExhausted atomic.Uint64 // retries the budget refused
}

// poolSpec is one handler's resolved pool configuration. The newest held
// spec is the pool's current one: it drives checks, stats and their order.
type poolSpec struct {
	name        string
	backends    []backendAddr
	dynamic     []dynamicSpec
	fingerprint string
	owner       <-chan struct{} // the Done channel of the config that provisioned it
	seq         uint64
	logger      *zap.Logger

	healthURI          string
	healthInterval     time.Duration
	healthTimeout      time.Duration
	healthStatus       int // 0: 2xx or 3xx
	healthDownInterval time.Duration
	healthPort         int // 0: the backend's own
	healthMethod       string
	healthRequestBody  string
	healthFollow       bool
	healthBody         *regexp.Regexp
	healthHeaders      http.Header
	healthPasses       int
	healthFails        int
	healthGRPC         *HealthGRPC // nil: HTTP checks

	statsURI     string
	statsWorkers int
	slowStart    time.Duration
	reports      *reportSettings // nil without load_reports

	stateSync time.Duration     // 0: off
	storage   certmagic.Storage // the config's storage; nil when off

	dialTimeout           time.Duration
	responseHeaderTimeout time.Duration
	tls                   backendTLS
	wire                  upstream.Settings // transport options beyond the timeouts and TLS
	dialer                *net.Dialer       // the direct path's; the Transport makes its own
	direct                bool              // plain-HTTP requests may take the direct path
	leastTime             bool              // least_time picks (as the policy or a fallback): keep latencies
	policy                policySpec        // the pick (policies.go)

	sticky *stickyCookie // nil without sticky sessions

	maxConns int              // max_conns of members found in DNS; static ones carry theirs
	queue    queueSettings    // used only with max_conns
	outlier  *outlierSettings // nil without fail_duration
	flap     *flapSettings    // nil with flap_hold off

	transport *sharedTransport
}

type sharedTransport struct {
	*http.Transport
	h2c      *http.Transport // h2c backends': HTTP/2 with prior knowledge
	tls      *tls.Config     // as made for the first pool; see sameTLS
	refs     int             // guarded by the registry's mu
	released atomic.Bool
}

// to is the transport requests to b go through.
func (t *sharedTransport) to(b *Backend) *http.Transport {
	if b.addr.scheme == "h2c" {
		return t.h2c
	}
	return t.Transport
}

// CloseIdleConnections closes both transports' idle connections.
func (t *sharedTransport) CloseIdleConnections() {
	t.Transport.CloseIdleConnections()
	t.h2c.CloseIdleConnections()
}

// used is called when a request on t has ended and its response body is
// closed. A request that ends after the last reference was given back
// leaves its connection idle in a transport nobody will use again (until
// its idle timeout); used closes it then, as the release did the others.
func (t *sharedTransport) used() {
	if t.released.Load() {
		t.CloseIdleConnections()
	}
}

// lease is what one handler holds in the registry: its pool, its spec, its
// static backends in config order, its DNS sources, and the view its
// requests pick from.
type lease struct {
	pool     *Pool
	spec     *poolSpec
	backends []*Backend
	sources  []*source
	view     atomic.Pointer[view] // replaced whole when members change
	next     atomic.Uint64        // where the pick's scan starts: just after the last pick
	rr       atomic.Uint64        // round_robin's and weighted_round_robin's turn
	// leastTime: least_time picks (the policy, or a hashing policy's
	// fallback), so responses keep latency estimates
	leastTime  bool
	policySpec // the pick (policies.go)
}

// acquire attaches a handler's spec to its pool, creating the pool and any
// new backends (and starting their checkers).
func (r *registry) acquire(ctx caddy.Context, s *poolSpec) (*lease, error) {
	// every module of one config load shares its context's Done channel
	// (the http app adds values per server, which makes the contexts differ)
	s.owner = ctx.Done()

	r.mu.Lock()
	p := r.pools[s.name]
	if p != nil {
		for held := range p.specs {
			if held.owner == s.owner && held.fingerprint != s.fingerprint {
				r.mu.Unlock()
				return nil, fmt.Errorf("lbpool: pool %q is configured twice with different settings", s.name)
			}
		}
	} else {
		p = &Pool{name: s.name, backends: make(map[string]*Backend), specs: make(map[*poolSpec]int),
			sources: make(map[string]*source), leases: make(map[*lease]struct{})}
		r.pools[s.name] = p
	}
	r.seq++
	s.seq = r.seq
	s.transport = r.transportFor(s.transportSettings(), s.tls.config)
	p.refs++
	p.specs[s]++

	var started []*Backend
	out := make([]*Backend, len(s.backends))
	for i, a := range s.backends {
		b := p.backends[a.key]
		if b == nil {
			b = newBackend(p, a)
			p.backends[a.key] = b
			started = append(started, b)
		}
		hold(b)
		b.backup.Store(a.backup)
		out[i] = b
	}
	l := &lease{pool: p, spec: s, backends: out, leastTime: s.leastTime, policySpec: s.policy}
	var newSources []*source
	l.sources, newSources = p.acquireSources(s)
	l.view.Store(l.buildView())
	p.leases[l] = struct{}{}
	stopFetcher := p.apply(s)
	stopFleet := p.applyFleet(r, s)
	stopWeigher := p.applyReports(r, s)
	r.mu.Unlock()

	stopFetcher()
	stopFleet()
	stopWeigher()
	for _, b := range started {
		b.startChecker()
	}
	for _, src := range newSources {
		src.start(r)
	}
	return l, nil
}

// release undoes one acquire. Backends and pools that drop to zero
// references are removed and their goroutines stopped before it returns.
func (r *registry) release(l *lease) {
	p, spec := l.pool, l.spec
	r.mu.Lock()
	var stopped, leaving []*Backend
	for _, b := range l.backends {
		b.refs--
		switch {
		case b.refs > 0:
		case r.leaveOrStop(p, b, p.refs > 1):
			leaving = append(leaving, b)
		default:
			stopped = append(stopped, b)
		}
	}
	delete(p.leases, l)
	ended := p.releaseSources(l.sources)
	stopFetcher, stopFleet, stopWeigher := func() {}, func() {}, func() {}
	p.specs[spec]--
	if p.specs[spec] == 0 {
		delete(p.specs, spec)
		r.releaseTransport(spec.transport)
	}
	p.refs--
	if p.refs == 0 {
		delete(r.pools, p.name)
		if f := p.fetcher.Swap(nil); f != nil {
			stopFetcher = f.stop
		}
		stopFleet = p.applyFleet(r, nil)
		stopWeigher = p.applyReports(r, nil)
	} else if p.spec.Load() == spec && p.specs[spec] == 0 {
		// the current spec went away (a failed reload): fall back to the
		// newest one still held
		var newest *poolSpec
		for s := range p.specs {
			if newest == nil || s.seq > newest.seq {
				newest = s
			}
		}
		stopFetcher = p.apply(newest)
		stopFleet = p.applyFleet(r, newest)
		stopWeigher = p.applyReports(r, newest)
	}
	r.mu.Unlock()

	stopFetcher()
	stopFleet()
	stopWeigher()
	r.stopBackends(p, stopped)
	for _, b := range leaving {
		b.streams.leave(spec.logger, b.URL())
		spec.logger.Info("backend removed by a reload; draining", zap.String("pool", p.name),
			zap.String("backend", b.URL()), zap.Int64("active", b.active.Load()))
	}
	for _, src := range ended {
		r.stopSource(src)
	}
}

// apply makes s the pool's current spec: weights, slow-start windows and the
// stats workers follow it. Called with r.mu held; the returned func stops
// a replaced stats fetcher and must be called after unlocking.
func (p *Pool) apply(s *poolSpec) (stopOld func()) {
	prev := p.spec.Swap(s)
	recheck := prev != nil && prev.healthKey() != s.healthKey()
	for _, a := range s.backends {
		if b := p.backends[a.key]; b != nil {
			b.setConfiguredWeight(a.weight)
			b.setMaxConns(a.maxConns)
			b.rampLen.Store(int64(s.slowStart))
			if recheck {
				b.recheckSoon()
			}
		}
	}
	for _, d := range s.dynamic {
		if src := p.sources[d.key]; src != nil {
			for _, m := range src.members {
				m.b.rampLen.Store(int64(s.slowStart))
				if m.b.discovered {
					m.b.setMaxConns(s.maxConns)
				}
			}
		}
	}
	stopOld = func() {}
	old := p.fetcher.Load()
	switch {
	case s.statsURI == "" && old != nil:
		p.fetcher.Store(nil)
		stopOld = old.stop
	case s.statsURI != "" && (old == nil || old.workers != s.statsWorkers):
		p.fetcher.Store(newStatsFetcher(s.statsWorkers))
		if old != nil {
			stopOld = old.stop
		}
	}
	return stopOld
}

// transportFor returns the transport for equal settings and TLS material,
// making it if there is none.
func (r *registry) transportFor(ts upstream.Settings, tc *tls.Config) *sharedTransport {
	var t *sharedTransport
	for _, held := range r.transports[ts] {
		if sameTLS(held.tls, tc) {
			t = held
			break
		}
	}
	if t == nil {
		t = &sharedTransport{Transport: upstream.NewTransport(ts, tc), h2c: upstream.NewH2CTransport(ts), tls: tc}
		r.transports[ts] = append(r.transports[ts], t)
	}
	t.refs++
	return t
}

func (r *registry) releaseTransport(t *sharedTransport) {
	t.refs--
	if t.refs == 0 {
		for k, held := range r.transports {
			if kept := slices.DeleteFunc(held, func(v *sharedTransport) bool { return v == t }); len(kept) > 0 {
				r.transports[k] = kept
			} else {
				delete(r.transports, k)
			}
		}
		t.released.Store(true)
		t.CloseIdleConnections()
	}
}

// pool returns the named pool, or nil.
func (r *registry) pool(name string) *Pool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.pools[name]
}

// current returns the pool's backends: the static ones in the order of its
// current spec, then how many of them there are, then the members its
// sources found. Called with r.mu held.
func (p *Pool) current() (backends []*Backend, static int) {
	s := p.spec.Load()
	out := make([]*Backend, 0, len(s.backends))
	for _, a := range s.backends {
		if b := p.backends[a.key]; b != nil {
			out = append(out, b)
		}
	}
	out = p.leavingStatic(out)
	static = len(out)
	if len(s.dynamic) > 0 {
		out = p.discoveredBackends(s, out)
	}
	return out, static
}
