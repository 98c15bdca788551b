package leastconn

import (
	"fmt"
	"sync/atomic"
	"testing"
	"time"
)

// newTestHandler builds a handler over detached backends with the given
// weights, for testing the pick alone.
func newTestHandler(weights ...int) *Handler {
	p := &Pool{name: "test"}
	h := &Handler{lease: &lease{pool: p}}
	for i, w := range weights {
		h.lease.backends = append(h.lease.backends, newBackend(p, backendAddr{key: fmt.Sprint(i), display: fmt.Sprint(i), weight: w}))
	}
	h.lease.view.Store(h.lease.buildView())
	return h
}

// newDiscoveredTestHandler builds a handler whose backends are all members
// of one DNS source, in priority groups of the given sizes (priority 0, 1,
// ...), as the registry builds its view.
func newDiscoveredTestHandler(groups ...int) *Handler {
	p := &Pool{name: "test"}
	src := &source{pool: p}
	for prio, n := range groups {
		for i := range n {
			key := fmt.Sprintf("%d.%d", prio, i)
			b := newBackend(p, backendAddr{key: key, display: key, weight: 1})
			src.members = append(src.members, member{b: b, priority: prio})
		}
	}
	h := &Handler{lease: &lease{pool: p, sources: []*source{src}}}
	h.lease.view.Store(h.lease.buildView())
	return h
}

// viewed is the backends of the handler's current view.
func (h *Handler) viewed() []*Backend { return h.lease.view.Load().backends }

// pickNow picks from the handler's current view.
func (h *Handler) pickNow(tried *triedSet) int { return h.lease.pick(h.lease.view.Load(), tried) }

// pickOneByOne makes n picks, each request done before the next is picked,
// and counts them per backend.
func pickOneByOne(h *Handler, n int) []int {
	counts := make([]int, len(h.viewed()))
	for range n {
		var tried triedSet
		i := h.pickNow(&tried)
		counts[i]++
		h.viewed()[i].active.Add(-1) // done at once: the pool is idle again
	}
	return counts
}

func TestPickRotatesAmongTiesWhenIdle(t *testing.T) {
	h := newTestHandler(1, 1, 1)
	counts := pickOneByOne(h, 30)
	for i, n := range counts {
		if n != 10 {
			t.Fatalf("backend %d picked %d times, want 10 (%v)", i, n, counts)
		}
	}
}

func TestTiesRotateEvenlyAroundAnUnavailableBackend(t *testing.T) {
	h := newTestHandler(1, 1, 1)
	h.viewed()[1].flags.Store(flagDown)
	counts := pickOneByOne(h, 30)
	if counts[0] != 15 || counts[2] != 15 {
		t.Fatalf("with the middle backend down, the others got %v, want 15/15", counts)
	}
}

func TestPickCountsActiveAtSelection(t *testing.T) {
	h := newTestHandler(1, 1, 1)
	// 9 requests that stay in flight spread 3/3/3
	for range 9 {
		var tried triedSet
		h.pickNow(&tried)
	}
	for i, b := range h.viewed() {
		if got := b.active.Load(); got != 3 {
			t.Fatalf("backend %d has %d active, want 3", i, got)
		}
	}
}

func TestPickMinimisesLoadOverWeight(t *testing.T) {
	tests := []struct {
		name    string
		weights []int
		active  []int64
		want    int
	}{
		{"fewest active wins", []int{1, 1, 1}, []int64{3, 1, 2}, 1},
		{"weight scales load", []int{3, 1}, []int64{2, 0}, 0},  // 3/3 < 1/1 is false: equal → first in scan
		{"heavier takes more", []int{4, 1}, []int64{3, 0}, 0},  // 4/4 = 1 vs 1/1 = 1: tie
		{"light backend busy", []int{1, 10}, []int64{0, 5}, 1}, // 1/1 vs 6/10
		{"all busy equal weight", []int{2, 2}, []int64{5, 4}, 1},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			h := newTestHandler(tc.weights...)
			for i, a := range tc.active {
				h.viewed()[i].active.Store(a)
			}
			h.lease.next.Store(0) // the scan starts at 0
			var tried triedSet
			got := h.pickNow(&tried)
			wantLoad := float64(tc.active[tc.want]+1) / float64(tc.weights[tc.want])
			gotLoad := float64(tc.active[got]+1) / float64(tc.weights[got])
			if gotLoad > wantLoad {
				t.Fatalf("picked %d (load %.2f), want %d (load %.2f)", got, gotLoad, tc.want, wantLoad)
			}
		})
	}
}

func TestPickSkipsUnavailableAndTried(t *testing.T) {
	h := newTestHandler(1, 1, 1, 1)
	h.viewed()[0].flags.Store(flagDown)
	h.viewed()[1].flags.Store(flagDrain)
	h.viewed()[2].flags.Store(flagMaint)
	var tried triedSet
	for range 10 {
		if got := h.pickNow(&tried); got != 3 {
			t.Fatalf("picked %d, want the only available backend 3", got)
		}
	}
	tried.add(3)
	if got := h.pickNow(&tried); got != -1 {
		t.Fatalf("picked %d with every backend unavailable or tried, want -1", got)
	}
}

func TestTriedSetLargePool(t *testing.T) {
	h := newTestHandler(make([]int, 200)...)
	for _, b := range h.viewed() {
		b.storeWeight(1)
	}
	tried := newTriedSet(200)
	seen := map[int]bool{}
	for range 200 {
		i := h.pickNow(&tried)
		if i < 0 || seen[i] {
			t.Fatalf("pick %d repeated or missing", i)
		}
		seen[i] = true
		tried.add(i)
	}
	if got := h.pickNow(&tried); got != -1 {
		t.Fatalf("picked %d after all were tried", got)
	}
}

func TestWeightedShareUnderSteadyLoad(t *testing.T) {
	// The share follows the weights 3:1.
	counts := steadyShares(newTestHandler(3, 1), 4000)
	ratio := float64(counts[0]) / float64(counts[1])
	if ratio < 2.7 || ratio > 3.3 {
		t.Fatalf("weight 3:1 gave %v (ratio %.2f)", counts, ratio)
	}
}

// steadyShares keeps 8 requests in flight, finishing the oldest each step,
// and counts where the steps' picks went.
func steadyShares(h *Handler, steps int) []int {
	counts := make([]int, len(h.viewed()))
	var inflight []int
	for range 8 {
		var tried triedSet
		inflight = append(inflight, h.pickNow(&tried))
	}
	for range steps {
		h.viewed()[inflight[0]].active.Add(-1)
		inflight = inflight[1:]
		var tried triedSet
		i := h.pickNow(&tried)
		counts[i]++
		inflight = append(inflight, i)
	}
	return counts
}

func TestSlowStartRampsLinearlyFromTenPercent(t *testing.T) {
	b := newBackend(&Pool{}, backendAddr{weight: 1})
	window := 10 * time.Second
	b.rampLen.Store(int64(window))
	from := time.Now()
	b.rampFrom.Store(from.UnixNano())
	b.flags.Store(flagRamp)
	for _, tc := range []struct {
		at   time.Duration
		want int64
	}{{0, 100}, {window / 2, 550}, {window * 9 / 10, 910}} {
		now := from.Add(tc.at).UnixNano()
		if got := b.rampedWeight(weightScale, &now); got != tc.want {
			t.Fatalf("at %v: weight %d‰, want %d‰", tc.at, got, tc.want)
		}
	}
	now := from.Add(window).UnixNano()
	if got := b.rampedWeight(weightScale, &now); got != weightScale {
		t.Fatalf("after the window: weight %d, want full %d", got, weightScale)
	}
	if b.flags.Load()&flagRamp != 0 {
		t.Fatal("the ramp flag stays set after the window")
	}
}

func TestPickAllocatesNothing(t *testing.T) {
	for _, n := range []int{3, 64, 256} {
		testPickAllocatesNothing(t, n, newTestHandler(make([]int, n)...))
		testPickAllocatesNothing(t, n, newDiscoveredTestHandler(n/2, n-n/2))
	}
}

func testPickAllocatesNothing(t *testing.T, n int, h *Handler) {
	t.Helper()
	for _, b := range h.viewed() {
		b.storeWeight(1)
	}
	allocs := testing.AllocsPerRun(1000, func() {
		var tried triedSet
		if n <= 64 {
			i := h.pickNow(&tried)
			h.viewed()[i].active.Add(-1)
		}
	})
	if n <= 64 && allocs != 0 {
		t.Fatalf("pick over %d backends allocates %.1f times", n, allocs)
	}
}

// benchmarkPick measures the pick two ways: serial on an idle pool (each
// pick released at once: the round-robin path), and in parallel under
// steady load, each goroutine keeping 8 requests in flight and releasing the
// oldest as it picks a new one (the path real traffic takes).
func benchmarkPick(b *testing.B, h *Handler) {
	for i, be := range h.viewed() {
		be.storeWeight(int64(1 + i%3))
	}
	b.Run("serial", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			var tried triedSet
			i := h.pickNow(&tried)
			h.viewed()[i].active.Add(-1)
		}
	})
	b.Run("parallel", func(b *testing.B) {
		b.ReportAllocs()
		b.RunParallel(func(pb *testing.PB) {
			var inflight [8]int
			for k := range inflight {
				var tried triedSet
				inflight[k] = h.pickNow(&tried)
			}
			k := 0
			for pb.Next() {
				h.viewed()[inflight[k]].active.Add(-1)
				var tried triedSet
				inflight[k] = h.pickNow(&tried)
				k = (k + 1) % len(inflight)
			}
			for _, i := range inflight {
				h.viewed()[i].active.Add(-1)
			}
		})
	})
}

func BenchmarkPick3(b *testing.B)    { benchmarkPick(b, newTestHandler(make([]int, 3)...)) }
func BenchmarkPick16(b *testing.B)   { benchmarkPick(b, newTestHandler(make([]int, 16)...)) }
func BenchmarkPick256(b *testing.B)  { benchmarkPick(b, newTestHandler(make([]int, 256)...)) }
func BenchmarkPick4096(b *testing.B) { benchmarkPick(b, newTestHandler(make([]int, 4096)...)) }

// The same pools found through DNS (one priority group), and one whose
// SRV answer has a backup group besides.
func BenchmarkPickDiscovered3(b *testing.B)   { benchmarkPick(b, newDiscoveredTestHandler(3)) }
func BenchmarkPickDiscovered16(b *testing.B)  { benchmarkPick(b, newDiscoveredTestHandler(16)) }
func BenchmarkPickDiscovered256(b *testing.B) { benchmarkPick(b, newDiscoveredTestHandler(256)) }
func BenchmarkPickDiscoveredWithBackupGroup3(b *testing.B) {
	benchmarkPick(b, newDiscoveredTestHandler(3, 3))
}

func TestSampledPickOnLargePoolsPrefersTheLessLoaded(t *testing.T) {
	h := newTestHandler(make([]int, 1000)...)
	for i, b := range h.viewed() {
		b.storeWeight(1)
		switch i % 4 {
		case 0:
			b.flags.Store(flagDown)
		case 1:
			b.active.Store(50)
		}
	}
	idle := 0
	for range 10000 {
		var tried triedSet
		i := h.pickNow(&tried)
		if i%4 == 0 {
			t.Fatalf("picked unavailable backend %d", i)
		}
		if h.viewed()[i].active.Add(-1) == 0 {
			idle++
		}
	}
	// a busy backend wins only when every sampled backend was busy or down
	if idle < 9000 {
		t.Fatalf("only %d of 10000 picks went to an idle backend", idle)
	}
}

func TestSampledPickFallsBackToTheFullScan(t *testing.T) {
	h := newTestHandler(make([]int, 500)...)
	for _, b := range h.viewed() {
		b.storeWeight(1)
		b.flags.Store(flagDown)
	}
	h.viewed()[321].flags.Store(0)
	for range 100 {
		var tried triedSet
		if i := h.pickNow(&tried); i != 321 {
			t.Fatalf("picked %d, want the only backend up, 321", i)
		}
		h.viewed()[321].active.Add(-1)
	}
}

// BenchmarkCountFloor is the floor under the parallel pick: only the two
// atomic adds every request makes to its backend's active count (one at the
// pick, one at the end), over 3 counters on their own cache lines, from
// every core at once. No pick over shared counts can be cheaper.
func BenchmarkCountFloor(b *testing.B) {
	var counts [3]struct {
		n atomic.Int64
		_ [56]byte
	}
	b.RunParallel(func(pb *testing.PB) {
		i := 0
		for pb.Next() {
			counts[i%3].n.Add(1)
			counts[i%3].n.Add(-1)
			i++
		}
	})
}

func TestPickUsesTheFirstPriorityGroupThatCanTakeTraffic(t *testing.T) {
	h := newDiscoveredTestHandler(2, 2)
	v := h.lease.view.Load()
	if len(v.groups) != 2 || v.groups[0] != 2 || v.groups[1] != 4 {
		t.Fatalf("groups %v, want [2 4]", v.groups)
	}
	for range 20 {
		var tried triedSet
		if i := h.pickNow(&tried); i > 1 {
			t.Fatalf("picked %d from the backup group while the first is up", i)
		} else {
			v.backends[i].active.Add(-1)
		}
	}
	// a try that failed on both of the first group goes to the backup
	var tried triedSet
	tried.add(0)
	tried.add(1)
	if i := h.pickNow(&tried); i < 2 {
		t.Fatalf("picked %d, want the backup group after the first was tried", i)
	}
	v.backends[0].flags.Store(flagDown)
	v.backends[1].flags.Store(flagLeaving)
	var fresh triedSet
	if i := h.pickNow(&fresh); i < 2 {
		t.Fatalf("picked %d from a group that is down or leaving", i)
	}
}

// storeWeight sets a test backend's weight as the picks read it, with no
// learned weight.
func (b *Backend) storeWeight(w int64) {
	b.weight.Store(w)
	b.scaled.Store(w * weightScale)
}
