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
	h.leastTime = true
	const now = 10_000
	h.lease.pool.clock.Store(now)
	for i, b := range h.viewed() {
		b.weight.Store(1)
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
	if got := e.at(1100); got < 150 || got > 250 {
		t.Fatalf("after fast samples the estimate is %d µs, want about 200", got)
	}
	e.observe(50*time.Millisecond, 1100)
	if got := e.at(1100); got < 40_000 {
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
		if got := e.at(1000 + tc.after); got < tc.min || got > tc.max {
			t.Fatalf("%d ms after a 64 ms sample the estimate is %d µs, want %d-%d", tc.after, got, tc.min, tc.max)
		}
	}
	// fast samples pull it down by elapsed time, not by their number
	e.observe(64*time.Millisecond, 5000)
	for range 1000 {
		e.observe(100*time.Microsecond, 5000)
	}
	if got := e.at(5000); got < 56_000 {
		t.Fatalf("1000 fast samples within one millisecond pulled the estimate to %d µs", got)
	}
	for ms := int64(1); ms <= 2*latencyHalfLife; ms++ {
		e.observe(100*time.Microsecond, 5000+ms)
	}
	if got := e.at(5000 + 2*latencyHalfLife); got < 14_000 || got > 17_000 {
		t.Fatalf("two half-lives of fast samples left the estimate at %d µs, want about a quarter of 64 ms", got)
	}
}

func TestNewBackendStartsAtThePoolsMedian(t *testing.T) {
	h := newLeastTimeTestHandler(100, 200, 5000, 0)
	now := h.lease.pool.clock.Load()
	// with the others busy alike, the new backend is as good as the median one
	for i, a := range []int64{3, 3, 3, 3} {
		h.viewed()[i].active.Store(a)
	}
	var tried triedSet
	h.pickNow(&tried)
	if got, want := h.viewed()[3].peak.at(now), h.viewed()[1].peak.at(now); got != want {
		t.Fatalf("the new backend starts at %d µs, want the median %d µs", got, want)
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
	h.leastTime = false
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
				b.weight.Store(tc.weights[i])
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
	counts := make([]int, 3)
	for range 30 {
		var tried triedSet
		i := h.pickNow(&tried)
		counts[i]++
		h.viewed()[i].active.Add(-1)
	}
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
	h.viewed()[0].weight.Store(3)
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
	for range 10000 {
		var tried triedSet
		i := h.pickNow(&tried)
		slow += i % 2
		h.viewed()[i].active.Add(-1)
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
	h.observe(b, time.Now(), time.Millisecond)
	if b.peak.w.Load() != 0 || h.lease.pool.clock.Load() != 0 {
		t.Fatal("least_conn updated the least_time estimate or the pool clock")
	}
	if b.latency.value() != time.Millisecond {
		t.Fatalf("the stats latency is %v, want 1ms", b.latency.value())
	}
	h.leastTime = true
	h.observe(b, time.Now(), time.Millisecond)
	if got := b.peak.at(h.lease.pool.clock.Load()); got < 875 || got > 1000 {
		t.Fatalf("least_time estimate %d µs after a 1 ms response", got)
	}
}

func TestUnknownPolicyIsAnError(t *testing.T) {
	for _, p := range []string{"round_robin", "LEAST_TIME", " least_time"} {
		h := &Handler{LBPolicy: p}
		if err := h.provisionPolicy(); err == nil {
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
