package caddyfile_test

import (
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
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

// pacedUntil is a Traffic stop function: each client pauses 20 ms before its
// next request, until deadline. 16 clients in a closed loop with no pause
// keep both cores busy under -race by themselves, and a saturated machine
// makes every backend look slow, the fast ones most of all.
func pacedUntil(deadline time.Time) func() bool {
	return func() bool {
		time.Sleep(20 * time.Millisecond)
		return time.Now().After(deadline)
	}
}

// backgroundTraffic sends GETs from clients goroutines until the test ends
// (or the returned stop is called), and fails the test if any failed.
func backgroundTraffic(t *testing.T, c *lbtest.Caddy, clients int) (stop func()) {
	var halt atomic.Bool
	done := make(chan int64)
	go func() {
		_, failed := c.Traffic(clients, 1<<30, "/", halt.Load)
		done <- failed
	}()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			halt.Store(true)
			if failed := <-done; failed != 0 {
				t.Errorf("%d requests failed", failed)
			}
		})
	}
	t.Cleanup(stop)
	return stop
}

// Both policies are set up at once in one Caddy, each over its own three
// backends (one 40 ms slow), and take turns of 250 ms with 16 paced clients,
// so both see the same machine.
//
// The comparison means something only while the fast backends look fast: a
// machine so busy that lbpool measures them at more than a tenth of the slow
// one's time (the processes that answer share its cores with everything
// else) makes a 40 ms backend only a few times slower, and least_time then
// rightly gives it more. A miss on such a machine is measured again, up to
// three times in all; a miss while the fast backends looked fast fails.
func TestLeastTimeGivesASlowBackendLessThanAQuarterOfLeastConnsShare(t *testing.T) {
	c := lbtest.Start(t)
	var slow atomic.Bool
	slow.Store(true)
	type pool struct {
		name, policy string
		backends     []*lbtest.Backend
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
	for attempt := 1; ; attempt++ {
		var slowN, total [2]int64
		// the first two turns each warm up: every policy spreads its first
		// requests before it knows anything, and the test is about what it
		// does next
		for turn := range 16 {
			i := turn % 2
			p := pools[i]
			deadline := time.Now().Add(250 * time.Millisecond)
			share, n := shareOf(func() {
				if _, failed := c.Traffic(16, 1<<30, "/"+p.name, pacedUntil(deadline)); failed != 0 {
					t.Fatalf("%s: %d requests failed", p.name, failed)
				}
			}, p.backends...)
			if turn >= 4 {
				slowN[i] += int64(share*float64(n) + 0.5)
				total[i] += n
			}
		}
		connShare := float64(slowN[0]) / float64(max(total[0], 1))
		timeShare := float64(slowN[1]) / float64(max(total[1], 1))
		// how much faster than the slow backend lbpool saw the fast ones
		var slowest, fastest float64
		for _, b := range c.Stats(t, "time") {
			if b.URL == pools[1].backends[0].URL() {
				slowest = b.LatencyEWMAMS
			} else {
				fastest = max(fastest, b.LatencyEWMAMS)
			}
		}
		t.Logf("attempt %d: the 40 ms backend's share: least_conn %.2f%% of %d, least_time %.2f%% of %d; "+
			"time to headers: slow %.1f ms, fast up to %.1f ms",
			attempt, connShare*100, total[0], timeShare*100, total[1], slowest, fastest)
		switch {
		case connShare == 0:
			t.Fatal("least_conn gave the slow backend nothing: the test measures nothing")
		case timeShare < connShare/4:
			return
		case fastest*10 <= slowest:
			t.Fatalf("least_time gave the slow backend %.2f%%, want under a quarter of least_conn's %.2f%%",
				timeShare*100, connShare*100)
		case attempt == 3:
			t.Skipf("the machine was too busy three times over for the fast backends to look fast "+
				"(up to %.1f ms against %.1f ms): nothing measured", fastest, slowest)
		}
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

	backgroundTraffic(t, c, 16)

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

// With sticky sessions only new sessions are placed by least_time: a session
// that lives on a backend that turns slow stays there while it is up, and
// new sessions keep away from it.
func TestLeastTimePlacesOnlyNewSessionsWithSticky(t *testing.T) {
	c := lbtest.Start(t)
	var slow atomic.Bool
	named := func(name string) *lbtest.Backend {
		return lbtest.NewBackend(t, name, func(w http.ResponseWriter, r *http.Request) {
			if slow.Load() && name == "lagging" {
				time.Sleep(40 * time.Millisecond)
			}
			_, _ = io.WriteString(w, name)
		})
	}
	lagging, fast1, fast2 := named("lagging"), named("fast1"), named("fast2")
	c.Load(t, site(c, "lb_policy least_time\n\t\t"+stickyOpts, lagging, fast1, fast2))
	// a session that lands on the backend about to turn slow
	var pinned *session
	for range 50 {
		s := newSession(c, c.URL("/"))
		if body, _ := s.mustGet(t); body == "lagging" {
			pinned = s
			break
		}
	}
	if pinned == nil {
		t.Fatal("50 new sessions, none on the lagging backend")
	}
	slow.Store(true)
	// new sessions (no cookie) under load, while the pinned one keeps going
	stop := backgroundTraffic(t, c, 16)
	lbtest.Eventually(t, 10*time.Second, "new sessions under load", func() bool {
		return fast1.Requests.Load()+fast2.Requests.Load() > 300
	})
	share, total := shareOf(func() {
		for range 10 {
			if body, _ := pinned.mustGet(t); body != "lagging" {
				t.Errorf("the pinned session went to %s while its backend was up, slow as it was", body)
			}
		}
	}, lagging, fast1, fast2)
	stop()
	// 10 of the lagging backend's requests were the pinned session's
	newOnLagging := share*float64(total) - 10
	t.Logf("while the pinned session sent 10 requests, new sessions sent %d, %.0f of them to the slow backend",
		total-10, newOnLagging)
	if newOnLagging/float64(total-10) > 0.05 {
		t.Fatalf("new sessions sent %.1f%% to the slow backend, want least_time to keep them away",
			newOnLagging/float64(total-10)*100)
	}
}

// A member found through DNS joins a least_time pool at the pool's median:
// under load it takes its share at once, not starved for having no
// estimate yet.
func TestLeastTimeDiscoveredMemberTakesItsShare(t *testing.T) {
	c := lbtest.Start(t)
	d := lbtest.NewDNS(t)
	bs, port := lbtest.NewBackendsOnLoopback(t, 3, nil)
	d.SetA("app.lbtest", ips(bs[:2]...)...)
	c.Load(t, dnsSite(c, d, "app.lbtest", port, "lb_policy least_time"))
	lbtest.Eventually(t, 10*time.Second, "2 members up", func() bool { return allAlive(t, c, bs[:2]...) })
	backgroundTraffic(t, c, 8)
	lbtest.Eventually(t, 10*time.Second, "traffic", func() bool { return bs[0].Requests.Load() > 100 })
	d.SetA("app.lbtest", ips(bs...)...)
	lbtest.Eventually(t, 10*time.Second, "the new member serving", func() bool { return bs[2].Requests.Load() > 0 })
	joined := time.Now()
	var share float64
	lbtest.Eventually(t, 10*time.Second, "the new member's share over 20%", func() bool {
		var n int64
		share, n = shareOf(func() { time.Sleep(200 * time.Millisecond) }, bs[2], bs[0], bs[1])
		return n > 50 && share > 0.2
	})
	t.Logf("the new member took %.0f%% within %v of its first request", share*100, time.Since(joined).Round(10*time.Millisecond))
}
