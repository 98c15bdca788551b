package caddyfile_test

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/lbpool/lbpool/internal/lbtest"
)

// The behaviour a reverse_proxy user keeps when writing lbpool instead:
// health defaults that fit apps as they are, fast recovery of a restarted
// backend, and reverse_proxy's options observed on the wire.

func TestAppRedirectingToLoginStaysUpByDefaultAndIsDownWithStrictStatus(t *testing.T) {
	c := lbtest.Start(t)
	b := lbtest.NewBackend(t, "app", nil)
	b.SetHealth(func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, "/login", http.StatusFound)
	})
	c.Load(t, site(c, "", b))
	lbtest.Eventually(t, 5*time.Second, "a check", func() bool { return c.Backend(t, "web", b.URL()).LastCheck != nil })
	if s := c.Backend(t, "web", b.URL()); !s.Alive {
		t.Fatalf("a backend answering 302 is down by default (%s)", s.LastCheck.Error)
	}
	if status, _ := c.Get(t, c.URL("/")); status != 200 {
		t.Fatalf("status %d through lbpool, want 200", status)
	}

	c.Load(t, site(c, "health_status 2xx", b))
	lbtest.Eventually(t, 5*time.Second, "the strict check to take it down", func() bool {
		return !c.Backend(t, "web", b.URL()).Alive
	})
}

// firstOK polls until a GET through lbpool answers 200 and returns when.
func firstOK(t *testing.T, c *lbtest.Caddy, within time.Duration) time.Time {
	t.Helper()
	var at time.Time
	lbtest.Eventually(t, within, "a 200", func() bool {
		resp, err := c.Client().Get(c.URL("/"))
		if err != nil {
			return false
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		at = time.Now()
		return resp.StatusCode == 200
	})
	return at
}

func TestRestartedBackendIsBackWithinAboutTwoSecondsNotAnInterval(t *testing.T) {
	c := lbtest.Start(t)
	b := lbtest.NewBackend(t, "only", nil)
	c.Load(t, site(c, "", b)) // the default health_interval: 20s
	firstOK(t, c, 5*time.Second)

	b.Close()
	stopped := time.Now()
	// requests see the backend gone (the first is refused, then 503s)
	lbtest.Eventually(t, 5*time.Second, "the backend to be down", func() bool {
		status, _ := c.Get(t, c.URL("/"))
		return status != 200
	})
	for time.Since(stopped) < time.Second {
		time.Sleep(10 * time.Millisecond) // the restart scenario: down for 1s
	}
	b.Restart(t)
	listening := time.Now()
	back := firstOK(t, c, 10*time.Second)
	gap := back.Sub(stopped)
	t.Logf("requests failed for %.2fs (backend stopped for %.2fs; back %.2fs after listening)",
		gap.Seconds(), listening.Sub(stopped).Seconds(), back.Sub(listening).Seconds())
	if gap > 3500*time.Millisecond {
		t.Fatalf("requests failed for %v after a 1s restart, want about 2s", gap)
	}
}

func TestBackendStartingAfterCaddyIsInWithinASecondOfListening(t *testing.T) {
	c := lbtest.Start(t)
	port := lbtest.FreePort(t)
	addr := "127.0.0.1:" + strconv.Itoa(port)
	c.Load(t, c.SiteAt("", addr))
	loaded := time.Now()
	lbtest.Eventually(t, 5*time.Second, "a first failed check", func() bool {
		s := c.Backend(t, "web", "http://"+addr)
		return s.LastCheck != nil && !s.Alive
	})
	for time.Since(loaded) < 3*time.Second {
		time.Sleep(10 * time.Millisecond) // the scenario: the app starts 3s after Caddy
	}
	l, err := net.Listen("tcp", addr)
	if err != nil {
		t.Skipf("port %d was taken meanwhile: %v", port, err)
	}
	listening := time.Now()
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {})}
	go func() { _ = srv.Serve(l) }()
	t.Cleanup(func() { _ = srv.Close() })
	in := firstOK(t, c, 10*time.Second)
	t.Logf("in %.2fs after listening", in.Sub(listening).Seconds())
	if in.Sub(listening) > 1500*time.Millisecond {
		t.Fatalf("in %v after it started listening, want within about 1s", in.Sub(listening))
	}
}

// checkSeen is what a backend saw of one health check.
type checkSeen struct {
	method, body, path string
}

func TestHealthMethodBodyPortAndRedirectsAreObservedAtTheBackend(t *testing.T) {
	c := lbtest.Start(t)
	var mu sync.Mutex
	var seen []checkSeen
	record := func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		mu.Lock()
		seen = append(seen, checkSeen{r.Method, string(body), r.URL.Path})
		mu.Unlock()
		if r.URL.Path == "/health" {
			http.Redirect(w, r, "/final", http.StatusFound)
			return
		}
		w.WriteHeader(http.StatusNoContent)
	}
	// checks go to health_port; traffic to the backend's own port
	healthSide := lbtest.NewBackend(t, "health side", record)
	b := lbtest.NewBackend(t, "app", nil)
	_, hport, _ := net.SplitHostPort(healthSide.Addr())
	c.Load(t, site(c, fmt.Sprintf(`health_uri /probe
		health_port %s
		health_method POST
		health_request_body "ping"
		health_follow_redirects
		health_status 204`, hport), b))
	lbtest.Eventually(t, 5*time.Second, "a passing check, followed to /final", func() bool {
		s := c.Backend(t, "web", b.URL())
		return s.Alive && s.LastCheck != nil && s.LastCheck.Status == http.StatusNoContent
	})
	mu.Lock()
	first := seen[0]
	mu.Unlock()
	if first.method != "POST" || first.body != "ping" || first.path != "/probe" {
		t.Fatalf("the check arrived as %+v on the health port, want POST /probe with body ping", first)
	}
	if b.Requests.Load() != 0 || b.HealthHits.Load() != 0 {
		t.Fatalf("the check went to the backend's own port")
	}

	c.Load(t, site(c, fmt.Sprintf("health_uri /probe\n\t\thealth_port %s\n\t\thealth_method HEAD", hport), b))
	lbtest.Eventually(t, 5*time.Second, "a HEAD check", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return seen[len(seen)-1].method == http.MethodHead
	})
}

func TestPortRangeIsOneBackendPerPort(t *testing.T) {
	c := lbtest.Start(t)
	port := lbtest.FreePort(t)
	c.Load(t, c.SiteAt("", fmt.Sprintf("127.0.0.1:%d-%d", port, port+3)))
	stats := c.Stats(t, "web")
	var urls []string
	for _, s := range stats {
		urls = append(urls, s.URL)
	}
	if len(stats) != 4 {
		t.Fatalf("a range of 4 ports gave backends %v", urls)
	}
	for i, s := range stats {
		if want := fmt.Sprintf("http://127.0.0.1:%d", port+i); s.URL != want {
			t.Fatalf("backend %d is %s, want %s (all: %v)", i, s.URL, want, urls)
		}
	}
}

// connCounter counts the connections a backend accepts and how many are
// open at once, and records their remote addresses.
type connCounter struct {
	mu           sync.Mutex
	total, open  int
	maxOpen      int
	remotePorts  map[string]bool
	remoteAddrOf []string
}

func (cc *connCounter) state(c net.Conn, s http.ConnState) {
	cc.mu.Lock()
	defer cc.mu.Unlock()
	switch s {
	case http.StateNew:
		cc.total++
		cc.open++
		cc.maxOpen = max(cc.maxOpen, cc.open)
		cc.remoteAddrOf = append(cc.remoteAddrOf, c.RemoteAddr().String())
	case http.StateClosed, http.StateHijacked:
		cc.open--
	}
}

// countedBackend is a backend whose connections are counted; /slow waits
// until release is closed.
func countedBackend(t *testing.T, release chan struct{}) (*lbtest.Backend, *connCounter) {
	cc := &connCounter{}
	b := lbtest.NewWatchedBackend(t, "counted", func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/slow" {
			select { // a test that fails before it releases still ends
			case <-release:
			case <-r.Context().Done():
			}
		}
		_, _ = io.WriteString(w, "ok")
	}, cc.state)
	return b, cc
}

func TestTransportKeepaliveOffMaxConnsPerHostAndLocalAddressOnTheWire(t *testing.T) {
	c := lbtest.Start(t)

	t.Run("keepalive off", func(t *testing.T) {
		b, cc := countedBackend(t, nil)
		c.Load(t, site(c, "transport http {\n\t\t\tkeepalive off\n\t\t}", b))
		for i := 0; i < 5; i++ {
			if status, _ := c.Get(t, c.URL("/")); status != 200 {
				t.Fatalf("status %d", status)
			}
		}
		cc.mu.Lock()
		defer cc.mu.Unlock()
		if cc.total < 5 {
			t.Fatalf("5 requests came on %d connections; with keepalive off each needs its own", cc.total)
		}
	})

	t.Run("max_conns_per_host", func(t *testing.T) {
		release := make(chan struct{})
		b, cc := countedBackend(t, release)
		c.Load(t, site(c, "transport http {\n\t\t\tmax_conns_per_host 1\n\t\t}", b))
		var wg sync.WaitGroup
		var ok atomic.Int32
		for i := 0; i < 3; i++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				resp, err := c.Client().Get(c.URL("/slow"))
				if err == nil {
					_, _ = io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
					if resp.StatusCode == 200 {
						ok.Add(1)
					}
				}
			}()
		}
		lbtest.Eventually(t, 5*time.Second, "a request at the backend", func() bool { return b.Requests.Load() >= 1 })
		close(release)
		wg.Wait()
		cc.mu.Lock()
		defer cc.mu.Unlock()
		if ok.Load() != 3 || cc.maxOpen != 1 {
			t.Fatalf("%d of 3 answered; the backend had %d connections open at once, want 1", ok.Load(), cc.maxOpen)
		}
	})

	t.Run("local_address", func(t *testing.T) {
		b, cc := countedBackend(t, nil)
		from := lbtest.FreePort(t)
		c.Load(t, site(c, fmt.Sprintf("health_interval 1m\n\t\ttransport http {\n\t\t\tlocal_address 127.0.0.1:%d\n\t\t\tkeepalive off\n\t\t}", from), b))
		lbtest.Eventually(t, 5*time.Second, "a connection from the local address", func() bool {
			cc.mu.Lock()
			defer cc.mu.Unlock()
			for _, a := range cc.remoteAddrOf {
				if strings.HasSuffix(a, ":"+strconv.Itoa(from)) {
					return true
				}
			}
			return false
		})
	})
}

func TestTransportReadTimeoutCutsAStalledResponse(t *testing.T) {
	c := lbtest.Start(t)
	stall := make(chan struct{})
	t.Cleanup(func() { close(stall) })
	b := lbtest.NewBackend(t, "staller", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", "10")
		_, _ = io.WriteString(w, "12345")
		w.(http.Flusher).Flush()
		select { // the rest never comes
		case <-stall:
		case <-r.Context().Done():
		}
	})
	c.Load(t, site(c, "transport http {\n\t\t\tread_timeout 300ms\n\t\t}", b))
	start := time.Now()
	resp, err := c.Client().Get(c.URL("/"))
	if err == nil {
		_, err = io.ReadAll(resp.Body)
		resp.Body.Close()
	}
	took := time.Since(start)
	if err == nil {
		t.Fatalf("a response stalled mid-body arrived whole")
	}
	if took > 5*time.Second {
		t.Fatalf("the stalled response was cut after %v, want about 300ms", took)
	}
	t.Logf("cut after %v", took)
}

// write_timeout bounds each write to the backend: a backend that stops
// reading a request body (its socket buffers full) makes the upload fail
// after about that long, where without it the upload would hang as long as
// the client keeps sending.
func TestTransportWriteTimeoutCutsAStalledUpload(t *testing.T) {
	c := lbtest.Start(t)
	stall := make(chan struct{})
	b := lbtest.NewBackend(t, "staller", func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/upload" {
			return
		}
		<-stall // reads nothing of the body (so net/http never sees the connection close)
	})
	t.Cleanup(func() { close(stall) }) // before the backend's Close, which waits for it
	c.Load(t, site(c, "transport http {\n\t\t\twrite_timeout 300ms\n\t\t}", b))
	firstOK(t, c, 5*time.Second)
	pr, pw := io.Pipe()
	var sent atomic.Int64
	go func() { // at most 1 GiB, well past what loopback buffers hold
		chunk := make([]byte, 64<<10)
		for sent.Load() < 1<<30 {
			n, err := pw.Write(chunk)
			sent.Add(int64(n))
			if err != nil {
				return
			}
		}
		pw.Close()
	}()
	t.Cleanup(func() { pr.Close() })
	start := time.Now()
	resp, err := c.Client().Post(c.URL("/upload"), "application/octet-stream", pr)
	took := time.Since(start)
	status := 0
	if err == nil {
		status = resp.StatusCode
		resp.Body.Close()
	}
	t.Logf("an upload the backend stopped reading: status %d (%v) after %v, %.1f MiB sent", status, err, took.Round(time.Millisecond), float64(sent.Load())/(1<<20))
	if err == nil && status != http.StatusGatewayTimeout {
		t.Fatalf("status %d, want 504 (a timeout, as reverse_proxy answers it) or a cut connection", status)
	}
	if took > 5*time.Second || sent.Load() >= 1<<30 {
		t.Fatalf("the stalled upload was cut after %v and %d bytes, want about 300ms after the buffers filled", took, sent.Load())
	}
}

func TestProxyStatusNamesWhyAndRewriteChangesMethodAndURI(t *testing.T) {
	c := lbtest.Start(t)
	var got atomic.Value
	b := lbtest.NewBackend(t, "app", func(w http.ResponseWriter, r *http.Request) {
		got.Store(r.Method + " " + r.URL.RequestURI())
	})
	c.Load(t, site(c, "method POST\n\t\trewrite /api{uri}\n\t\tproxy_status_name edge-1", b))
	firstOK(t, c, 5*time.Second)
	if status, _ := c.Get(t, c.URL("/items?x=1")); status != 200 || got.Load() != "POST /api/items?x=1" {
		t.Fatalf("status %d; the backend saw %v, want POST /api/items?x=1", status, got.Load())
	}

	b.Close()
	var statuses []string
	lbtest.Eventually(t, 5*time.Second, "a 503 once the backend is down", func() bool {
		resp, err := c.Client().Get(c.URL("/"))
		if err != nil {
			return false
		}
		resp.Body.Close()
		statuses = append(statuses, fmt.Sprint(resp.StatusCode, " ", resp.Header.Get("Proxy-Status")))
		return resp.StatusCode == 503
	})
	for _, s := range statuses {
		if s != "502 edge-1; error=connection_refused" && s != "503 edge-1; error=destination_unavailable" {
			t.Fatalf("answers %q: want 502 with connection_refused, then 503 with destination_unavailable", statuses)
		}
	}
}
