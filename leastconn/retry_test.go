package leastconn

import (
	"fmt"
	"slices"
	"testing"
	"time"
)

// withBackups is newTestHandler (weights 1) with backends listed as static
// in a spec, the backups marked, and a source of DNS members of priority 0
// and 1 when srv is set.
func withBackups(n int, backups []int, srv bool) *Handler {
	p := &Pool{name: "test"}
	spec := &poolSpec{name: "test"}
	h := &Handler{lease: &lease{pool: p, spec: spec}}
	for i := range n {
		a := backendAddr{key: fmt.Sprint(i), display: fmt.Sprint(i), weight: 1, backup: slices.Contains(backups, i)}
		spec.backends = append(spec.backends, a)
		h.lease.backends = append(h.lease.backends, newBackend(p, a))
	}
	if srv {
		src := &source{pool: p}
		for prio := range 2 {
			key := fmt.Sprintf("srv%d", prio)
			src.members = append(src.members, member{b: newBackend(p, backendAddr{key: key, display: key, weight: 1}), priority: prio})
		}
		h.lease.sources = []*source{src}
	}
	h.lease.view.Store(h.lease.buildView())
	return h
}

func names(bs []*Backend) []string {
	var out []string
	for _, b := range bs {
		out = append(out, b.addr.display)
	}
	return out
}

func TestBackupIsAGroupAfterEveryOther(t *testing.T) {
	for _, tc := range []struct {
		name    string
		h       *Handler
		members []string
		groups  []int
	}{
		{"static", withBackups(3, []int{1}, false), []string{"0", "2", "1"}, []int{2, 3}},
		{"no backup", withBackups(2, nil, false), []string{"0", "1"}, []int{2}},
		{"with SRV priorities", withBackups(2, []int{0}, true), []string{"1", "srv0", "srv1", "0"}, []int{2, 3, 4}},
	} {
		v := tc.h.lease.view.Load()
		if got := names(v.backends); !slices.Equal(got, tc.members) || !slices.Equal(v.groups, tc.groups) {
			t.Errorf("%s: members %v groups %v, want %v %v", tc.name, got, v.groups, tc.members, tc.groups)
		}
	}

	h := withBackups(3, []int{2}, false)
	v := h.lease.view.Load()
	var tried triedSet
	for range 10 {
		i := h.lease.pick(v, &tried)
		if v.backends[i].addr.display == "2" {
			t.Fatal("the backup was picked while both primaries could take the request")
		}
		v.backends[i].release()
	}
	v.backends[0].setFlag(flagDown)
	v.backends[1].setFlag(flagEjected)
	if i := h.lease.pick(v, &tried); i < 0 || v.backends[i].addr.display != "2" {
		t.Fatalf("no primary usable: picked %d, want the backup", i)
	}
}

func TestRetryBudgetLimitsRetriesInFlight(t *testing.T) {
	h := newTestHandler(1, 1, 1, 1)
	h.budget = budget{percent: 20, min: 3}
	v := h.lease.view.Load()
	for _, b := range v.backends {
		b.active.Store(5) // 20 requests in flight: 20% is 4
	}
	runs := make([]retryRun, 6)
	granted := 0
	for i := range runs {
		runs[i].v = v
		if h.acquire(&runs[i]) {
			granted++
		}
	}
	p := h.lease.pool
	if granted != 4 || p.retrying.Load() != 4 || p.budgetExhausted.Load() != 2 || p.retriesTotal.Load() != 4 {
		t.Fatalf("granted %d, in flight %d, refused %d, started %d; want 4, 4, 2, 4",
			granted, p.retrying.Load(), p.budgetExhausted.Load(), p.retriesTotal.Load())
	}
	// a request that retried holds its slots until it ends
	for i := range runs {
		h.endRetries(&runs[i])
	}
	if n := p.retrying.Load(); n != 0 {
		t.Fatalf("%d retries in flight after every request ended", n)
	}
	for _, b := range v.backends {
		b.active.Store(0) // idle: the minimum holds
	}
	granted = 0
	for i := range runs {
		if h.acquire(&runs[i]) {
			granted++
		}
	}
	if granted != 3 {
		t.Fatalf("idle pool: %d retries granted, want the minimum, 3", granted)
	}
	h.budget.off = true
	if !h.acquire(&runs[5]) {
		t.Fatal("retry_budget off refused a retry")
	}
}

func TestNextStopsAtTheDeadline(t *testing.T) {
	h := newTestHandler(1, 1)
	h.budget = budget{percent: 20, min: 0}
	h.tryInterval = time.Millisecond
	v := h.lease.view.Load()
	rr := retryRun{v: v, left: -1, deadline: time.Now().Add(30 * time.Millisecond)}
	start := time.Now()
	if h.next(t.Context(), &rr) {
		t.Fatal("a budget of 0 granted a retry")
	}
	if took := time.Since(start); took < 30*time.Millisecond || took > 5*time.Second {
		t.Fatalf("next gave up after %v, want at the deadline (30ms)", took)
	}
}
