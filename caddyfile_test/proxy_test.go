package caddyfile_test

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/lbpool/lbpool/internal/lbtest"
)

// site is the usual test site: one lbpool named web over the backends.
func site(c *lbtest.Caddy, extra string, backends ...*lbtest.Backend) string {
	return c.Site(extra, backends...)
}

// load runs n GETs from clients concurrent clients and returns the count of
// non-200 answers.
func load(t *testing.T, c *lbtest.Caddy, clients, n int, path string) int64 {
	t.Helper()
	_, failed := c.Traffic(clients, n, path, nil)
	return failed
}

func TestSlowBackendGetsWellUnderItsThird(t *testing.T) {
	c := lbtest.Start(t)
	fast1 := lbtest.NewBackend(t, "fast1", nil)
	fast2 := lbtest.NewBackend(t, "fast2", nil)
	// 60ms: well above what a fast backend takes even when the machine is
	// busy with other tests
	slow := lbtest.NewBackend(t, "slow", func(w http.ResponseWriter, r *http.Request) {
		time.Sleep(60 * time.Millisecond)
	})
	c.Load(t, site(c, "", fast1, slow, fast2))
	if failed := load(t, c, 16, 600, "/"); failed != 0 {
		t.Fatalf("%d requests failed", failed)
	}
	share := float64(slow.Requests.Load()) / 600
	if share > 0.15 {
		t.Fatalf("slow backend got %.0f%% of requests, want well under a third", share*100)
	}
	t.Logf("slow backend share %.1f%% (fast %d/%d)", share*100, fast1.Requests.Load(), fast2.Requests.Load())
}

func TestConcurrentLongRequestsSpreadEvenly(t *testing.T) {
	c := lbtest.Start(t)
	release := make(chan struct{})
	var inflight [3]atomic.Int64
	backends := make([]*lbtest.Backend, 3)
	for i := range backends {
		backends[i] = lbtest.NewBackend(t, fmt.Sprint(i), func(w http.ResponseWriter, r *http.Request) {
			inflight[i].Add(1)
			select { // a test that fails before it releases still ends
			case <-release:
			case <-r.Context().Done():
			}
		})
	}
	c.Load(t, site(c, "", backends...))
	// one at a time, each once the one before is in flight: concurrent
	// picks may both take the same backend (a pick reads the counts before
	// it adds its own), so only this order makes 3/3/3 exact
	var wg sync.WaitGroup
	for i := range 9 {
		wg.Go(func() { c.Get(t, c.URL("/long")) })
		lbtest.Eventually(t, 10*time.Second, fmt.Sprintf("%d requests in flight", i+1), func() bool {
			return inflight[0].Load()+inflight[1].Load()+inflight[2].Load() == int64(i+1)
		})
	}
	got := []int64{inflight[0].Load(), inflight[1].Load(), inflight[2].Load()}
	close(release)
	wg.Wait()
	if got[0] != 3 || got[1] != 3 || got[2] != 3 {
		t.Fatalf("9 long requests spread %v, want 3/3/3", got)
	}
	for _, s := range c.Stats(t, "web") {
		if s.ActiveConnections != 0 {
			t.Fatalf("%s still counts %d active connections", s.URL, s.ActiveConnections)
		}
	}
}

func TestBackendSeesClientHostAndForwardedHeaders(t *testing.T) {
	c := lbtest.Start(t)
	seen := make(chan http.Header, 1)
	hosts := make(chan string, 1)
	b := lbtest.NewBackend(t, "b", func(w http.ResponseWriter, r *http.Request) {
		hosts <- r.Host
		seen <- r.Header.Clone()
	})
	c.Load(t, site(c, "", b))
	req, _ := http.NewRequest(http.MethodGet, c.URL("/x"), nil)
	req.Host = "shop.example"
	req.Header.Set("X-Forwarded-For", "203.0.113.9") // untrusted: replaced
	req.Header.Set("Connection", "X-Hop")
	req.Header.Set("X-Hop", "must not pass")
	resp, err := c.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	h := <-seen
	if host := <-hosts; host != "shop.example" {
		t.Errorf("backend saw Host %q, want the client's shop.example", host)
	}
	for name, want := range map[string]string{
		"X-Forwarded-For":   "127.0.0.1",
		"X-Forwarded-Proto": "http",
		"X-Forwarded-Host":  "shop.example",
	} {
		if got := h.Get(name); got != want {
			t.Errorf("%s = %q, want %q", name, got, want)
		}
	}
	if h.Get("X-Hop") != "" {
		t.Error("a header named in Connection was forwarded")
	}
}

func TestWebsocketUpgradePassesThrough(t *testing.T) {
	c := lbtest.Start(t)
	b := echoWebsocket(t, "ws", nil)
	c.Load(t, site(c, "", b))

	conn, br := dialWebsocket(t, c)
	if !echoes(conn, br) {
		t.Fatal("the websocket does not echo a second line")
	}
	if s := c.Backend(t, "web", b.URL()); s.ActiveConnections != 1 {
		t.Fatalf("an open websocket counts %d active connections, want 1", s.ActiveConnections)
	}
	conn.Close()
	lbtest.Eventually(t, 5*time.Second, "the closed websocket to be released", func() bool {
		return c.Backend(t, "web", b.URL()).ActiveConnections == 0
	})
}

func TestServerSentEventsReachClientWhenFlushed(t *testing.T) {
	c := lbtest.Start(t)
	got1 := make(chan struct{})
	b := lbtest.NewBackend(t, "sse", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		w.Header().Set("Content-Length", "1000") // known length: must still stream
		w.WriteHeader(http.StatusOK)
		_, _ = io.WriteString(w, "data: one\n\n")
		http.NewResponseController(w).Flush()
		select { // the second event waits until the client has the first
		case <-got1:
		case <-time.After(10 * time.Second):
			return
		}
		_, _ = io.WriteString(w, "data: two\n\n")
	})
	c.Load(t, site(c, "", b))
	resp, err := c.Client().Get(c.URL("/events"))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	br := bufio.NewReader(resp.Body)
	done := make(chan string, 1)
	go func() {
		line, _ := br.ReadString('\n')
		done <- line
	}()
	select {
	case line := <-done:
		if line != "data: one\n" {
			t.Fatalf("first event %q", line)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the first event did not reach the client before the stream ended: not flushed")
	}
	close(got1)
}

func TestDeadBackendCostsNoFailedGET(t *testing.T) {
	c := lbtest.Start(t)
	a := lbtest.NewBackend(t, "a", nil)
	dead := lbtest.NewBackend(t, "dead", nil)
	b := lbtest.NewBackend(t, "b", nil)
	dead.Close()
	c.Load(t, site(c, "health_interval 1h", a, dead, b))
	if failed := load(t, c, 8, 300, "/"); failed != 0 {
		t.Fatalf("%d GETs failed with one dead backend", failed)
	}
	if s := c.Backend(t, "web", dead.URL()); s.Alive {
		t.Fatal("the dead backend is still shown alive")
	}
}

func TestEveryTryFailedGives502(t *testing.T) {
	c := lbtest.Start(t)
	var backends []*lbtest.Backend
	for i := range 3 {
		// healthy on /health, but every request is cut before an answer
		backends = append(backends, lbtest.NewBackend(t, fmt.Sprint(i), func(w http.ResponseWriter, r *http.Request) {
			conn, _, err := http.NewResponseController(w).Hijack()
			if err == nil {
				conn.Close()
			}
		}))
	}
	c.Load(t, site(c, "health_interval 1h", backends...))
	status, body := c.Get(t, c.URL("/"))
	if status != http.StatusBadGateway {
		t.Fatalf("status %d (%q), want 502", status, body)
	}
	for _, b := range backends {
		if n := b.Requests.Load(); n != 1 {
			t.Fatalf("backend %s got %d tries, want one try on each of the 3 backends", b.Name, n)
		}
		if s := c.Backend(t, "web", b.URL()); s.FailuresTotal != 1 {
			t.Fatalf("backend %s counts %d failures, want 1", b.Name, s.FailuresTotal)
		}
	}
}

func TestRetriesLimitTheTries(t *testing.T) {
	c := lbtest.Start(t)
	var cut []*lbtest.Backend
	for i := range 3 {
		cut = append(cut, lbtest.NewBackend(t, fmt.Sprint(i), func(w http.ResponseWriter, r *http.Request) {
			conn, _, err := http.NewResponseController(w).Hijack()
			if err == nil {
				conn.Close()
			}
		}))
	}
	c.Load(t, site(c, "health_interval 1h\n\t\tretries 1", cut...))
	if status, _ := c.Get(t, c.URL("/")); status != http.StatusBadGateway {
		t.Fatalf("status %d, want 502", status)
	}
	var tries int64
	for _, b := range cut {
		tries += b.Requests.Load()
	}
	if tries != 2 {
		t.Fatalf("retries 1 made %d tries, want 2", tries)
	}
}

func TestNonIdempotentRequestIsNotRetriedAfterConnecting(t *testing.T) {
	c := lbtest.Start(t)
	var cut []*lbtest.Backend
	for i := range 2 {
		cut = append(cut, lbtest.NewBackend(t, fmt.Sprint(i), func(w http.ResponseWriter, r *http.Request) {
			conn, _, err := http.NewResponseController(w).Hijack()
			if err == nil {
				conn.Close()
			}
		}))
	}
	c.Load(t, site(c, "health_interval 1h", cut...))
	resp, err := c.Client().Post(c.URL("/order"), "text/plain", strings.NewReader("pay 10"))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusBadGateway {
		t.Fatalf("status %d, want 502", resp.StatusCode)
	}
	if n := cut[0].Requests.Load() + cut[1].Requests.Load(); n != 1 {
		t.Fatalf("a POST that reached a backend was sent %d times, want once", n)
	}
}

func TestPOSTIsRetriedAfterDialError(t *testing.T) {
	c := lbtest.Start(t)
	dead := lbtest.NewBackend(t, "dead", nil)
	dead.Close()
	var body string
	ok := lbtest.NewBackend(t, "ok", func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		body = string(b)
	})
	c.Load(t, site(c, "health_interval 1h", dead, ok))
	for range 4 { // whichever comes first, the POST and its body arrive
		resp, err := c.Client().Post(c.URL("/order"), "text/plain", strings.NewReader("pay 10"))
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK || body != "pay 10" {
			t.Fatalf("status %d body %q, want 200 with the body", resp.StatusCode, body)
		}
	}
}

func TestNoBackendAvailableGives503WithRetryAfter(t *testing.T) {
	c := lbtest.Start(t)
	a := lbtest.NewBackend(t, "a", nil)
	b := lbtest.NewBackend(t, "b", nil)
	a.Health.Store(500)
	b.Health.Store(500)
	c.Load(t, site(c, "health_interval 1h", a, b))
	lbtest.Eventually(t, 5*time.Second, "both backends down", func() bool {
		for _, s := range c.Stats(t, "web") {
			if s.Alive {
				return false
			}
		}
		return true
	})
	get := func() (int, int, string) {
		t.Helper()
		resp, err := c.Client().Get(c.URL("/"))
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		after, err := strconv.Atoi(resp.Header.Get("Retry-After"))
		if err != nil {
			t.Fatalf("Retry-After %q: %v", resp.Header.Get("Retry-After"), err)
		}
		return resp.StatusCode, after, string(body)
	}
	// down backends are checked again after health_down_interval (1s),
	// doubling: the next check is seconds away, not the hour's interval
	status, after, body := get()
	if status != http.StatusServiceUnavailable || after < 1 || after > 8 || body == "" {
		t.Fatalf("both down: %d, Retry-After %d, body %q; want 503, the seconds to the next check (1-8) and a body", status, after, body)
	}
	// in maint, no check will bring them back: one health_interval
	for _, b := range []*lbtest.Backend{a, b} {
		if st, msg := c.Admin(t, http.MethodPost, "/lbpool/state", fmt.Sprintf(`{"pool":"web","backend":%q,"state":"maint"}`, b.URL())); st != 200 {
			t.Fatalf("maint: %d %s", st, msg)
		}
	}
	if status, after, _ := get(); status != http.StatusServiceUnavailable || after != 3600 {
		t.Fatalf("both in maint: %d, Retry-After %d; want 503 and 3600 (health_interval)", status, after)
	}
}

func TestWeightsAreRespectedUnderSteadyLoad(t *testing.T) {
	c := lbtest.Start(t)
	slowish := func(w http.ResponseWriter, r *http.Request) { time.Sleep(2 * time.Millisecond) }
	heavy := lbtest.NewBackend(t, "heavy", slowish)
	light := lbtest.NewBackend(t, "light", slowish)
	c.Load(t, site(c, "weight "+heavy.Addr()+" 3", heavy, light))
	if failed := load(t, c, 8, 1200, "/"); failed != 0 {
		t.Fatalf("%d requests failed", failed)
	}
	ratio := float64(heavy.Requests.Load()) / float64(light.Requests.Load())
	if ratio < 2.2 || ratio > 4 {
		t.Fatalf("weight 3 vs 1 gave %d:%d (%.2f), want about 3:1", heavy.Requests.Load(), light.Requests.Load(), ratio)
	}
	t.Logf("weight 3:1 gave %.2f:1", ratio)
}

func TestReloadUnderLoadKeepsCountersAndFailsNothing(t *testing.T) {
	c := lbtest.Start(t)
	a := lbtest.NewBackend(t, "a", nil)
	b := lbtest.NewBackend(t, "b", nil)
	c.Load(t, site(c, "", a, b))
	ctx, cancel := context.WithCancel(context.Background())
	var failed, sent, ok, resent atomic.Int64
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			for ctx.Err() == nil && sent.Add(1) < 20000 {
				n, err := lbtest.GetResending(c.Client(), c.URL("/"))
				resent.Add(int64(n))
				if err != nil {
					t.Log(err)
					failed.Add(1)
				} else {
					ok.Add(1)
				}
			}
		})
	}
	lbtest.Eventually(t, 10*time.Second, "traffic", func() bool { return a.Requests.Load() > 100 })
	var before uint64
	for _, s := range c.Stats(t, "web") {
		before += s.RequestsTotal
	}
	for i := range 20 {
		c.Load(t, site(c, fmt.Sprintf("health_timeout %ds", i+1), a, b))
	}
	cancel()
	wg.Wait()
	if failed.Load() != 0 {
		t.Fatalf("%d of %d requests failed across reloads", failed.Load(), sent.Load())
	}
	var after uint64
	for _, s := range c.Stats(t, "web") {
		after += s.RequestsTotal
		if s.ActiveConnections != 0 {
			t.Errorf("%s: %d active after the load stopped", s.URL, s.ActiveConnections)
		}
	}
	served := a.Requests.Load() + b.Requests.Load()
	if after != uint64(served) || after < before {
		t.Fatalf("requests_total %d (was %d before reloads), backends served %d: counters were reset or lost", after, before, served)
	}
	if served != ok.Load() {
		t.Fatalf("backends served %d requests, clients got %d 200s (%d resent): a request that reached lbpool was lost", served, ok.Load(), resent.Load())
	}
	t.Logf("%d requests across 20 reloads, %d resent after Caddy dropped them unread", ok.Load(), resent.Load())
}

func TestTLSBackendGetsHTTP2AndPassesChecks(t *testing.T) {
	c := lbtest.Start(t)
	protos := make(chan string, 16)
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case protos <- r.URL.Path + " " + r.Proto:
		default:
		}
		_, _ = io.WriteString(w, "tls")
	}))
	srv.EnableHTTP2 = true
	srv.StartTLS()
	t.Cleanup(srv.Close)
	addr := srv.Listener.Addr().String()
	c.Load(t, fmt.Sprintf(`:%d {
	lbpool https://%s {
		name tls
		health_uri /health
		tls_insecure_skip_verify
	}
}`, c.HTTPPort, addr))
	if status, body := c.Get(t, c.URL("/")); status != 200 || body != "tls" {
		t.Fatalf("got %d %q", status, body)
	}
	lbtest.Eventually(t, 5*time.Second, "a passing check over TLS", func() bool {
		s := c.Backend(t, "tls", "https://"+addr)
		return s.LastCheck != nil && s.LastCheck.Error == "" && s.Alive
	})
	for range 2 {
		if p := <-protos; !strings.HasSuffix(p, "HTTP/2.0") {
			t.Fatalf("backend saw %s, want HTTP/2 to a TLS backend", p)
		}
	}
}

func TestOnePoolNameWithTwoSettingsIsRefused(t *testing.T) {
	c := lbtest.Start(t)
	a := lbtest.NewBackend(t, "a", nil)
	b := lbtest.NewBackend(t, "b", nil)
	c.Load(t, site(c, "", a))
	twice := fmt.Sprintf(`:%d {
	lbpool %s {
		name web
	}
}
:%d {
	lbpool %s {
		name web
	}
}`, c.HTTPPort, a.Addr(), lbtest.FreePort(t), b.Addr())
	err := c.TryLoad(twice)
	if err == nil || !strings.Contains(err.Error(), `pool "web" is configured twice with different settings`) {
		t.Fatalf("loading two different pools named web: %v", err)
	}
	// the running config is untouched, and so is its pool
	if status, body := c.Get(t, c.URL("/")); status != 200 || body != "a" {
		t.Fatalf("after the refused load: %d %q", status, body)
	}
	if got := c.Stats(t, "web"); len(got) != 1 || got[0].URL != a.URL() {
		t.Fatalf("pool web after the refused load: %+v", got)
	}
}

func TestRetryAfterItsPoolWentLeavesNoIdleConnection(t *testing.T) {
	c := lbtest.Start(t)
	arrived := make(chan struct{}, 1)
	release := make(chan struct{})
	// first holds the first request until the pool is gone and breaks its
	// connection; second answers everything
	first := newTrackedTLSBackend(t, func(w http.ResponseWriter, r *http.Request) {
		arrived <- struct{}{}
		<-release
		conn, _, err := http.NewResponseController(w).Hijack()
		if err == nil {
			conn.Close()
		}
	})
	second := newTrackedTLSBackend(t, func(w http.ResponseWriter, r *http.Request) { _, _ = io.WriteString(w, "second") })
	c.Load(t, fmt.Sprintf(`:%d {
	lbpool https://%s https://%s {
		name gone
		health_uri /health
		health_interval 1h
		tls_insecure_skip_verify
	}
}`, c.HTTPPort, first.addr(), second.addr()))
	lbtest.Eventually(t, 5*time.Second, "both backends checked", func() bool {
		for _, s := range c.Stats(t, "gone") {
			if s.LastCheck == nil {
				return false
			}
		}
		return true
	})

	// HTTPS requests go through net/http's Transport, shared by the pool
	answer := make(chan string, 1)
	go func() {
		status, body := 0, ""
		if resp, err := c.Client().Get(c.URL("/")); err == nil {
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			status, body = resp.StatusCode, string(b)
		}
		answer <- fmt.Sprint(status, " ", body)
	}()
	select {
	case <-arrived:
	case <-time.After(10 * time.Second):
		t.Fatal("the GET never reached the first backend")
	}
	// the pool goes, and its transport with it, while the GET is in flight;
	// then the first backend breaks off and the GET is retried on the
	// second, through the transport nobody holds any more
	c.Load(t, emptySite(c))
	close(release)
	if got := <-answer; got != "200 second" {
		t.Fatalf("the GET in flight got %q, want 200 from the second backend", got)
	}
	// the retry's connection went back to that transport: it must be closed
	// then, not left idle until the transport's idle timeout
	lbtest.Eventually(t, 5*time.Second, "every backend connection closed", func() bool { return first.open()+second.open() == 0 })
}
