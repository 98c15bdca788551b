package caddyfile_test

// Backends and clients that misbehave: a backend that never answers, sends
// endless headers or bodies, trickles its response head in, breaks off
// mid-body, switches to a protocol it was not asked for, or sends 1xx,
// trailers and huge headers; clients that leave mid-request or
// mid-response, or read and write at a crawl. Each test bounds its waits
// and checks the counts the stats show afterwards.

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httptrace"
	"net/textproto"
	"os"
	"os/exec"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/lbpool/lbpool/internal/lbtest"
)

// rawBackend is a TCP server on 127.0.0.1 that speaks HTTP/1.1 by hand, to
// play backends that no HTTP server library would let a handler be. serve
// answers one request read from conn and says whether the connection may
// carry another; it may answer before reading the request's body (what it
// leaves unread is read after it returns).
type rawBackend struct {
	ln     net.Listener
	scheme string
	serve  func(conn net.Conn, req *http.Request) (keepAlive bool)

	mu    sync.Mutex
	conns map[net.Conn]struct{}
	wg    sync.WaitGroup
}

func newRawBackend(t *testing.T, serve func(conn net.Conn, req *http.Request) bool) *rawBackend {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	return serveRaw(t, ln, "http", serve)
}

// newRawTLSBackend is newRawBackend over TLS with cert, HTTP/1.1 only.
func newRawTLSBackend(t *testing.T, cert tls.Certificate, serve func(conn net.Conn, req *http.Request) bool) *rawBackend {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	cfg := &tls.Config{Certificates: []tls.Certificate{cert}, NextProtos: []string{"http/1.1"}}
	return serveRaw(t, tls.NewListener(ln, cfg), "https", serve)
}

func serveRaw(t *testing.T, ln net.Listener, scheme string, serve func(conn net.Conn, req *http.Request) bool) *rawBackend {
	rb := &rawBackend{ln: ln, scheme: scheme, serve: serve, conns: map[net.Conn]struct{}{}}
	rb.wg.Go(func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			rb.mu.Lock()
			rb.conns[conn] = struct{}{}
			rb.mu.Unlock()
			rb.wg.Go(func() { rb.handle(conn) })
		}
	})
	t.Cleanup(rb.close)
	return rb
}

func (rb *rawBackend) handle(conn net.Conn) {
	defer func() {
		conn.Close()
		rb.mu.Lock()
		delete(rb.conns, conn)
		rb.mu.Unlock()
	}()
	br := bufio.NewReader(conn)
	for {
		req, err := http.ReadRequest(br)
		if err != nil {
			return
		}
		if !rb.serve(conn, req) {
			return
		}
		if _, err := io.Copy(io.Discard, req.Body); err != nil {
			return
		}
	}
}

func (rb *rawBackend) addr() string { return rb.ln.Addr().String() }
func (rb *rawBackend) url() string  { return rb.scheme + "://" + rb.addr() }

func (rb *rawBackend) close() {
	rb.ln.Close()
	rb.mu.Lock()
	for c := range rb.conns {
		c.Close()
	}
	rb.mu.Unlock()
	rb.wg.Wait()
}

const healthyAnswer = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"

// waitForPeerClose blocks until the peer closes conn or bound passes, and
// says which.
func waitForPeerClose(conn net.Conn, bound time.Duration) (closed bool) {
	_ = conn.SetReadDeadline(time.Now().Add(bound))
	_, err := io.Copy(io.Discard, conn)
	var ne net.Error
	return !(err != nil && errors.As(err, &ne) && ne.Timeout())
}

// streamResult is how much an endless writer got out, and how it ended.
type streamResult struct {
	bytes int64
	took  time.Duration
	err   error // nil: the writer had to stop (limit or bound) while the peer kept reading
}

// streamForever writes prefix and then chunk after chunk until the peer
// closes the connection. So that a reader without a cap cannot take the
// test machine's memory, it stops writing after limit bytes (or bound) and
// then only waits for the peer to close; err is nil when it had to stop.
func streamForever(conn net.Conn, prefix string, chunk []byte, limit int64, bound time.Duration) streamResult {
	start := time.Now()
	_ = conn.SetWriteDeadline(start.Add(bound))
	n, err := io.WriteString(conn, prefix)
	res := streamResult{bytes: int64(n)}
	for err == nil && res.bytes < limit && time.Since(start) < bound {
		n, err = conn.Write(chunk)
		res.bytes += int64(n)
	}
	if err == nil {
		waitForPeerClose(conn, bound-time.Since(start))
	}
	res.took, res.err = time.Since(start), err
	return res
}

func TestHostileBackendThatNeverAnswersGets504InBoundedTime(t *testing.T) {
	c := lbtest.Start(t)
	var held atomic.Int64
	closedByLB := make(chan bool, 4)
	rb := newRawBackend(t, func(conn net.Conn, req *http.Request) bool {
		if req.URL.Path == "/health" {
			_, err := io.WriteString(conn, healthyAnswer)
			return err == nil
		}
		held.Add(1)
		closedByLB <- waitForPeerClose(conn, 10*time.Second) // never answer
		return false
	})
	c.Load(t, fmt.Sprintf(`:%d {
	lbpool %s {
		name mute
		health_uri /health
		health_interval 1h
		response_header_timeout 300ms
	}
}`, c.HTTPPort, rb.addr()))
	lbtest.Eventually(t, 5*time.Second, "the first check", func() bool { return c.Backend(t, "mute", rb.url()).LastCheck != nil })

	for i, method := range []string{http.MethodGet, http.MethodPost} {
		req, _ := http.NewRequest(method, c.URL("/never"), strings.NewReader("x"))
		start := time.Now()
		resp, err := c.Client().Do(req)
		if err != nil {
			t.Fatalf("%s: %v", method, err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		took := time.Since(start)
		if resp.StatusCode != http.StatusGatewayTimeout || len(body) == 0 {
			t.Fatalf("%s to a backend that never answers: %d %q, want 504 with a body", method, resp.StatusCode, body)
		}
		if took < 300*time.Millisecond || took > 3*time.Second {
			t.Fatalf("%s: 504 after %v, want just past response_header_timeout (300ms)", method, took)
		}
		if n := held.Load(); n != int64(i+1) {
			t.Fatalf("%s: the backend got %d requests in all, want %d: a timeout is not retried", method, n, i+1)
		}
		select {
		case closed := <-closedByLB:
			if !closed {
				t.Fatalf("%s: the load balancer kept the stuck connection open for 10s", method)
			}
		case <-time.After(15 * time.Second):
			t.Fatal("the backend never saw its connection end")
		}
		t.Logf("%s: 504 after %v", method, took.Round(time.Millisecond))
	}
	lbtest.Eventually(t, 5*time.Second, "active_connections back to 0", func() bool {
		return c.Backend(t, "mute", rb.url()).ActiveConnections == 0
	})
	if s := c.Backend(t, "mute", rb.url()); s.FailuresTotal != 2 || s.RequestsTotal != 0 {
		t.Fatalf("failures_total %d, requests_total %d; want 2 failures and no answered request", s.FailuresTotal, s.RequestsTotal)
	}
}

func TestHostileSilentBackendFailsItsCheckWithinTheHealthTimeout(t *testing.T) {
	c := lbtest.Start(t)
	closedByLB := make(chan bool, 16)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	t.Cleanup(func() { ln.Close(); wg.Wait() })
	wg.Go(func() {
		for { // accept, read nothing, write nothing
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Go(func() {
				defer conn.Close()
				select {
				case closedByLB <- waitForPeerClose(conn, 10*time.Second):
				default:
				}
			})
		}
	})
	url := "http://" + ln.Addr().String()
	c.Load(t, fmt.Sprintf(`:%d {
	lbpool %s {
		name silent
		health_uri /health
		health_interval 1h
		health_timeout 300ms
	}
}`, c.HTTPPort, ln.Addr()))
	lbtest.Eventually(t, 5*time.Second, "the first check to fail", func() bool {
		s := c.Backend(t, "silent", url)
		return s.LastCheck != nil && !s.Alive
	})
	s := c.Backend(t, "silent", url)
	if s.LastCheck.Error != "timeout" || s.LastCheck.Status != 0 || s.LastCheck.DurationMS > 2000 {
		t.Fatalf("last check %+v, want a timeout after about 300ms", *s.LastCheck)
	}
	select {
	case closed := <-closedByLB:
		if !closed {
			t.Fatal("the checker kept its connection to a silent backend open")
		}
	case <-time.After(15 * time.Second):
		t.Fatal("the silent backend never saw the checker's connection end")
	}
}

func TestHostileHealthAndStatsEndpointsAreReadBounded(t *testing.T) {
	endlessHeaders := "X-Pad: " + strings.Repeat("h", 1000) + "\r\n"
	tests := []struct {
		name   string
		path   string // the endpoint that misbehaves
		prefix string
		chunk  string
		// what the backend may get out before the load balancer stops
		// reading: the cap plus what loopback socket buffers hold (a read
		// without a cap takes gigabytes in the 10s health_timeout)
		maxBytes int64
	}{
		// Go's transport (and so reverse_proxy) caps response headers at 10 MiB
		{"health check with endless headers", "/health", "HTTP/1.1 200 OK\r\n", endlessHeaders, 32 << 20},
		{"health check with endless body", "/health", "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\n", strings.Repeat("b", 16<<10), 16 << 20},
		{"stats fetch with endless headers", "/stats", "HTTP/1.1 200 OK\r\n", endlessHeaders, 32 << 20},
		{"stats fetch with endless body", "/stats", "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\r\n{\"memory_usage\": ", strings.Repeat("9", 16<<10), 16 << 20},
	}
	const fetches = 5
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c := lbtest.Start(t)
			c.Load(t, emptySite(c))
			heapBefore := heapAfterGC()
			results := make(chan streamResult, 64)
			rb := newRawBackend(t, func(conn net.Conn, req *http.Request) bool {
				if req.URL.Path != tc.path {
					_, err := io.WriteString(conn, healthyAnswer)
					return err == nil
				}
				select {
				case results <- streamForever(conn, tc.prefix, []byte(tc.chunk), 2*tc.maxBytes, 20*time.Second):
				default:
				}
				return false
			})
			// health_timeout is long: what must stop each read is its cap
			c.Load(t, fmt.Sprintf(`:%d {
	lbpool %s {
		name hostile
		health_uri /health
		health_interval 50ms
		health_timeout 10s
		stats_uri /stats
	}
}`, c.HTTPPort, rb.addr()))
			var total int64
			for i := range fetches {
				select {
				case r := <-results:
					t.Logf("fetch %d: the backend got %.2f MiB out in %v before the connection ended (%v)", i+1, mib(uint64(r.bytes)), r.took.Round(time.Millisecond), r.err)
					if r.err == nil || r.bytes > tc.maxBytes || r.took > 5*time.Second {
						t.Fatalf("read %.1f MiB over %v: not bounded (at most %.0f MiB, well before the 10s health_timeout)",
							mib(uint64(r.bytes)), r.took, mib(uint64(tc.maxBytes)))
					}
					total += r.bytes
				case <-time.After(30 * time.Second):
					t.Fatalf("only %d hostile fetches in 30s", i)
				}
			}
			s := c.Backend(t, "hostile", rb.url())
			c.Load(t, emptySite(c))
			heapAfter := heapAfterGC()
			t.Logf("%.1f MiB sent in %d fetches; live heap %.2f MiB before, %.2f MiB after; stats %+v",
				mib(uint64(total)), fetches, mib(heapBefore), mib(heapAfter), s)
			if heapAfter > heapBefore+heapMargin {
				t.Fatalf("live heap grew from %.2f MiB to %.2f MiB", mib(heapBefore), mib(heapAfter))
			}
			if tc.path == "/stats" && (s.MemoryBytes != nil || !s.Alive) {
				t.Fatalf("memory %v, alive %v: a hostile stats endpoint must give no figure and leave health alone", s.MemoryBytes, s.Alive)
			}
		})
	}
}

// crashChild marks the run of this test binary that plays the scenario
// whose failure mode is a crash, so the test that starts it survives.
const crashChild = "LBPOOL_TEST_CRASH_CHILD"

func TestHostileStatsBodyDoesNotCrashCaddy(t *testing.T) {
	// a Prometheus text body that panics the text parser (prometheus/common
	// v0.71.0: a sample in braces right after a TYPE line)
	const body = "# TYPE process_resident_memory_bytes gauge\n{}"
	if os.Getenv(crashChild) == "" {
		// Run the scenario in a child process: if a stats fetch panics, it
		// takes the whole process, and Caddy with it, down.
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		defer cancel()
		cmd := exec.CommandContext(ctx, os.Args[0], "-test.run=^TestHostileStatsBodyDoesNotCrashCaddy$", "-test.count=1", "-test.v")
		cmd.Env = append(os.Environ(), crashChild+"=1")
		out, err := cmd.CombinedOutput()
		if err != nil {
			tail := string(out)
			if i := strings.Index(tail, "panic:"); i >= 0 {
				tail = tail[i:min(len(tail), i+1500)]
			} else if len(tail) > 1500 {
				tail = tail[len(tail)-1500:]
			}
			t.Fatalf("the Caddy process died (%v) when a backend's stats_uri answered %q:\n%s", err, body, tail)
		}
		return
	}
	c := lbtest.Start(t)
	var fetches atomic.Int64
	b := lbtest.NewBackend(t, "b", func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/stats" {
			fetches.Add(1)
			w.Header().Set("Content-Type", "text/plain; version=0.0.4")
			_, _ = io.WriteString(w, body)
			return
		}
		_, _ = io.WriteString(w, "ok")
	})
	c.Load(t, site(c, "health_interval 20ms\n\t\tstats_uri /stats", b))
	lbtest.Eventually(t, 10*time.Second, "5 stats fetches", func() bool { return fetches.Load() >= 5 })
	time.Sleep(100 * time.Millisecond) // the last fetch's answer is parsed after the backend counted it
	if status, got := c.Get(t, c.URL("/")); status != 200 || got != "ok" {
		t.Fatalf("after the bad stats: %d %q", status, got)
	}
	if s := c.Backend(t, "web", b.URL()); s.MemoryBytes != nil || !s.Alive {
		t.Fatalf("memory %v, alive %v: a bad stats body gives no figure and leaves health alone", s.MemoryBytes, s.Alive)
	}
}

func TestHostileEndlessHeadersOnTheRequestPathAreCutOffWith502(t *testing.T) {
	c := lbtest.Start(t)
	c.Load(t, emptySite(c))
	heapBefore := heapAfterGC()
	const maxBytes = 32 << 20 // the 10 MiB cap of Go's transport (and reverse_proxy), plus socket buffers
	results := make(chan streamResult, 4)
	rb := newRawBackend(t, func(conn net.Conn, req *http.Request) bool {
		if req.URL.Path == "/health" {
			_, err := io.WriteString(conn, healthyAnswer)
			return err == nil
		}
		results <- streamForever(conn, "HTTP/1.1 200 OK\r\n", []byte("X-Pad: "+strings.Repeat("h", 1000)+"\r\n"), 2*maxBytes, 20*time.Second)
		return false
	})
	c.Load(t, fmt.Sprintf(`:%d {
	lbpool %s {
		name hostile
		health_uri /health
		health_interval 1h
		response_header_timeout 5s
	}
}`, c.HTTPPort, rb.addr()))
	start := time.Now()
	status, body := c.Get(t, c.URL("/"))
	took := time.Since(start)
	var r streamResult
	select {
	case r = <-results:
	case <-time.After(25 * time.Second):
		t.Fatal("the backend never saw its connection end")
	}
	c.Load(t, emptySite(c))
	heapAfter := heapAfterGC()
	t.Logf("client got %d after %v; the backend got %.1f MiB of headers out in %v (%v); live heap %.2f MiB before, %.2f MiB after",
		status, took.Round(time.Millisecond), mib(uint64(r.bytes)), r.took.Round(time.Millisecond), r.err, mib(heapBefore), mib(heapAfter))
	if r.err == nil || r.bytes > maxBytes {
		t.Errorf("the load balancer read %.1f MiB of response headers and kept reading: no cap", mib(uint64(r.bytes)))
	}
	if status != http.StatusBadGateway || body == "" || took > 3*time.Second {
		t.Errorf("client got %d %q after %v; want a prompt 502 once the headers pass the cap", status, body, took)
	}
	if heapAfter > heapBefore+heapMargin {
		t.Errorf("live heap grew from %.2f MiB to %.2f MiB", mib(heapBefore), mib(heapAfter))
	}
}

func TestHostileBackendCuttingABodylessPOSTGetsItOnce(t *testing.T) {
	c := lbtest.Start(t)
	var orders atomic.Int64
	b := lbtest.NewBackend(t, "b", func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/order" {
			_, _ = io.WriteString(w, "ok")
			return
		}
		orders.Add(1) // acted on, then the connection breaks before the answer
		if conn, _, err := http.NewResponseController(w).Hijack(); err == nil {
			conn.Close()
		}
	})
	c.Load(t, site(c, "health_interval 1h", b))
	// a first request leaves a kept-alive connection to the backend, so the
	// POST goes out on a reused one
	if status, body := c.Get(t, c.URL("/warm")); status != 200 || body != "ok" {
		t.Fatalf("warm-up: %d %q", status, body)
	}
	resp, err := c.Client().Post(c.URL("/order"), "", nil) // Content-Length: 0
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusBadGateway {
		t.Errorf("status %d, want 502", resp.StatusCode)
	}
	if n := orders.Load(); n != 1 {
		t.Fatalf("the backend got a POST %d times: a non-idempotent request that reached it was sent again", n)
	}
}

func TestHostileBackendClosingMidBodyAbortsTheClientAndCountsAFailure(t *testing.T) {
	for _, length := range []string{"Content-Length", "chunked"} {
		t.Run(length, func(t *testing.T) {
			c := lbtest.Start(t)
			var cuts atomic.Int64
			b := lbtest.NewBackend(t, "b", func(w http.ResponseWriter, r *http.Request) {
				if r.URL.Path != "/cut" {
					_, _ = io.WriteString(w, "whole")
					return
				}
				cuts.Add(1)
				if length == "Content-Length" {
					w.Header().Set("Content-Length", "100000")
				}
				_, _ = w.Write([]byte(strings.Repeat("x", 1000)))
				http.NewResponseController(w).Flush()
				panic(http.ErrAbortHandler) // drop the connection mid-body
			})
			c.Load(t, site(c, "health_interval 1h", b))
			for i := range 3 {
				// the client must see an error: a 200 whose body breaks off, or
				// (headers still buffered when the connection is aborted) no
				// answer at all
				resp, err := c.Client().Get(c.URL("/cut"))
				if err == nil {
					var got []byte
					got, err = io.ReadAll(resp.Body)
					resp.Body.Close()
					if resp.StatusCode != http.StatusOK || err == nil {
						t.Fatalf("try %d: status %d with %d bytes and no error; want the break to reach the client", i, resp.StatusCode, len(got))
					}
				}
				t.Logf("try %d: %v", i, err)
			}
			lbtest.Eventually(t, 5*time.Second, "active_connections back to 0", func() bool {
				return c.Backend(t, "web", b.URL()).ActiveConnections == 0
			})
			// Go's client resends a GET whose kept-alive connection gave no
			// answer: count what reached the backend
			n := uint64(cuts.Load())
			if s := c.Backend(t, "web", b.URL()); n < 3 || s.FailuresTotal != n || s.RequestsTotal != n {
				t.Fatalf("failures_total %d, requests_total %d for %d responses broken off; want each counted", s.FailuresTotal, s.RequestsTotal, n)
			}
			if status, body := c.Get(t, c.URL("/")); status != 200 || body != "whole" {
				t.Fatalf("after the broken bodies: %d %q", status, body)
			}
		})
	}
}

func TestHostileBackend1xxTrailersAndHugeHeaders(t *testing.T) {
	huge := strings.Repeat("h", 1<<20)
	tests := []struct {
		name    string
		backend http.HandlerFunc
		check   func(t *testing.T, c *lbtest.Caddy, b *lbtest.Backend)
	}{
		{
			name: "103 Early Hints reach the client, as with reverse_proxy",
			backend: func(w http.ResponseWriter, r *http.Request) {
				w.Header().Set("Link", "</app.css>; rel=preload; as=style")
				w.WriteHeader(http.StatusEarlyHints)
				w.Header().Del("Link")
				_, _ = io.WriteString(w, "final")
			},
			check: func(t *testing.T, c *lbtest.Caddy, b *lbtest.Backend) {
				var codes []int
				var link string
				trace := &httptrace.ClientTrace{Got1xxResponse: func(code int, h textproto.MIMEHeader) error {
					codes = append(codes, code)
					link = h.Get("Link")
					return nil
				}}
				req, _ := http.NewRequest(http.MethodGet, c.URL("/"), nil)
				req = req.WithContext(httptrace.WithClientTrace(req.Context(), trace))
				status, body := sendAndRead(t, c, req)
				if status != 200 || body != "final" {
					t.Fatalf("final answer %d %q", status, body)
				}
				if len(codes) != 1 || codes[0] != 103 || link != "</app.css>; rel=preload; as=style" {
					t.Fatalf("the client saw informational responses %v (Link %q), want one 103 with the backend's Link", codes, link)
				}
			},
		},
		{
			name: "100 Continue reaches a client that waits for it",
			backend: func(w http.ResponseWriter, r *http.Request) {
				_, _ = io.Copy(w, r.Body)
			},
			check: func(t *testing.T, c *lbtest.Caddy, b *lbtest.Backend) {
				client := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{ExpectContinueTimeout: 5 * time.Second}}
				defer client.CloseIdleConnections()
				var got100 atomic.Bool
				trace := &httptrace.ClientTrace{Got100Continue: func() { got100.Store(true) }}
				req, _ := http.NewRequest(http.MethodPut, c.URL("/upload"), strings.NewReader("payload"))
				req.Header.Set("Expect", "100-continue")
				req = req.WithContext(httptrace.WithClientTrace(req.Context(), trace))
				start := time.Now()
				resp, err := client.Do(req)
				if err != nil {
					t.Fatal(err)
				}
				body, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				if resp.StatusCode != 200 || string(body) != "payload" || !got100.Load() {
					t.Fatalf("%d %q, 100 Continue seen: %v", resp.StatusCode, body, got100.Load())
				}
				if took := time.Since(start); took > 4*time.Second {
					t.Fatalf("took %v: the body waited for a 100 Continue that came late", took)
				}
			},
		},
		{
			name: "trailers, announced and not, reach the client",
			backend: func(w http.ResponseWriter, r *http.Request) {
				w.Header().Set("Trailer", "X-Checksum")
				w.WriteHeader(200)
				_, _ = io.WriteString(w, "body")
				w.Header().Set("X-Checksum", "sum1")
				w.Header().Set(http.TrailerPrefix+"X-Late", "late1")
			},
			check: func(t *testing.T, c *lbtest.Caddy, b *lbtest.Backend) {
				resp, err := c.Client().Get(c.URL("/"))
				if err != nil {
					t.Fatal(err)
				}
				body, err := io.ReadAll(resp.Body)
				resp.Body.Close()
				if err != nil || string(body) != "body" {
					t.Fatalf("body %q, %v", body, err)
				}
				if resp.Trailer.Get("X-Checksum") != "sum1" || resp.Trailer.Get("X-Late") != "late1" {
					t.Fatalf("trailers %v, want X-Checksum: sum1 and X-Late: late1", resp.Trailer)
				}
			},
		},
		{
			name: "a 1 MiB header passes through",
			backend: func(w http.ResponseWriter, r *http.Request) {
				w.Header().Set("X-Huge", huge)
				_, _ = io.WriteString(w, "ok")
			},
			check: func(t *testing.T, c *lbtest.Caddy, b *lbtest.Backend) {
				resp, err := c.Client().Get(c.URL("/"))
				if err != nil {
					t.Fatal(err)
				}
				_, _ = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode != 200 || resp.Header.Get("X-Huge") != huge {
					t.Fatalf("status %d, X-Huge of %d bytes; want 200 and the whole 1 MiB", resp.StatusCode, len(resp.Header.Get("X-Huge")))
				}
			},
		},
		{
			name: "headers over 10 MiB are refused with a 502",
			backend: func(w http.ResponseWriter, r *http.Request) {
				if r.URL.Path == "/small" {
					_, _ = io.WriteString(w, "small")
					return
				}
				for i := range 11 {
					w.Header().Set(fmt.Sprint("X-Huge-", i), huge)
				}
				_, _ = io.WriteString(w, "ok")
			},
			check: func(t *testing.T, c *lbtest.Caddy, b *lbtest.Backend) {
				start := time.Now()
				status, body := c.Get(t, c.URL("/"))
				if status != http.StatusBadGateway || body == "" || time.Since(start) > 10*time.Second {
					t.Fatalf("%d %q after %v, want a prompt 502 with a body", status, body, time.Since(start))
				}
				lbtest.Eventually(t, 5*time.Second, "active_connections back to 0", func() bool {
					return c.Backend(t, "web", b.URL()).ActiveConnections == 0
				})
				if s := c.Backend(t, "web", b.URL()); s.FailuresTotal != 1 {
					t.Fatalf("failures_total %d, want 1", s.FailuresTotal)
				}
				lbtest.Eventually(t, 5*time.Second, "the backend to serve a normal answer again", func() bool {
					status, body := c.Get(t, c.URL("/small"))
					return status == 200 && body == "small"
				})
			},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c := lbtest.Start(t)
			b := lbtest.NewBackend(t, "b", tc.backend)
			c.Load(t, site(c, "health_interval 1h", b))
			tc.check(t, c, b)
			lbtest.Eventually(t, 5*time.Second, "active_connections back to 0", func() bool {
				return c.Backend(t, "web", b.URL()).ActiveConnections == 0
			})
		})
	}
}

// sendAndRead sends req with the test client and returns status and body.
func sendAndRead(t *testing.T, c *lbtest.Caddy, req *http.Request) (int, string) {
	t.Helper()
	resp, err := c.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("reading the body: %v", err)
	}
	return resp.StatusCode, string(body)
}

// trackedBackend is a backend whose connections can be watched: how many are
// in the middle of a request right now.
type trackedBackend struct {
	srv   *httptest.Server
	mu    sync.Mutex
	state map[net.Conn]http.ConnState
}

func newTrackedBackend(t *testing.T, handler http.HandlerFunc) *trackedBackend {
	return startTrackedBackend(t, handler, false)
}

// newTrackedTLSBackend is newTrackedBackend over HTTPS (HTTP/1.1 only).
func newTrackedTLSBackend(t *testing.T, handler http.HandlerFunc) *trackedBackend {
	return startTrackedBackend(t, handler, true)
}

func startTrackedBackend(t *testing.T, handler http.HandlerFunc, withTLS bool) *trackedBackend {
	tb := &trackedBackend{state: map[net.Conn]http.ConnState{}}
	tb.srv = httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/health" {
			return
		}
		handler(w, r)
	}))
	tb.srv.Config.ConnState = func(conn net.Conn, s http.ConnState) {
		tb.mu.Lock()
		defer tb.mu.Unlock()
		if s == http.StateClosed || s == http.StateHijacked {
			delete(tb.state, conn)
			return
		}
		tb.state[conn] = s
	}
	if withTLS {
		tb.srv.StartTLS()
	} else {
		tb.srv.Start()
	}
	t.Cleanup(tb.srv.Close)
	return tb
}

func (tb *trackedBackend) addr() string { return tb.srv.Listener.Addr().String() }
func (tb *trackedBackend) url() string  { return "http://" + tb.addr() }

// open counts connections not yet closed.
func (tb *trackedBackend) open() int {
	tb.mu.Lock()
	defer tb.mu.Unlock()
	return len(tb.state)
}

// busy counts connections in the middle of a request (neither idle nor
// closed).
func (tb *trackedBackend) busy() int {
	tb.mu.Lock()
	defer tb.mu.Unlock()
	n := 0
	for _, s := range tb.state {
		if s == http.StateActive {
			n++
		}
	}
	return n
}

func trackedSite(c *lbtest.Caddy, backends ...*trackedBackend) string {
	addrs := make([]string, len(backends))
	for i, b := range backends {
		addrs[i] = b.addr()
	}
	return c.SiteAt("health_interval 1h", addrs...)
}

// dialCaddy opens a raw connection to the site.
func dialCaddy(t *testing.T, c *lbtest.Caddy) net.Conn {
	t.Helper()
	conn, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", c.HTTPPort), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	_ = conn.SetDeadline(time.Now().Add(30 * time.Second))
	return conn
}

// assertBackendUntouched checks what a client's misbehaviour must leave: no
// request counted active, no connection to the backend stuck mid-request,
// no failure blamed on the backend, and normal service.
func assertBackendUntouched(t *testing.T, c *lbtest.Caddy, tb *trackedBackend) {
	t.Helper()
	lbtest.Eventually(t, 5*time.Second, "active_connections back to 0", func() bool {
		return c.Backend(t, "web", tb.url()).ActiveConnections == 0
	})
	lbtest.Eventually(t, 5*time.Second, "no backend connection left mid-request", func() bool { return tb.busy() == 0 })
	if s := c.Backend(t, "web", tb.url()); !s.Alive || s.FailuresTotal != 0 {
		t.Errorf("alive %v, failures_total %d: a client's disconnect was blamed on the backend", s.Alive, s.FailuresTotal)
	}
	if status, body := c.Get(t, c.URL("/")); status != 200 || body != "ok" {
		t.Fatalf("the next request: %d %q", status, body)
	}
}

func TestClientLeavingMidRequestLeavesCountsAndBackendRight(t *testing.T) {
	c := lbtest.Start(t)
	bodyErr := make(chan error, 1)
	tb := newTrackedBackend(t, func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/upload" {
			_, err := io.Copy(io.Discard, r.Body)
			bodyErr <- err
			return
		}
		_, _ = io.WriteString(w, "ok")
	})
	c.Load(t, trackedSite(c, tb))
	conn := dialCaddy(t, c)
	fmt.Fprintf(conn, "POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s", 1<<20, strings.Repeat("u", 64<<10))
	lbtest.Eventually(t, 5*time.Second, "the upload to reach the backend", func() bool { return tb.busy() == 1 })
	conn.Close()
	select {
	case err := <-bodyErr:
		if err == nil {
			t.Fatal("the backend read a whole body the client never sent")
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the backend still waits for the rest of the body 10s after the client left")
	}
	assertBackendUntouched(t, c, tb)
}

func TestClientLeavingMidResponseLeavesCountsAndBackendRight(t *testing.T) {
	// a backend streaming flat out, and one that sends a chunk every 200ms
	// (so the load balancer is waiting on the backend when the client
	// leaves)
	for _, gap := range []time.Duration{0, 200 * time.Millisecond} {
		t.Run(fmt.Sprintf("chunks every %v", gap), func(t *testing.T) {
			c := lbtest.Start(t)
			type ended struct {
				at    time.Time
				bytes int64
			}
			streamEnd := make(chan ended, 1)
			tb := newTrackedBackend(t, func(w http.ResponseWriter, r *http.Request) {
				if r.URL.Path != "/stream" {
					_, _ = io.WriteString(w, "ok")
					return
				}
				rc := http.NewResponseController(w)
				chunk := []byte(strings.Repeat("s", 32<<10))
				var n int64
				for start := time.Now(); time.Since(start) < 20*time.Second; n += int64(len(chunk)) {
					if _, err := w.Write(chunk); err != nil {
						break
					}
					if rc.Flush() != nil {
						break
					}
					time.Sleep(gap)
				}
				streamEnd <- ended{time.Now(), n}
			})
			c.Load(t, trackedSite(c, tb))
			conn := dialCaddy(t, c)
			fmt.Fprint(conn, "GET /stream HTTP/1.1\r\nHost: x\r\n\r\n")
			if _, err := io.CopyN(io.Discard, conn, 16<<10); err != nil {
				t.Fatalf("the stream did not start: %v", err)
			}
			time.Sleep(50 * time.Millisecond) // the first chunk is through: the load balancer waits for the next
			conn.Close()
			left := time.Now()
			select {
			case e := <-streamEnd:
				t.Logf("the backend stopped %v after the client left, having written %.1f MiB", e.at.Sub(left).Round(time.Millisecond), mib(uint64(e.bytes)))
				if e.at.Sub(left) > 5*time.Second {
					t.Fatalf("the backend kept streaming for %v after the client left", e.at.Sub(left))
				}
			case <-time.After(25 * time.Second):
				t.Fatal("the backend's stream never ended")
			}
			assertBackendUntouched(t, c, tb)
		})
	}
}

func TestSlowClientsDoNotStarveOthers(t *testing.T) {
	c := lbtest.Start(t)
	var handlers sync.WaitGroup
	handler := func(w http.ResponseWriter, r *http.Request) {
		handlers.Add(1)
		defer handlers.Done()
		switch r.URL.Path {
		case "/big": // far more than socket buffers hold
			w.Header().Set("Content-Length", fmt.Sprint(256<<20))
			chunk := []byte(strings.Repeat("b", 64<<10))
			for range 256 << 20 / len(chunk) {
				if _, err := w.Write(chunk); err != nil {
					return
				}
			}
		case "/upload":
			_, _ = io.Copy(io.Discard, r.Body)
		default:
			_, _ = io.WriteString(w, "ok")
		}
	}
	a, b := newTrackedBackend(t, handler), newTrackedBackend(t, handler)
	c.Load(t, trackedSite(c, a, b))

	// 4 clients that never read their answer, 4 that stop sending their body
	const slow = 8
	var conns []net.Conn
	for i := range slow {
		conn := dialCaddy(t, c)
		if i%2 == 0 {
			fmt.Fprint(conn, "GET /big HTTP/1.1\r\nHost: x\r\n\r\n")
		} else {
			fmt.Fprintf(conn, "POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s", 1<<20, strings.Repeat("u", 1000))
		}
		conns = append(conns, conn)
	}
	active := func() int64 {
		var n int64
		for _, s := range c.Stats(t, "web") {
			n += s.ActiveConnections
		}
		return n
	}
	lbtest.Eventually(t, 10*time.Second, "the slow clients' requests in flight", func() bool { return active() == slow })
	time.Sleep(200 * time.Millisecond) // let the big answers fill every buffer on the way

	const fast, each = 8, 50
	var worst atomic.Int64
	var failed atomic.Int64
	var wg sync.WaitGroup
	start := time.Now()
	for range fast {
		wg.Go(func() {
			for range each {
				t0 := time.Now()
				resp, err := c.Client().Get(c.URL("/"))
				if err != nil {
					failed.Add(1)
					continue
				}
				body, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				if resp.StatusCode != 200 || string(body) != "ok" {
					failed.Add(1)
				}
				if d := int64(time.Since(t0)); d > worst.Load() {
					worst.Store(d)
				}
			}
		})
	}
	wg.Wait()
	took := time.Since(start)
	t.Logf("%d requests from %d clients beside %d stalled ones: %v, the slowest %v",
		fast*each, fast, slow, took.Round(time.Millisecond), time.Duration(worst.Load()).Round(time.Millisecond))
	if failed.Load() != 0 {
		t.Fatalf("%d requests failed beside the slow clients", failed.Load())
	}
	if time.Duration(worst.Load()) > 2*time.Second {
		t.Fatalf("a request took %v beside the slow clients", time.Duration(worst.Load()))
	}
	if n := active(); n != slow {
		t.Fatalf("%d requests active, want the %d slow ones still in flight", n, slow)
	}

	for _, conn := range conns {
		conn.Close()
	}
	lbtest.Eventually(t, 10*time.Second, "active_connections back to 0", func() bool { return active() == 0 })
	done := make(chan struct{})
	go func() { handlers.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("backend handlers still run 10s after the slow clients left")
	}
}

// trickleTimeout is the response_header_timeout the trickle tests set;
// trickleHead's backend gets a few bytes of its head out in it.
const (
	trickleTimeout = time.Second
	trickleGap     = 150 * time.Millisecond
)

// trickleHead is a serve func that writes prefix at once and then rest one
// byte every trickleGap, until it is out or the peer closes.
func trickleHead(prefix, rest string) func(net.Conn, *http.Request) bool {
	return func(conn net.Conn, _ *http.Request) bool {
		if _, err := io.WriteString(conn, prefix); err != nil {
			return false
		}
		for i := range len(rest) {
			time.Sleep(trickleGap)
			if _, err := conn.Write([]byte{rest[i]}); err != nil {
				return false
			}
		}
		return false
	}
}

func TestTrickledResponseHeadIs504InTheTimeoutNotRetriedAndLeavesTheBackendUp(t *testing.T) {
	heads := []struct {
		name  string
		serve func(net.Conn, *http.Request) bool
	}{
		{"status line", trickleHead("", "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")},
		{"headers", trickleHead("HTTP/1.1 200 OK\r\n", "X-Trickle: slow\r\nContent-Length: 2\r\n\r\nok")},
	}
	requests := []struct {
		name   string
		method string
		body   string // sent on the direct path by the body's own writer
		reused bool   // the request goes on a kept-alive connection
	}{
		{"GET on a new connection", http.MethodGet, "", false},
		{"GET on a reused connection", http.MethodGet, "", true},
		{"POST with a body on a reused connection", http.MethodPost, "payload", true},
	}
	c := lbtest.Start(t)
	for _, head := range heads {
		for _, rq := range requests {
			t.Run(head.name+", "+rq.name, func(t *testing.T) {
				shape := responseShape{method: rq.method, body: rq.body, serve: head.serve}
				a, b, rp := newDiffBackend(t, shape), newDiffBackend(t, shape), newDiffBackend(t, shape)
				c.Load(t, diffSite(c, trickleTimeout, a.addr()+" "+b.addr(), rp.addr()))
				lbtest.Eventually(t, 5*time.Second, "both backends checked", func() bool {
					return c.Backend(t, "diff", a.url()).LastCheck != nil && c.Backend(t, "diff", b.url()).LastCheck != nil
				})
				timed := func(prefix string) (clientView, time.Duration) {
					if rq.reused {
						// ties rotate: each backend keeps one connection
						for range 2 {
							if v := send(t, http.MethodGet, c.URL(prefix+"/ok"), ""); v.Status != 200 {
								t.Fatalf("%s warm-up: %+v", prefix, v)
							}
						}
					}
					start := time.Now()
					v := sendShape(t, c.URL(prefix+"/shape"), shape)
					return v, time.Since(start)
				}
				got, took := timed("/lb")
				gotRP, tookRP := timed("/rp")
				t.Logf("lbpool: %d after %v; reverse_proxy: %d after %v", got.Status, took.Round(time.Millisecond), gotRP.Status, tookRP.Round(time.Millisecond))
				if gotRP.Status != http.StatusGatewayTimeout {
					t.Errorf("reverse_proxy answered %d: the shape is not what this test expects", gotRP.Status)
				}
				// measured beside reverse_proxy's answer to the same shape, so a
				// loaded machine slows both: a resend or a retry would add at
				// least another timeout (the request counts below say which)
				if got.Status != http.StatusGatewayTimeout || took < trickleTimeout || took >= tookRP+trickleTimeout {
					t.Errorf("lbpool answered %d after %v, want 504 after response_header_timeout (%v), less than a timeout later than reverse_proxy's (%v)", got.Status, took, trickleTimeout, tookRP)
				}
				if hits := a.hits.Load() + b.hits.Load(); hits != 1 {
					t.Errorf("the pool's backends saw the request %d times (%d and %d), want once: a timeout is neither resent nor retried", hits, a.hits.Load(), b.hits.Load())
				}
				if n := a.onReused.Load() + b.onReused.Load(); rq.reused && n != 1 {
					t.Errorf("the request went on a reused connection %d times, want once", n)
				}
				for _, db := range []*diffBackend{a, b} {
					if s := c.Backend(t, "diff", db.url()); !s.Alive || s.StatusChanges != 0 {
						t.Errorf("%s: alive %v after %d status changes: a timeout took the backend down", db.url(), s.Alive, s.StatusChanges)
					}
				}
				if v := send(t, http.MethodGet, c.URL("/lb/ok"), ""); v.Status != 200 || v.Body != "ok" {
					t.Errorf("the next request got %d %q", v.Status, v.Body)
				}
			})
		}
	}
}

func TestBackendSwitchingProtocolsIsTunnelledOnlyToTheProtocolAskedFor(t *testing.T) {
	ca := newTestCA(t)
	_, _, cert := ca.issue(t, "backend", []string{"127.0.0.1"}, false)
	cases := []struct {
		name, asked, answered string
		tunnel                bool // the switch is the one asked for
	}{
		{"websocket asked, evil answered", "websocket", "evil", false},
		{"no upgrade asked, websocket answered", "", "websocket", false},
		{"websocket asked, WebSocket answered", "websocket", "WebSocket", true}, // tokens compare case-insensitively
	}
	c := lbtest.Start(t)
	// http backends: an upgrade goes through net/http's Transport, any other
	// request on the direct path; https backends: both through the Transport
	for _, scheme := range []string{"http", "https"} {
		for _, tc := range cases {
			t.Run(scheme+", "+tc.name, func(t *testing.T) {
				var hits atomic.Int64
				tunnelled := make(chan int, 4) // bytes the backend got after its 101
				serve := func(conn net.Conn, req *http.Request) bool {
					if req.URL.Path == "/health" {
						_, err := io.WriteString(conn, healthyAnswer)
						return err == nil
					}
					hits.Add(1)
					fmt.Fprintf(conn, "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: %s\r\n\r\n", tc.answered)
					_ = conn.SetReadDeadline(time.Now().Add(10 * time.Second))
					n, _ := conn.Read(make([]byte, 64)) // returns with the first bytes, or at the close
					tunnelled <- n
					return false
				}
				extra := "health_interval 1h"
				rb := newRawBackend(t, serve)
				if scheme == "https" {
					rb = newRawTLSBackend(t, cert, serve)
					extra += "\n\t\ttls_trusted_ca_certs " + ca.PEMFile
				}
				c.Load(t, c.SiteAt(extra, rb.url()))
				lbtest.Eventually(t, 5*time.Second, "the backend checked and up", func() bool {
					s := c.Backend(t, "web", rb.url())
					return s.LastCheck != nil && s.Alive
				})

				conn := dialCaddy(t, c)
				head := "GET /switch HTTP/1.1\r\nHost: x\r\n"
				if tc.asked != "" {
					head += "Connection: Upgrade\r\nUpgrade: " + tc.asked + "\r\n"
				}
				if _, err := io.WriteString(conn, head+"\r\n"); err != nil {
					t.Fatal(err)
				}
				resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
				if err != nil {
					t.Fatalf("no answer: %v", err)
				}
				// through a tunnel, these would reach the backend
				_, _ = io.WriteString(conn, "after the answer\n")
				var n int
				select {
				case n = <-tunnelled:
				case <-time.After(15 * time.Second):
					t.Fatal("the backend's connection stayed open and silent after its 101")
				}
				s := c.Backend(t, "web", rb.url())
				t.Logf("client got %d (Upgrade %q); the backend saw %d requests and %d bytes after its 101; failures_total %d",
					resp.StatusCode, resp.Header.Get("Upgrade"), hits.Load(), n, s.FailuresTotal)
				if tc.tunnel {
					if resp.StatusCode != http.StatusSwitchingProtocols || resp.Header.Get("Upgrade") != tc.answered || n == 0 || s.FailuresTotal != 0 {
						t.Errorf("want the switch asked for relayed and tunnelled, no failure counted")
					}
					return
				}
				if resp.StatusCode != http.StatusBadGateway || n != 0 {
					t.Errorf("want 502 and nothing tunnelled: the backend switched to %q when %q was asked for", tc.answered, tc.asked)
				}
				if hits.Load() != 1 || s.FailuresTotal != 1 {
					t.Errorf("want the request sent once and counted a failure")
				}
			})
		}
	}
}
