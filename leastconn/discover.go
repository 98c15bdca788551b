package leastconn

import (
	"cmp"
	"context"
	"fmt"
	"net"
	"runtime/debug"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/lbpool/lbpool/internal/resolve"
	"go.uber.org/zap"
)

// Discovery adds pool members found through DNS. Each source (one `dynamic`
// block) is shared by every handler of its pool that configures it and is
// reference-counted in the registry like a backend, so a reload that keeps
// it keeps its members and their state. Each source has one goroutine: it
// looks the name up at once and then every refresh (with jitter), and
// between lookups it lets leaving members drain. Requests never wait on
// DNS: they read the member list the last answer made (see view).
//
// A member is a Backend like a static one. It joins down and its first
// check (within firstCheckSpread) decides whether it takes traffic; with
// slow_start it then ramps up. A member missing from a successful answer
// is marked leaving: the pick skips it, its in-flight requests finish, then
// it is released (checker stopped, gone from stats and metrics). A failed
// lookup changes nothing.

// Discovery defaults and bounds, also documented in docs/configuration.md.
const (
	DefaultRefresh = 30 * time.Second
	// MaxMembers bounds the members one answer adds to a pool.
	MaxMembers = 256
	// drainPoll is how often a source looks at its leaving members.
	drainPoll = 50 * time.Millisecond
	// drainSettle is how long a leaving member stays at least: a request
	// that read its flags just before it was marked leaving has long raised
	// its active count by then.
	drainSettle = 100 * time.Millisecond
)

// DynamicConfig is one DNS source of pool members.
type DynamicConfig struct {
	// What to look up: `a` (A and AAAA records: one member per address,
	// all on Port) or `srv` (one member per address of each SRV target, on
	// the record's port, with its priority and weight).
	Kind string `json:"kind"`

	// The DNS name to look up; for srv usually `_service._proto.name`.
	Name string `json:"name"`

	// The members' port (kind a only).
	Port int `json:"port,omitempty"`

	// How often the name is looked up again, with up to 10% jitter.
	// Default: 30s.
	Refresh caddy.Duration `json:"refresh,omitempty"`

	// DNS servers to ask, as `ip` or `ip:port` (port 53 by default), one
	// chosen at random per query. Default: the system's resolver.
	Resolvers []string `json:"resolvers,omitempty"`

	// The address families to use: `ipv4`, `ipv6`. Default: both.
	Versions []string `json:"versions,omitempty"`

	// The members' scheme: `http`, `https` or `h2c`. Default: http.
	Scheme string `json:"scheme,omitempty"`

	// For srv: the service and protocol; with them the name looked up is
	// `_<service>._<proto>.<name>`, as reverse_proxy writes it.
	Service string `json:"service,omitempty"`
	Proto   string `json:"proto,omitempty"`

	// How long connecting to a DNS server given in resolvers may take.
	// Default: 5s.
	DialTimeout caddy.Duration `json:"dial_timeout,omitempty"`

	// How long to wait before trying a DNS server's other address family
	// (RFC 6555). Default: Go's (300ms).
	DialFallbackDelay caddy.Duration `json:"dial_fallback_delay,omitempty"`

	// Accepted for reverse_proxy's sake: how long its answers are kept
	// when a lookup fails. lbpool keeps a source's members through failed
	// lookups for as long as they fail (the members stay health-checked),
	// which covers any grace period.
	GracePeriod caddy.Duration `json:"grace_period,omitempty"`
}

// dynamicSpec is a checked DynamicConfig.
type dynamicSpec struct {
	kind      string // a or srv
	name      string
	port      int
	refresh   time.Duration
	resolvers []string // host:port
	network   string   // ip, ip4 or ip6
	scheme    string
	dial      net.Dialer // how resolvers are reached
	key       string     // identity of the source within its pool
	label     string     // how logs and default pool names show it
}

// discoverySpecs checks the dynamic sources; one listed twice is an error.
func (h *Handler) discoverySpecs() ([]dynamicSpec, error) {
	var out []dynamicSpec
	seen := make(map[string]bool, len(h.Dynamic))
	for _, c := range h.Dynamic {
		d, err := checkDynamic(c)
		if err != nil {
			return nil, fmt.Errorf("lbpool: %w", err)
		}
		if seen[d.label] {
			return nil, fmt.Errorf("lbpool: dynamic %s is listed twice", d.label)
		}
		seen[d.label] = true
		if d.scheme == "http" && slices.Contains(h.Versions, "h2c") {
			d.scheme = "h2c" // transport versions h2c, as for static backends
			d.key += "|h2c"
		}
		out = append(out, d)
	}
	return out, nil
}

// checkDynamic checks one source's configuration and fills in defaults.
func checkDynamic(c DynamicConfig) (dynamicSpec, error) {
	name := strings.TrimSuffix(c.Name, ".")
	if c.Service != "" || c.Proto != "" {
		if c.Kind != "srv" || c.Service == "" || c.Proto == "" {
			return dynamicSpec{}, fmt.Errorf("dynamic %s %s: service and proto go together, with srv only", c.Kind, c.Name)
		}
		name = "_" + c.Service + "._" + c.Proto + "." + name
	}
	s := dynamicSpec{kind: c.Kind, name: name, port: c.Port,
		refresh: time.Duration(c.Refresh), scheme: c.Scheme,
		dial: net.Dialer{Timeout: time.Duration(c.DialTimeout), FallbackDelay: time.Duration(c.DialFallbackDelay)}}
	setDefault(&s.refresh, DefaultRefresh)
	setDefault(&s.dial.Timeout, resolve.Timeout)
	if c.DialTimeout < 0 || c.DialFallbackDelay < 0 || c.GracePeriod < 0 {
		return s, fmt.Errorf("dynamic %s %s: durations must be positive", s.kind, s.name)
	}
	setDefault(&s.scheme, "http")
	switch s.kind {
	case "a":
		if s.port < 1 || s.port > 65535 {
			return s, fmt.Errorf("dynamic a %s: port %d out of range 1-65535", c.Name, c.Port)
		}
	case "srv":
		if s.port != 0 {
			return s, fmt.Errorf("dynamic srv %s: the port comes from the SRV records", c.Name)
		}
	default:
		return s, fmt.Errorf("dynamic: unknown kind %q (use a or srv)", c.Kind)
	}
	if err := resolve.CheckName(s.name); err != nil {
		return s, fmt.Errorf("dynamic %s: %w", s.kind, err)
	}
	if s.refresh < time.Millisecond {
		return s, fmt.Errorf("dynamic %s %s: refresh must be at least 1ms", s.kind, s.name)
	}
	if s.scheme != "http" && s.scheme != "https" && s.scheme != "h2c" {
		return s, fmt.Errorf("dynamic %s %s: scheme %q not supported (use http, https or h2c)", s.kind, s.name, s.scheme)
	}
	for _, r := range c.Resolvers {
		addr, err := resolve.ParseServer(r)
		if err != nil {
			return s, fmt.Errorf("dynamic %s %s: %w", s.kind, s.name, err)
		}
		s.resolvers = append(s.resolvers, addr)
	}
	var err error
	if s.network, err = resolve.Network(c.Versions); err != nil {
		return s, fmt.Errorf("dynamic %s %s: %w", s.kind, s.name, err)
	}
	s.label = dynamicLabel(s.kind, s.name, s.port)
	// refresh is left out: a reload that only changes it keeps the source
	s.key = fmt.Sprint(s.label, "|", s.scheme, "|", s.network, "|", s.resolvers, "|", s.dial.Timeout, "|", s.dial.FallbackDelay)
	return s, nil
}

// dynamicLabel names a source in logs, errors and default pool names:
// "a app.internal:8080", "srv _http._tcp.app.internal".
func dynamicLabel(kind, name string, port int) string {
	if kind == "a" {
		return kind + " " + name + ":" + strconv.Itoa(port)
	}
	return kind + " " + name
}

// source is one DNS source of one pool, shared by the leases that
// configure it.
type source struct {
	pool     *Pool
	spec     dynamicSpec
	refresh  atomic.Int64 // nanos; the newest acquire's value
	resolver *net.Resolver

	// guarded by registry.mu
	refs    int
	members []member               // from the last successful answer, by priority then address
	leaving map[*Backend]time.Time // gone from DNS, draining; when it left

	// the lookup status, for the discovery API
	mu         sync.Mutex
	lastLookup time.Time
	lastErr    string
	truncated  bool // the last answer had more than MaxMembers addresses

	stop context.CancelFunc
	done chan struct{}
}

// member is a backend a source lists, with its SRV priority (0 for a).
type member struct {
	b        *Backend
	priority int
}

// found is one address of an answer.
type found struct {
	addr     backendAddr
	priority int
}

func newSource(p *Pool, s dynamicSpec) *source {
	src := &source{pool: p, spec: s, leaving: make(map[*Backend]time.Time), resolver: net.DefaultResolver}
	src.refresh.Store(int64(s.refresh))
	if len(s.resolvers) > 0 {
		src.resolver = resolve.NewResolver(s.resolvers, s.dial)
	}
	return src
}

func (src *source) start(r *registry) {
	ctx, cancel := context.WithCancel(context.Background())
	src.stop = cancel
	src.done = make(chan struct{})
	go src.run(ctx, r)
}

// run is the source's goroutine: a lookup at once, then one every refresh,
// and while members are leaving, a look at them every drainPoll.
func (src *source) run(ctx context.Context, r *registry) {
	defer close(src.done)
	defer func() {
		if err := recover(); err != nil {
			src.logger().Error("discovery panicked", zap.String("pool", src.pool.name),
				zap.String("source", src.spec.label), zap.Any("error", err), zap.ByteString("stack", debug.Stack()))
		}
	}()
	lookup := time.NewTimer(0)
	defer lookup.Stop()
	drain := time.NewTimer(drainPoll)
	defer drain.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-lookup.C:
			src.refreshMembers(ctx, r)
			lookup.Reset(nextCheckIn(time.Duration(src.refresh.Load())))
		case <-drain.C:
			r.drainLeaving(src)
		}
		if r.hasLeaving(src) {
			drain.Reset(drainPoll)
		}
	}
}

func (src *source) logger() *zap.Logger { return src.pool.spec.Load().logger }

// refreshMembers looks the name up and applies the answer; a failed lookup
// keeps the members and is logged once per streak of failures.
func (src *source) refreshMembers(ctx context.Context, r *registry) {
	answer, err := src.lookup(ctx)
	if ctx.Err() != nil {
		return // stopped: the answer no longer matters
	}
	truncated := len(answer) > MaxMembers
	src.mu.Lock()
	failing, wasTruncated := src.lastErr != "", src.truncated
	src.lastLookup = time.Now()
	src.lastErr = ""
	if err != nil {
		src.lastErr = err.Error()
	} else {
		src.truncated = truncated
	}
	src.mu.Unlock()

	log := src.logger().With(zap.String("pool", src.pool.name), zap.String("source", src.spec.label))
	if err != nil {
		if !failing {
			log.Warn("dns lookup failed; keeping the members", zap.Error(err), zap.Int("members", r.memberCount(src)))
		}
		return
	}
	if failing {
		log.Info("dns lookup works again", zap.Int("addresses", len(answer)))
	}
	if truncated && !wasTruncated {
		log.Warn("dns answer has more addresses than a source takes", zap.Int("addresses", len(answer)), zap.Int("max", MaxMembers))
	}
	r.applyAnswer(src, answer, log)
}

// lookup asks DNS for the source's addresses, deduplicated, as members
// of the pool.
func (src *source) lookup(ctx context.Context) ([]found, error) {
	s := src.spec
	q := resolve.Query{Kind: s.kind, Name: s.name, Port: s.port, Network: s.network, Max: MaxMembers}
	answer, err := resolve.Lookup(ctx, src.resolver, q, len(s.resolvers) > 0)
	if err != nil {
		return nil, err
	}
	out := make([]found, 0, len(answer))
	for _, ad := range answer {
		a, err := parseBackendURL(s.scheme + "://" + ad.HostPort())
		if err != nil {
			continue
		}
		a.weight = 1
		if s.kind == "srv" {
			a.weight = srvWeight(ad.Weight)
		}
		out = append(out, found{addr: a, priority: ad.Priority})
	}
	if len(out) == 0 {
		return nil, resolve.ErrNoAddresses
	}
	return out, nil
}

// srvWeight maps an SRV weight to a pool weight. RFC 2782 gives weight 0
// "a very small chance" beside others; here it is the smallest weight, 1.
func srvWeight(w uint16) int {
	return min(max(int(w), 1), MaxWeight)
}

// bound orders an answer (by priority, then current members first, then
// address) and keeps at most MaxMembers of it.
func bound(answer []found, current map[string]member) []found {
	if len(answer) <= MaxMembers {
		return answer
	}
	slices.SortStableFunc(answer, func(x, y found) int {
		if c := cmp.Compare(x.priority, y.priority); c != 0 {
			return c
		}
		_, cx := current[x.addr.key]
		_, cy := current[y.addr.key]
		if cx != cy {
			if cx {
				return -1
			}
			return 1
		}
		return strings.Compare(x.addr.key, y.addr.key)
	})
	return answer[:MaxMembers]
}

// acquireSources attaches a spec's sources to its pool, creating the new
// ones; the caller starts those after unlocking. Called with r.mu held.
func (p *Pool) acquireSources(s *poolSpec) (held, created []*source) {
	for _, d := range s.dynamic {
		src := p.sources[d.key]
		if src == nil {
			src = newSource(p, d)
			p.sources[d.key] = src
			created = append(created, src)
		}
		src.refresh.Store(int64(d.refresh))
		src.refs++
		held = append(held, src)
	}
	return held, created
}

// releaseSources undoes acquireSources; it returns the sources that lost
// their last holder, to be stopped (stopSource) after unlocking. Called
// with r.mu held.
func (p *Pool) releaseSources(held []*source) (ended []*source) {
	for _, src := range held {
		src.refs--
		if src.refs == 0 {
			delete(p.sources, src.spec.key)
			ended = append(ended, src)
		}
	}
	return ended
}

// stopSource stops an ended source's goroutine, then gives back its members
// (leaving ones too) and stops those no one else holds.
func (r *registry) stopSource(src *source) {
	src.stop()
	<-src.done
	r.mu.Lock()
	var stopped []*Backend
	for _, m := range src.members {
		if r.unref(m.b) {
			stopped = append(stopped, m.b)
		}
	}
	for b := range src.leaving {
		if r.unref(b) {
			stopped = append(stopped, b)
		}
	}
	src.members, src.leaving = nil, nil
	r.mu.Unlock()
	r.stopBackends(src.pool, stopped)
}

// unref drops one reference to b and reports whether it was the last, in
// which case b has left its pool. Called with r.mu held.
func (r *registry) unref(b *Backend) bool {
	b.refs--
	if b.refs > 0 {
		return false
	}
	delete(b.pool.backends, b.addr.key)
	return true
}

// stopBackends stops the checkers of backends that left their pool.
func (r *registry) stopBackends(p *Pool, stopped []*Backend) {
	for _, b := range stopped {
		b.stopChecker()
		forgetMetrics(p.name, b)
		b.streams.leave(p.spec.Load().logger, b.URL())
	}
}

// hold takes a reference to a backend someone holds again: one that was
// leaving stays.
func hold(b *Backend) {
	b.refs++
	b.pool.stays(b)
	b.clearFlag(flagLeaving)
	b.streams.stay()
}

// applyAnswer makes a successful answer the source's members: new
// addresses join, missing ones start leaving, and every lease of the pool
// gets a new view.
func (r *registry) applyAnswer(src *source, answer []found, log *zap.Logger) {
	var joined []*Backend
	var left []*Backend
	r.mu.Lock()
	if src.refs == 0 {
		r.mu.Unlock()
		return // released while it looked up
	}
	p := src.pool
	old := make(map[string]member, len(src.members))
	for _, m := range src.members {
		old[m.b.addr.key] = m
	}
	answer = bound(answer, old)
	next := make([]member, 0, len(answer))
	for _, f := range answer {
		if m, ok := old[f.addr.key]; ok {
			delete(old, f.addr.key)
			m.priority = f.priority
			next = append(next, m)
			if m.b.discovered {
				m.b.setConfiguredWeight(f.addr.weight)
			}
			continue
		}
		b := p.backends[f.addr.key]
		switch {
		case b == nil:
			b = newMember(p, f.addr, p.spec.Load().slowStart)
			p.backends[f.addr.key] = b
			b.refs++
			joined = append(joined, b)
		case !src.leaving[b].IsZero():
			// back in DNS before it left: it stays, on the leaving reference
			delete(src.leaving, b)
			b.clearFlag(flagLeaving)
			b.streams.stay()
			log.Info("member back in dns; it stays", zap.String("backend", b.URL()))
		default:
			hold(b)
		}
		if b.discovered {
			b.setConfiguredWeight(f.addr.weight)
		}
		next = append(next, member{b: b, priority: f.priority})
	}
	sort.SliceStable(next, func(i, j int) bool { return next[i].priority < next[j].priority })
	for _, m := range old {
		if m.b.refs > 1 {
			m.b.refs-- // listed statically or by another source: it stays
			continue
		}
		m.b.setFlag(flagLeaving)
		src.leaving[m.b] = time.Now()
		left = append(left, m.b)
	}
	src.members = next
	p.rebuildViews()
	r.mu.Unlock()

	for _, b := range joined {
		b.startChecker()
		log.Info("member joined", zap.String("backend", b.URL()))
	}
	for _, b := range left {
		b.streams.leave(log, b.URL())
		log.Info("member gone from dns; draining", zap.String("backend", b.URL()), zap.Int64("active", b.active.Load()))
	}
}

// drainLeaving releases the leaving members whose requests have finished.
func (r *registry) drainLeaving(src *source) {
	now := time.Now()
	var gone, stopped []*Backend
	r.mu.Lock()
	for b, since := range src.leaving {
		if b.flags.Load()&flagLeaving != 0 && (now.Sub(since) < drainSettle || b.active.Load() > 0) {
			continue
		}
		delete(src.leaving, b)
		if r.unref(b) {
			stopped = append(stopped, b)
		}
		gone = append(gone, b)
	}
	if len(gone) > 0 {
		src.pool.rebuildViews()
	}
	r.mu.Unlock()
	r.stopBackends(src.pool, stopped)
	for _, b := range stopped {
		src.logger().Info("member left", zap.String("pool", src.pool.name), zap.String("source", src.spec.label),
			zap.String("backend", b.URL()), zap.Uint64("requests", b.requests.Load()))
	}
}

func (r *registry) hasLeaving(src *source) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(src.leaving) > 0
}

func (r *registry) memberCount(src *source) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(src.members)
}

// newMember makes a backend for a discovered address. It joins down: its
// first check, within firstCheckSpread, brings it up (and starts its slow
// start), so a member that is listed but broken never takes a request.
func newMember(p *Pool, a backendAddr, slowStart time.Duration) *Backend {
	b := newBackend(p, a)
	b.discovered = true
	b.joining = true
	b.upSince = time.Time{}
	b.flags.Or(flagDown)
	b.rampLen.Store(int64(slowStart))
	if s := p.spec.Load(); s != nil {
		b.setMaxConns(s.maxConns)
	}
	return b
}

// buildView lists the lease's static backends (priority 0) and its
// sources' members, each once, grouped by priority, with their sticky
// cookie table. Called with r.mu held.
func (l *lease) buildView() *view {
	v := l.members()
	if l.spec != nil {
		v.sticky = l.spec.sticky.table(v.backends)
	}
	return v
}

// members is the view without its sticky table.
func (l *lease) members() *view {
	if len(l.sources) == 0 && !l.spec.hasBackup() {
		return &view{backends: l.backends, groups: []int{len(l.backends)}}
	}
	ms := make([]member, 0, len(l.backends))
	at := make(map[*Backend]int, len(l.backends))
	for i, b := range l.backends {
		at[b] = len(ms)
		ms = append(ms, member{b: b, priority: l.spec.priorityOf(i)})
	}
	for _, src := range l.sources {
		for _, m := range src.members {
			if i, ok := at[m.b]; ok {
				ms[i].priority = min(ms[i].priority, m.priority)
				continue
			}
			at[m.b] = len(ms)
			ms = append(ms, m)
		}
	}
	sort.SliceStable(ms, func(i, j int) bool { return ms[i].priority < ms[j].priority })
	v := &view{backends: make([]*Backend, len(ms))}
	for i, m := range ms {
		v.backends[i] = m.b
		if i > 0 && m.priority != ms[i-1].priority {
			v.groups = append(v.groups, i)
		}
	}
	v.groups = append(v.groups, len(ms))
	return v
}

// rebuildViews gives every lease of the pool a view of the current
// members. Called with r.mu held.
func (p *Pool) rebuildViews() {
	for l := range p.leases {
		l.view.Store(l.buildView())
	}
}

// discoveredBackends appends the members (then the leaving ones) of the
// current spec's sources that are not in out yet. Called with r.mu held.
func (p *Pool) discoveredBackends(s *poolSpec, out []*Backend) []*Backend {
	seen := make(map[*Backend]bool, len(out))
	for _, b := range out {
		seen[b] = true
	}
	for _, d := range s.dynamic {
		src := p.sources[d.key]
		if src == nil {
			continue
		}
		leaving := make([]*Backend, 0, len(src.leaving))
		for b := range src.leaving {
			leaving = append(leaving, b)
		}
		sort.Slice(leaving, func(i, j int) bool { return leaving[i].addr.key < leaving[j].addr.key })
		for _, m := range src.members {
			if !seen[m.b] {
				seen[m.b] = true
				out = append(out, m.b)
			}
		}
		for _, b := range leaving {
			if !seen[b] {
				seen[b] = true
				out = append(out, b)
			}
		}
	}
	return out
}

// DiscoveryStatus is one DNS source as GET /lbpool/discovery shows it.
type DiscoveryStatus struct {
	Pool       string     `json:"pool"`
	Kind       string     `json:"kind"`
	Name       string     `json:"name"`
	Port       int        `json:"port,omitempty"`
	Members    int        `json:"members"`
	Leaving    int        `json:"leaving"`
	LastLookup *time.Time `json:"last_lookup"`
	Error      string     `json:"error"`
}

// Discovery returns the DNS sources of every pool, by pool, kind and name.
func Discovery() []DiscoveryStatus {
	r := defaultRegistry
	r.mu.Lock()
	var out []DiscoveryStatus
	var srcs []*source
	for _, p := range r.pools {
		for _, src := range p.sources {
			srcs = append(srcs, src)
			out = append(out, DiscoveryStatus{Pool: p.name, Kind: src.spec.kind, Name: src.spec.name,
				Port: src.spec.port, Members: len(src.members), Leaving: len(src.leaving)})
		}
	}
	r.mu.Unlock()
	for i, src := range srcs {
		src.mu.Lock()
		if !src.lastLookup.IsZero() {
			t := src.lastLookup.UTC()
			out[i].LastLookup = &t
		}
		out[i].Error = src.lastErr
		src.mu.Unlock()
	}
	sort.Slice(out, func(i, j int) bool {
		x, y := out[i], out[j]
		return cmp.Or(cmp.Compare(x.Pool, y.Pool), cmp.Compare(x.Kind, y.Kind), cmp.Compare(x.Name, y.Name), cmp.Compare(x.Port, y.Port)) < 0
	})
	return out
}
