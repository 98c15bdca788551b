package leastconn

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
)

// shapeServer is a TCP server on 127.0.0.1 that answers "/shape" with the
// bytes it is given, as they are, and every other path with a small 200.
type shapeServer struct {
	ln    net.Listener
	shape atomic.Pointer[[]byte]
	// stall: after the shape the connection stays open for stallFor,
	// quiet unless asked again, where it is otherwise closed soon
	stall atomic.Bool
	// asked counts requests for the shape, written the writes of it that
	// ended (done or failed)
	asked, written atomic.Int64
	wg             sync.WaitGroup
}

func newShapeServer(tb testing.TB) *shapeServer {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	s := &shapeServer{ln: ln}
	s.wg.Go(func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			s.wg.Go(func() { s.serve(conn) })
		}
	})
	tb.Cleanup(func() { ln.Close(); s.wg.Wait() })
	return s
}

func (s *shapeServer) serve(conn net.Conn) {
	defer conn.Close()
	br := bufio.NewReader(conn)
	wait := 10 * time.Second
	for {
		// after a shape, a connection not asked again soon is closed, as
		// an answer whose body runs to the end of the stream needs
		_ = conn.SetDeadline(time.Now().Add(wait))
		wait = 10 * time.Second
		req, err := http.ReadRequest(br)
		if err != nil {
			return
		}
		if req.URL.Path != "/shape" {
			if _, err := io.WriteString(conn, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"); err != nil {
				return
			}
			continue
		}
		s.asked.Add(1)
		_ = conn.SetWriteDeadline(time.Now().Add(time.Second))
		_, err = conn.Write(*s.shape.Load())
		s.written.Add(1)
		wait = 50 * time.Millisecond
		if s.stall.Load() {
			wait = stallFor
		}
		if err != nil {
			return
		}
	}
}

// stallFor bounds how long a stalled shape keeps its connection: past the
// fuzzed handler's response-header timeout.
const stallFor = 3 * time.Second

// serveOnce runs one request through h as Caddy's server would; a handler
// that aborts the response (http.ErrAbortHandler) is allowed to.
func serveOnce(tb testing.TB, h *Handler, method, path string) (rec *httptest.ResponseRecorder) {
	req := httptest.NewRequest(method, "http://example.com"+path, nil)
	req.RemoteAddr = "127.0.0.1:40000"
	rec = httptest.NewRecorder()
	req = caddyhttp.PrepareRequest(req, caddy.NewReplacer(), rec, benchServer)
	defer func() {
		if p := recover(); p != nil && p != http.ErrAbortHandler { //nolint:errorlint // the sentinel is panicked as is
			tb.Fatalf("the handler panicked: %v", p)
		}
	}()
	if err := h.ServeHTTP(rec, req, nil); err != nil {
		var he caddyhttp.HandlerError
		if !errors.As(err, &he) {
			tb.Fatalf("ServeHTTP: %v", err)
		}
	}
	return rec
}

// FuzzDirectPathResponse sends whatever bytes a backend might answer with
// through the direct path, and checks that it never panics, that no
// connection it keeps for reuse has bytes waiting on it, that the next
// request on the backend is answered right, and that no goroutine is left.
func FuzzDirectPathResponse(f *testing.F) {
	for _, seed := range []string{
		"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nABCDEFGHIJK",
		"HTTP/1.1 204 No Content\r\n\r\nhello",
		"HTTP/1.1 304 Not Modified\r\n\r\nhello",
		"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nok!",
		"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X-Sum\r\n\r\n2\r\nok\r\n0\r\nX-Sum: 42\r\n\r\nEXTRA",
		"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nok\r\n0\r\n\r\n",
		"HTTP/1.1 200 OK\nContent-Length: 2\n\nok",
		"HTTP/1.0 200 OK\r\n\r\nuntil the end",
		"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nokMORE",
		"HTTP/1.1 103 Early Hints\r\nLink: </s.css>\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
		"HTTP/1.1 099 Odd\r\nContent-Length: 2\r\n\r\nok",
		"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\n\r\nraw",
		"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
		"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\nraw",
	} {
		f.Add([]byte(seed), false, false)
		f.Add([]byte(seed), true, false)
	}
	// heads that stop coming part way through a line, as a backend's that
	// trickles in past the response-header timeout
	for _, seed := range []string{"HTTP/1.", "HTTP/1.1 200 OK\r\nX-Tri"} {
		f.Add([]byte(seed), false, true)
	}
	srv := newShapeServer(f)
	h := &Handler{
		Name:                  "fuzz-direct",
		Backends:              []BackendConfig{{URL: srv.ln.Addr().String()}},
		HealthInterval:        caddy.Duration(time.Hour),
		ResponseHeaderTimeout: caddy.Duration(time.Second),
	}
	ctx, err := caddy.ProvisionContext(&caddy.Config{})
	if err != nil {
		f.Fatal(err)
	}
	if err := h.Provision(ctx); err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { _ = h.Cleanup() })
	b := h.lease.backends[0]
	serveOnce(f, h, http.MethodGet, "/ok") // the checker's first check and a kept-alive connection
	baseline := 0                          // taken at the first input: a fuzzing worker starts goroutines of its own

	f.Fuzz(func(t *testing.T, shape []byte, head, stall bool) {
		if len(shape) > 64<<10 {
			return
		}
		if baseline == 0 {
			baseline = runtime.NumGoroutine()
		}
		srv.shape.Store(&shape)
		srv.stall.Store(stall)
		b.flags.And(^flagDown) // a shape that broke the backend: up again for this one
		method := http.MethodGet
		if head {
			method = http.MethodHead
		}
		asked := srv.asked.Load()
		rec := serveOnce(t, h, method, "/shape")
		waitFor(t, "the shape asked for and written", func() bool {
			n := srv.asked.Load()
			return n > asked && srv.written.Load() == n
		})
		if stall && !bytes.Contains(shape, []byte("\n")) && rec.Code != http.StatusGatewayTimeout {
			// not a line came whole: the parser saw only what the deadline cut
			t.Fatalf("a head that stopped part way through its first line got %d, want 504", rec.Code)
		}
		if buffered := b.h1.Buffered(); buffered > 0 {
			t.Fatalf("pooled connections hold %d bytes of an earlier answer", buffered)
		}
		// a poisoned connection would answer this with the shape's leftovers
		b.flags.And(^flagDown)
		if rec := serveOnce(t, h, http.MethodGet, "/ok"); rec.Code != http.StatusOK || rec.Body.String() != "ok" {
			t.Fatalf("the next request got %d %q", rec.Code, rec.Body.String())
		}
		if b.active.Load() != 0 {
			t.Fatalf("%d requests still counted active", b.active.Load())
		}
		// closing the kept connections ends their server goroutines; what
		// is left then was left by the proxy
		b.h1.Prune(time.Now().Add(time.Hour), time.Nanosecond)
		if !poll(5*time.Second, func() bool {
			// a check the shape set off keeps a connection of its own
			h.spec.transport.CloseIdleConnections()
			return runtime.NumGoroutine() <= baseline
		}) {
			buf := make([]byte, 1<<20)
			t.Fatalf("goroutines: %d, baseline %d\n%s", runtime.NumGoroutine(), baseline, buf[:runtime.Stack(buf, true)])
		}
	})
}

// poll checks cond every millisecond until it holds (true) or d passes.
func poll(d time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(time.Millisecond)
	}
	return true
}

func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	if !poll(5*time.Second, cond) {
		t.Fatalf("timed out waiting for %s", what)
	}
}
