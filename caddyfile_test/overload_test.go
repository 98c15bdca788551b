package caddyfile_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"runtime/pprof"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/lbpool/lbpool/internal/lbtest"
	"github.com/lbpool/lbpool/leastconn"
)

// gatedBackend holds every request until the test lets one go, and
// measures how many it holds at once and the order they arrived in.
type gatedBackend struct {
	*lbtest.Backend
	gate     chan struct{}
	held     atomic.Int64
	maxHeld  atomic.Int64
	mu       sync.Mutex
	arrivals []string
}

func newGatedBackend(t *testing.T, name string) *gatedBackend {
	g := &gatedBackend{gate: make(chan struct{}, 100)}
	g.Backend = lbtest.NewBackend(t, name, func(w http.ResponseWriter, r *http.Request) {
		n := g.held.Add(1)
		for m := g.maxHeld.Load(); n > m && !g.maxHeld.CompareAndSwap(m, n); m = g.maxHeld.Load() {
		}
		g.mu.Lock()
		g.arrivals = append(g.arrivals, r.URL.Query().Get("n"))
		g.mu.Unlock()
		select {
		case <-g.gate:
		case <-r.Context().Done():
		}
		g.held.Add(-1)
		fmt.Fprint(w, name)
	})
	t.Cleanup(func() { close(g.gate) })
	return g
}

func (g *gatedBackend) arrived() int {
	g.mu.Lock()
	defer g.mu.Unlock()
	return len(g.arrivals)
}

func poolStats(t *testing.T, c *lbtest.Caddy) leastconn.PoolStats {
	t.Helper()
	return namedPoolStats(t, c, "web")
}

// namedPoolStats reads one pool's entry of /lbpool/pools.
func namedPoolStats(t *testing.T, c *lbtest.Caddy, name string) leastconn.PoolStats {
	t.Helper()
	code, body := c.Admin(t, http.MethodGet, "/lbpool/pools", "")
	var pools []leastconn.PoolStats
	if code != 200 || json.Unmarshal(body, &pools) != nil {
		t.Fatalf("GET /lbpool/pools: %d %s", code, body)
	}
	for _, p := range pools {
		if p.Pool == name {
			return p
		}
	}
	t.Fatalf("pool %s not in %s", name, body)
	return leastconn.PoolStats{}
}

type answer struct {
	status     int
	retryAfter string
	took       time.Duration
}

// sendGet GETs path in the background; the answer arrives on the channel.
func sendGet(ctx context.Context, c *lbtest.Caddy, path string) <-chan answer {
	ch := make(chan answer, 1)
	go func() {
		start := time.Now()
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, c.URL(path), nil)
		resp, err := c.Client().Do(req)
		if err != nil {
			ch <- answer{took: time.Since(start)}
			return
		}
		resp.Body.Close()
		ch <- answer{resp.StatusCode, resp.Header.Get("Retry-After"), time.Since(start)}
	}()
	return ch
}

// noQueuedGoroutine fails when a goroutine still waits in the queue.
func noQueuedGoroutine(t *testing.T) {
	t.Helper()
	lbtest.Eventually(t, 5*time.Second, "no goroutine waiting in the queue", func() bool {
		var sb strings.Builder
		_ = pprof.Lookup("goroutine").WriteTo(&sb, 1)
		return !strings.Contains(sb.String(), "leastconn.(*Handler).wait")
	})
}

func TestMaxConnsQueuesInFIFOOrderAndNeverExceedsTheCap(t *testing.T) {
	c := lbtest.Start(t)
	b := newGatedBackend(t, "b")
	c.Load(t, site(c, "max_conns 2\n\t\tqueue_timeout 30s", b.Backend))
	const n = 12
	answers := make([]<-chan answer, n)
	for i := range n {
		answers[i] = sendGet(context.Background(), c, fmt.Sprintf("/?n=%d", i))
		if i < 2 {
			lbtest.Eventually(t, 5*time.Second, "the request at the backend", func() bool { return b.arrived() == i+1 })
		} else {
			lbtest.Eventually(t, 5*time.Second, "the request in the queue", func() bool { return poolStats(t, c).QueueDepth == int64(i-1) })
		}
	}
	for i := 2; i < n; i++ { // one slot at a time: arrivals show the order of the hand-offs
		b.gate <- struct{}{}
		lbtest.Eventually(t, 5*time.Second, "the next queued request at the backend", func() bool { return b.arrived() == i+1 })
	}
	b.gate <- struct{}{}
	b.gate <- struct{}{}
	for i, ch := range answers {
		a := <-ch
		if a.status != 200 {
			t.Fatalf("request %d: status %d", i, a.status)
		}
		t.Logf("request %d waited and was served in %v", i, a.took.Round(time.Millisecond))
	}
	b.mu.Lock()
	got := strings.Join(b.arrivals, ",")
	b.mu.Unlock()
	if want := "0,1,2,3,4,5,6,7,8,9,10,11"; got != want && got != "1,0,2,3,4,5,6,7,8,9,10,11" {
		t.Fatalf("served in order %s, want %s (FIFO)", got, want)
	}
	if m := b.maxHeld.Load(); m > 2 {
		t.Fatalf("the backend held %d requests at once; max_conns is 2", m)
	}
	lbtest.Eventually(t, 5*time.Second, "active connections back to 0", func() bool {
		return c.Backend(t, "web", b.URL()).ActiveConnections == 0
	})
	if p := poolStats(t, c); p.QueueDepth != 0 || p.QueuedTotal < n-2 { // at least: counters live on across tests
		t.Fatalf("pool stats %+v: want depth 0 and at least %d queued", p, n-2)
	}
	if s := c.Backend(t, "web", b.URL()); s.MaxConns != 2 {
		t.Fatalf("stats max_conns %d, want 2", s.MaxConns)
	}
	noQueuedGoroutine(t)
}

// oneSlotTaken loads a pool of one gated backend with max_conns 1 and the
// extra options, and sends a first request that the backend holds.
func oneSlotTaken(t *testing.T, extra string) (*lbtest.Caddy, *gatedBackend, <-chan answer) {
	t.Helper()
	c := lbtest.Start(t)
	b := newGatedBackend(t, "b")
	c.Load(t, site(c, "max_conns 1"+extra, b.Backend))
	first := sendGet(context.Background(), c, "/?n=0")
	lbtest.Eventually(t, 5*time.Second, "the first request at the backend", func() bool { return b.arrived() == 1 })
	return c, b, first
}

func TestQueueTimeoutAnswers503WithRetryAfter(t *testing.T) {
	c, b, first := oneSlotTaken(t, "\n\t\tqueue_timeout 300ms")
	before := poolStats(t, c) // the pool's counters live on across tests
	a := <-sendGet(context.Background(), c, "/?n=1")
	if a.status != http.StatusServiceUnavailable || a.retryAfter == "" {
		t.Fatalf("past queue_timeout: status %d, Retry-After %q; want 503 with Retry-After", a.status, a.retryAfter)
	}
	t.Logf("queue_timeout 300ms: 503 after %v", a.took.Round(time.Millisecond))
	if p := poolStats(t, c); p.QueueTimeoutsTotal != before.QueueTimeoutsTotal+1 || p.QueueDepth != 0 {
		t.Fatalf("pool stats %+v: want one timeout, depth 0", p)
	}
	b.gate <- struct{}{}
	if a := <-first; a.status != 200 {
		t.Fatalf("the held request: %d", a.status)
	}
	if m := b.maxHeld.Load(); m > 1 || b.arrived() != 1 {
		t.Fatalf("the backend held %d at once and saw %d requests; want 1 and 1", m, b.arrived())
	}
	noQueuedGoroutine(t)
}

func TestClientCancellingWhileQueuedLeavesTheQueue(t *testing.T) {
	c, b, first := oneSlotTaken(t, "\n\t\tqueue_size 1\n\t\tqueue_timeout 30s")
	ctx, cancel := context.WithCancel(context.Background())
	gone := sendGet(ctx, c, "/?n=gone")
	lbtest.Eventually(t, 5*time.Second, "a queued request", func() bool { return poolStats(t, c).QueueDepth == 1 })
	cancel()
	<-gone
	lbtest.Eventually(t, 5*time.Second, "the cancelled request out of the queue", func() bool { return poolStats(t, c).QueueDepth == 0 })
	noQueuedGoroutine(t)
	// its place is free: with queue_size 1 the next one queues and gets the slot
	next := sendGet(context.Background(), c, "/?n=next")
	lbtest.Eventually(t, 5*time.Second, "the next request queued", func() bool { return poolStats(t, c).QueueDepth == 1 })
	b.gate <- struct{}{}
	b.gate <- struct{}{}
	if a, n := <-first, <-next; a.status != 200 || n.status != 200 {
		t.Fatalf("statuses %d and %d, want 200", a.status, n.status)
	}
	if got := strings.Join(b.arrivals, ","); got != "0,next" {
		t.Fatalf("backend saw %s, want 0,next (the cancelled request never reached it)", got)
	}
	lbtest.Eventually(t, 5*time.Second, "active connections back to 0", func() bool {
		return c.Backend(t, "web", b.URL()).ActiveConnections == 0
	})
}

func TestFullQueueAnswers503AtOnce(t *testing.T) {
	c, b, first := oneSlotTaken(t, "\n\t\tqueue_size 1\n\t\tqueue_timeout 30s")
	queued := sendGet(context.Background(), c, "/?n=1")
	lbtest.Eventually(t, 5*time.Second, "a queued request", func() bool { return poolStats(t, c).QueueDepth == 1 })
	before := poolStats(t, c) // the pool's counters live on across tests
	// queue_timeout is 30s: an answer before the test's own bound shows it did not wait
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	a := <-sendGet(ctx, c, "/?n=2")
	if a.status != http.StatusServiceUnavailable || a.retryAfter == "" {
		t.Fatalf("over queue_size: status %d, Retry-After %q; want 503 with Retry-After", a.status, a.retryAfter)
	}
	if p := poolStats(t, c); p.QueueTimeoutsTotal != before.QueueTimeoutsTotal || p.QueuedTotal != before.QueuedTotal || p.QueueDepth != 1 {
		t.Fatalf("pool stats %+v: the refused request must not have queued", p)
	}
	b.gate <- struct{}{}
	b.gate <- struct{}{}
	if x, y := <-first, <-queued; x.status != 200 || y.status != 200 {
		t.Fatalf("statuses %d and %d, want 200", x.status, y.status)
	}
}

// ejectionCase drives sequential requests until bad is ejected, checks it
// gets nothing while out, and that it comes back.
func TestEjection(t *testing.T) {
	tests := []struct {
		name, options, reason string
		bad                   http.HandlerFunc
	}{
		{"5xx", "fail_duration 1s\n\t\tmax_fails 3\n\t\tunhealthy_status 5xx", "5xx: 500",
			func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(500) }},
		{"latency", "fail_duration 1s\n\t\tmax_fails 2\n\t\tunhealthy_latency 100ms", "latency",
			func(w http.ResponseWriter, r *http.Request) { time.Sleep(150 * time.Millisecond) }},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c := lbtest.Start(t)
			good := lbtest.NewBackend(t, "good", nil)
			bad := lbtest.NewBackend(t, "bad", tc.bad)
			c.Load(t, site(c, "health_interval 50ms\n\t\t"+tc.options, good, bad))
			var ejectedAt time.Time
			for i := 0; i < 100 && ejectedAt.IsZero(); i++ {
				c.Get(t, c.URL("/"))
				if c.Backend(t, "web", bad.URL()).Ejected {
					ejectedAt = time.Now()
				}
			}
			if ejectedAt.IsZero() {
				t.Fatal("never ejected")
			}
			s := c.Backend(t, "web", bad.URL())
			if !strings.HasPrefix(s.EjectedReason, tc.reason) || !s.Alive || s.EjectionsTotal != 1 {
				t.Fatalf("stats %+v: want ejected for %q, still alive (checks pass), one ejection", s, tc.reason)
			}
			seen := bad.Requests.Load()
			for range 10 {
				if code, _ := c.Get(t, c.URL("/")); code != 200 {
					t.Fatalf("status %d while the bad backend is out", code)
				}
			}
			if got := bad.Requests.Load(); got != seen && c.Backend(t, "web", bad.URL()).Ejected {
				t.Fatalf("an ejected backend got %d requests", got-seen)
			}
			lbtest.Eventually(t, 10*time.Second, "the backend back", func() bool { return !c.Backend(t, "web", bad.URL()).Ejected })
			t.Logf("fail_duration 1s: ejected at most %v", time.Since(ejectedAt).Round(10*time.Millisecond))
			lbtest.Eventually(t, 10*time.Second, "requests to the returned backend", func() bool {
				c.Get(t, c.URL("/"))
				return bad.Requests.Load() > seen
			})
			if n := len(c.Logs(`"ejection":"ejected"`, tc.reason)); n != 1 {
				t.Fatalf("%d ejection log entries with the reason, want 1", n)
			}
			if n := len(c.Logs(`"ejection":"returned"`)); n < 1 {
				t.Fatal("no log entry for the return")
			}
		})
	}
}

func TestMaxEjectedPercentKeepsTheRestIn(t *testing.T) {
	c := lbtest.Start(t)
	fail := func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(503) }
	good := lbtest.NewBackend(t, "good", nil)
	bad1 := lbtest.NewBackend(t, "bad1", fail)
	bad2 := lbtest.NewBackend(t, "bad2", fail)
	c.Load(t, site(c, "fail_duration 30s\n\t\tunhealthy_status 503\n\t\tmax_ejected_percent 50", good, bad1, bad2))
	for range 30 {
		c.Get(t, c.URL("/"))
	}
	ejected := 0
	for _, s := range c.Stats(t, "web") {
		if s.Ejected {
			ejected++
		}
	}
	if ejected != 1 || bad1.Requests.Load() == 0 || bad2.Requests.Load() == 0 {
		t.Fatalf("%d of 3 ejected (bad1 %d requests, bad2 %d); want exactly 1 with max_ejected_percent 50",
			ejected, bad1.Requests.Load(), bad2.Requests.Load())
	}
	if n := len(c.Logs("kept in: max_ejected_percent")); n != 1 {
		t.Fatalf("%d kept-in log entries, want 1", n)
	}
}
