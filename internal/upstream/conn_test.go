package upstream

import (
	"bufio"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"
	"time"
)

func pipeConn(t *testing.T) *conn {
	a, b := net.Pipe()
	t.Cleanup(func() { a.Close(); b.Close() })
	return newConn(a)
}

func TestH1PoolReusesTheMostRecentAndDropsStaleOnes(t *testing.T) {
	var p Pool
	now := time.Now()
	old, recent := pipeConn(t), pipeConn(t)
	p.put(old, now.Add(-IdleTimeout-time.Second))
	p.put(recent, now)
	if got := p.get(now, true); got != recent {
		t.Fatal("get did not return the most recently used connection")
	}
	if got := p.get(now, true); got != nil {
		t.Fatal("a connection idle past the timeout was reused")
	}
}

func TestH1PoolPrunesAndClosesForGood(t *testing.T) {
	var p Pool
	now := time.Now()
	p.put(pipeConn(t), now.Add(-time.Hour))
	p.put(pipeConn(t), now)
	p.Prune(now, time.Minute)
	if len(p.idle) != 1 {
		t.Fatalf("%d idle after pruning the stale one, want 1", len(p.idle))
	}
	p.Prune(now, 0)
	p.put(pipeConn(t), now)
	if len(p.idle) != 0 || p.get(now, true) != nil {
		t.Fatal("a closed pool kept a connection")
	}
}

func TestH1PoolHoldsNoReaderWhileIdleAndGivesOneOnReuse(t *testing.T) {
	var p Pool
	now := time.Now()
	c := pipeConn(t)
	if c.br == nil {
		t.Fatal("a new connection has no reader")
	}
	p.put(c, now)
	if c.br != nil {
		t.Fatal("an idle connection kept its reader")
	}
	if got := p.get(now, true); got != c || got.br == nil {
		t.Fatal("an idle connection was reused without a reader")
	}
}

func TestH1ConnBoundsWhatItReads(t *testing.T) {
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	c := newConn(a)
	c.limit = 4
	go func() { _, _ = b.Write([]byte("0123456789")) }()
	buf := make([]byte, 10)
	n, err := c.Read(buf)
	if n != 4 || err != nil {
		t.Fatalf("read %d (%v), want the 4 allowed bytes", n, err)
	}
	if _, err := c.Read(buf); err != ErrHeadersTooLarge {
		t.Fatalf("read past the limit: %v, want ErrHeadersTooLarge", err)
	}
}

func TestReadResponseReportsTheDeadlineNotTheLineItCut(t *testing.T) {
	for _, head := range []string{
		"HTTP/1.",                                    // in the status line
		"HTTP/1.1 200 OK\r\nX-Tri",                   // in a header line
		"HTTP/1.1 200 OK\r\nX-Trickle: slow\r",       // between a line's CR and LF
		"HTTP/1.1 103 Early Hints\r\n\r\nHTTP/1.1 2", // in the final head, after an interim one
	} {
		a, b := net.Pipe()
		c := newConn(a)
		go func() { _, _ = io.WriteString(b, head) }() // and then nothing
		_ = c.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
		_, err := readResponse(c, httptest.NewRequest(http.MethodGet, "/", nil), httptest.NewRecorder(), nil)
		if !IsTimeout(err) {
			t.Errorf("%q, then silence past the deadline: %v, want the deadline's timeout", head, err)
		}
		a.Close()
		b.Close()
	}
}

// BenchmarkIdlePeek is what checking a kept-alive connection before reuse
// costs: one non-blocking MSG_PEEK on a quiet TCP socket.
func BenchmarkIdlePeek(b *testing.B) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer ln.Close()
	go func() {
		if c, err := ln.Accept(); err == nil {
			defer c.Close()
			_, _ = c.Read(make([]byte, 1)) // holds the connection open, quiet
		}
	}()
	nc, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		b.Fatal(err)
	}
	defer nc.Close()
	c := newConn(nc)
	b.ReportAllocs()
	for b.Loop() {
		if !c.peek.quiet() {
			b.Fatal("a quiet connection was judged unusable")
		}
	}
}

// The next request's connection must not be one with bytes waiting: a
// reused connection whose peer wrote late is dropped before use.
func TestIdleConnectionWithLateBytesIsNotReused(t *testing.T) {
	srv := newLateServer(t, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
	nc, err := net.Dial("tcp", srv.ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	c := newConn(nc)
	var p Pool
	p.put(c, time.Now())
	if got := p.get(time.Now(), false); got != c {
		t.Fatal("a quiet idle connection was not reused")
	}
	// ask for the shape by hand and leave its answer unread, as a backend's
	// unsolicited bytes would sit on an idle connection
	if _, err := io.WriteString(nc, "GET /shape HTTP/1.1\r\nHost: x\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the answer written", func() bool { return srv.written.Load() == 1 })
	p.put(c, time.Now())
	deadline := time.Now().Add(5 * time.Second)
	// a request that cannot be sent again checks at once; others once the
	// connection sat idle for peekAfter
	for got := p.get(time.Now(), false); got != nil; got = p.get(time.Now(), false) {
		if time.Now().After(deadline) {
			t.Fatal("a connection with bytes waiting was handed out")
		}
		p.put(got, time.Now()) // the bytes may not have crossed loopback yet
	}

	// and one the peer closed
	nc2, err := net.Dial("tcp", srv.ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	c2 := newConn(nc2)
	if _, err := io.WriteString(nc2, "NOT HTTP\r\n\r\n"); err != nil { // a request the server cannot read: it closes
		t.Fatal(err)
	}
	p.put(c2, time.Now().Add(-peekAfter))
	for got := p.get(time.Now(), true); got != nil; got = p.get(time.Now(), true) {
		if time.Now().After(deadline) {
			t.Fatal("a connection the backend closed was handed out")
		}
		p.put(got, time.Now().Add(-peekAfter))
	}
}

// lateServer answers each request line it reads with answer and counts
// the answers written; anything else it cannot read closes the connection.
type lateServer struct {
	ln      net.Listener
	written atomic.Int64
}

func newLateServer(t *testing.T, answer string) *lateServer {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &lateServer{ln: ln}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				br := bufio.NewReader(c)
				for {
					req, err := http.ReadRequest(br)
					if err != nil {
						return
					}
					req.Body.Close()
					if _, err := io.WriteString(c, answer); err != nil {
						return
					}
					s.written.Add(1)
				}
			}()
		}
	}()
	return s
}

// waitFor polls cond until it holds, for at most 5 seconds.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); !cond(); time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within 5s", what)
		}
	}
}
