package leastconn

import (
	"fmt"
	"sync/atomic"
	"time"

	"github.com/caddyserver/caddy/v2"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// Flap holds. A backend that fails every request while its health check
// passes goes down at each failure (passiveFailure) and comes back at the
// check that follows at once, so it keeps its share of the traffic and
// fails it. A flap is that disagreement: a request fails soon after the
// checks brought its backend back, and the check that follows passes
// again. It holds the backend out for a while that doubles with each hold
// in a row, up to a cap, as Envoy's outlier detection multiplies its base
// ejection time and Kubernetes backs off a crash loop. A backend that
// fails its check too is simply down, and is not held. The hold is health
// state: the backend stays down (the flag the pick already skips), its
// checks go on, and it returns at the first passing check once the hold is
// over. Holds never take out more of the pool than max_ejected_percent
// (with ejections), nor the last backend that could take traffic.

// Defaults of flap_hold.
const (
	DefaultFlapHold    = 10 * time.Second
	DefaultFlapHoldMax = 5 * time.Minute
)

// FlapHold configures flap holds: how long a backend that fails requests
// soon after its health checks brought it back is held out.
type FlapHold struct {
	// Turns holds off: a backend that fails requests while its checks pass
	// goes down at each failure and comes back at the next passing check.
	Off bool `json:"off,omitempty"`

	// The first hold; each hold in a row doubles it. A request that fails
	// within this long of the checks bringing the backend back (or before
	// it answered any request since), followed by a passing check, is a
	// flap. Default: 10s.
	Base caddy.Duration `json:"base,omitempty"`

	// The longest hold. Default: 5m, or the base if longer.
	Max caddy.Duration `json:"max,omitempty"`
}

// flapSettings are a pool's resolved flap_hold options; nil when off.
type flapSettings struct {
	base, max     time.Duration
	maxOutPercent int // max_ejected_percent: holds and ejections together
}

// flapState is one backend's hold bookkeeping, guarded by Backend.mu;
// until and total are atomics, read by other backends' holds and by
// metrics.
type flapState struct {
	backAt       time.Time     // when the checks last brought the backend back up; zero before
	backAnswered uint64        // requests it had answered then
	suspect      string        // a failure soon after coming back, which a passing check makes a flap; "" when none
	suspectView  *view         // the view the failed request picked from, while suspect
	inARow       int           // holds in a row, the last one included
	hold         time.Duration // the last hold's length
	reason       string        // why the last hold
	keptInAt     time.Time     // when a hold was last refused and logged
	until        atomic.Int64  // unix nanos the last hold ends; 0 before any
	total        atomic.Uint64 // holds ever
}

// holdFor is the length of a hold after n holds in a row: the base
// doubled n times, at most max.
func (f *flapSettings) holdFor(n int) time.Duration {
	d := f.base
	for ; n > 0; n-- {
		if d >= f.max/2 {
			return f.max
		}
		d *= 2
	}
	return min(d, f.max)
}

// streak is the holds in a row at now, which set the next hold's length:
// it starts over once the backend has gone twice its last hold, counted
// from that hold's end, without another.
func (st *flapState) streak(now time.Time) int {
	if st.inARow == 0 || now.UnixNano()-st.until.Load() >= 2*int64(st.hold) {
		return 0
	}
	return st.inARow
}

// flapped tells whether a request of b's that failed at now, when b had
// answered requests in all, is a flap: the checks brought b back less
// than the base ago, or b has answered nothing since they did.
func (st *flapState) flapped(f *flapSettings, now time.Time, answered uint64) bool {
	if st.backAt.IsZero() {
		return false // up since it joined: the failure is a first one
	}
	return now.Sub(st.backAt) < f.base || answered == st.backAnswered
}

// cameBack records that the checks brought b back up at now. Called with
// b.mu held.
func (b *Backend) cameBack(now time.Time) {
	b.flap.backAt = now
	b.flap.backAnswered = b.requests.Load()
}

// heldAt tells whether b is held at t under s: a check that started
// before the hold ends does not bring it back.
func (b *Backend) heldAt(s *poolSpec, t time.Time) bool {
	return s.flap != nil && b.flap.until.Load() > t.UnixNano()
}

// holdEvent is what a flap did, for the log: a hold, or a hold refused
// (hold 0); nothing when reason is empty.
type holdEvent struct {
	reason string
	hold   time.Duration
	inARow int
	until  time.Time
}

// suspectLocked notes a request of b's that failed at now, b just taken
// down, when it is a flap should the next check pass; v is the view the
// request picked b from. Called with b.mu held.
func (b *Backend) suspectLocked(f *flapSettings, v *view, now time.Time, failure string) {
	st := &b.flap
	if !st.flapped(f, now, b.requests.Load()) {
		return
	}
	since := now.Sub(st.backAt)
	st.suspect = failure + " " + roundForLog(since) + " after its checks brought it back"
	if since >= f.base {
		st.suspect = failure + " before it answered a request since its checks brought it back " + roundForLog(since) + " ago"
	}
	st.suspectView = v
}

// holdLocked holds b out from now, when a check passed after a suspect
// failure, unless its pool cannot spare b. Called with b.mu held.
func (b *Backend) holdLocked(f *flapSettings, now time.Time) holdEvent {
	st := &b.flap
	reason, v := st.suspect+", and its check passed", st.suspectView
	st.suspect, st.suspectView = "", nil
	n := st.streak(now)
	hold := f.holdFor(n)
	until := now.Add(hold)
	if why := b.pool.reserveHold(b, v, f.maxOutPercent, now, until); why != "" {
		if !st.keptInAt.IsZero() && now.Sub(st.keptInAt) < f.max {
			return holdEvent{} // logged already
		}
		st.keptInAt = now
		return holdEvent{reason: reason + "; kept in: " + why}
	}
	st.inARow, st.hold, st.reason = n+1, hold, reason
	st.total.Add(1)
	return holdEvent{reason: reason, hold: hold, inARow: n + 1, until: until}
}

// reserveHold sets b's hold to end at until unless that would take out
// more than maxPercent of v's backends (held or ejected) or leave no other
// backend that could take traffic; it returns why not, or "".
func (p *Pool) reserveHold(b *Backend, v *view, maxPercent int, now, until time.Time) string {
	p.outMu.Lock()
	defer p.outMu.Unlock()
	out := p.ejected.Load()
	if b.flags.Load()&flagEjected != 0 {
		out-- // counted among the ejected already
	}
	usable := 0
	for _, o := range v.backends {
		switch {
		case o == b:
		case o.heldNow(now):
			out++
		case o.flags.Load()&flagsUnavailable == 0:
			usable++
		}
	}
	switch {
	case usable == 0:
		return "no other backend could take traffic"
	case (out+1)*100 > int64(maxPercent)*int64(len(v.backends)):
		return fmt.Sprintf("max_ejected_percent %d reached", maxPercent)
	}
	b.flap.until.Store(until.UnixNano())
	return ""
}

// heldNow tells whether b is held out at now.
func (b *Backend) heldNow(now time.Time) bool {
	return b.flags.Load()&flagDown != 0 && b.flap.until.Load() > now.UnixNano()
}

// held counts v's backends held out at now.
func (v *view) held(now time.Time) int {
	n := 0
	for _, b := range v.backends {
		if b.heldNow(now) {
			n++
		}
	}
	return n
}

// endHolds ends the holds of v's backends at once, when no other backend
// could take a request: each comes back at its next passing check, which
// it gets now.
func (v *view) endHolds() {
	now := time.Now().UnixNano()
	for _, b := range v.backends {
		if u := b.flap.until.Load(); u > now && b.flap.until.CompareAndSwap(u, now) {
			b.checkNow()
		}
	}
}

// untilHoldEnds shortens wait, the time to b's next check, so that the
// check comes as the hold ends.
func (b *Backend) untilHoldEnds(wait time.Duration) time.Duration {
	if left := time.Until(time.Unix(0, b.flap.until.Load())); left > 0 && left < wait {
		return left
	}
	return wait
}

// logHold writes the one log entry of a hold, or of a hold refused.
func (b *Backend) logHold(s *poolSpec, e holdEvent) {
	if e.reason == "" {
		return
	}
	if e.hold == 0 {
		if c := s.logger.Check(zapcore.WarnLevel, "flap hold refused"); c != nil {
			c.Write(zap.String("pool", s.name), zap.String("backend", b.URL()), zap.String("reason", e.reason))
		}
		return
	}
	if c := s.logger.Check(zapcore.WarnLevel, "flap hold"); c != nil {
		c.Write(zap.String("pool", s.name), zap.String("backend", b.URL()), zap.String("reason", e.reason),
			zap.Duration("hold", e.hold), zap.Int("holds_in_a_row", e.inARow), zap.Time("held_until", e.until))
	}
}

// roundForLog shortens a duration for a log line: to the microsecond
// below a millisecond, to the millisecond above.
func roundForLog(d time.Duration) string {
	if d < time.Millisecond {
		return d.Round(time.Microsecond).String()
	}
	return d.Round(time.Millisecond).String()
}

// flapSpec resolves flap_hold; nil when off.
func (h *Handler) flapSpec() (*flapSettings, error) {
	fh := h.FlapHold
	if fh == nil {
		fh = &FlapHold{}
	}
	if fh.Off {
		if fh.Base != 0 || fh.Max != 0 {
			return nil, fmt.Errorf("lbpool: flap_hold: off takes no base or max")
		}
		return nil, nil
	}
	f := &flapSettings{base: time.Duration(fh.Base), max: time.Duration(fh.Max), maxOutPercent: h.MaxEjectedPercent}
	setDefault(&f.base, DefaultFlapHold)
	setDefault(&f.max, max(DefaultFlapHoldMax, f.base))
	setDefault(&f.maxOutPercent, DefaultMaxEjectedPercent)
	switch {
	case f.base < 0 || f.max < 0:
		return nil, fmt.Errorf("lbpool: flap_hold: durations must be positive")
	case f.max < f.base:
		return nil, fmt.Errorf("lbpool: flap_hold: max %v is shorter than the base %v", f.max, f.base)
	case f.maxOutPercent < 0 || f.maxOutPercent > 100:
		return nil, fmt.Errorf("lbpool: max_ejected_percent %d out of range 1-100", f.maxOutPercent)
	}
	return f, nil
}
