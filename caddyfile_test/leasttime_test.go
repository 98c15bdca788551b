package caddyfile_test

import (
	"fmt"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/lbpool/lbpool/internal/lbtest"
)

// slowable is a backend that answers 40 ms late while slow is set.
func slowable(t *testing.T, name string, slow *atomic.Bool) *lbtest.Backend {
	return lbtest.NewBackend(t, name, func(w http.ResponseWriter, r *http.Request) {
		if slow.Load() {
			time.Sleep(40 * time.Millisecond)
		}
	})
}

// shareOf counts the requests the backends get while fn runs and returns
// the first backend's share of them.
func shareOf(fn func(), backends ...*lbtest.Backend) (float64, int64) {
	before := make([]int64, len(backends))
	for i, b := range backends {
		before[i] = b.Requests.Load()
	}
	fn()
	var total int64
	for i, b := range backends {
		total += b.Requests.Load() - before[i]
	}
	if total == 0 {
		return 0, 0
	}
	return float64(backends[0].Requests.Load()-before[0]) / float64(total), total
}

// pacedUntil is a Traffic stop function: each client pauses 3 ms before its
// next request, until deadline. 16 clients in a closed loop with no pause
// keep both cores busy under -race by themselves, and a saturated machine
// makes every backend look slow, the fast ones most of all.
func pacedUntil(deadline time.Time) func() bool {
	return func() bool {
		time.Sleep(3 * time.Millisecond)
		return time.Now().After(deadline)
	}
}

// Both policies are set up at once in one Caddy, each over its own three
// backends (one 40 ms slow), and take turns of 250 ms with 16 paced clients, so
// both see the same machine: a busy machine makes the fast backends slower
// too, and the comparison stays fair.
func TestLeastTimeGivesASlowBackendLessThanAQuarterOfLeastConnsShare(t *testing.T) {
	c := lbtest.Start(t)
	var slow atomic.Bool
	slow.Store(true)
	type pool struct {
		name, policy string
		backends     []*lbtest.Backend
		slow, total  int64
		share        float64
	}
	pools := []*pool{{name: "conn", policy: "least_conn"}, {name: "time", policy: "least_time"}}
	var routes strings.Builder
	for _, p := range pools {
		p.backends = []*lbtest.Backend{
			slowable(t, p.name+"-slow", &slow),
			lbtest.NewBackend(t, p.name+"-fast1", nil),
			lbtest.NewBackend(t, p.name+"-fast2", nil),
		}
		var addrs []string
		for _, b := range p.backends {
			addrs = append(addrs, b.Addr())
		}
		fmt.Fprintf(&routes, "\thandle /%s {\n\t\tlbpool %s {\n\t\t\tname %s\n\t\t\thealth_uri /health\n\t\t\tlb_policy %s\n\t\t}\n\t}\n",
			p.name, strings.Join(addrs, " "), p.name, p.policy)
	}
	c.Load(t, fmt.Sprintf(":%d {\n%s}", c.HTTPPort, routes.String()))
	// two turns each of warm-up: every policy spreads its first requests
	// before it knows anything, and the test is about what it does next
	for turn := range 16 {
		p := pools[turn%2]
		deadline := time.Now().Add(250 * time.Millisecond)
		share, total := shareOf(func() {
			if _, failed := c.Traffic(16, 1<<30, "/"+p.name, pacedUntil(deadline)); failed != 0 {
				t.Fatalf("%s: %d requests failed", p.name, failed)
			}
		}, p.backends...)
		if turn >= 4 {
			p.slow += int64(share*float64(total) + 0.5)
			p.total += total
		}
	}
	for _, p := range pools {
		p.share = float64(p.slow) / float64(max(p.total, 1))
	}
	conn, lt := pools[0], pools[1]
	t.Logf("the 40 ms backend's share: least_conn %.2f%% of %d, least_time %.2f%% of %d",
		conn.share*100, conn.total, lt.share*100, lt.total)
	if conn.share == 0 || lt.share >= conn.share/4 {
		t.Fatalf("least_time gave the slow backend %.2f%%, want under a quarter of least_conn's %.2f%%",
			lt.share*100, conn.share*100)
	}
}

func TestLeastTimeGivesARecoveredBackendItsShareBack(t *testing.T) {
	c := lbtest.Start(t)
	var slow atomic.Bool
	slow.Store(true)
	flip := slowable(t, "flip", &slow)
	fast1 := lbtest.NewBackend(t, "fast1", nil)
	fast2 := lbtest.NewBackend(t, "fast2", nil)
	c.Load(t, site(c, "lb_policy least_time", flip, fast1, fast2))

	var stop atomic.Bool
	done := make(chan int64)
	go func() {
		_, failed := c.Traffic(16, 1<<30, "/", stop.Load)
		done <- failed
	}()
	defer func() {
		stop.Store(true)
		if failed := <-done; failed != 0 {
			t.Errorf("%d requests failed", failed)
		}
	}()

	// windowShare is the flip backend's share since the previous call,
	// once at least 300 ms have passed
	backends := []*lbtest.Backend{flip, fast1, fast2}
	var last [3]int64
	var lastAt time.Time
	windowShare := func() (float64, bool) {
		if time.Since(lastAt) < 300*time.Millisecond {
			return 0, false
		}
		var now [3]int64
		var total int64
		for i, b := range backends {
			now[i] = b.Requests.Load()
			total += now[i] - last[i]
		}
		share := float64(now[0]-last[0]) / float64(max(total, 1))
		ok := !lastAt.IsZero() && total > 0
		last, lastAt = now, time.Now()
		return share, ok
	}
	var share float64
	lbtest.Eventually(t, 10*time.Second, "the slow backend's share under 5%", func() bool {
		s, ok := windowShare()
		share = s
		return ok && s < 0.05
	})
	t.Logf("slow: %.2f%%", share*100)
	slow.Store(false)
	recovered := time.Now()
	lbtest.Eventually(t, 15*time.Second, "the recovered backend's share back over 20%", func() bool {
		s, ok := windowShare()
		share = s
		return ok && s > 0.20
	})
	t.Logf("fast again: %.1f%% within %v", share*100, time.Since(recovered).Round(100*time.Millisecond))
}
