package caddyfile_test

import (
	"fmt"
	"net/http"
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
