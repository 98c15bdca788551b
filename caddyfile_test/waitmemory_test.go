package caddyfile_test

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/lbpool/lbpool/internal/lbtest"
)

// waitingRequests is how many requests TestWaitingRequestMemory holds at
// its backend at once, through each proxy.
const waitingRequests = 500

// holdingBackend accepts connections and leaves their requests unanswered
// until release. It holds them in one goroutine's list, so that what the
// test measures in its process is the proxy's share of a waiting request,
// not a backend's goroutine for it.
type holdingBackend struct {
	ln    net.Listener
	mu    sync.Mutex
	conns []net.Conn
}

func newHoldingBackend(t *testing.T) *holdingBackend {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	b := &holdingBackend{ln: ln}
	go func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			b.mu.Lock()
			b.conns = append(b.conns, conn)
			b.mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		b.release()
	})
	return b
}

func (b *holdingBackend) held() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return len(b.conns)
}

// release reads each held connection's request and answers it, then closes
// the connection.
func (b *holdingBackend) release() {
	b.mu.Lock()
	conns := b.conns
	b.conns = nil
	b.mu.Unlock()
	for _, conn := range conns {
		_ = conn.SetDeadline(time.Now().Add(5 * time.Second))
		if _, err := http.ReadRequest(bufio.NewReader(conn)); err == nil {
			_, _ = io.WriteString(conn, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
		}
		conn.Close()
	}
}

// A request waiting for its backend's answer is what thousands of clients
// hold in Caddy most of the time (the harness's clients2000 workload).
// Through lbpool it holds the connection's goroutine, on which the handler
// runs and waits, net/http's background reader of the client connection,
// the backend connection with its 4 KiB reader, and the request's state;
// reverse_proxy holds two goroutines more per backend connection and the
// Transport's buffers. The clients' connections are open before the
// baseline, so what is measured is what a request adds to an idle
// connection.
func TestWaitingRequestMemoryThroughLbpoolAndReverseProxy(t *testing.T) {
	c := lbtest.Start(t)
	b := newHoldingBackend(t)
	backend := b.ln.Addr().String()
	c.Load(t, fmt.Sprintf(`:%d {
	handle /lbpool/* {
		lbpool %s {
			name web
			health_interval 1h
		}
	}
	handle /reverse_proxy/* {
		reverse_proxy %s
	}
}`, c.HTTPPort, backend, backend))
	caddyAddr := fmt.Sprintf("127.0.0.1:%d", c.HTTPPort)
	// one round of each first, so what every first use sets up is in the
	// baseline
	for _, path := range []string{"/lbpool/wait", "/reverse_proxy/wait"} {
		measureWaitingRequests(t, c, b, caddyAddr, path, 2)
	}
	lb := measureWaitingRequests(t, c, b, caddyAddr, "/lbpool/wait", waitingRequests)
	rp := measureWaitingRequests(t, c, b, caddyAddr, "/reverse_proxy/wait", waitingRequests)
	t.Logf("per waiting request (heap in use + stacks):\n  lbpool        %5.1f KiB (heap %5.1f, stacks %5.1f)  %.2f goroutines\n  reverse_proxy %5.1f KiB (heap %5.1f, stacks %5.1f)  %.2f goroutines",
		lb.bytes()/1024, lb.heap/1024, lb.stacks/1024, lb.goroutines, rp.bytes()/1024, rp.heap/1024, rp.stacks/1024, rp.goroutines)
	// stacks are left out of the bounds, as the race detector doubles them
	if got := lb.heap / 1024; got > maxWaitingRequestHeapKiB {
		t.Errorf("a request waiting through lbpool holds %.1f KiB of heap, over %d KiB", got, maxWaitingRequestHeapKiB)
	}
	if lb.heap > 0.85*rp.heap {
		t.Errorf("a request waiting through lbpool holds %.1f KiB of heap, over 0.85x reverse_proxy's %.1f KiB", lb.heap/1024, rp.heap/1024)
	}
	if lb.goroutines > 1.1 {
		t.Errorf("a request waiting through lbpool takes %.2f goroutines besides its connection's, want 1 (net/http's background reader)", lb.goroutines)
	}
}

// maxWaitingRequestHeapKiB bounds the heap a request waiting through
// lbpool holds: about 16 KiB of heap spans in use are measured (17 under
// the race detector; the objects in them about 10 KiB: 4 the backend
// connection's reader, 2 the server's response buffer); a 32 KiB copy
// buffer held through the wait would exceed it, and so would the
// Transport's pair of 4 KiB buffers.
const maxWaitingRequestHeapKiB = 21

// measureWaitingRequests opens n client connections to addr, then sends a
// GET of path on each and measures the process while the backend holds
// them all; it then answers them and checks that each client got its 200.
func measureWaitingRequests(t *testing.T, c *lbtest.Caddy, b *holdingBackend, addr, path string, n int) idleCost {
	t.Helper()
	conns := make([]net.Conn, 0, n)
	defer func() {
		for _, conn := range conns {
			conn.Close()
		}
	}()
	for range n {
		conn, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatalf("client %d: %v", len(conns)+1, err)
		}
		conns = append(conns, conn)
	}
	g0 := settledGoroutines(c)
	h0, s0 := inUse()
	for _, conn := range conns {
		if _, err := fmt.Fprintf(conn, "GET %s HTTP/1.1\r\nHost: %s\r\n\r\n", path, addr); err != nil {
			t.Fatal(err)
		}
	}
	lbtest.EventuallyOr(t, 10*time.Second, "every request to reach the backend", func() bool {
		return b.held() >= n
	}, func() { t.Logf("%d of %d reached it", b.held(), n) })
	g1 := settledGoroutines(c)
	h1, s1 := inUse()
	b.release()
	for i, conn := range conns {
		_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
		resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
		if err != nil || resp.StatusCode != http.StatusOK {
			t.Fatalf("client %d of %s: %v %v", i+1, path, resp, err)
		}
		resp.Body.Close()
	}
	return idleCost{
		heap:       (float64(h1) - float64(h0)) / float64(n),
		stacks:     (float64(s1) - float64(s0)) / float64(n),
		goroutines: float64(g1-g0) / float64(n),
	}
}
