package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha1"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"sync"
	"time"
)

// The websockets scenario holds many idle websockets open through the load
// balancer: the harness opens raw TCP connections, sends RFC 6455's upgrade
// request, reads the 101 and keeps the connection; the backends answer the
// handshake and then only read until the peer closes. No frame is sent, so
// what is measured is what an idle websocket costs the load balancer.

// wsGUID is the key RFC 6455 appends to Sec-WebSocket-Key before hashing.
const wsGUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

// wsAccept is the Sec-WebSocket-Accept answering a Sec-WebSocket-Key.
func wsAccept(key string) string {
	sum := sha1.Sum([]byte(key + wsGUID))
	return base64.StdEncoding.EncodeToString(sum[:])
}

// holdWebsocket answers a websocket upgrade and holds the connection,
// reading and discarding until the peer closes it.
func holdWebsocket(c net.Conn, br *bufio.Reader, key string) {
	head := "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: " +
		wsAccept(key) + "\r\n\r\n"
	if _, err := io.WriteString(c, head); err != nil {
		return
	}
	io.Copy(io.Discard, br)
}

// openWebsocket connects to addr and completes a websocket handshake on
// /ws, checking the 101 and its Sec-WebSocket-Accept.
func openWebsocket(addr string, timeout time.Duration) (net.Conn, error) {
	c, err := net.DialTimeout("tcp", addr, timeout)
	if err != nil {
		return nil, err
	}
	c.SetDeadline(time.Now().Add(timeout))
	var nonce [16]byte
	rand.Read(nonce[:])
	key := base64.StdEncoding.EncodeToString(nonce[:])
	req := "GET /ws HTTP/1.1\r\nHost: " + addr + "\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n" +
		"Sec-WebSocket-Key: " + key + "\r\nSec-WebSocket-Version: 13\r\n\r\n"
	if _, err := io.WriteString(c, req); err != nil {
		c.Close()
		return nil, err
	}
	if err := readSwitch(bufio.NewReaderSize(c, 1024), wsAccept(key)); err != nil {
		c.Close()
		return nil, err
	}
	c.SetDeadline(time.Time{})
	return c, nil
}

// readSwitch reads the answer to an upgrade request up to its blank line and
// checks that it is a 101 with the expected accept key. The backend sends
// nothing after it, so no byte the connection needs stays in the reader.
func readSwitch(br *bufio.Reader, accept string) error {
	line, err := br.ReadSlice('\n')
	if err != nil {
		return err
	}
	if !bytes.HasPrefix(line, []byte("HTTP/1.1 101 ")) {
		return fmt.Errorf("websocket upgrade answered %q", bytes.TrimSpace(line))
	}
	got := ""
	for {
		h, err := br.ReadSlice('\n')
		if err != nil {
			return err
		}
		h = bytes.TrimRight(h, "\r\n")
		if len(h) == 0 {
			break
		}
		if name, value, ok := bytes.Cut(h, []byte(":")); ok && bytes.EqualFold(name, []byte("Sec-WebSocket-Accept")) {
			got = string(bytes.TrimSpace(value))
		}
	}
	if got != accept {
		return fmt.Errorf("websocket upgrade: Sec-WebSocket-Accept %q, want %q", got, accept)
	}
	return nil
}

// openWebsockets opens n websockets to addr with a few dialers at a time,
// and returns those it opened and the first error.
func openWebsockets(ctx context.Context, addr string, n int) ([]net.Conn, error) {
	const dialers = 32
	conns := make([]net.Conn, n)
	var mu sync.Mutex
	var first error
	var wg sync.WaitGroup
	next := make(chan int)
	for range dialers {
		wg.Go(func() {
			for i := range next {
				c, err := openWebsocket(addr, 10*time.Second)
				if err != nil {
					mu.Lock()
					if first == nil {
						first = fmt.Errorf("websocket %d of %d: %w", i+1, n, err)
					}
					mu.Unlock()
					continue
				}
				conns[i] = c
			}
		})
	}
	for i := range n {
		if ctx.Err() != nil {
			break
		}
		next <- i
	}
	close(next)
	wg.Wait()
	var open []net.Conn
	for _, c := range conns {
		if c != nil {
			open = append(open, c)
		}
	}
	return open, errors.Join(first, ctx.Err())
}

// goroutines reads the number of goroutines of a Caddy from the first line
// of its admin endpoint's goroutine profile, "goroutine profile: total N".
func goroutines(admin string) (int, error) {
	resp, err := countClient.Get("http://" + admin + "/debug/pprof/goroutine?debug=1")
	if err != nil {
		return 0, fmt.Errorf("goroutine profile: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return 0, fmt.Errorf("goroutine profile: status %d", resp.StatusCode)
	}
	line, err := bufio.NewReader(resp.Body).ReadString('\n')
	if err != nil {
		return 0, fmt.Errorf("goroutine profile: %w", err)
	}
	var total string
	if _, err := fmt.Sscanf(line, "goroutine profile: total %s", &total); err != nil {
		return 0, fmt.Errorf("goroutine profile: first line %q", line)
	}
	return strconv.Atoi(total)
}

// wsFigures are a websockets run's findings about the load balancer.
type wsFigures struct {
	Opened      int     `json:"opened"`
	OpenSeconds float64 `json:"open_s"` // to open them all
	// Caddy's resident set before they were opened, while they were held,
	// and after they were closed and its goroutines were back.
	RSSBeforeKiB int64 `json:"rss_before_kib"`
	RSSHeldKiB   int64 `json:"rss_held_kib"`
	RSSAfterKiB  int64 `json:"rss_after_kib"`
	// PerWebsocketKiB is (held - before) ÷ opened.
	PerWebsocketKiB  float64 `json:"rss_per_websocket_kib"`
	GoroutinesBefore int     `json:"goroutines_before"`
	GoroutinesHeld   int     `json:"goroutines_held"`
	GoroutinesAfter  int     `json:"goroutines_after"`
	// BackSeconds is how long after closing them all Caddy's goroutines
	// were back to at most GoroutinesBefore+goroutineSlack; null if not
	// within wsBackBound.
	BackSeconds *float64 `json:"goroutines_back_s"`
}

const (
	// goroutineSlack allows for the admin endpoint's own goroutines and
	// timers that come and go.
	goroutineSlack = 5
	wsBackBound    = 15 * time.Second
	// wsWarm websockets are opened and closed before the baseline, so that
	// the code paths have run once.
	wsWarm = 16
)

// runWebsockets runs one configuration of the websockets scenario: a fresh
// Caddy, its baseline, sc.Websockets idle websockets opened through it and
// held, then all closed, and its goroutines polled until they are back.
func (h *harness) runWebsockets(ctx context.Context, sc scenario, cfg lbConfig, backends backendSet) (runRecord, error) {
	rec := runRecord{Scenario: sc.Name, Config: cfg.Name}
	caddy, site, admin, err := h.startCaddy(ctx, sc, cfg, backends)
	if err != nil {
		return rec, err
	}
	defer h.procs.stop(caddy)
	pid := caddy.pid()
	closeAll := func(conns []net.Conn) {
		for _, c := range conns {
			c.Close()
		}
	}
	warm, err := openWebsockets(ctx, site, wsWarm)
	closeAll(warm)
	if err != nil {
		return rec, fmt.Errorf("warm-up: %w", err)
	}
	ws := &wsFigures{}
	rec.WS = ws
	if ws.GoroutinesBefore, err = settledGoroutines(ctx, admin); err != nil {
		return rec, err
	}
	if ws.RSSBeforeKiB, _, err = processMemory(pid); err != nil {
		return rec, err
	}
	cpu0, err := processTicks(pid)
	if err != nil {
		return rec, err
	}
	began := time.Now()
	conns, err := openWebsockets(ctx, site, sc.Websockets)
	defer closeAll(conns)
	ws.Opened, ws.OpenSeconds = len(conns), time.Since(began).Seconds()
	if err != nil {
		return rec, fmt.Errorf("%d of %d websockets open: %w (open files allowed here: %d)", len(conns), sc.Websockets, err, fileLimit())
	}
	select {
	case <-ctx.Done():
		return rec, ctx.Err()
	case <-time.After(h.opts.wsHold()):
	}
	if ws.RSSHeldKiB, rec.LBPeakRSSKiB, err = processMemory(pid); err != nil {
		return rec, err
	}
	cpu1, err := processTicks(pid)
	if err != nil {
		return rec, err
	}
	rec.LBCPUSeconds = float64(cpu1-cpu0) / float64(clockTicks())
	rec.Seconds = time.Since(began).Seconds()
	ws.PerWebsocketKiB = float64(ws.RSSHeldKiB-ws.RSSBeforeKiB) / float64(ws.Opened)
	if ws.GoroutinesHeld, err = goroutines(admin); err != nil {
		return rec, err
	}
	if caddy.exited() {
		return rec, fmt.Errorf("caddy exited while holding the websockets: %v%s", caddy.err, logTail(caddy.log))
	}

	closeAll(conns)
	conns = nil
	closed := time.Now()
	for {
		n, err := goroutines(admin)
		if err != nil {
			return rec, err
		}
		ws.GoroutinesAfter = n
		if n <= ws.GoroutinesBefore+goroutineSlack {
			ws.BackSeconds = ptr(time.Since(closed).Seconds())
			break
		}
		if time.Since(closed) > wsBackBound {
			break
		}
		select {
		case <-ctx.Done():
			return rec, ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
	ws.RSSAfterKiB, _, err = processMemory(pid)
	return rec, err
}

// settledGoroutines waits until Caddy's goroutine count stops falling (the
// warm-up's connections winding down), up to a bound, and returns it.
func settledGoroutines(ctx context.Context, admin string) (int, error) {
	last, err := goroutines(admin)
	for range 20 {
		if err != nil {
			return 0, err
		}
		select {
		case <-ctx.Done():
			return 0, ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
		var n int
		if n, err = goroutines(admin); err == nil && n >= last {
			return n, nil
		}
		last = n
	}
	return last, err
}
