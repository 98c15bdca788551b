package caddyfile_test

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/lbpool/lbpool/internal/lbtest"
	"github.com/lbpool/lbpool/leastconn"
)

// A backend a reload removes while streams to it are open leaves the way a
// member gone from DNS does: shown as leaving with its streams counted
// until they end; listed again meanwhile, it is the same backend.

const leavingStreams = 50

// openWebsockets opens n websockets through Caddy; the pool is expected to
// have one backend, so they all reach it.
func openWebsockets(t *testing.T, c *lbtest.Caddy, n int) []websocket {
	t.Helper()
	out := make([]websocket, n)
	for i := range out {
		conn, br, _, _ := upgradeWebsocket(t, c, "")
		out[i] = websocket{conn, br}
	}
	return out
}

// allEcho checks that every websocket still carries a message each way.
func allEcho(t *testing.T, ws []websocket, when string) {
	t.Helper()
	for i, w := range ws {
		if !echoes(w.conn, w.br) {
			t.Fatalf("websocket %d of %d does not echo %s", i+1, len(ws), when)
		}
	}
}

// statsOf returns the stats of every entry of pool "web" with the URL.
func statsOf(t *testing.T, c *lbtest.Caddy, url string) []leastconn.BackendStats {
	t.Helper()
	return poolStatsOf(t, c, "web", url)
}

// poolStatsOf returns the stats of every entry of the pool with the URL.
func poolStatsOf(t *testing.T, c *lbtest.Caddy, pool, url string) []leastconn.BackendStats {
	t.Helper()
	var out []leastconn.BackendStats
	for _, s := range c.Stats(t, pool) {
		if s.URL == url {
			out = append(out, s)
		}
	}
	return out
}

// activeMetric is the backend's caddy_lbpool_backend_active_connections
// line in /metrics, or "".
func activeMetric(t *testing.T, c *lbtest.Caddy, url string) string {
	t.Helper()
	_, body := c.Admin(t, http.MethodGet, "/metrics", "")
	for line := range strings.SplitSeq(string(body), "\n") {
		if strings.HasPrefix(line, "caddy_lbpool_backend_active_connections{") && strings.Contains(line, `"`+url+`"`) {
			return line
		}
	}
	return ""
}

func TestReloadRemovingABackendKeepsItsStreamsInViewUntilTheyEnd(t *testing.T) {
	c := lbtest.Start(t)
	g0 := settledGoroutines(c)
	var open atomic.Int32
	a, b := echoWebsocket(t, "a", nil), echoWebsocket(t, "b", &open)
	c.Load(t, site(c, "", b))
	lbtest.Eventually(t, 5*time.Second, "b up", func() bool { return c.Backend(t, "web", b.URL()).Alive })
	ws := openWebsockets(t, c, leavingStreams)

	c.Load(t, site(c, "", a)) // b leaves the pool
	allEcho(t, ws, "after the reload that removed their backend")
	s := statsOf(t, c, b.URL())
	if len(s) != 1 || !s[0].Leaving || s[0].ActiveConnections != leavingStreams || s[0].Source != leastconn.SourceStatic {
		t.Fatalf("the removed backend in the stats: %+v, want one entry, static, leaving, %d active", s, leavingStreams)
	}
	if m := activeMetric(t, c, b.URL()); !strings.HasSuffix(m, fmt.Sprintf(" %d", leavingStreams)) {
		t.Fatalf("the removed backend's active metric: %q, want %d", m, leavingStreams)
	}

	// listed again while its streams are open: the same backend, counted
	c.Load(t, site(c, "", a, b))
	s = statsOf(t, c, b.URL())
	if len(s) != 1 || s[0].Leaving || s[0].ActiveConnections != leavingStreams {
		t.Fatalf("the backend listed again: %+v, want one entry, not leaving, %d active", s, leavingStreams)
	}
	c.Load(t, site(c, "", a)) // and removed again
	lbtest.Eventually(t, 5*time.Second, "the backend leaving again", func() bool {
		s := statsOf(t, c, b.URL())
		return len(s) == 1 && s[0].Leaving && s[0].ActiveConnections == leavingStreams
	})
	allEcho(t, ws, "after the second reload")

	for _, w := range ws {
		w.conn.Close()
	}
	lbtest.EventuallyOr(t, 10*time.Second, "the removed backend gone once its streams ended", func() bool {
		return len(statsOf(t, c, b.URL())) == 0
	}, func() { t.Logf("stats: %+v", statsOf(t, c, b.URL())) })
	if open.Load() != 0 {
		t.Fatalf("%d tunnels still open at the backend", open.Load())
	}
	if len(c.Logs(`"backend left"`, b.URL())) == 0 {
		t.Error("no log line says the removed backend left")
	}
	c.Load(t, "")
	a.Close()
	b.Close()
	goroutinesBackTo(t, g0)
}

// endTimes waits for each stream to end and returns when each did; one
// still open after limit fails the test.
func endTimes(t *testing.T, ws []websocket, limit time.Duration) []time.Time {
	t.Helper()
	ends := make([]time.Time, len(ws))
	var wg sync.WaitGroup
	for i, w := range ws {
		wg.Go(func() {
			if _, ok := closedWithin(w.conn, w.br, limit); ok {
				ends[i] = time.Now()
			}
		})
	}
	wg.Wait()
	for i, e := range ends {
		if e.IsZero() {
			t.Fatalf("stream %d of %d is still open %v on", i+1, len(ws), limit)
		}
	}
	return ends
}

// spread returns the earliest and latest of ends, from start.
func spread(start time.Time, ends []time.Time) (first, last time.Duration) {
	first, last = time.Hour, 0
	for _, e := range ends {
		first, last = min(first, e.Sub(start)), max(last, e.Sub(start))
	}
	return first, last
}

func TestStreamCloseDelayClosesALeavingBackendsStreamsJitteredAndSaysHowMany(t *testing.T) {
	c := lbtest.Start(t)
	const opts = "stream_close_delay 1s"
	a, b := echoWebsocket(t, "a", nil), echoWebsocket(t, "b", nil)
	c.Load(t, site(c, opts, b))
	lbtest.Eventually(t, 5*time.Second, "b up", func() bool { return c.Backend(t, "web", b.URL()).Alive })
	ws := openWebsockets(t, c, leavingStreams)

	start := time.Now()
	c.Load(t, site(c, opts, a)) // b leaves the pool: its streams end 1s on
	loaded := time.Since(start)
	first, last := spread(start, endTimes(t, ws, 10*time.Second))
	t.Logf("the reload took %v; the %d streams ended %v to %v after it began", loaded, leavingStreams, first, last)
	if first < time.Second {
		t.Fatalf("a stream ended %v after the reload began, before stream_close_delay 1s", first)
	}
	// the closes are jittered over up to a quarter of the delay
	if last > loaded+1500*time.Millisecond {
		t.Fatalf("the last stream ended %v after the reload began (it took %v), past the delay and its jitter", last, loaded)
	}
	lines := c.Logs("stream_close_delay", b.URL())
	if len(lines) != 1 || !strings.Contains(lines[0], fmt.Sprintf(`"streams":%d`, leavingStreams)) {
		t.Fatalf("want one log line saying %d streams were closed, got %q", leavingStreams, lines)
	}
	lbtest.Eventually(t, 10*time.Second, "the removed backend gone", func() bool { return len(statsOf(t, c, b.URL())) == 0 })
}

func TestStreamTimeoutEndsAWebsocketAtItsTime(t *testing.T) {
	c := lbtest.Start(t)
	b := echoWebsocket(t, "ws", nil)
	c.Load(t, site(c, "stream_timeout 2s", b))
	start := time.Now()
	conn, br := dialWebsocket(t, c)
	first, _ := spread(start, endTimes(t, []websocket{{conn, br}}, 10*time.Second))
	if first < 2*time.Second || first > 4*time.Second {
		t.Fatalf("the websocket ended %v after it was opened, want about 2s (stream_timeout 2s)", first)
	}
	t.Logf("the websocket ended %v after it was opened", first)
}

// eventStream is a backend that sends an event every 100ms until the
// client goes; open counts the streams it serves.
func eventStream(t *testing.T, name string, open *atomic.Int32) *lbtest.Backend {
	return lbtest.NewBackend(t, name, eventStreamHandler(name, open))
}

// eventStreamHandler is eventStream's handler.
func eventStreamHandler(name string, open *atomic.Int32) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/events" {
			_, _ = io.WriteString(w, name)
			return
		}
		open.Add(1)
		defer open.Add(-1)
		w.Header().Set("Content-Type", "text/event-stream")
		tick := time.NewTicker(100 * time.Millisecond)
		defer tick.Stop()
		for {
			if _, err := io.WriteString(w, "data: "+name+"\n\n"); err != nil {
				return
			}
			w.(http.Flusher).Flush()
			select {
			case <-r.Context().Done():
				return
			case <-tick.C:
			}
		}
	}
}

// openEvents starts an event stream through Caddy and reads its first
// event; the reader returned is the stream's body.
func openEvents(t *testing.T, c *lbtest.Caddy) websocket {
	t.Helper()
	conn, err := netDial(c)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
	fmt.Fprintf(conn, "GET /events HTTP/1.1\r\nHost: x\r\n\r\n")
	br := bufio.NewReader(conn)
	resp, err := http.ReadResponse(br, nil)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("event stream: %v %v", resp, err)
	}
	body := bufio.NewReader(resp.Body) // ends with the stream, as the connection may not
	if _, err := body.ReadString('\n'); err != nil {
		t.Fatalf("no first event: %v", err)
	}
	return websocket{conn, body}
}

func TestStreamLimitsEndEventStreams(t *testing.T) {
	c := lbtest.Start(t)
	var open atomic.Int32
	a, b := eventStream(t, "a", &open), eventStream(t, "b", &open)

	t.Run("stream_close_delay", func(t *testing.T) {
		const opts = "stream_close_delay 1s"
		c.Load(t, site(c, opts, b))
		lbtest.Eventually(t, 5*time.Second, "b up", func() bool { return c.Backend(t, "web", b.URL()).Alive })
		evs := []websocket{openEvents(t, c), openEvents(t, c)}
		start := time.Now()
		c.Load(t, site(c, opts, a))
		loaded := time.Since(start)
		if s := statsOf(t, c, b.URL()); len(s) != 1 || !s[0].Leaving || s[0].ActiveConnections != 2 {
			t.Fatalf("the removed backend in the stats: %+v, want leaving with 2 active", s)
		}
		first, last := spread(start, endTimes(t, evs, 10*time.Second))
		if first < time.Second || last > loaded+1500*time.Millisecond {
			t.Fatalf("the event streams ended %v to %v after the reload began (it took %v), want 1s to 1.25s on", first, last, loaded)
		}
		lbtest.Eventually(t, 10*time.Second, "the removed backend gone", func() bool { return len(statsOf(t, c, b.URL())) == 0 })
	})
	t.Run("stream_timeout", func(t *testing.T) {
		c.Load(t, site(c, "stream_timeout 1s", a))
		start := time.Now()
		ev := openEvents(t, c)
		first, _ := spread(start, endTimes(t, []websocket{ev}, 10*time.Second))
		if first < time.Second || first > 3*time.Second {
			t.Fatalf("the event stream ended %v after it began, want about 1s (stream_timeout 1s)", first)
		}
		if f := c.Backend(t, "web", a.URL()).FailuresTotal; f != 0 {
			t.Fatalf("ending the stream counted %d failures against the backend", f)
		}
	})
	lbtest.Eventually(t, 5*time.Second, "the backends' streams to end", func() bool { return open.Load() == 0 })
}

// An event stream from an HTTP/2 backend is one HTTP/2 stream of a shared
// connection: the limits end that stream (the backend sees its request
// cancelled) and leave the connection to the others.
func TestStreamLimitsEndEventStreamsFromAnHTTP2Backend(t *testing.T) {
	c := lbtest.Start(t)
	var open atomic.Int32
	var protos sync.Map
	handler := eventStreamHandler("h2", &open)
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		protos.Store(r.Proto, true)
		handler(w, r)
	}))
	srv.EnableHTTP2 = true
	srv.StartTLS()
	t.Cleanup(srv.Close)
	other := eventStream(t, "other", &open)
	h2Site := func(opts string, withH2 bool) string {
		backends := other.URL()
		if withH2 {
			backends = "https://" + srv.Listener.Addr().String()
		}
		return fmt.Sprintf(":%d {\n\tlbpool %s {\n\t\tname web\n\t\ttls_insecure_skip_verify\n\t\t%s\n\t}\n}", c.HTTPPort, backends, opts)
	}

	c.Load(t, h2Site("stream_timeout 1s", true))
	start := time.Now()
	first, _ := spread(start, endTimes(t, []websocket{openEvents(t, c)}, 10*time.Second))
	if first < time.Second || first > 3*time.Second {
		t.Fatalf("the event stream ended %v after it began, want about 1s (stream_timeout 1s)", first)
	}
	lbtest.Eventually(t, 5*time.Second, "the backend to see its stream end", func() bool { return open.Load() == 0 })
	if _, ok := protos.Load("HTTP/2.0"); !ok {
		t.Fatal("the backend was not reached over HTTP/2")
	}

	c.Load(t, h2Site("stream_close_delay 1s", true))
	evs := []websocket{openEvents(t, c), openEvents(t, c)}
	start = time.Now()
	c.Load(t, h2Site("stream_close_delay 1s", false)) // the HTTP/2 backend leaves
	loaded := time.Since(start)
	if s := statsOf(t, c, "https://"+srv.Listener.Addr().String()); len(s) != 1 || !s[0].Leaving || s[0].ActiveConnections != 2 {
		t.Fatalf("the removed HTTP/2 backend in the stats: %+v, want leaving with 2 active", s)
	}
	first, last := spread(start, endTimes(t, evs, 10*time.Second))
	if first < time.Second || last > loaded+1500*time.Millisecond {
		t.Fatalf("the event streams ended %v to %v after the reload began (it took %v), want 1s to 1.25s on", first, last, loaded)
	}
	lbtest.Eventually(t, 5*time.Second, "the backend to see its streams end", func() bool { return open.Load() == 0 })
	lbtest.Eventually(t, 10*time.Second, "the removed backend gone", func() bool {
		return len(statsOf(t, c, "https://"+srv.Listener.Addr().String())) == 0
	})
}

func netDial(c *lbtest.Caddy) (net.Conn, error) {
	return net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", c.HTTPPort), 5*time.Second)
}
