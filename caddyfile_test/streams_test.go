package caddyfile_test

import (
	"bufio"
	"net"
	"net/http"
	"sync/atomic"
	"testing"
	"time"

	"github.com/lbpool/lbpool/internal/lbtest"
)

// Long-lived streams across reloads: a websocket to a backend that stays
// runs on; one to a backend a reload removed ends stream_close_delay after
// the reload, or runs until it ends without a delay.

type websocket struct {
	conn net.Conn
	br   *bufio.Reader
}

// websocketsToEach opens websockets through the pool until each named
// backend has one (least connections sends the next where there is none)
// and returns them by the backend's name.
func websocketsToEach(t *testing.T, c *lbtest.Caddy, names ...string) map[string]websocket {
	t.Helper()
	out := map[string]websocket{}
	for i := 0; len(out) < len(names); i++ {
		if i == 2*len(names) {
			t.Fatalf("%d websockets reached only %d of %d backends", i, len(out), len(names))
		}
		conn, br, name, _ := upgradeWebsocket(t, c, "")
		if _, ok := out[name]; !ok {
			out[name] = websocket{conn, br}
		}
	}
	return out
}

// twoWebsocketBackends starts backends a and b, loads a pool over both with
// opts, and opens a websocket to each; open counts the tunnels the
// backends hold.
func twoWebsocketBackends(t *testing.T, c *lbtest.Caddy, opts string, open *atomic.Int32) (a, b *lbtest.Backend, ws map[string]websocket) {
	a, b = echoWebsocket(t, "a", open), echoWebsocket(t, "b", open)
	c.Load(t, site(c, opts, a, b))
	lbtest.Eventually(t, 5*time.Second, "both backends up", func() bool {
		return c.Backend(t, "web", a.URL()).Alive && c.Backend(t, "web", b.URL()).Alive
	})
	return a, b, websocketsToEach(t, c, "a", "b")
}

func TestStreamCloseDelayEndsStreamsToARemovedBackendAfterTheDelay(t *testing.T) {
	c := lbtest.Start(t)
	g0 := settledGoroutines(c)
	var open atomic.Int32
	const opts = "stream_close_delay 300ms"
	a, b, ws := twoWebsocketBackends(t, c, opts, &open)

	c.Load(t, site(c, opts, a)) // b leaves the pool
	took, ended := closedWithin(ws["b"].conn, ws["b"].br, 5*time.Second)
	if !ended {
		t.Fatal("the websocket to the removed backend is still open 5s after the reload, with stream_close_delay 300ms")
	}
	if took < 150*time.Millisecond {
		t.Fatalf("the websocket to the removed backend ended %v after the reload, before stream_close_delay 300ms", took)
	}
	if !echoes(ws["a"].conn, ws["a"].br) {
		t.Fatal("the websocket to the backend that stayed ended")
	}
	t.Logf("the websocket to the removed backend ended %v after the reload; the one to the backend that stayed echoes", took)

	ws["a"].conn.Close()
	lbtest.Eventually(t, 5*time.Second, "both tunnels to end at the backends", func() bool { return open.Load() == 0 })
	c.Load(t, "")
	a.Close()
	b.Close()
	goroutinesBackTo(t, g0)
}

func TestWithoutStreamCloseDelayAStreamToARemovedBackendRunsOn(t *testing.T) {
	c := lbtest.Start(t)
	var open atomic.Int32
	a, _, ws := twoWebsocketBackends(t, c, "", &open)

	c.Load(t, site(c, "", a)) // b leaves the pool
	// a bounded look: nothing ends it, so it is open a second later
	if took, ended := closedWithin(ws["b"].conn, ws["b"].br, time.Second); ended {
		t.Fatalf("the websocket to the removed backend ended %v after the reload, without stream_close_delay", took)
	}
	if !echoes(ws["b"].conn, ws["b"].br) || !echoes(ws["a"].conn, ws["a"].br) {
		t.Fatal("a websocket stopped echoing after the reload")
	}
	ws["a"].conn.Close()
	ws["b"].conn.Close()
	lbtest.Eventually(t, 5*time.Second, "both tunnels to end at the backends", func() bool { return open.Load() == 0 })
}

func TestStreamCloseDelayEndsStreamsToAMemberGoneFromDNS(t *testing.T) {
	c := lbtest.Start(t)
	d := lbtest.NewDNS(t)
	var open atomic.Int32
	bs, port := lbtest.NewBackendsOnLoopback(t, 2, func(name string) http.HandlerFunc {
		return echoWebsocketHandler(name, &open)
	})
	d.SetA("app.lbtest", ips(bs...)...)
	c.Load(t, dnsSite(c, d, "app.lbtest", port, "stream_close_delay 300ms"))
	lbtest.Eventually(t, 10*time.Second, "2 members up", func() bool { return allAlive(t, c, bs...) })
	ws := websocketsToEach(t, c, bs[0].Name, bs[1].Name)
	gone := bs[1]

	d.SetA("app.lbtest", bs[0].IP())
	lbtest.Eventually(t, 10*time.Second, "the member gone from DNS to be leaving", func() bool {
		return members(t, c)[gone.URL()].Leaving
	})
	// a member with an open stream stays leaving until the stream ends
	took, ended := closedWithin(ws[gone.Name].conn, ws[gone.Name].br, 5*time.Second)
	if !ended {
		t.Fatal("the websocket to the member gone from DNS is open 5s after it started leaving, with stream_close_delay 300ms")
	}
	lbtest.Eventually(t, 10*time.Second, "the member to leave once its stream ended", func() bool {
		_, ok := members(t, c)[gone.URL()]
		return !ok
	})
	if !echoes(ws[bs[0].Name].conn, ws[bs[0].Name].br) {
		t.Fatal("the websocket to the member still in DNS ended")
	}
	t.Logf("the websocket to the member gone from DNS ended %v after the test saw it leaving", took)
}
