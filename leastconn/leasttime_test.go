package leastconn

import (
	"testing"
	"time"
)

// newLeastTimeTestHandler builds a least_time handler over detached
// backends with the given latency estimates (µs; 0: none), each of weight
// 1, at pool clock 10 s.
func newLeastTimeTestHandler(latencies ...int64) *Handler {
	h := newTestHandler(make([]int, len(latencies))...)
	h.lease.leastTime, h.lease.kind = true, kindLeastTime
	const now = 10_000
	h.lease.pool.clock.Store(now)
	for i, b := range h.viewed() {
		b.storeWeight(1)
		if latencies[i] != 0 {
			b.peak.observe(time.Duration(latencies[i])*time.Microsecond, now)
		}
	}
	return h
}

func TestLatencyEstimateReactsToOneSlowResponse(t *testing.T) {
	var e peakEWMA
	for ms := int64(0); ms < 100; ms++ {
		e.observe(200*time.Microsecond, 1000+ms)
	}
	if got := e.at(1100, false); got < 150 || got > 250 {
		t.Fatalf("after fast samples the estimate is %d µs, want about 200", got)
	}
	e.observe(50*time.Millisecond, 1100)
	if got := e.at(1100, false); got < 40_000 {
		t.Fatalf("one 50 ms sample moved the estimate to %d µs, want about 50000", got)
	}
}

func TestLatencyEstimateDecaysWithTime(t *testing.T) {
	var e peakEWMA
	e.observe(64*time.Millisecond, 1000)
	for _, tc := range []struct {
		after    int64 // ms
		min, max int64 // µs
	}{
		{0, 56_000, 64_000},
		{latencyHalfLife, 28_000, 32_000},
		{4 * latencyHalfLife, 3_500, 4_000},
		{latencyStale - 1, 200, 260},
		{latencyStale, 0, 0}, // stale: none, so the pool's median stands in
	} {
		if got := e.at(1000+tc.after, false); got < tc.min || got > tc.max {
			t.Fatalf("%d ms after a 64 ms sample the estimate is %d µs, want %d-%d", tc.after, got, tc.min, tc.max)
		}
	}
	// fast samples pull it down by elapsed time, not by their number
	e.observe(64*time.Millisecond, 5000)
	for range 1000 {
		e.observe(100*time.Microsecond, 5000)
	}
	if got := e.at(5000, false); got < 56_000 {
		t.Fatalf("1000 fast samples within one millisecond pulled the estimate to %d µs", got)
	}
	// with a half-life of latencyHalfLife/pullDownSpeed
	const pullDown = latencyHalfLife / pullDownSpeed
	for ms := int64(1); ms <= 2*pullDown; ms++ {
		e.observe(100*time.Microsecond, 5000+ms)
	}
	if got := e.at(5000+2*pullDown, false); got < 14_000 || got > 17_000 {
		t.Fatalf("two pull-down half-lives of fast samples left the estimate at %d µs, want about a quarter of 64 ms", got)
	}
	// a sample between the estimate and the decayed estimate lowers it
	e.observe(50*time.Millisecond, 9000)
	e.observe(40*time.Millisecond, 9000+latencyHalfLife)
	if got := int64(e.w.Load() & estimateMax); got < 39_000 || got > 42_000 {
		t.Fatalf("a 40 ms answer a half-life after a 50 ms one left the estimate at %d µs, want about 40 ms", got)
	}
}

func TestLatencyEstimateHoldsWhileRequestsAreInFlight(t *testing.T) {
	var e peakEWMA
	e.observe(50*time.Millisecond, 1000)
	// a backend with a request out keeps what its last answer said
	for _, after := range []int64{latencyHalfLife, 4 * latencyHalfLife, latencyStale - 1} {
		if got := e.at(1000+after, true); got < 40_000 {
			t.Fatalf("%d ms after a 50 ms answer, with a request in flight, the estimate is %d µs", after, got)
		}
	}
	// quiet, it decays as before; stale, it is none, busy or not
	if got := e.at(1000+4*latencyHalfLife, false); got > 4_000 {
		t.Fatalf("quiet for four half-lives the estimate is still %d µs", got)
	}
	if got := e.at(1000+latencyStale, true); got != 0 {
		t.Fatalf("a stale estimate reads %d µs, want none", got)
	}
}

// The slow backend is probed one request at a time: once its estimate has
// decayed below the others' cost it takes one request, and no more until
// that one has answered.
func TestLeastTimeProbesASlowBackendOneRequestAtATime(t *testing.T) {
	h := newLeastTimeTestHandler(1000, 1000, 50_000)
	fast1, fast2, slow := h.viewed()[0], h.viewed()[1], h.viewed()[2]
	fast1.active.Store(4)
	fast2.active.Store(4)
	pool := h.lease.pool
	start := pool.clock.Load()
	// with the fast ones at (4+1)×1 ms, the idle 50 ms backend is picked
	// once its estimate has decayed under 5 ms: about 3.3 half-lives
	var probedAt int64
	for ms := int64(1); ms < latencyStale; ms++ {
		pool.clock.Store(start + ms)
		var tried triedSet
		i := h.pickNow(&tried)
		if i == 2 {
			probedAt = ms
			break
		}
		h.viewed()[i].active.Add(-1)
	}
	if probedAt < 3*latencyHalfLife || probedAt > 4*latencyHalfLife {
		t.Fatalf("the slow backend was probed %d ms after its answer, want after 3-4 half-lives", probedAt)
	}
	// while the probe is out, every pick goes elsewhere
	for ms := probedAt; ms < latencyStale; ms += 7 { // the others' estimates are fresh till then
		pool.clock.Store(start + ms)
		var tried triedSet
		i := h.pickNow(&tried)
		if i == 2 {
			t.Fatalf("the slow backend took a second request %d ms into its probe", ms-probedAt)
		}
		h.viewed()[i].active.Add(-1)
	}
	if slow.active.Load() != 1 {
		t.Fatalf("the slow backend has %d in flight, want its one probe", slow.active.Load())
	}
}

func TestNewBackendStartsAtThePoolsMedianOneRequestAtATime(t *testing.T) {
	h := newLeastTimeTestHandler(100, 200, 5000, 0)
	bs := h.viewed()
	// idle, the new backend counts as the median (the 200 µs one): the two
	// tie below the fastest with 3 in flight, and share the picks
	bs[0].active.Store(3)
	counts := pickOneByOne(h, 100)
	// ties are broken at random while the pool is busy: 25 or fewer of 100
	// to one side has a chance of about 1 in 10^6
	if counts[1] < 25 || counts[3] < 25 || counts[1]+counts[3] != 100 {
		t.Fatalf("picks went %v, want them shared by the median backend and the new one", counts)
	}
	// busy and still unknown, it takes nothing more until it has answered,
	// however busy the others are
	var tried triedSet
	bs[3].active.Store(1)
	for _, b := range bs[:3] {
		b.active.Store(50)
	}
	if i := h.pickNow(&tried); i == 3 {
		t.Fatal("the new backend took a second request before its first answered")
	}
	bs[3].peak.observe(200*time.Microsecond, h.lease.pool.clock.Load())
	bs[3].active.Store(1)
	if i := h.pickNow(&tried); i != 3 {
		t.Fatalf("picked %d after the new backend answered fast, want it", i)
	}
	// a pool with no estimate at all picks as least_conn
	h = newLeastTimeTestHandler(0, 0, 0)
	h.viewed()[0].active.Store(2)
	h.viewed()[1].active.Store(1)
	h.viewed()[2].active.Store(3)
	if i := h.pickNow(&tried); i != 1 {
		t.Fatalf("with no estimates picked %d, want the least busy 1", i)
	}
}

func TestLeastTimeAvoidsTheSlowBackend(t *testing.T) {
	h := newLeastTimeTestHandler(200, 200, 50_000)
	counts := make([]int, 3)
	for range 60 { // 60 requests in flight: 30 each on the fast ones is still cheaper
		var tried triedSet
		counts[h.pickNow(&tried)]++
	}
	if counts[2] != 0 || counts[0] != 30 || counts[1] != 30 {
		t.Fatalf("60 requests in flight went %v, want 30/30/0", counts)
	}
	// least_conn puts a third on it
	h.lease.leastTime, h.lease.kind = false, kindLeastConn
	for _, b := range h.viewed() {
		b.active.Store(0)
	}
	counts = make([]int, 3)
	for range 60 {
		var tried triedSet
		counts[h.pickNow(&tried)]++
	}
	if counts[2] != 20 {
		t.Fatalf("least_conn gave the slow backend %d of 60, want 20", counts[2])
	}
}

func TestLeastTimeMinimisesLoadTimesLatencyOverWeight(t *testing.T) {
	tests := []struct {
		name      string
		latencies []int64
		weights   []int64
		active    []int64
		want      int
	}{
		{"twice as slow takes half the load", []int64{1000, 2000}, []int64{1, 1}, []int64{2, 0}, 1}, // 3×1000 > 1×2000
		{"busier fast one still cheaper", []int64{1000, 4000}, []int64{1, 1}, []int64{2, 0}, 0},     // 3×1000 < 1×4000
		{"weight divides the cost", []int64{1000, 1000}, []int64{4, 1}, []int64{2, 0}, 0},           // 3×1000/4 < 1000
		{"fewest active among equals", []int64{500, 500, 500}, []int64{1, 1, 1}, []int64{3, 1, 2}, 1},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			h := newLeastTimeTestHandler(tc.latencies...)
			for i, b := range h.viewed() {
				b.storeWeight(tc.weights[i])
				b.active.Store(tc.active[i])
			}
			var tried triedSet
			if got := h.pickNow(&tried); got != tc.want {
				t.Fatalf("picked %d, want %d", got, tc.want)
			}
		})
	}
}

func TestLeastTimeRotatesWhenIdleAndSkipsTheTried(t *testing.T) {
	h := newLeastTimeTestHandler(300, 310, 290) // the same within the compared digits
	h.viewed()[1].flags.Store(flagDown)
	counts := pickOneByOne(h, 30)
	if counts[0] != 15 || counts[2] != 15 {
		t.Fatalf("idle picks over two equal backends went %v, want 15/0/15", counts)
	}
	var tried triedSet
	tried.add(0)
	tried.add(2)
	if i := h.pickNow(&tried); i != -1 {
		t.Fatalf("picked %d with every backend down or tried, want -1", i)
	}
}

func TestLeastTimeFollowsWeightsAndSlowStart(t *testing.T) {
	h := newLeastTimeTestHandler(500, 500)
	h.viewed()[0].storeWeight(3)
	counts := steadyShares(h, 4000)
	if ratio := float64(counts[0]) / float64(counts[1]); ratio < 2.7 || ratio > 3.3 {
		t.Fatalf("weight 3:1 gave %v (ratio %.2f)", counts, ratio)
	}
	// a backend at the start of its slow start counts a tenth of its weight
	h = newLeastTimeTestHandler(500, 500)
	b := h.viewed()[1]
	b.rampLen.Store(int64(time.Hour))
	b.rampFrom.Store(time.Now().UnixNano())
	b.flags.Store(flagRamp)
	h.viewed()[0].active.Store(5)
	var tried triedSet
	if i := h.pickNow(&tried); i != 0 {
		t.Fatalf("picked the ramping backend with 0 active over one with 5 at full weight")
	}
}

func TestLeastTimeSampledPickPrefersTheFast(t *testing.T) {
	lat := make([]int64, 1000)
	for i := range lat {
		lat[i] = 200
		if i%2 == 1 {
			lat[i] = 50_000
		}
	}
	h := newLeastTimeTestHandler(lat...)
	slow := 0
	for i, n := range pickOneByOne(h, 10000) {
		slow += i % 2 * n
	}
	// a slow backend wins only when all four sampled are slow: 1 in 16
	if slow > 1000 {
		t.Fatalf("%d of 10000 picks went to a slow backend", slow)
	}
}

func TestLeastTimePickAllocatesNothing(t *testing.T) {
	for _, n := range []int{3, 64} {
		testPickAllocatesNothing(t, n, newLeastTimeTestHandler(make([]int64, n)...))
		lat := make([]int64, n)
		for i := range lat {
			lat[i] = int64(100 + i)
		}
		testPickAllocatesNothing(t, n, newLeastTimeTestHandler(lat...))
	}
}

func TestLeastConnDoesNotKeepLatencyEstimates(t *testing.T) {
	h := newTestHandler(1)
	b := h.viewed()[0]
	b.observe(time.Now(), time.Millisecond, h.lease.leastTime)
	if b.peak.w.Load() != 0 || h.lease.pool.clock.Load() != 0 {
		t.Fatal("least_conn updated the least_time estimate or the pool clock")
	}
	if b.latency.value() != time.Millisecond {
		t.Fatalf("the stats latency is %v, want 1ms", b.latency.value())
	}
	h.lease.leastTime = true
	b.observe(time.Now(), time.Millisecond, h.lease.leastTime)
	if got := b.peak.at(h.lease.pool.clock.Load(), false); got < 875 || got > 1000 {
		t.Fatalf("least_time estimate %d µs after a 1 ms response", got)
	}
}

func TestUnknownPolicyIsAnError(t *testing.T) {
	for _, p := range []string{"fastest", "LEAST_TIME", " least_time"} {
		h := &Handler{LBPolicy: p}
		if err := h.provisionPolicy(&poolSpec{}); err == nil {
			t.Errorf("lb_policy %q accepted", p)
		}
	}
}

// least_time's pick over the same pools as BenchmarkPick*, every backend
// with a fresh estimate.
func benchmarkPickLeastTime(b *testing.B, n int) {
	lat := make([]int64, n)
	for i := range lat {
		lat[i] = int64(200 + i%7*10)
	}
	benchmarkPick(b, newLeastTimeTestHandler(lat...))
}

func BenchmarkPickLeastTime3(b *testing.B)    { benchmarkPickLeastTime(b, 3) }
func BenchmarkPickLeastTime16(b *testing.B)   { benchmarkPickLeastTime(b, 16) }
func BenchmarkPickLeastTime256(b *testing.B)  { benchmarkPickLeastTime(b, 256) }
func BenchmarkPickLeastTime4096(b *testing.B) { benchmarkPickLeastTime(b, 4096) }
