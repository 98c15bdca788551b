package leastconn

import "testing"

// capped sets a cap no benchmark reaches on every backend of h.
func capped(h *Handler) *Handler {
	for _, b := range h.viewed() {
		b.setMaxConns(1 << 30)
	}
	return h
}

// The pick with max_conns set on every backend and none full, beside
// BenchmarkPick3 and BenchmarkPick16 without caps: within 10% of them.
func BenchmarkPickCapped3(b *testing.B) { benchmarkPick(b, capped(newTestHandler(make([]int, 3)...))) }
func BenchmarkPickCapped16(b *testing.B) {
	benchmarkPick(b, capped(newTestHandler(make([]int, 16)...)))
}

func TestPickSkipsAFullBackendAndNeverExceedsItsCap(t *testing.T) {
	for _, leastTime := range []bool{false, true} {
		h := capped(newTestHandler(1, 1))
		h.lease.leastTime = leastTime
		checkCapsHold(t, h)
	}
}

func checkCapsHold(t *testing.T, h *Handler) {
	t.Helper()
	h.viewed()[0].setMaxConns(1)
	h.viewed()[1].setMaxConns(2)
	for range 3 {
		var tried triedSet
		if i := h.pickNow(&tried); i < 0 {
			t.Fatal("no pick while room is left")
		}
	}
	var tried triedSet
	if i := h.pickNow(&tried); i >= 0 {
		t.Fatalf("picked %d with every backend full", i)
	}
	if a, b := h.viewed()[0].active.Load(), h.viewed()[1].active.Load(); a != 1 || b != 2 {
		t.Fatalf("active %d and %d, want 1 and 2 (the caps)", a, b)
	}
}
