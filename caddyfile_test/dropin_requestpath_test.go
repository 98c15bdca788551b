package caddyfile_test

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/lbpool/lbpool/internal/lbtest"
)

// reverse_proxy's request-path options, each observed on the wire: every
// test here fails when its option is ignored.

func TestRequestBuffersSendAChunkedBodyWithItsLength(t *testing.T) {
	c := lbtest.Start(t)
	var seen atomic.Value
	b := lbtest.NewBackend(t, "app", func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		seen.Store(fmt.Sprintf("length %d, chunked %v, %d bytes", r.ContentLength, len(r.TransferEncoding) > 0, len(body)))
	})
	c.Load(t, site(c, "request_buffers 1KiB", b))
	firstOK(t, c, 5*time.Second)

	// a body of unknown length goes chunked from the client
	body := io.MultiReader(strings.NewReader(strings.Repeat("a", 300)), strings.NewReader(strings.Repeat("b", 300)))
	resp, err := c.Client().Post(c.URL("/upload"), "text/plain", body)
	if err != nil {
		t.Fatal(err)
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if want := "length 600, chunked false, 600 bytes"; resp.StatusCode != 200 || seen.Load() != want {
		t.Fatalf("status %d; the backend saw %v, want %s", resp.StatusCode, seen.Load(), want)
	}
}

// stagedBackend answers a body of known length in two parts: the first,
// flushed, then the second once the client has signalled got (or after
// wait). done is closed when the whole body is written.
func stagedBackend(t *testing.T, got <-chan struct{}, wait time.Duration) (b *lbtest.Backend, done chan struct{}) {
	done = make(chan struct{})
	b = lbtest.NewBackend(t, "staged", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain")
		w.Header().Set("Content-Length", "20")
		_, _ = io.WriteString(w, "first part|")
		_ = http.NewResponseController(w).Flush()
		select {
		case <-got:
		case <-time.After(wait):
		case <-r.Context().Done():
		}
		_, _ = io.WriteString(w, "second...")
		close(done)
	})
	return b, done
}

// ended tells whether ch is closed.
func ended(ch chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}

func TestResponseBuffersHoldTheAnswerUntilTheBodyIsIn(t *testing.T) {
	c := lbtest.Start(t)
	got := make(chan struct{})
	// the backend waits up to 1s for the client to see the answer, which
	// flush_interval -1 sends at once, but with response_buffers not
	// before the body is all in
	b, done := stagedBackend(t, got, time.Second)
	c.Load(t, site(c, "flush_interval -1\n\t\tresponse_buffers 1KiB", b))
	lbtest.Eventually(t, 5*time.Second, "a passing check", func() bool { return c.Backend(t, "web", b.URL()).Alive })

	resp, err := c.Client().Get(c.URL("/"))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	headersAfterBody := ended(done)
	close(got)
	body, _ := io.ReadAll(resp.Body)
	if string(body) != "first part|second..." || !headersAfterBody {
		t.Fatalf("body %q; the client had the answer before the backend wrote all of it: %v, want after",
			body, !headersAfterBody)
	}
}

func TestFlushIntervalMinusOneStreamsEachWrite(t *testing.T) {
	c := lbtest.Start(t)
	got := make(chan struct{})
	// a known length and not an event stream: without flush_interval the
	// first part would wait in the buffer until the backend ends
	b, done := stagedBackend(t, got, 10*time.Second)
	c.Load(t, site(c, "flush_interval -1", b))
	lbtest.Eventually(t, 5*time.Second, "a passing check", func() bool { return c.Backend(t, "web", b.URL()).Alive })

	resp, err := c.Client().Get(c.URL("/stream"))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	first := make([]byte, len("first part|"))
	if _, err := io.ReadFull(resp.Body, first); err != nil || string(first) != "first part|" {
		t.Fatalf("first part %q (%v)", first, err)
	}
	beforeEnd := !ended(done)
	close(got)
	rest, _ := io.ReadAll(resp.Body)
	if !beforeEnd || string(rest) != "second..." {
		t.Fatalf("the first part reached the client before the backend ended: %v; the rest %q", beforeEnd, rest)
	}
}

func TestTrustedProxiesKeepForwardedForFromTrustedPeersOnly(t *testing.T) {
	c := lbtest.Start(t)
	var xff atomic.Value
	b := lbtest.NewBackend(t, "app", func(w http.ResponseWriter, r *http.Request) {
		xff.Store(r.Header.Get("X-Forwarded-For"))
	})
	for _, tc := range []struct {
		trusted, want string
	}{
		{"127.0.0.0/8", "203.0.113.9, 127.0.0.1"}, // the client (on loopback) is a trusted proxy
		{"private_ranges", "203.0.113.9, 127.0.0.1"},
		{"10.0.0.0/8", "127.0.0.1"}, // not trusted: its claim is replaced
	} {
		c.Load(t, site(c, "trusted_proxies "+tc.trusted, b))
		req, _ := http.NewRequest("GET", c.URL("/"), nil)
		req.Header.Set("X-Forwarded-For", "203.0.113.9")
		resp, err := c.Client().Do(req)
		if err != nil {
			t.Fatal(err)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || xff.Load() != tc.want {
			t.Fatalf("trusted_proxies %s: status %d, the backend saw X-Forwarded-For %q, want %q",
				tc.trusted, resp.StatusCode, xff.Load(), tc.want)
		}
	}
}

func TestMaxResponseHeaderRefusesALargerHead(t *testing.T) {
	c := lbtest.Start(t)
	b := lbtest.NewBackend(t, "app", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("X-Big", strings.Repeat("x", 8<<10))
	})
	c.Load(t, site(c, "", b))
	if status, _ := c.Get(t, c.URL("/")); status != 200 {
		t.Fatalf("an 8 KiB header: status %d without max_response_header, want 200", status)
	}
	c.Load(t, site(c, "transport http {\n\t\t\tmax_response_header 4KiB\n\t\t}", b))
	if status, _ := c.Get(t, c.URL("/")); status != http.StatusBadGateway {
		t.Fatalf("an 8 KiB header: status %d with max_response_header 4KiB, want 502", status)
	}
}

func TestEnvPlaceholderInABackendIsResolvedWhenTheConfigLoads(t *testing.T) {
	c := lbtest.Start(t)
	b := lbtest.NewBackend(t, "from-env", nil)
	t.Setenv("LBPOOL_TEST_BACKEND", b.Addr())
	c.Load(t, c.SiteAt("", "{env.LBPOOL_TEST_BACKEND}"))
	firstOK(t, c, 5*time.Second)
	if status, body := c.Get(t, c.URL("/")); status != 200 || body != "from-env" {
		t.Fatalf("status %d, body %q: want the backend the environment names", status, body)
	}
	if s := c.Backend(t, "web", b.URL()); s.URL != b.URL() {
		t.Fatalf("the pool shows %q, want %q", s.URL, b.URL())
	}
}

// echoWebsocket is a backend that accepts a websocket upgrade, greets with
// its name and echoes lines until either side closes; open counts its
// tunnels still open. Other requests get its name.
func echoWebsocket(t *testing.T, name string, open *atomic.Int32) *lbtest.Backend {
	return lbtest.NewBackend(t, name, echoWebsocketHandler(name, open))
}

// echoWebsocketHandler is echoWebsocket's handler.
func echoWebsocketHandler(name string, open *atomic.Int32) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Upgrade") != "websocket" {
			_, _ = io.WriteString(w, name)
			return
		}
		conn, brw, err := http.NewResponseController(w).Hijack()
		if err != nil {
			return
		}
		defer conn.Close()
		if open != nil {
			open.Add(1)
			defer open.Add(-1)
		}
		_, _ = brw.WriteString("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n" + name + "\n")
		_ = brw.Flush()
		for {
			line, err := brw.ReadString('\n')
			if err != nil {
				return
			}
			_, _ = brw.WriteString("echo " + line)
			_ = brw.Flush()
		}
	}
}

// upgradeWebsocket upgrades a connection through Caddy, with extra header
// lines, and returns it with the backend's greeting and response; the
// connection is closed when the test ends.
func upgradeWebsocket(t *testing.T, c *lbtest.Caddy, extra string) (net.Conn, *bufio.Reader, string, *http.Response) {
	t.Helper()
	conn, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", c.HTTPPort), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
	fmt.Fprintf(conn, "GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n%s\r\n", extra)
	br := bufio.NewReader(conn)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusSwitchingProtocols {
		t.Fatalf("status %d, want 101", resp.StatusCode)
	}
	greeting, err := br.ReadString('\n')
	if err != nil {
		t.Fatalf("no greeting: %v", err)
	}
	return conn, br, strings.TrimSpace(greeting), resp
}

// dialWebsocket upgrades a connection through Caddy and checks one echo.
func dialWebsocket(t *testing.T, c *lbtest.Caddy) (net.Conn, *bufio.Reader) {
	t.Helper()
	conn, br, _, _ := upgradeWebsocket(t, c, "")
	if !echoes(conn, br) {
		t.Fatal("the new websocket does not echo")
	}
	return conn, br
}

// echoes tells whether a line sent on the websocket comes back.
func echoes(conn net.Conn, br *bufio.Reader) bool {
	_ = conn.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := fmt.Fprint(conn, "ping\n"); err != nil {
		return false
	}
	got, err := br.ReadString('\n')
	return err == nil && got == "echo ping\n"
}

// closedWithin waits up to d for the websocket to end and returns how long
// it took, or false.
func closedWithin(conn net.Conn, br *bufio.Reader, d time.Duration) (time.Duration, bool) {
	start := time.Now()
	_ = conn.SetReadDeadline(start.Add(d))
	_, err := io.Copy(io.Discard, br)
	if ne, ok := err.(net.Error); ok && ne.Timeout() {
		return 0, false
	}
	return time.Since(start), true
}

func TestStreamTimeoutEndsAWebsocket(t *testing.T) {
	c := lbtest.Start(t)
	b := echoWebsocket(t, "ws", nil)
	c.Load(t, site(c, "stream_timeout 300ms", b))
	conn, br := dialWebsocket(t, c)
	took, ok := closedWithin(conn, br, 5*time.Second)
	if !ok {
		t.Fatal("the websocket is still open 5s after stream_timeout 300ms")
	}
	t.Logf("the websocket ended %v after its first echo", took)
}
