package leastconn

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"

	"sync"
	"sync/atomic"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/lbpool/lbpool/internal/upstream"
	"github.com/prometheus/client_golang/prometheus"
)

// MaxWeight is the largest weight a backend may have.
const MaxWeight = 10000

// Admin states, in HAProxy's words: a drained backend takes no new requests
// but lets the in-flight ones finish; one in maintenance also is not checked.
const (
	StateReady = "ready"
	StateDrain = "drain"
	StateMaint = "maint"
)

// Bits of Backend.flags, read by the pick with one atomic load.
const (
	flagDown    uint32 = 1 << iota // health: failed its checks or could not be reached
	flagDrain                      // admin: no new requests
	flagMaint                      // admin: no requests, no checks
	flagRamp                       // slow start in progress; see effectiveWeight
	flagLeaving                    // discovery: gone from DNS, its requests finishing
	flagCapped                     // max_conns set: the pick skips it when full (queue.go)
	flagEjected                    // too many failed responses: out for a while (outlier.go)

	flagsUnavailable = flagDown | flagDrain | flagMaint | flagLeaving | flagEjected
)

// backendAddr is a parsed backend URL.
type backendAddr struct {
	scheme   string // http, https or h2c
	hostport string // host:port, port always present: the host of request URLs
	network  string // tcp, or unix for a unix socket
	dial     string // what is dialed: host:port, or the socket's path
	user     *url.Userinfo
	key      string // scheme://host:port (unix//path): identity in the registry
	display  string // key with credentials redacted: what stats and logs show
	raw      string // as configured
	weight   int
	maxConns int  // max_conns; 0: no limit
	backup   bool // a backup backend: a priority group after every other

	// what the placeholders {http.lbpool.backend.hostport}, .host and .port
	// show: the socket's path, the path and "" for a unix socket
	phHostport, phHost, phPort string
}

// parseBackendURL accepts http://host:port, https://host:port,
// h2c://host:port (HTTP/2 with prior knowledge, no TLS), host:port (plain
// HTTP) and unix//path/to/socket (plain HTTP over a unix socket). A missing
// port defaults to the scheme's.
func parseBackendURL(raw string) (backendAddr, error) {
	s := strings.TrimSpace(raw)
	if s == "" {
		return backendAddr{}, fmt.Errorf("lbpool: empty backend address")
	}
	if strings.Contains(s, "{env.") {
		s = caddy.NewReplacer().ReplaceKnown(s, "") // {env.X}: resolved when the config loads
	}
	if strings.HasPrefix(s, unixPrefix) {
		return parseUnixBackend(raw, s)
	}
	if !strings.Contains(s, "://") {
		s = "http://" + s
	}
	u, err := url.Parse(s)
	if err != nil {
		return backendAddr{}, fmt.Errorf("lbpool: backend %q: %v", redactRaw(raw), parseErr(err))
	}
	if u.Scheme != "http" && u.Scheme != "https" && u.Scheme != "h2c" {
		return backendAddr{}, fmt.Errorf("lbpool: backend %q: scheme %q not supported (use http, https or h2c)", redactRaw(raw), u.Scheme)
	}
	if u.Host == "" || u.Hostname() == "" {
		return backendAddr{}, fmt.Errorf("lbpool: backend %q: missing host", redactRaw(raw))
	}
	if (u.Path != "" && u.Path != "/") || u.RawQuery != "" || u.Fragment != "" {
		return backendAddr{}, fmt.Errorf("lbpool: backend %q: a backend address cannot have a path or query", redactRaw(raw))
	}
	port := u.Port()
	if port == "" {
		port = "80"
		if u.Scheme == "https" {
			port = "443"
		}
	}
	if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
		return backendAddr{}, fmt.Errorf("lbpool: backend %q: bad port %q", redactRaw(raw), port)
	}
	hostport := net.JoinHostPort(strings.ToLower(u.Hostname()), port)
	if _, _, err := net.SplitHostPort(hostport); err != nil {
		return backendAddr{}, fmt.Errorf("lbpool: backend %q: bad host %q", redactRaw(raw), u.Hostname())
	}
	a := backendAddr{
		scheme:     u.Scheme,
		hostport:   hostport,
		network:    "tcp",
		dial:       hostport,
		user:       u.User,
		key:        u.Scheme + "://" + hostport,
		raw:        raw,
		phHostport: hostport,
		phHost:     strings.ToLower(u.Hostname()),
		phPort:     port,
	}
	a.display = a.key
	if u.User != nil {
		a.display = u.Scheme + "://" + redactedUser(u.User) + "@" + hostport
	}
	return a, nil
}

// urlScheme is the scheme of the URLs of requests to the backend: h2c
// backends take http:// URLs, through the h2c transport.
func (a *backendAddr) urlScheme() string {
	if a.scheme == "h2c" {
		return "http"
	}
	return a.scheme
}

// h2c switches a plain-HTTP backend over TCP to HTTP/2 with prior
// knowledge (transport versions h2c).
func (a *backendAddr) h2c() {
	if a.scheme != "http" || a.network != "tcp" {
		return
	}
	a.scheme = "h2c"
	a.key = "h2c://" + a.hostport
	a.display = a.key
	if a.user != nil {
		a.display = "h2c://" + redactedUser(a.user) + "@" + a.hostport
	}
}

func redactedUser(u *url.Userinfo) string {
	if _, has := u.Password(); has {
		return u.Username() + ":xxxxx"
	}
	return u.Username()
}

// redactRaw hides a password in an address that may not even parse.
func redactRaw(raw string) string {
	at := strings.LastIndex(raw, "@")
	if at < 0 {
		return raw
	}
	start := strings.Index(raw[:at], "://") // a "://" past the @ is no scheme's
	if start < 0 {
		start = 0
	} else {
		start += 3
	}
	user := raw[start:at]
	if i := strings.Index(user, ":"); i >= 0 {
		user = user[:i] + ":xxxxx"
	}
	return raw[:start] + user + raw[at:]
}

// parseErr gives the reason a URL did not parse without the URL itself
// (url.Error quotes it, password and all).
func parseErr(err error) error {
	var ue *url.Error
	if errors.As(err, &ue) {
		return ue.Err
	}
	return err
}

// Backend is the shared, reload-surviving state of one backend in one pool.
// Hot-path fields are atomics; health bookkeeping is guarded by mu.
type Backend struct {
	pool *Pool
	addr backendAddr

	// Read by the pick.
	flags    atomic.Uint32
	active   atomic.Int64
	weight   atomic.Int64 // the weight in effect: run-time, else configured
	scaled   atomic.Int64 // weight × learned weight (loadreports.go), weightScale fixed point: what the picks weigh
	rampFrom atomic.Int64 // unix nanos of the last down→up change, while flagRamp
	rampLen  atomic.Int64 // slow-start window in nanos
	maxConns atomic.Int64 // max_conns while flagCapped
	hashID   uint64       // the backend's id in hashing policies' key space (policy_hash.go)
	peak     peakEWMA     // time to response headers, for least_time (leasttime.go)

	backup atomic.Bool // a backup backend in its newest config, as stats show it

	// Counters.
	requests atomic.Uint64
	failures atomic.Uint64
	retries  atomic.Uint64
	sticky   atomic.Uint64 // requests routed here by their sticky cookie
	latency  ewma          // of proxied requests' time to response headers

	responseTime prometheus.Observer // its caddy_lbpool_backend_response_time_seconds (metrics.go)

	h1 upstream.Pool // kept-alive connections of the direct path

	tlsH1 atomic.Bool // an HTTPS backend last answered in HTTP/1.x, not HTTP/2

	streams streamSet // upgraded connections to end after stream_close_delay (streams.go)

	refs int // guarded by registry.mu

	discovered bool // found through DNS, not listed in the config

	rt backendRuntime // run-time admin state and weight, and where they came from (fleetstate.go)

	// Health bookkeeping, not on the hot path.
	nextCheck  atomic.Int64 // unix nanos of the next active check, for Retry-After
	mu         sync.Mutex
	passes     int // consecutive passing checks
	fails      int // consecutive failing checks
	changes    int // status changes since the backend joined the pool
	upSince    time.Time
	downSince  time.Time
	downtime   time.Duration // closed down periods; the open one is added at read time
	lastChange time.Time
	lastCheck  checkResult
	// downReason is why the backend is down, as last logged at warn; ""
	// while up (and for a new member whose first check failed, unlogged)
	downReason string
	// passiveEpoch counts passive failures, so a check that passed while a
	// request failed does not bring the backend back
	passiveEpoch uint64
	joining      bool // a discovered member not checked yet: its first check decides

	memoryBytes atomic.Int64 // as the backend reports it; -1 while unknown
	load        loadState    // its load reports and learned weight (loadreports.go)

	outlier outlierState // response-based ejection (outlier.go)
	flap    flapState    // holds after failures soon after coming back (flap.go)

	kick   chan struct{} // wakes the checker for an immediate check
	respec chan struct{} // tells the checker its check changed
	stop   func()        // stops the checker
	done   chan struct{} // closed when the checker has returned
}

func newBackend(p *Pool, a backendAddr) *Backend {
	b := &Backend{
		pool:    p,
		addr:    a,
		upSince: time.Now(),
		kick:    make(chan struct{}, 1),
		respec:  make(chan struct{}, 1),
		hashID:  backendHashID(a.key),
	}
	b.load.learned.Store(weightScale)
	b.setConfiguredWeight(a.weight)
	if a.maxConns > 0 {
		b.maxConns.Store(int64(a.maxConns))
		b.flags.Store(flagCapped)
	}
	b.memoryBytes.Store(-1)
	b.responseTime = responseTimeOf(p, b)
	return b
}

// URL returns the backend's address as stats and logs show it (credentials
// redacted).
func (b *Backend) URL() string { return b.addr.display }

// newRequest makes a GET of uri (a path and query) for a health check or a
// stats fetch: to the backend's address, with its credentials as basic auth.
// A unix socket is asked for Host localhost.
func (b *Backend) newRequest(ctx context.Context, uri string) (*http.Request, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, b.addr.urlScheme()+"://"+b.addr.hostport+uri, nil)
	if err != nil {
		return nil, err
	}
	if b.addr.network == "unix" {
		req.Host = unixRequestHost
	}
	if b.addr.user != nil {
		setBasicAuth(req.Header, b.addr.user)
	}
	return req, nil
}

// sawProto notes the HTTP version an HTTPS backend answered in (ALPN
// chose it); one load when it is unchanged.
func (b *Backend) sawProto(major int) {
	if h1 := major < 2; b.tlsH1.Load() != h1 {
		b.tlsH1.Store(h1)
	}
}

// protocol is what the backend speaks as stats show it: h1, h2 or h2c. An
// HTTPS backend shows h2 until it answers in HTTP/1.1 (ALPN), or h1 when
// versions leaves HTTP/2 out.
func (b *Backend) protocol() string {
	noHTTP2 := false
	if s := b.pool.spec.Load(); s != nil {
		noHTTP2 = s.wire.NoHTTP2
	}
	switch {
	case b.addr.scheme == "h2c":
		return "h2c"
	case b.addr.scheme == "https" && !noHTTP2 && !b.tlsH1.Load():
		return "h2"
	}
	return "h1"
}

// adminState returns ready, drain or maint.
func adminState(flags uint32) string {
	switch {
	case flags&flagMaint != 0:
		return StateMaint
	case flags&flagDrain != 0:
		return StateDrain
	}
	return StateReady
}

// setAdminState switches between ready, drain and maint.
func (b *Backend) setAdminState(state string) {
	var set uint32
	switch state {
	case StateDrain:
		set = flagDrain
	case StateMaint:
		set = flagMaint
	}
	for {
		old := b.flags.Load()
		next := old&^(flagDrain|flagMaint) | set
		if b.flags.CompareAndSwap(old, next) {
			if old&flagMaint != 0 && set != flagMaint {
				b.checkNow() // back from maintenance: learn the health at once
			}
			if set == 0 {
				b.pool.queue.wakeAll() // room for the queued, if any
			}
			return
		}
	}
}

// setFlag and clearFlag change one flag bit, leaving the others.
func (b *Backend) setFlag(f uint32)   { b.flags.Or(f) }
func (b *Backend) clearFlag(f uint32) { b.flags.And(^f) }

// ewma is a lock-free exponentially weighted moving average of durations.
type ewma struct{ v atomic.Int64 }

func (e *ewma) observe(d time.Duration) {
	for {
		old := e.v.Load()
		next := int64(d)
		if old != 0 {
			next = old + (int64(d)-old)/8
		}
		if e.v.CompareAndSwap(old, next) {
			return
		}
	}
}

func (e *ewma) value() time.Duration { return time.Duration(e.v.Load()) }
