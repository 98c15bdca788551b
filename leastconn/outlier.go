package leastconn

import (
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"
)

// Response-based ejection (Envoy's outlier detection, with reverse_proxy's
// option names): a response matching unhealthy_status, one slower than
// unhealthy_latency, or a try that failed counts as a failure of its
// backend; max_fails of them within fail_duration take the backend out
// (flagEjected, which the pick skips) until they are older than
// fail_duration. Health checks go on and the health state is not touched.
// Never more than max_ejected_percent of the pool is out at once, ejected
// or held (flap.go).

// Defaults of ejection, also documented in README.md.
const (
	// DefaultMaxFails is how many failures within fail_duration eject.
	DefaultMaxFails = 1
	// DefaultMaxEjectedPercent is the share of a pool that may be ejected at once.
	DefaultMaxEjectedPercent = 50
)

// outlierSettings are a pool's ejection options, resolved; nil when
// ejection is off.
type outlierSettings struct {
	failDuration      time.Duration
	maxFails          int
	statuses          []int // as caddyhttp.StatusCodeMatches reads them: a code, or a class digit
	grpcStatuses      []int // unhealthy_grpc_status
	latency           time.Duration
	maxEjectedPercent int
}

// outlierState is one backend's ejection bookkeeping. Failures are rare,
// so a mutex guards it; the request path reads only the flag.
type outlierState struct {
	mu        sync.Mutex
	fails     []int64 // unix nanos of the last max_fails failures, a ring
	next      int     // where the next failure goes; also the oldest
	since     time.Time
	reason    string
	keptIn    bool // tripped while the pool had ejected its share: logged once
	timer     *time.Timer
	ejections atomic.Uint64
}

// observe counts a response of b as a failure when its status or its time
// to response headers says so.
func (o *outlierSettings) observe(h *Handler, b *Backend, status int, latency time.Duration) {
	for _, s := range o.statuses {
		if caddyhttp.StatusCodeMatches(status, s) {
			o.fail(h, b, fmt.Sprintf("%dxx: %d", status/100, status))
			return
		}
	}
	if o.latency > 0 && latency >= o.latency {
		o.fail(h, b, "latency "+latency.Round(100*time.Millisecond).String())
	}
}

// fail records one failure of b and ejects it when it has max_fails of
// them within fail_duration.
func (o *outlierSettings) fail(h *Handler, b *Backend, reason string) {
	now := time.Now()
	st := &b.outlier
	st.mu.Lock()
	if len(st.fails) != o.maxFails {
		st.fails, st.next = make([]int64, o.maxFails), 0
	}
	st.fails[st.next] = now.UnixNano()
	st.next = (st.next + 1) % len(st.fails)
	oldest := st.fails[st.next]
	if b.flags.Load()&flagEjected != 0 || oldest == 0 || now.UnixNano()-oldest >= int64(o.failDuration) {
		if b.flags.Load()&flagEjected == 0 {
			st.keptIn = false
		}
		st.mu.Unlock()
		return // out already (its timer re-reads the ring), or not enough failures yet
	}
	if !b.pool.reserveEjection(h.lease.view.Load(), o.maxEjectedPercent) {
		logged := st.keptIn
		st.keptIn = true
		st.mu.Unlock()
		if !logged {
			b.logEjection(h.spec, "kept in: max_ejected_percent reached", reason, o.maxEjectedPercent)
		}
		return
	}
	b.setFlag(flagEjected)
	st.since, st.reason, st.keptIn = now, reason, false
	st.ejections.Add(1)
	st.timer = time.AfterFunc(time.Duration(oldest+int64(o.failDuration)-now.UnixNano()), func() { b.endEjection(o) })
	st.mu.Unlock()
	b.logEjection(h.spec, "ejected", reason, o.maxEjectedPercent)
}

// endEjection brings b back once its failures are older than
// fail_duration; failures of requests still in flight when it was ejected
// keep it out longer.
func (b *Backend) endEjection(o *outlierSettings) {
	st := &b.outlier
	st.mu.Lock()
	oldest := st.fails[st.next]
	if left := oldest + int64(o.failDuration) - time.Now().UnixNano(); left > 0 {
		st.timer.Reset(time.Duration(left))
		st.mu.Unlock()
		return
	}
	clear(st.fails)
	reason, since := st.reason, st.since
	st.since, st.reason, st.timer = time.Time{}, "", nil
	b.clearFlag(flagEjected)
	b.pool.ejected.Add(-1)
	st.mu.Unlock()
	b.logEjection(b.pool.spec.Load(), "returned", fmt.Sprintf("failures older than %s (out %s for %s)",
		o.failDuration, time.Since(since).Round(10*time.Millisecond), reason), o.maxEjectedPercent)
	b.pool.queue.wakeAll()
}

// reserveEjection counts one more ejected backend unless the pool, as v
// shows it, already has max percent of its backends out (ejected or held).
func (p *Pool) reserveEjection(v *view, max int) bool {
	p.outMu.Lock()
	defer p.outMu.Unlock()
	n := p.ejected.Load() + int64(v.held(time.Now()))
	if (n+1)*100 > int64(max)*int64(len(v.backends)) {
		return false
	}
	p.ejected.Add(1)
	return true
}

// logEjection writes the one log entry of an ejection, a return, or a
// backend kept in.
func (b *Backend) logEjection(s *poolSpec, event, reason string, maxPercent int) {
	fields := []zap.Field{zap.String("pool", s.name), zap.String("backend", b.URL()),
		zap.String("ejection", event), zap.String("reason", reason)}
	if event == "returned" {
		s.logger.Info("ejection ended", fields...)
		return
	}
	s.logger.Warn("ejection", append(fields, zap.Int("max_ejected_percent", maxPercent))...)
}

// ejection returns b's ejection for stats: since when and why, or a zero
// time when b is in.
func (b *Backend) ejection() (since time.Time, reason string) {
	st := &b.outlier
	st.mu.Lock()
	defer st.mu.Unlock()
	return st.since, st.reason
}

// outlierSpec resolves the ejection options; nil when fail_duration is 0.
func (h *Handler) outlierSpec() (*outlierSettings, error) {
	if h.FailDuration == 0 {
		// ejection is off: a default written out changes nothing, anything
		// else would be ignored without a word; max_ejected_percent also
		// bounds flap holds (flap.go)
		if (h.MaxFails != 0 && h.MaxFails != DefaultMaxFails) || len(h.UnhealthyStatus) > 0 || len(h.UnhealthyGRPCStatus) > 0 || h.UnhealthyLatency != 0 {
			return nil, fmt.Errorf("lbpool: max_fails, unhealthy_status, unhealthy_grpc_status and unhealthy_latency " +
				"other than their defaults need fail_duration")
		}
		return nil, nil
	}
	o := &outlierSettings{
		failDuration:      time.Duration(h.FailDuration),
		maxFails:          h.MaxFails,
		statuses:          h.UnhealthyStatus,
		grpcStatuses:      h.UnhealthyGRPCStatus,
		latency:           time.Duration(h.UnhealthyLatency),
		maxEjectedPercent: h.MaxEjectedPercent,
	}
	setDefault(&o.maxFails, DefaultMaxFails)
	setDefault(&o.maxEjectedPercent, DefaultMaxEjectedPercent)
	if o.failDuration < 0 || o.latency < 0 {
		return nil, fmt.Errorf("lbpool: fail_duration and unhealthy_latency must be positive")
	}
	for _, c := range o.grpcStatuses {
		if c < 0 || c >= len(grpcCodeNames) {
			return nil, fmt.Errorf("lbpool: unhealthy_grpc_status %d is not a gRPC status code (0-16)", c)
		}
	}
	for _, s := range o.statuses {
		if !validStatus(s) {
			return nil, fmt.Errorf("lbpool: unhealthy_status %d is neither a status code nor a class (1-5)", s)
		}
	}
	return o, nil
}
