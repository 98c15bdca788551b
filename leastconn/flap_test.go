package leastconn

import (
	"encoding/json"
	"net"
	"strings"
	"syscall"
	"testing"
	"time"

	"go.uber.org/zap"
)

func TestFlapHoldDoublesUpToTheCap(t *testing.T) {
	const s, ms = time.Second, time.Millisecond
	tests := []struct {
		name      string
		base, max time.Duration
		want      []time.Duration // after 0, 1, 2, ... holds in a row
	}{
		{"defaults", DefaultFlapHold, DefaultFlapHoldMax, []time.Duration{10 * s, 20 * s, 40 * s, 80 * s, 160 * s, 300 * s, 300 * s, 300 * s}},
		{"short", 200 * ms, s, []time.Duration{200 * ms, 400 * ms, 800 * ms, s, s}},
		{"base is the cap", 5 * s, 5 * s, []time.Duration{5 * s, 5 * s}},
		{"cap near the largest duration", s, 1 << 62, []time.Duration{s, 2 * s, 4 * s}},
	}
	for _, tc := range tests {
		f := &flapSettings{base: tc.base, max: tc.max}
		for n, want := range tc.want {
			if got := f.holdFor(n); got != want {
				t.Errorf("%s: hold after %d in a row = %v, want %v", tc.name, n, got, want)
			}
		}
		if got := f.holdFor(1000); got != tc.max {
			t.Errorf("%s: hold after 1000 in a row = %v, want the cap %v", tc.name, got, tc.max)
		}
	}
}

func TestFlapStreakStartsOverAfterTwiceTheLastHold(t *testing.T) {
	t0 := time.Unix(1000, 0)
	var st flapState
	if n := st.streak(t0); n != 0 {
		t.Fatalf("streak %d before any hold", n)
	}
	st.inARow, st.hold = 3, 40*time.Second
	st.until.Store(t0.UnixNano()) // the third hold ended at t0
	for _, tc := range []struct {
		at   time.Duration // after t0
		want int
	}{
		{-10 * time.Second, 3}, // during the hold
		{0, 3},
		{79 * time.Second, 3},
		{80 * time.Second, 0}, // twice the last hold without another
		{time.Hour, 0},
	} {
		if got := st.streak(t0.Add(tc.at)); got != tc.want {
			t.Errorf("streak %v after the hold ended = %d, want %d", tc.at, got, tc.want)
		}
	}
}

func TestFlapIsAFailureSoonAfterComingBackOrBeforeAnyAnswer(t *testing.T) {
	f := &flapSettings{base: 10 * time.Second, max: 5 * time.Minute}
	t0 := time.Unix(1000, 0)
	tests := []struct {
		name     string
		backAt   time.Time
		after    time.Duration // failure, after backAt
		answered uint64        // since backAt
		want     bool
	}{
		{"never came back (up since it joined)", time.Time{}, time.Millisecond, 0, false},
		{"right after coming back", t0, time.Millisecond, 0, true},
		{"within the base, having answered", t0, 9 * time.Second, 50, true},
		{"past the base, having answered", t0, 10 * time.Second, 50, false},
		{"past the base, nothing answered since", t0, time.Hour, 0, true},
	}
	for _, tc := range tests {
		st := flapState{backAt: tc.backAt, backAnswered: 7}
		if got := st.flapped(f, t0.Add(tc.after), 7+tc.answered); got != tc.want {
			t.Errorf("%s: flap = %v, want %v", tc.name, got, tc.want)
		}
	}
}

func TestFlapHoldOptions(t *testing.T) {
	tests := []struct {
		json      string
		base, max time.Duration
		percent   int
		off       bool
		err       string
	}{
		{json: `{}`, base: 10 * time.Second, max: 5 * time.Minute, percent: 50},
		{json: `{"flap_hold":{"base":"200ms","max":"1s"},"max_ejected_percent":100}`, base: 200 * time.Millisecond, max: time.Second, percent: 100},
		{json: `{"flap_hold":{"base":"10m"}}`, base: 10 * time.Minute, max: 10 * time.Minute, percent: 50},
		{json: `{"flap_hold":{"max":"1m"}}`, base: 10 * time.Second, max: time.Minute, percent: 50},
		{json: `{"flap_hold":{"off":true}}`, off: true},
		{json: `{"flap_hold":{"off":true,"base":"1s"}}`, err: "off takes no base or max"},
		{json: `{"flap_hold":{"base":"2s","max":"1s"}}`, err: "shorter than the base"},
		{json: `{"flap_hold":{"base":"-1s"}}`, err: "must be positive"},
		{json: `{"max_ejected_percent":101}`, err: "out of range"},
	}
	for _, tc := range tests {
		var h Handler
		if err := json.Unmarshal([]byte(tc.json), &h); err != nil {
			t.Fatal(err)
		}
		f, err := h.flapSpec()
		switch {
		case tc.err != "":
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("%s: error %v, want one containing %q", tc.json, err, tc.err)
			}
		case err != nil:
			t.Errorf("%s: %v", tc.json, err)
		case tc.off:
			if f != nil {
				t.Errorf("%s: holds on: %+v", tc.json, f)
			}
		case f == nil || f.base != tc.base || f.max != tc.max || f.maxOutPercent != tc.percent:
			t.Errorf("%s: %+v, want base %v, max %v, %d%%", tc.json, f, tc.base, tc.max, tc.percent)
		}
	}
}

// flapHandler is a test handler of n backends with holds on, each brought
// back by its checks a moment ago.
func flapHandler(n, maxPercent int) *Handler {
	h := newTestHandler(make([]int, n)...)
	h.lease.pool.spec.Store(&poolSpec{name: "test", logger: zap.NewNop(), healthPasses: 1,
		flap: &flapSettings{base: 10 * time.Second, max: 5 * time.Minute, maxOutPercent: maxPercent}})
	for _, b := range h.viewed() {
		b.mu.Lock()
		b.cameBack(time.Now())
		b.mu.Unlock()
	}
	return h
}

// flapOnce fails a request of b's, and the check that follows passes.
func flapOnce(b *Backend, v *view) {
	b.passiveFailure(&net.OpError{Op: "read", Net: "tcp", Err: syscall.ECONNRESET}, v)
	b.record(b.pool.spec.Load(), checkResult{at: time.Now()}, b.passiveEpoch)
}

func TestHoldsNeverTakeOutMoreThanTheirShareNorTheLastBackend(t *testing.T) {
	tests := []struct {
		n, percent int
		want       int // held after every backend flapped
	}{
		{1, 50, 0}, // a lone backend is never held
		{2, 50, 1},
		{3, 50, 1},
		{4, 50, 2},
		{3, 100, 2}, // the last one that could take traffic stays
	}
	for _, tc := range tests {
		h := flapHandler(tc.n, tc.percent)
		v := h.lease.view.Load()
		for _, b := range v.backends {
			flapOnce(b, v)
		}
		if got := v.held(time.Now()); got != tc.want {
			t.Errorf("%d backends, max_ejected_percent %d: %d held, want %d", tc.n, tc.percent, got, tc.want)
		}
	}
}

// firstOfThree is the first backend of a pool of three with holds on, its
// view and its spec.
func firstOfThree() (*Backend, *view, *poolSpec) {
	h := flapHandler(3, 50)
	v := h.lease.view.Load()
	return v.backends[0], v, h.lease.pool.spec.Load()
}

func TestHeldBackendReturnsAtItsFirstPassingCheckAfterTheHold(t *testing.T) {
	b, v, s := firstOfThree()
	b.passiveFailure(&net.OpError{Op: "read", Net: "tcp", Err: syscall.ECONNRESET}, v)
	if b.heldNow(time.Now()) {
		t.Fatal("held before its check passed")
	}
	b.record(s, checkResult{at: time.Now()}, b.passiveEpoch)
	if !b.heldNow(time.Now()) || b.flap.total.Load() != 1 {
		t.Fatalf("a failure right after coming back, then a passing check, did not hold the backend (holds %d)", b.flap.total.Load())
	}
	until := time.Unix(0, b.flap.until.Load())
	if d := time.Until(until); d < 9*time.Second || d > 10*time.Second {
		t.Fatalf("first hold ends in %v, want 10s", d)
	}
	b.record(s, checkResult{at: time.Now()}, b.passiveEpoch)
	if b.flags.Load()&flagDown == 0 {
		t.Fatal("a check that passed during the hold brought the backend back")
	}
	b.flap.until.Store(time.Now().UnixNano()) // the hold is over
	b.record(s, checkResult{at: time.Now()}, b.passiveEpoch)
	if b.flags.Load()&flagDown != 0 {
		t.Fatal("a passing check after the hold did not bring the backend back")
	}

	// failing again at once: the second hold in a row is twice as long
	flapOnce(b, v)
	if b.flap.inARow != 2 || b.flap.hold != 20*time.Second {
		t.Fatalf("second hold: %d in a row, %v; want 2 and 20s", b.flap.inARow, b.flap.hold)
	}
}

func TestABackendThatFailsItsCheckTooIsDownNotHeld(t *testing.T) {
	b, v, s := firstOfThree()
	b.passiveFailure(&net.OpError{Op: "dial", Net: "tcp", Err: syscall.ECONNREFUSED}, v)
	b.record(s, checkResult{at: time.Now(), reason: "connection refused"}, b.passiveEpoch)
	b.record(s, checkResult{at: time.Now()}, b.passiveEpoch) // restarted
	if b.flags.Load()&flagDown != 0 || b.flap.total.Load() != 0 {
		t.Fatalf("a backend that was down for its checks too was held (holds %d)", b.flap.total.Load())
	}
}

func TestHoldsEndWhenNothingElseCouldTakeARequest(t *testing.T) {
	h := flapHandler(2, 50)
	v := h.lease.view.Load()
	held, other := v.backends[0], v.backends[1]
	flapOnce(held, v)
	if !held.heldNow(time.Now()) {
		t.Fatal("not held")
	}
	<-held.kick // the check passiveFailure asked for
	other.setAdminState(StateMaint)
	v.endHolds()
	if held.heldNow(time.Now()) {
		t.Fatal("still held with nothing else in the pool")
	}
	select {
	case <-held.kick:
	default:
		t.Fatal("no check asked for: the backend would wait for its next interval")
	}
}

// A 503's Retry-After is the wait until the soonest next check of a down
// backend, or its hold's end if later, rounded; one health_interval when
// no backend is down but in an admin state.
func TestRetryAfterIsTheSoonestCheckOfADownBackend(t *testing.T) {
	h := newTestHandler(1, 1, 1)
	h.spec = &poolSpec{healthInterval: time.Hour}
	bs := h.lease.view.Load().backends
	now := time.Now()
	for i, b := range bs {
		b.flags.Store(flagDown)
		b.nextCheck.Store(now.Add(time.Duration(i+3) * time.Second).UnixNano())
	}
	if got := h.retryAfter(); got != 3 {
		t.Errorf("down, next checks in 3, 4 and 5s: Retry-After %d, want 3", got)
	}
	bs[0].flap.until.Store(now.Add(30 * time.Second).UnixNano()) // held past its check
	if got := h.retryAfter(); got != 4 {
		t.Errorf("the soonest held for 30s: Retry-After %d, want 4", got)
	}
	bs[1].nextCheck.Store(now.Add(-time.Second).UnixNano()) // overdue
	if got := h.retryAfter(); got != 1 {
		t.Errorf("a check overdue: Retry-After %d, want 1", got)
	}
	for _, b := range bs {
		b.flags.Store(flagDown | flagMaint)
	}
	if got := h.retryAfter(); got != 3600 {
		t.Errorf("all in maint: Retry-After %d, want 3600 (health_interval)", got)
	}
}
