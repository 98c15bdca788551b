package caddyfile_test

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/lbpool/lbpool/internal/lbtest"
)

// idleWebsockets is how many websockets each way of connecting holds open
// at once; enough that a few kilobytes per websocket stand far above what
// the rest of the process allocates meanwhile.
const idleWebsockets = 1000

// wsBackend answers every upgrade with 101 and a greeting, reads the
// client's reply and then keeps the connection without a goroutine, so an
// idle websocket costs it a socket and nothing else. Other requests (health
// checks) get 200.
type wsBackend struct {
	ln     net.Listener
	mu     sync.Mutex
	parked []net.Conn
}

func newWSBackend(t *testing.T) *wsBackend {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	b := &wsBackend{ln: ln}
	go func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			go b.handshake(conn)
		}
	}()
	t.Cleanup(func() { ln.Close(); b.closeAll() })
	return b
}

func (b *wsBackend) handshake(conn net.Conn) {
	_ = conn.SetDeadline(time.Now().Add(30 * time.Second))
	br := bufio.NewReaderSize(conn, 1024)
	req, err := http.ReadRequest(br)
	if err != nil {
		conn.Close()
		return
	}
	if req.Header.Get("Upgrade") == "" {
		_, _ = io.WriteString(conn, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
		conn.Close()
		return
	}
	_, _ = io.WriteString(conn, "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\nhello\n")
	if line, err := br.ReadString('\n'); err != nil || line != "hi\n" {
		conn.Close()
		return
	}
	_ = conn.SetDeadline(time.Time{})
	b.mu.Lock()
	b.parked = append(b.parked, conn)
	b.mu.Unlock()
}

func (b *wsBackend) open() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return len(b.parked)
}

func (b *wsBackend) closeAll() {
	b.mu.Lock()
	defer b.mu.Unlock()
	for _, c := range b.parked {
		c.Close()
	}
	b.parked = nil
}

// openWebsocket upgrades a connection to addr at path, and exchanges one
// message each way, so the tunnel has carried data before it idles.
func openWebsocket(addr, path string) (net.Conn, error) {
	conn, err := net.DialTimeout("tcp", addr, 10*time.Second)
	if err != nil {
		return nil, err
	}
	_ = conn.SetDeadline(time.Now().Add(30 * time.Second))
	fmt.Fprintf(conn, "GET %s HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n", path)
	br := bufio.NewReaderSize(conn, 1024)
	resp, err := http.ReadResponse(br, nil)
	if err == nil && resp.StatusCode != http.StatusSwitchingProtocols {
		err = fmt.Errorf("status %d, want 101", resp.StatusCode)
	}
	if err == nil {
		var line string
		if line, err = br.ReadString('\n'); err == nil && line != "hello\n" {
			err = fmt.Errorf("greeting %q, want %q", line, "hello\n")
		}
	}
	if err == nil {
		_, err = io.WriteString(conn, "hi\n")
	}
	if err != nil {
		conn.Close()
		return nil, err
	}
	_ = conn.SetDeadline(time.Time{})
	return conn, nil
}

// inUse is the memory the process holds in heap spans and goroutine
// stacks, after full collections (which also empty the sync.Pools).
func inUse() (heap, stacks uint64) {
	runtime.GC()
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapInuse, m.StackInuse
}

// idleCost is what one idle websocket costs the process, through one way
// of connecting.
type idleCost struct {
	heap, stacks float64 // bytes
	goroutines   float64
}

func (c idleCost) bytes() float64 { return c.heap + c.stacks }

// measureIdleWebsockets opens idleWebsockets websockets to addr at path,
// measures them idle, closes them and waits until the goroutines are back
// to where they were.
func measureIdleWebsockets(t *testing.T, c *lbtest.Caddy, b *wsBackend, addr, path string) idleCost {
	t.Helper()
	g0 := settledGoroutines(c)
	h0, s0 := inUse()
	conns := make([]net.Conn, 0, idleWebsockets)
	defer func() {
		for _, conn := range conns {
			conn.Close()
		}
	}()
	for range idleWebsockets {
		conn, err := openWebsocket(addr, path)
		if err != nil {
			t.Fatalf("websocket %d to %s: %v", len(conns)+1, path, err)
		}
		conns = append(conns, conn)
	}
	lbtest.EventuallyOr(t, 10*time.Second, "every websocket to reach the backend", func() bool {
		return b.open() == idleWebsockets
	}, func() { t.Logf("%d of %d reached it", b.open(), idleWebsockets) })
	g1 := settledGoroutines(c)
	h1, s1 := inUse()
	for _, conn := range conns {
		conn.Close()
	}
	conns = nil
	b.closeAll()
	goroutinesBackTo(t, g0)
	return idleCost{
		heap:       (float64(h1) - float64(h0)) / idleWebsockets,
		stacks:     (float64(s1) - float64(s0)) / idleWebsockets,
		goroutines: float64(g1-g0) / idleWebsockets,
	}
}

func TestIdleWebsocketMemoryThroughLbpoolAndReverseProxy(t *testing.T) {
	if testing.Short() {
		t.Skip("opens 3000 websockets")
	}
	c := lbtest.Start(t)
	b := newWSBackend(t)
	backend := b.ln.Addr().String()
	c.Load(t, fmt.Sprintf(`:%d {
	handle /lbpool/* {
		lbpool %s {
			name web
		}
	}
	handle /reverse_proxy/* {
		reverse_proxy %s
	}
}`, c.HTTPPort, backend, backend))
	caddyAddr := fmt.Sprintf("127.0.0.1:%d", c.HTTPPort)
	// one of each first, so what every first use sets up is in the baseline
	for _, path := range []string{"/lbpool/ws", "/reverse_proxy/ws"} {
		conn, err := openWebsocket(caddyAddr, path)
		if err != nil {
			t.Fatalf("%s: %v", path, err)
		}
		conn.Close()
	}
	lbtest.Eventually(t, 10*time.Second, "the first websockets to reach the backend", func() bool { return b.open() == 2 })
	b.closeAll()

	// the test's own ends (client and backend sockets) cost the same
	// through either proxy: measured without one, and taken off
	direct := measureIdleWebsockets(t, c, b, backend, "/ws")
	lb := measureIdleWebsockets(t, c, b, caddyAddr, "/lbpool/ws")
	rp := measureIdleWebsockets(t, c, b, caddyAddr, "/reverse_proxy/ws")
	var report strings.Builder
	fmt.Fprintf(&report, "per idle websocket, the proxy's share (heap in use + stacks; the test's own ends, %.1f KiB and %.2f goroutines, taken off):",
		direct.bytes()/1024, direct.goroutines)
	for _, m := range []struct {
		name string
		cost idleCost
	}{{"lbpool", lb}, {"reverse_proxy", rp}} {
		fmt.Fprintf(&report, "\n  %-13s %5.1f KiB (heap %5.1f, stacks %5.1f)  %.2f goroutines", m.name,
			(m.cost.bytes()-direct.bytes())/1024, (m.cost.heap-direct.heap)/1024, (m.cost.stacks-direct.stacks)/1024,
			m.cost.goroutines-direct.goroutines)
	}
	t.Log(report.String())
	// a tunnel that kept a 32 KiB copy buffer while idle would not pass
	// these; stacks are left out, as the race detector doubles them
	if got := (lb.heap - direct.heap) / 1024; got > maxIdleTunnelHeapKiB {
		t.Errorf("an idle websocket through lbpool holds %.1f KiB of heap, over %d KiB", got, maxIdleTunnelHeapKiB)
	}
	if got := lb.goroutines - direct.goroutines; got > 2.1 {
		t.Errorf("an idle websocket through lbpool takes %.2f goroutines, want 2 (one each way; the handler's has returned)", got)
	}
}

// maxIdleTunnelHeapKiB bounds the heap an idle websocket through lbpool
// holds: about 3 KiB are measured, with the handler returned; a 4 KiB
// bufio buffer kept by each idle tunnel, or the server's per-request
// state of a handler that is still running (about 10 KiB), would exceed it.
const maxIdleTunnelHeapKiB = 6
