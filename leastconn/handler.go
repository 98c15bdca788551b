// Package leastconn is the http.handlers.lbpool module: a load-balancing
// handler that sends each request to the backend with the fewest active
// connections relative to its weight, checks backend health actively and
// passively, and keeps all backend state in a process-wide registry so that
// health, counters and admin state survive config reloads.
package leastconn

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/netip"
	"net/url"
	"regexp"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/headers"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/rewrite"
	"github.com/lbpool/lbpool/internal/upstream"
	"go.uber.org/zap"
	"golang.org/x/net/http/httpguts"
)

func init() {
	caddy.RegisterModule(Handler{})
}

// Defaults, also documented in docs/configuration.md.
const (
	DefaultHealthURI             = "/"
	DefaultHealthInterval        = 20 * time.Second
	DefaultHealthDownInterval    = time.Second
	DefaultHealthTimeout         = 2 * time.Second
	DefaultStatsWorkers          = 3
	DefaultDialTimeout           = 3 * time.Second
	DefaultResponseHeaderTimeout = 60 * time.Second
)

// MaxQueueSize is the largest queue_size, about a hundred times the
// default: each waiting request holds a client connection and a goroutine.
const MaxQueueSize = 100000

// countLimits are the largest values of the whole-number options, by
// their name in JSON and in the Caddyfile alike: the Caddyfile adapter and
// Provision check this one table, so a value one takes the other takes too.
// Each limit is at least the option's default.
var countLimits = map[string]int{
	"health_passes":       1000,
	"health_fails":        1000,
	"stats_workers":       1000,
	"retries":             1000,
	"max_fails":           1000,
	"max_ejected_percent": 100,
	"max_conns":           1 << 30,
	"queue_size":          MaxQueueSize,
	"max_conns_per_host":  1 << 20,
}

// checkCount refuses a whole-number option below 0 or over its limit.
func checkCount(name string, n int) error {
	if n < 0 {
		return fmt.Errorf("%s must not be negative, got %d", name, n)
	}
	if limit := countLimits[name]; n > limit {
		return fmt.Errorf("%s %d is more than %d", name, n, limit)
	}
	return nil
}

// checkCounts checks the handler's whole-number options (a backend's own
// max_conns is checked with the backend).
func (h *Handler) checkCounts() error {
	retries := 0
	if h.Retries != nil {
		retries = *h.Retries
	}
	for _, c := range []struct {
		name string
		n    int
	}{
		{"health_passes", h.HealthPasses}, {"health_fails", h.HealthFails},
		{"stats_workers", h.StatsWorkers}, {"retries", retries},
		{"max_fails", h.MaxFails}, {"max_ejected_percent", h.MaxEjectedPercent},
		{"max_conns", h.MaxConns}, {"queue_size", h.QueueSize},
		{"max_conns_per_host", h.MaxConnsPerHost},
	} {
		if err := checkCount(c.name, c.n); err != nil {
			return fmt.Errorf("lbpool: %w", err)
		}
	}
	return nil
}

// BackendConfig is one backend of a pool.
type BackendConfig struct {
	// The backend's address: `http://host:port`, `https://host:port`, or
	// `host:port` (plain HTTP). Credentials in the URL (`http://user:pass@host`)
	// are sent as basic auth on health checks, stats fetches and on proxied
	// requests that carry no Authorization header of their own; they are
	// redacted wherever the URL is shown.
	URL string `json:"url"`

	// The backend's weight in least-connections selection. Default: 1.
	Weight int `json:"weight,omitempty"`

	// The most requests the backend holds at once; overrides the handler's
	// max_conns. Default: the handler's max_conns.
	MaxConns int `json:"max_conns,omitempty"`

	// A backup backend gets no traffic while any other backend is usable
	// (up, ready, not ejected, not full), and takes it when none is: a
	// priority group after every other, as an SRV record of a lower
	// priority. Default: false.
	Backup bool `json:"backup,omitempty"`
}

// Handler is the lbpool load balancer. It picks the backend that minimises
// (active connections + 1) / weight among the backends that are up and ready,
// rotating among ties, and proxies the request to it.
type Handler struct {
	// Pool and backends.

	// The pool's name, shown in stats, logs and metrics, and used by the admin
	// API. Handlers that share a name share one pool. Default: the backends'
	// addresses joined by commas.
	Name string `json:"name,omitempty"`

	// The backends, in order.
	Backends []BackendConfig `json:"backends,omitempty"`

	// Active health checks.

	// The path (and optional query) of the active health check. Default: `/`.
	HealthURI string `json:"health_uri,omitempty"`

	// How often each backend is checked. Default: 20s.
	HealthInterval caddy.Duration `json:"health_interval,omitempty"`

	// How long a check may take. Default: 2s.
	HealthTimeout caddy.Duration `json:"health_timeout,omitempty"`

	// The status a passing check answers with: a full code such as 200, or a
	// class given by its first digit (2 means 2xx). Default (0): any 2xx or
	// 3xx, so an app whose `/` redirects to a login page passes.
	HealthStatus int `json:"health_status,omitempty"`

	// How soon a backend that is down is checked again. The wait doubles
	// after each failed check that reached the backend, up to
	// health_interval; a refused connection (nothing listening yet) does not
	// double it. Default: 1s.
	HealthDownInterval caddy.Duration `json:"health_down_interval,omitempty"`

	// The port checks go to, instead of the backend's own.
	HealthPort int `json:"health_port,omitempty"`

	// The method of the check request. Default: GET.
	HealthMethod string `json:"health_method,omitempty"`

	// The body sent with each check request.
	HealthRequestBody string `json:"health_request_body,omitempty"`

	// Follow redirects (up to 10) and judge the final response; otherwise a
	// 3xx is judged as it is.
	HealthFollowRedirects bool `json:"health_follow_redirects,omitempty"`

	// Makes the active checks gRPC calls of grpc.health.v1.Health/Check
	// (over h2c or TLS, as the backend is written), with health_timeout as
	// their deadline: SERVING passes, any other answer fails with its
	// status as the reason. health_uri, health_method, health_status and
	// health_body do not apply then.
	HealthGRPC *HealthGRPC `json:"health_grpc,omitempty"`

	// A regular expression the check's response body must match.
	HealthBody string `json:"health_body,omitempty"`

	// Extra headers sent with each health check; `Host` sets the Host header.
	HealthHeaders http.Header `json:"health_headers,omitempty"`

	// Consecutive passing checks for a down backend to come back up.
	// Default: 1; at most 1000.
	HealthPasses int `json:"health_passes,omitempty"`

	// Consecutive failing checks for an up backend to go down. Default: 1;
	// at most 1000.
	HealthFails int `json:"health_fails,omitempty"`

	// Backend stats.

	// A path on each backend that reports its own stats (JSON
	// `{"memory_usage": <bytes>}` or Prometheus text); fetched once per
	// health interval while the backend is up. Off when empty.
	StatsURI string `json:"stats_uri,omitempty"`

	// How many goroutines fetch backend stats for this pool. Default: 3; at
	// most 1000.
	StatsWorkers int `json:"stats_workers,omitempty"`

	// Weights learned from the backends' own load reports (ORCA
	// endpoint-load-metrics, or stats_uri): each backend's weight is
	// multiplied by qps / (utilization + error_penalty × eps / qps),
	// normalised to a mean of 1, as gRPC's weighted_round_robin does. Off
	// when unset.
	LoadReports *LoadReports `json:"load_reports,omitempty"`

	// Selection.

	// How a backend is picked: `least_conn` (the fewest active requests
	// for its weight), `least_time` (the lowest active requests for its
	// weight times its recent time to response headers, so a slow backend
	// gets little traffic), reverse_proxy's `round_robin`,
	// `weighted_round_robin` (the backends' weights), `random`,
	// `random_choose`, `first`, `ip_hash`, `client_ip_hash`, `uri_hash`,
	// `query` and `header`, or `hash` (a key with placeholders). The
	// hashing ones are consistent and bounded by load
	// (hash_balance_factor). Default: `least_conn`.
	LBPolicy string `json:"lb_policy,omitempty"`

	// The key of the `query` (a parameter's name), `header` (a field's
	// name) and `hash` (text with placeholders, such as
	// `{http.request.header.X-User-ID}`) policies.
	LBPolicyKey string `json:"lb_policy_key,omitempty"`

	// How many backends `random_choose` draws. Default: 2; at most 64.
	LBChoose int `json:"lb_choose,omitempty"`

	// The policy of a hashing policy's requests that have no key (an
	// empty header, query parameter or placeholder): `least_conn`,
	// `least_time`, `round_robin`, `random`, `random_choose` or `first`.
	// Default: `least_conn`.
	LBFallback string `json:"lb_fallback,omitempty"`

	// The hashing policies pass over a backend for a key while its active
	// requests would exceed ceil(factor × (the pool's active + 1) × its
	// weight / total weight): a hot key spills over to the next backends in
	// its order. From 1 to 100; 0 turns the bound off. Default: 1.25.
	HashBalanceFactor *float64 `json:"hash_balance_factor,omitempty"`

	// Retries and slow start.

	// How many other backends are tried after a backend cannot be reached.
	// Default (unset): every other backend in the pool. 0 turns retries off;
	// at most 1000.
	Retries *int `json:"retries,omitempty"`

	// The retry budget: a retry starts only while the pool's retries in
	// flight are fewer than max(min, percent × the pool's requests in
	// flight). Default: 20% min 3; `{"off": true}` turns it off.
	RetryBudget *RetryBudget `json:"retry_budget,omitempty"`

	// How long a request may keep trying: when no backend can take it
	// (none up and ready, or every one tried) it waits for one to come
	// back, within queue_size. reverse_proxy's lb_try_duration.
	// Default: 0 (no waiting).
	TryDuration caddy.Duration `json:"try_duration,omitempty"`

	// The longest pause between two tries under try_duration.
	// reverse_proxy's lb_try_interval. Default: 250ms.
	TryInterval caddy.Duration `json:"try_interval,omitempty"`

	// Which failed tries are retried, as reverse_proxy's lb_retry_match:
	// matcher sets with an expression reading the response
	// ({rp.status_code}, {rp.header.*}) retry answers they match; the
	// others (and those) decide which requests are retried after a
	// connection broke ({rp.is_transport_error}). Default: answers are
	// not retried; broken connections only for GET, HEAD, OPTIONS and
	// TRACE without a body.
	RetryMatchRaw caddyhttp.RawMatcherSets `json:"retry_match,omitempty" caddy:"namespace=http.matchers"`

	// After a backend comes back up, its weight ramps linearly from 10% to
	// 100% over this duration. Default: 0 (off).
	SlowStart caddy.Duration `json:"slow_start,omitempty"`

	// The transport.

	// How long connecting to a backend may take. Default: 3s.
	DialTimeout caddy.Duration `json:"dial_timeout,omitempty"`

	// How long to wait for a backend's response headers after the request
	// was sent; past it the client gets 504. Default: 60s.
	ResponseHeaderTimeout caddy.Duration `json:"response_header_timeout,omitempty"`

	// TLS to HTTPS backends, as reverse_proxy's `transport http` has it: a
	// trust pool (`ca`), client certificates, the server name to verify, the
	// handshake timeout, and more. Health checks and stats fetches use it
	// too. Default: the system's roots.
	TLS *reverseproxy.TLSConfig `json:"tls,omitempty"`

	// How long to wait before trying a backend's other address family
	// (RFC 6555). Default: Go's (300ms).
	DialFallbackDelay caddy.Duration `json:"dial_fallback_delay,omitempty"`

	// How long to wait for a backend's 100 Continue before sending a body
	// that expects one. Default: 1s.
	ExpectContinueTimeout caddy.Duration `json:"expect_continue_timeout,omitempty"`

	// The longest a read from a backend connection may block (a deadline
	// set before each read). Default: none.
	ReadTimeout caddy.Duration `json:"read_timeout,omitempty"`

	// The longest a write to a backend connection may block. Default: none.
	WriteTimeout caddy.Duration `json:"write_timeout,omitempty"`

	// The size of the read and write buffers of each backend connection.
	// Default: 4 KiB.
	ReadBufferSize  int `json:"read_buffer_size,omitempty"`
	WriteBufferSize int `json:"write_buffer_size,omitempty"`

	// The most bytes of response headers a backend may send. Default: 10 MiB.
	MaxResponseHeaderSize int64 `json:"max_response_header_size,omitempty"`

	// Keep-alive connections to backends, as reverse_proxy's `keep_alive`:
	// `enabled: false` opens a connection per request; `idle_timeout`
	// (default 2m), `max_idle_conns_per_host` (default 1024),
	// `max_idle_conns` (default: no cap beyond the per-host one) and
	// `probe_interval` (TCP keep-alive probes; default 30s).
	KeepAlive *reverseproxy.KeepAlive `json:"keep_alive,omitempty"`

	// The most connections open to one backend at once (in use, being
	// made or idle); a request beyond it waits for one. Default: no limit.
	MaxConnsPerHost int `json:"max_conns_per_host,omitempty"`

	// The local IP address connections to backends are made from.
	LocalAddress string `json:"local_address,omitempty"`

	// DNS servers that resolve backends' host names, as `ip` or `ip:port`.
	// Default: the system's resolver.
	Resolver *reverseproxy.UpstreamResolver `json:"resolver,omitempty"`

	// Only false is accepted: lbpool passes encodings through unchanged and
	// never asks backends for compression itself (reverse_proxy's
	// `compression off`).
	Compression *bool `json:"compression,omitempty"`

	// The HTTP versions used with backends: `1.1`, `2` (HTTP/2 by ALPN to
	// HTTPS backends) and `h2c` (HTTP/2 with prior knowledge to plain-HTTP
	// backends, as if each were written `h2c://`). Default: `1.1` and `2`.
	Versions []string `json:"versions,omitempty"`

	// Skip verification of HTTPS backends' certificates; the same as
	// `tls.insecure_skip_verify`, kept for older configs. Insecure: for
	// tests and private networks only.
	TLSInsecureSkipVerify bool `json:"tls_insecure_skip_verify,omitempty"`

	// Header operations.

	// Changes to the request headers sent to a backend (`request`, the
	// Caddyfile's header_up) and to the response headers sent back
	// (`response`, header_down), as reverse_proxy's `headers`. Placeholders
	// are resolved for each try, {http.lbpool.*} included.
	Headers *headers.Handler `json:"headers,omitempty"`

	// The request path (requestpath.go).

	// Changes the request's method and URI before it goes to a backend, as
	// reverse_proxy's `rewrite` (the Caddyfile's method and rewrite).
	Rewrite *rewrite.Rewrite `json:"rewrite,omitempty"`

	// Reads up to this many bytes of a request body before sending the
	// request; a body that fits goes with its Content-Length. Default: 0
	// (streamed).
	RequestBuffers int64 `json:"request_buffers,omitempty"`

	// Reads up to this many bytes of a response body from the backend
	// before sending the response on. Default: 0 (streamed).
	ResponseBuffers int64 `json:"response_buffers,omitempty"`

	// How long response data may wait before it is flushed to the client:
	// -1 or any positive duration flushes after each write (never later
	// than asked). Default: 0 (flush when the buffer fills; event streams
	// and bodies of unknown length at once).
	FlushInterval caddy.Duration `json:"flush_interval,omitempty"`

	// Proxies, as IP ranges (CIDR) or addresses, whose X-Forwarded-*
	// headers are kept, beside the server's trusted_proxies.
	TrustedProxies []string `json:"trusted_proxies,omitempty"`

	// When set, lbpool's own error answers carry an RFC 9209
	// `Proxy-Status: <name>; error=<type>` header saying why (for example
	// connection_refused, connection_timeout, http_response_timeout,
	// destination_unavailable).
	ProxyStatusName string `json:"proxy_status_name,omitempty"`

	// Streams (upgraded connections such as websockets, server-sent event
	// responses and gRPC responses) end this long after they opened; a
	// gRPC call ends with DEADLINE_EXCEEDED. Default: none.
	StreamTimeout caddy.Duration `json:"stream_timeout,omitempty"`

	// Streams to a backend that left the pool (a reload removed it, its
	// pool was unloaded, or it is gone from DNS) are closed this long after
	// it left, spread over up to a quarter of it more; streams to backends
	// that stay are kept across reloads; a gRPC call ends with UNAVAILABLE.
	// A backend that left shows as leaving until its streams end. Default:
	// they run until they end.
	StreamCloseDelay caddy.Duration `json:"stream_close_delay,omitempty"`

	// The buffer each direction of an upgraded connection copies through,
	// in bytes. Default: lbpool's own (none while the connection idles on
	// a socket, up to 32 KiB while data flows).
	StreamBufferSize int `json:"stream_buffer_size,omitempty"`

	// Discovery: members found through DNS (discover.go).

	// DNS sources of more members, beside or instead of Backends. Each is
	// looked up in the background and refreshed; a member is checked,
	// ramped and drained like a static backend.
	Dynamic []DynamicConfig `json:"dynamic,omitempty"`

	// Sticky sessions: a cookie keeps a client on its backend (sticky.go).

	// Keeps each client on the backend that served it first, through a
	// signed cookie; new sessions are placed by least connections. Off
	// when unset.
	Sticky *StickyCookie `json:"sticky,omitempty"`

	// Overload protection: a cap per backend and a queue (queue.go).

	// The most requests one backend holds at once; a full backend is
	// skipped, and when every usable backend is full requests wait in the
	// pool's FIFO queue. A backend's own max_conns overrides it. Default: 0
	// (no limit).
	MaxConns int `json:"max_conns,omitempty"`

	// How many requests may wait when every usable backend is full; one
	// more gets 503 at once. Default: 1024; at most 100000.
	QueueSize int `json:"queue_size,omitempty"`

	// How long a request waits in the queue before it gets 503 with
	// Retry-After. Default: 10s.
	QueueTimeout caddy.Duration `json:"queue_timeout,omitempty"`

	// Response-based ejection (outlier.go).

	// Turns ejection on: max_fails failures within this duration take a
	// backend out until they are older than it. Default: 0 (off).
	FailDuration caddy.Duration `json:"fail_duration,omitempty"`

	// Failures within fail_duration that eject a backend. Default: 1; at
	// most 1000.
	MaxFails int `json:"max_fails,omitempty"`

	// Response statuses that count as failures: full codes such as 503, or
	// classes given by their first digit (5 means 5xx).
	UnhealthyStatus []int `json:"unhealthy_status,omitempty"`

	// gRPC status codes (0-16) that count as failures when a gRPC response
	// ends with them, in its trailers or a trailers-only answer.
	UnhealthyGRPCStatus []int `json:"unhealthy_grpc_status,omitempty"`

	// A response whose headers take this long or longer counts as a failure.
	UnhealthyLatency caddy.Duration `json:"unhealthy_latency,omitempty"`

	// The largest share of the pool, in percent, out at once for ejections
	// and flap holds together; a backend that fails beyond it stays in (and
	// the log says so). Default: 50.
	MaxEjectedPercent int `json:"max_ejected_percent,omitempty"`

	// Flap holds (flap.go).

	// Holds out a backend that fails a request soon after its health
	// checks brought it back (within the base, or before it answered any
	// request since) while its checks go on passing: for the base, doubled
	// with each hold in a row up to the max, starting over once the backend
	// has gone twice its last hold without another. It returns at its first
	// passing check after the hold. Default (unset): on, base 10s, max 5m.
	FlapHold *FlapHold `json:"flap_hold,omitempty"`

	// Fleet state: run-time changes kept in Caddy's storage (fleetstate.go).

	// How often this instance reads the admin states and weights that
	// instances sharing its storage set at run time, and applies the newer
	// ones: a duration of at least 100ms, or `off` to keep run-time changes
	// on this instance and not save them. Changes made here are written at
	// once. Default: 5s (with ±10% jitter).
	StateSync string `json:"state_sync,omitempty"`

	// State: what Provision attached to.

	lease      *lease
	headerUp   *headers.HeaderOps     // nil without header_up
	headerDown *headers.RespHeaderOps // nil without header_down
	trusted    []netip.Prefix         // trusted_proxies; nil without

	spec    *poolSpec
	retries int    // the retries option; -1 when unset (every other backend)
	budget  budget // retry_budget resolved
	// try_interval, resolved
	tryInterval   time.Duration
	retryMatch    caddyhttp.MatcherSets // retry_match; nil without
	responseMatch caddyhttp.MatcherSets // its sets that read the response
	sticky        *stickyCookie         // nil without the sticky option
	released      bool
	logger        *zap.Logger
	accessLogger  *zap.Logger // Caddy's, for the lines of upgraded connections (accesslog.go)
}

// CaddyModule returns the Caddy module information.
func (Handler) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "http.handlers.lbpool",
		New: func() caddy.Module { return new(Handler) },
	}
}

// Provision validates the configuration, fills in defaults and attaches the
// handler to its pool in the registry.
func (h *Handler) Provision(ctx caddy.Context) error {
	h.logger = ctx.Logger()
	h.accessLogger = ctx.Logger(httpAppLogger{}).Named("log.access")
	spec, err := h.poolSpec()
	if err != nil {
		return err
	}
	spec.logger = h.logger
	if err := h.provisionPolicy(spec); err != nil {
		return err
	}
	if err := h.provisionTLS(ctx, spec); err != nil {
		return err
	}
	if err := h.provisionHeaders(ctx); err != nil {
		return err
	}
	if err := h.provisionRequestPath(ctx); err != nil {
		return err
	}
	if err := h.provisionSticky(spec); err != nil {
		return err
	}
	if err := h.provisionOverload(spec); err != nil {
		return err
	}
	if err := h.provisionRetries(ctx); err != nil {
		return err
	}
	if spec.flap, err = h.flapSpec(); err != nil {
		return err
	}
	if err := h.provisionFleet(ctx, spec); err != nil {
		return err
	}
	l, err := defaultRegistry.acquire(ctx, spec)
	if err != nil {
		return err
	}
	h.lease, h.spec = l, spec
	h.loadFleet()
	registerMetrics(ctx, h.logger)
	return nil
}

// retriesIn is how many other backends of v a request may try: every
// other one unless the retries option says fewer.
func (h *Handler) retriesIn(v *view) int {
	n := len(v.backends) - 1
	if h.retries >= 0 && h.retries < n {
		return h.retries
	}
	return n
}

// Cleanup detaches the handler from the registry. It releases exactly what
// Provision acquired, so it is safe after a failed Provision.
func (h *Handler) Cleanup() error {
	if h.lease != nil && !h.released {
		// h.lease stays: requests already in flight still use it
		defaultRegistry.release(h.lease)
		h.released = true
	}
	return nil
}

// poolSpec checks the JSON configuration and resolves defaults into the
// settings the registry shares among handlers of one pool.
func (h *Handler) poolSpec() (*poolSpec, error) {
	if len(h.Backends) == 0 && len(h.Dynamic) == 0 {
		return nil, fmt.Errorf("lbpool: no backends configured")
	}
	if err := h.checkCounts(); err != nil {
		return nil, err
	}
	s := &poolSpec{
		name:                  h.Name,
		healthURI:             h.HealthURI,
		healthInterval:        time.Duration(h.HealthInterval),
		healthTimeout:         time.Duration(h.HealthTimeout),
		healthDownInterval:    time.Duration(h.HealthDownInterval),
		healthStatus:          h.HealthStatus,
		healthPort:            h.HealthPort,
		healthMethod:          h.HealthMethod,
		healthRequestBody:     h.HealthRequestBody,
		healthFollow:          h.HealthFollowRedirects,
		healthHeaders:         h.HealthHeaders.Clone(),
		healthPasses:          h.HealthPasses,
		healthFails:           h.HealthFails,
		healthGRPC:            h.HealthGRPC,
		statsURI:              h.StatsURI,
		statsWorkers:          h.StatsWorkers,
		slowStart:             time.Duration(h.SlowStart),
		dialTimeout:           time.Duration(h.DialTimeout),
		responseHeaderTimeout: time.Duration(h.ResponseHeaderTimeout),
	}
	setDefault(&s.healthURI, DefaultHealthURI)
	setDefault(&s.healthInterval, DefaultHealthInterval)
	setDefault(&s.healthTimeout, DefaultHealthTimeout)
	setDefault(&s.healthDownInterval, DefaultHealthDownInterval)
	setDefault(&s.healthMethod, http.MethodGet)
	setDefault(&s.healthPasses, 1)
	setDefault(&s.healthFails, 1)
	setDefault(&s.statsWorkers, DefaultStatsWorkers)
	setDefault(&s.dialTimeout, DefaultDialTimeout)
	setDefault(&s.responseHeaderTimeout, DefaultResponseHeaderTimeout)

	switch {
	case s.healthInterval < 0, s.healthTimeout < 0, s.healthDownInterval < 0, s.slowStart < 0, s.dialTimeout < 0, s.responseHeaderTimeout < 0:
		return nil, fmt.Errorf("lbpool: durations must be positive")
	case s.healthPort < 0 || s.healthPort > 65535:
		return nil, fmt.Errorf("lbpool: health_port %d is not a port (1-65535)", s.healthPort)
	case !httpguts.ValidHeaderFieldName(s.healthMethod):
		return nil, fmt.Errorf("lbpool: health_method %q is not a method", s.healthMethod)
	case s.healthStatus != 0 && !validStatus(s.healthStatus):
		return nil, fmt.Errorf("lbpool: health_status %d is neither a status code nor a class (1-5)", s.healthStatus)
	}
	if err := checkURI(s.healthURI); err != nil {
		return nil, fmt.Errorf("lbpool: health_uri: %w", err)
	}
	if s.statsURI != "" {
		if err := checkURI(s.statsURI); err != nil {
			return nil, fmt.Errorf("lbpool: stats_uri: %w", err)
		}
	}
	for name, values := range s.healthHeaders {
		if err := checkHeader(name, values); err != nil {
			return nil, fmt.Errorf("lbpool: health_headers: %w", err)
		}
	}
	if h.HealthBody != "" {
		re, err := regexp.Compile(h.HealthBody)
		if err != nil {
			return nil, fmt.Errorf("lbpool: health_body: %w", err)
		}
		s.healthBody = re
	}

	var err error
	if s.wire, err = h.wireSettings(); err != nil {
		return nil, err
	}
	seen := make(map[string]bool, len(h.Backends))
	names := make([]string, 0, len(h.Backends))
	for _, bc := range h.Backends {
		addr, err := parseBackendURL(bc.URL)
		if err != nil {
			return nil, err
		}
		if s.wire.H2C {
			addr.h2c()
		}
		if h.HealthGRPC != nil && addr.scheme == "http" {
			return nil, fmt.Errorf("lbpool: health_grpc: backend %s speaks HTTP/1.1, and gRPC needs HTTP/2: write it h2c:// (or https://)", addr.display)
		}
		if seen[addr.key] {
			return nil, fmt.Errorf("lbpool: backend %s is listed twice", addr.display)
		}
		seen[addr.key] = true
		w := bc.Weight
		if w == 0 {
			w = 1
		}
		if w < 0 || w > MaxWeight {
			return nil, fmt.Errorf("lbpool: backend %s: weight %d out of range 1-%d", addr.display, bc.Weight, MaxWeight)
		}
		addr.weight = w
		addr.backup = bc.Backup
		addr.maxConns = bc.MaxConns
		if addr.maxConns == 0 {
			addr.maxConns = h.MaxConns
		}
		if err := checkCount("max_conns", bc.MaxConns); err != nil {
			return nil, fmt.Errorf("lbpool: backend %s: %w", addr.display, err)
		}
		s.backends = append(s.backends, addr)
		names = append(names, addr.display)
	}
	if s.reports, err = h.reportSpec(); err != nil {
		return nil, err
	}
	s.direct = s.wire.Direct()
	s.dialer = s.transportSettings().Dialer()
	dynamic, err := h.discoverySpecs()
	if err != nil {
		return nil, err
	}
	for _, d := range dynamic {
		names = append(names, d.label)
	}
	s.dynamic = dynamic
	if s.name == "" {
		s.name = strings.Join(names, ",")
	}
	// header operations belong to the handler, not to the pool: two sites
	// may share a pool and send it different headers
	shared := *h
	shared.Headers = nil
	fp, err := json.Marshal(&shared)
	if err != nil {
		return nil, err
	}
	s.fingerprint = string(fp)
	return s, nil
}

// transportSettings are the settings that shape the transport; a reload
// that keeps them keeps the pool's transport and its open connections.
func (s *poolSpec) transportSettings() upstream.Settings {
	ts := s.wire
	ts.DialTimeout = s.dialTimeout
	ts.ResponseHeaderTimeout = s.responseHeaderTimeout
	ts.TLS = s.tls.key
	ts.TLSTimeout = s.tls.timeout
	return ts
}

func setDefault[T comparable](v *T, def T) {
	var zero T
	if *v == zero {
		*v = def
	}
}

// checkURI accepts a path with an optional query, as sent in a request.
func checkURI(uri string) error {
	if !strings.HasPrefix(uri, "/") {
		return fmt.Errorf("%q must start with /", uri)
	}
	if _, err := url.ParseRequestURI(uri); err != nil {
		return fmt.Errorf("%q is not a valid request path: %v", uri, err)
	}
	return nil
}

// checkHeader rejects header names and values that cannot be sent.
func checkHeader(name string, values []string) error {
	if !httpguts.ValidHeaderFieldName(name) {
		return fmt.Errorf("%q is not a valid header name", name)
	}
	if len(values) == 0 {
		return fmt.Errorf("header %s needs a value", name)
	}
	for _, v := range values {
		if !httpguts.ValidHeaderFieldValue(v) {
			return fmt.Errorf("header %s: value %q has characters a header cannot carry", name, v)
		}
	}
	return nil
}

// validStatus accepts a status code (100-599) or a class digit (1-5).
func validStatus(s int) bool {
	return (s >= 1 && s <= 5) || (s >= 100 && s <= 599)
}

// Interface guards.
var (
	_ caddy.Provisioner           = (*Handler)(nil)
	_ caddy.CleanerUpper          = (*Handler)(nil)
	_ caddyhttp.MiddlewareHandler = (*Handler)(nil)
)
