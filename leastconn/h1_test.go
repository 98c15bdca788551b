package leastconn

import (
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"
)

func pipeConn(t *testing.T) *h1Conn {
	a, b := net.Pipe()
	t.Cleanup(func() { a.Close(); b.Close() })
	return newH1Conn(a)
}

func TestH1PoolReusesTheMostRecentAndDropsStaleOnes(t *testing.T) {
	var p h1Pool
	now := time.Now()
	old, recent := pipeConn(t), pipeConn(t)
	p.put(old, now.Add(-h1IdleTimeout-time.Second))
	p.put(recent, now)
	if got := p.get(now, true); got != recent {
		t.Fatal("get did not return the most recently used connection")
	}
	if got := p.get(now, true); got != nil {
		t.Fatal("a connection idle past the timeout was reused")
	}
}

func TestH1PoolPrunesAndClosesForGood(t *testing.T) {
	var p h1Pool
	now := time.Now()
	p.put(pipeConn(t), now.Add(-time.Hour))
	p.put(pipeConn(t), now)
	p.prune(now, time.Minute)
	if len(p.idle) != 1 {
		t.Fatalf("%d idle after pruning the stale one, want 1", len(p.idle))
	}
	p.prune(now, 0)
	p.put(pipeConn(t), now)
	if len(p.idle) != 0 || p.get(now, true) != nil {
		t.Fatal("a closed pool kept a connection")
	}
}

func TestH1PoolTakesTheBuffersOfLongIdleConnectionsAndGivesThemBackOnReuse(t *testing.T) {
	var p h1Pool
	now := time.Now()
	idle, busy := pipeConn(t), pipeConn(t)
	p.put(idle, now.Add(-h1BufferIdle))
	p.put(busy, now)
	p.prune(now, h1IdleTimeout)
	if idle.br != nil || idle.bw != nil {
		t.Fatal("a connection idle for a second kept its buffers")
	}
	if busy.br == nil || busy.bw == nil {
		t.Fatal("a connection just used lost its buffers")
	}
	_ = p.get(now, true)
	if got := p.get(now, true); got != idle || got.br == nil || got.bw == nil {
		t.Fatal("a long idle connection was reused without buffers")
	}
}

func TestH1ConnBoundsWhatItReads(t *testing.T) {
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	c := newH1Conn(a)
	c.limit = 4
	go func() { _, _ = b.Write([]byte("0123456789")) }()
	buf := make([]byte, 10)
	n, err := c.Read(buf)
	if n != 4 || err != nil {
		t.Fatalf("read %d (%v), want the 4 allowed bytes", n, err)
	}
	if _, err := c.Read(buf); err != errHeadersTooLarge {
		t.Fatalf("read past the limit: %v, want errHeadersTooLarge", err)
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
		c := newH1Conn(a)
		go func() { _, _ = io.WriteString(b, head) }() // and then nothing
		_ = c.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
		_, err := readResponse(c, httptest.NewRequest(http.MethodGet, "/", nil), httptest.NewRecorder(), nil)
		if !isTimeout(err) {
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
	c := newH1Conn(nc)
	b.ReportAllocs()
	for b.Loop() {
		if !c.peek.quiet() {
			b.Fatal("a quiet connection was judged unusable")
		}
	}
}
