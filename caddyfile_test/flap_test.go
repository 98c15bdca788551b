package caddyfile_test

import (
	"encoding/json"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/lbpool/lbpool/internal/lbtest"
)

// resetsEveryRequest reads a request and resets the connection: a backend
// whose /health answers 200 while every proxied request fails.
func resetsEveryRequest(w http.ResponseWriter, _ *http.Request) {
	conn, _, err := http.NewResponseController(w).Hijack()
	if err != nil {
		return
	}
	if tc, ok := conn.(*net.TCPConn); ok {
		_ = tc.SetLinger(0) // close sends RST
	}
	conn.Close()
}

// postFrom sends n POSTs from clients goroutines and returns how many did
// not get a 200.
func postFrom(c *lbtest.Caddy, clients, n int) int64 {
	var sent, failed atomic.Int64
	var wg sync.WaitGroup
	for range clients {
		wg.Go(func() {
			for sent.Add(1) <= int64(n) {
				resp, err := c.Client().Post(c.URL("/order"), "text/plain", strings.NewReader("pay 10"))
				if err != nil {
					failed.Add(1)
					continue
				}
				resp.Body.Close()
				if resp.StatusCode != http.StatusOK {
					failed.Add(1)
				}
			}
		})
	}
	wg.Wait()
	return failed.Load()
}

// holdEntry is a "flap hold" log line.
type holdEntry struct {
	Level, Logger, Pool, Backend, Reason string
	Hold                                 float64 // seconds
	HoldsInARow                          int     `json:"holds_in_a_row"`
	HeldUntil                            float64 `json:"held_until"` // unix seconds
}

// holdsLogged returns the "flap hold" log entries of a backend, in order.
func holdsLogged(t *testing.T, c *lbtest.Caddy, backend string) []holdEntry {
	t.Helper()
	var out []holdEntry
	for _, line := range c.Logs(`"msg":"flap hold"`, `"backend":"`+backend+`"`) {
		var e holdEntry
		if err := json.Unmarshal([]byte(line), &e); err != nil {
			t.Fatal(err)
		}
		out = append(out, e)
	}
	return out
}

// loadChecked loads the pool web of backends with options and waits until
// each one was checked and is up.
func loadChecked(t *testing.T, options string, backends ...*lbtest.Backend) *lbtest.Caddy {
	t.Helper()
	c := lbtest.Start(t)
	c.Load(t, site(c, options, backends...))
	awaitAllUp(t, c, "web")
	return c
}

func TestFlappingBackendIsHeldOutByDefault(t *testing.T) {
	a := lbtest.NewBackend(t, "a", nil)
	flapper := lbtest.NewBackend(t, "flapper", resetsEveryRequest)
	b := lbtest.NewBackend(t, "b", nil)
	c := loadChecked(t, "", a, flapper, b) // default options

	failed := postFrom(c, 4, 320)
	t.Logf("%d of 320 POSTs failed; the flapper got %d tries", failed, flapper.Requests.Load())
	if failed > 10 {
		t.Fatalf("%d of 320 POSTs failed, want at most 10", failed)
	}
	if failed := load(t, c, 4, 200, "/"); failed != 0 {
		t.Fatalf("%d of 200 GETs failed: they are retried on another backend", failed)
	}

	s := c.Backend(t, "web", flapper.URL())
	if !s.Held || s.Alive || s.HeldUntil == nil || s.HoldSeconds != 10 || s.HoldsInARow != 1 || s.HoldsTotal != 1 ||
		!strings.Contains(s.HoldReason, "after its checks brought it back") {
		t.Fatalf("stats %+v: want held for the default first hold, 10s, one in a row, with the reason", s)
	}
	if left := time.Until(*s.HeldUntil); left <= 0 || left > 10*time.Second {
		t.Fatalf("held_until %v is not within the 10s hold", s.HeldUntil)
	}
	logged := holdsLogged(t, c, flapper.URL())
	if len(logged) != 1 {
		t.Fatalf("%d flap-hold log entries, want 1", len(logged))
	}
	if e := logged[0]; e.Level != "warn" || e.Logger != "http.handlers.lbpool" || e.Pool != "web" ||
		e.Hold != 10 || e.HoldsInARow != 1 || !strings.HasPrefix(e.Reason, "proxy error: connection reset") {
		t.Fatalf("log entry %+v", e)
	}
	for _, other := range []*lbtest.Backend{a, b} {
		if s := c.Backend(t, "web", other.URL()); s.Held || s.HoldsTotal != 0 || !s.Alive {
			t.Fatalf("a backend that answers was held: %+v", s)
		}
	}
}

func TestFlapHoldDoublesUpToItsMaxAndStartsOverAfterAQuietPeriod(t *testing.T) {
	var failing atomic.Bool
	failing.Store(true)
	flapper := lbtest.NewBackend(t, "flapper", func(w http.ResponseWriter, r *http.Request) {
		if failing.Load() {
			resetsEveryRequest(w, r)
			return
		}
		_, _ = w.Write([]byte("flapper"))
	})
	a := lbtest.NewBackend(t, "a", nil)
	b := lbtest.NewBackend(t, "b", nil)
	c := loadChecked(t, "flap_hold 200ms max 1s", flapper, a, b)

	// getsUntil sends GETs one at a time until the flapper has been held
	// holds times; each must succeed, retried when the flapper failed it
	getsUntil := func(holds uint64) {
		t.Helper()
		lbtest.Eventually(t, 20*time.Second, "the flapper held again", func() bool {
			if status, _ := c.Get(t, c.URL("/")); status != 200 {
				t.Fatalf("GET: status %d", status)
			}
			return c.Backend(t, "web", flapper.URL()).HoldsTotal >= holds
		})
	}
	getsUntil(4)
	var lengths []float64
	logged := holdsLogged(t, c, flapper.URL())
	for _, e := range logged {
		lengths = append(lengths, e.Hold)
	}
	t.Logf("holds in a row: %v s", lengths)
	if want := []float64{0.2, 0.4, 0.8, 1}; !equalFloats(lengths, want) {
		t.Fatalf("holds of %v s, want %v: doubling from the base up to the max", lengths, want)
	}

	// the backend mends: it returns when its hold ends and its check
	// passes, and the streak starts over once it has gone twice its last
	// hold (2s) without another
	failing.Store(false)
	lbtest.Eventually(t, 5*time.Second, "the flapper back after its hold", func() bool {
		return c.Backend(t, "web", flapper.URL()).Alive
	})
	if s := c.Backend(t, "web", flapper.URL()); s.Held || s.HoldsInARow != 4 {
		t.Fatalf("just back: %+v; want not held, 4 holds in a row until the quiet period passes", s)
	}
	lbtest.Eventually(t, 10*time.Second, "the streak to start over", func() bool {
		return c.Backend(t, "web", flapper.URL()).HoldsInARow == 0
	})
	lastEnd := time.UnixMicro(int64(logged[3].HeldUntil * 1e6))
	t.Logf("streak started over %v after the last hold ended", time.Since(lastEnd).Round(10*time.Millisecond))
	if quiet := time.Since(lastEnd); quiet < 1990*time.Millisecond {
		t.Fatalf("streak started over %v after the last hold ended, want twice that hold (2s)", quiet)
	}

	failing.Store(true)
	getsUntil(5)
	logged = holdsLogged(t, c, flapper.URL())
	if len(logged) != 5 || logged[4].Hold != 0.2 || logged[4].HoldsInARow != 1 {
		t.Fatalf("after the quiet period: %+v; want a fifth hold of the base, 0.2s, first in a row", logged)
	}
	if s := c.Backend(t, "web", flapper.URL()); s.HoldsTotal != 5 {
		t.Fatalf("holds_total %d, want 5: one log entry per hold", s.HoldsTotal)
	}
}

func equalFloats(a, b []float64) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func TestFlapHoldsNeverLeaveThePoolWithoutABackend(t *testing.T) {
	x := lbtest.NewBackend(t, "x", resetsEveryRequest)
	y := lbtest.NewBackend(t, "y", resetsEveryRequest)
	c := loadChecked(t, "max_ejected_percent 100", x, y)

	heldAtOnce := 0
	for range 100 {
		if resp, err := c.Client().Post(c.URL("/order"), "text/plain", strings.NewReader("pay 10")); err == nil {
			resp.Body.Close()
		}
		n := 0
		for _, s := range c.Stats(t, "web") {
			if s.Held {
				n++
			}
		}
		heldAtOnce = max(heldAtOnce, n)
	}
	if heldAtOnce != 1 {
		t.Fatalf("%d of 2 flapping backends held at once, want 1: holds never take the last backend", heldAtOnce)
	}
	refused := 0
	for _, b := range []*lbtest.Backend{x, y} {
		n := len(c.Logs(`"msg":"flap hold refused"`, "no other backend could take traffic", `"backend":"`+b.URL()+`"`))
		if n > 1 {
			t.Fatalf("%s: %d refused-hold log entries, want one at most", b.Name, n)
		}
		refused += n
	}
	if refused == 0 {
		t.Fatal("no log entry says a hold was refused")
	}
}

func TestFlapHoldOffKeepsTheOldBehaviour(t *testing.T) {
	a := lbtest.NewBackend(t, "a", nil)
	flapper := lbtest.NewBackend(t, "flapper", resetsEveryRequest)
	c := loadChecked(t, "flap_hold off", a, flapper)
	if failed := load(t, c, 1, 100, "/"); failed != 0 {
		t.Fatalf("%d GETs failed", failed)
	}
	if s := c.Backend(t, "web", flapper.URL()); s.HoldsTotal != 0 || flapper.Requests.Load() < 10 {
		t.Fatalf("flap_hold off: %d holds, %d tries on the flapper; want none and a share of the tries",
			s.HoldsTotal, flapper.Requests.Load())
	}
}
