package caddyfile_test

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/lbpool/lbpool/internal/lbtest"
)

// answering503 starts n backends that answer every request 503 while their
// health checks pass, after a millisecond's work (a shedding backend still
// takes some time to answer).
func answering503(t *testing.T, n int) []*lbtest.Backend {
	bs := make([]*lbtest.Backend, n)
	for i := range bs {
		bs[i] = lbtest.NewBackend(t, fmt.Sprintf("b%d", i), func(w http.ResponseWriter, r *http.Request) {
			time.Sleep(time.Millisecond) // the backend's work, not a wait of the test's
			w.WriteHeader(http.StatusServiceUnavailable)
		})
	}
	return bs
}

func backendRequests(bs []*lbtest.Backend) int64 {
	var n int64
	for _, b := range bs {
		n += b.Requests.Load()
	}
	return n
}

// storm sends GETs from 16 clients for d and returns client requests,
// backend requests and the pool's budget refusals in that time.
func storm(t *testing.T, c *lbtest.Caddy, bs []*lbtest.Backend, d time.Duration) (sent, backend int64, refused uint64) {
	before, pool := backendRequests(bs), poolStats(t, c)
	end := time.Now().Add(d)
	sent, _ = c.Traffic(16, 1_000_000, "/", func() bool { return time.Now().After(end) })
	return sent, backendRequests(bs) - before, poolStats(t, c).RetryBudgetExhaustedTotal - pool.RetryBudgetExhaustedTotal
}

func TestRetryBudgetCapsAStorm(t *testing.T) {
	c := lbtest.Start(t)
	bs := answering503(t, 4)
	match := "lb_retry_match `{rp.status_code} == 503`"

	c.Load(t, site(c, match+"\n\t\tretry_budget off", bs...))
	offSent, offBackend, _ := storm(t, c, bs, 5*time.Second)

	c.Load(t, site(c, match, bs...)) // the default budget: 20% min 3
	sent, backend, refused := storm(t, c, bs, 5*time.Second)

	off := float64(offBackend) / float64(offSent)
	on := float64(backend) / float64(sent)
	t.Logf("backend requests per client request: %.2f without the budget (%d/%d), %.2f with it (%d/%d); %d retries refused",
		off, offBackend, offSent, on, backend, sent, refused)
	if on > 1.35 {
		t.Errorf("with the budget: %.2f backend requests per client request, want at most 1.35", on)
	}
	if refused == 0 {
		t.Error("retry_budget_exhausted_total did not grow")
	}
	if off < 3 {
		t.Errorf("without the budget: %.2f backend requests per client request, want about 4", off)
	}
}

// restartRun sends GETs from 4 clients while b closes its listener and
// opens it again 1.5s later, until 20 requests after the restart were
// answered, and returns the failures and the longest answer.
func restartRun(t *testing.T, c *lbtest.Caddy, b *lbtest.Backend) (sent, failed int64, longest time.Duration) {
	t.Helper()
	var restarted, after atomic.Int64
	var mu sync.Mutex
	b.Close()
	up := make(chan struct{})
	time.AfterFunc(1500*time.Millisecond, func() { b.Restart(t); restarted.Store(1); close(up) })
	defer func() { <-up }() // the backend is back however the run ended
	var wg sync.WaitGroup
	var nSent, nFailed atomic.Int64
	deadline := time.Now().Add(20 * time.Second)
	for range 4 {
		wg.Go(func() {
			for after.Load() < 20 && time.Now().Before(deadline) && nSent.Add(1) < 1_000_000 {
				start := time.Now()
				code := getStatus(c, "/")
				took := time.Since(start)
				mu.Lock()
				longest = max(longest, took)
				mu.Unlock()
				if code != http.StatusOK {
					nFailed.Add(1)
				}
				if restarted.Load() == 1 {
					after.Add(1)
				}
			}
		})
	}
	wg.Wait()
	return nSent.Load(), nFailed.Load(), longest
}

func TestTryDurationRidesOutARestart(t *testing.T) {
	c := lbtest.Start(t)
	b := lbtest.NewBackend(t, "app", nil)

	c.Load(t, site(c, "", b))
	waitAlive(t, c, b)
	offSent, offFailed, _ := restartRun(t, c, b)
	waitAlive(t, c, b)

	c.Load(t, site(c, "lb_try_duration 5s", b))
	waitAlive(t, c, b)
	sent, failed, longest := restartRun(t, c, b)
	t.Logf("a restart of 1.5s: without lb_try_duration %d of %d requests failed; with lb_try_duration 5s %d of %d, the longest took %v",
		offFailed, offSent, failed, sent, longest.Round(time.Millisecond))
	if failed > 0 {
		t.Errorf("with lb_try_duration 5s: %d of %d requests failed", failed, sent)
	}
	if longest > 3*time.Second {
		t.Errorf("with lb_try_duration 5s: a request took %v, want at most 3s", longest)
	}
	if offFailed == 0 {
		t.Error("without lb_try_duration no request failed: the run shows nothing")
	}
}

func waitAlive(t *testing.T, c *lbtest.Caddy, bs ...*lbtest.Backend) {
	t.Helper()
	for _, b := range bs {
		lbtest.Eventually(t, 10*time.Second, b.Name+" up", func() bool { return c.Backend(t, "web", b.URL()).Alive })
	}
}

// getStatus GETs path and returns the status, 0 when the request failed.
func getStatus(c *lbtest.Caddy, path string) int {
	resp, err := c.Client().Get(c.URL(path))
	if err != nil {
		return 0
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, resp.Body)
	return resp.StatusCode
}

func TestRetryOn503HidesABackendsOccasional503s(t *testing.T) {
	c := lbtest.Start(t)
	var n atomic.Int64
	flaky := lbtest.NewBackend(t, "flaky", func(w http.ResponseWriter, r *http.Request) {
		if n.Add(1)%20 == 0 { // 5% of its requests
			w.WriteHeader(http.StatusServiceUnavailable)
			return
		}
		_, _ = io.WriteString(w, "flaky")
	})
	bs := []*lbtest.Backend{flaky, lbtest.NewBackend(t, "b1", nil), lbtest.NewBackend(t, "b2", nil), lbtest.NewBackend(t, "b3", nil)}
	c.Load(t, site(c, "lb_retry_match `{rp.status_code} == 503`", bs...))
	waitAlive(t, c, bs...)
	sent, failed := c.Traffic(8, 8000, "/", nil)
	t.Logf("%d of %d requests failed; the flaky backend answered 503 %d times", failed, sent, n.Load()/20)
	if n.Load() < 400 {
		t.Fatalf("the flaky backend got %d requests: too few to answer 503 at all often", n.Load())
	}
	if float64(failed) > 0.001*float64(sent) {
		t.Errorf("%d of %d requests failed, want at most 0.1%%", failed, sent)
	}
}

func TestTryDurationWaiterLeavesWithItsClient(t *testing.T) {
	c := lbtest.Start(t)
	b := lbtest.NewBackend(t, "app", nil)
	c.Load(t, site(c, "lb_try_duration 30s\n\t\tqueue_size 1", b))
	waitAlive(t, c, b)
	b.Close() // the first try finds it gone, and the request waits

	ctx, cancel := context.WithCancel(context.Background())
	first := sendGet(ctx, c, "/")
	lbtest.Eventually(t, 5*time.Second, "the request waiting", func() bool { return poolStats(t, c).QueueDepth == 1 })
	// queue_size bounds the waiters: one more gets 503 at once
	if a := <-sendGet(context.Background(), c, "/"); a.status != http.StatusServiceUnavailable {
		t.Errorf("with the queue full: status %d, want 503", a.status)
	}
	cancel()
	<-first
	lbtest.Eventually(t, 5*time.Second, "the waiter gone with its client", func() bool { return poolStats(t, c).QueueDepth == 0 })
}
