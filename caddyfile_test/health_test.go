package caddyfile_test

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"runtime"
	"runtime/pprof"
	"slices"
	"sort"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/lbpool/lbpool/internal/lbtest"
	"github.com/lbpool/lbpool/leastconn"
)

func TestDownAfterConsecutiveFailsUpAfterConsecutivePasses(t *testing.T) {
	c := lbtest.Start(t)
	b := lbtest.NewBackend(t, "b", nil)
	other := lbtest.NewBackend(t, "other", nil)
	c.Load(t, site(c, "health_interval 20ms\n\t\thealth_fails 3\n\t\thealth_passes 2", b, other))
	lbtest.Eventually(t, 5*time.Second, "a first passing check", func() bool {
		return c.Backend(t, "web", b.URL()).ConsecutivePasses > 0
	})

	b.Health.Store(500)
	lbtest.Eventually(t, 10*time.Second, "the backend to go down", func() bool {
		s := c.Backend(t, "web", b.URL())
		if s.Alive && s.ConsecutiveFails >= 3 {
			t.Fatalf("still up after %d consecutive failed checks", s.ConsecutiveFails)
		}
		if !s.Alive && s.ConsecutiveFails < 3 {
			t.Fatalf("down after only %d consecutive failed checks", s.ConsecutiveFails)
		}
		return !s.Alive
	})

	b.Health.Store(200)
	lbtest.Eventually(t, 10*time.Second, "the backend to come back", func() bool {
		s := c.Backend(t, "web", b.URL())
		if !s.Alive && s.ConsecutivePasses >= 2 {
			t.Fatalf("still down after %d consecutive passes", s.ConsecutivePasses)
		}
		if s.Alive && s.ConsecutivePasses < 2 {
			t.Fatalf("up after only %d consecutive passes", s.ConsecutivePasses)
		}
		return s.Alive
	})
	if s := c.Backend(t, "web", b.URL()); s.StatusChanges != 2 {
		t.Fatalf("status_changes %d, want 2", s.StatusChanges)
	}
}

func TestOppositeResultResetsTheConsecutiveCounter(t *testing.T) {
	c := lbtest.Start(t)
	b := lbtest.NewBackend(t, "b", nil)
	var n atomic.Int64
	b.SetHealth(func(w http.ResponseWriter, r *http.Request) {
		if n.Add(1)%3 == 0 { // fail, fail, pass, fail, fail, pass, ...
			return
		}
		w.WriteHeader(500)
	})
	c.Load(t, site(c, "health_interval 10ms\n\t\thealth_fails 3", b))
	lbtest.Eventually(t, 10*time.Second, "30 checks", func() bool { return b.HealthHits.Load() >= 30 })
	if s := c.Backend(t, "web", b.URL()); !s.Alive || s.StatusChanges != 0 {
		t.Fatalf("two fails then a pass, repeated, took the backend down (alive=%v, changes=%d): counters are not consecutive",
			s.Alive, s.StatusChanges)
	}
}

func TestHealthStatusAndBodyMatching(t *testing.T) {
	tests := []struct {
		name    string
		options string
		status  int
		body    string
		alive   bool
		reason  string
	}{
		{"2xx by default", "", 204, "", true, ""},
		{"3xx by default", "", 302, "", true, ""},
		{"health_status 2xx is strict", "health_status 2xx", 302, "", false, "status 302"},
		{"500 fails", "", 500, "", false, "status 500"},
		{"exact code", "health_status 204", 200, "", false, "status 200"},
		{"class", "health_status 3xx", 304, "", true, ""},
		{"body matches", `health_body "^ready"`, 200, "ready: yes", true, ""},
		{"body does not match", `health_body "^ready"`, 200, "degraded", false, "body did not match"},
	}
	c := lbtest.Start(t)
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			b := lbtest.NewBackend(t, "b", nil)
			b.SetHealth(func(w http.ResponseWriter, r *http.Request) {
				w.WriteHeader(tc.status)
				_, _ = io.WriteString(w, tc.body)
			})
			c.Load(t, site(c, tc.options, b))
			var s leastconn.BackendStats
			lbtest.Eventually(t, 5*time.Second, "a check", func() bool {
				s = c.Backend(t, "web", b.URL())
				return s.LastCheck != nil
			})
			if s.Alive != tc.alive || s.LastCheck.Error != tc.reason {
				t.Fatalf("alive=%v reason=%q, want alive=%v reason=%q", s.Alive, s.LastCheck.Error, tc.alive, tc.reason)
			}
		})
	}
}

func TestHealthCheckSendsHeadersAndDoesNotFollowRedirects(t *testing.T) {
	c := lbtest.Start(t)
	var hostSeen, tokenSeen atomic.Value
	var followed atomic.Bool
	b := lbtest.NewBackend(t, "b", func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/elsewhere" {
			followed.Store(true)
		}
	})
	b.SetHealth(func(w http.ResponseWriter, r *http.Request) {
		hostSeen.Store(r.Host)
		tokenSeen.Store(r.Header.Get("X-Check-Token"))
		http.Redirect(w, r, "/elsewhere", http.StatusFound)
	})
	c.Load(t, site(c, "health_status 2xx\n\t\thealth_headers {\n\t\t\tHost status.internal\n\t\t\tX-Check-Token s3cret\n\t\t}", b))
	var s leastconn.BackendStats
	lbtest.Eventually(t, 5*time.Second, "a check", func() bool {
		s = c.Backend(t, "web", b.URL())
		return s.LastCheck != nil
	})
	if s.Alive || s.LastCheck.Status != http.StatusFound || followed.Load() {
		t.Fatalf("alive=%v status=%d followed=%v: a redirect must be judged as a 302, not followed",
			s.Alive, s.LastCheck.Status, followed.Load())
	}
	if hostSeen.Load() != "status.internal" || tokenSeen.Load() != "s3cret" {
		t.Fatalf("check sent Host %v and X-Check-Token %v", hostSeen.Load(), tokenSeen.Load())
	}
}

func TestChecksOfManyBackendsAreSpread(t *testing.T) {
	c := lbtest.Start(t)
	var backends []*lbtest.Backend
	for i := range 10 {
		backends = append(backends, lbtest.NewBackend(t, fmt.Sprint(i), nil))
	}
	c.Load(t, site(c, "health_interval 100ms", backends...))
	lbtest.Eventually(t, 10*time.Second, "three rounds of checks", func() bool {
		for _, b := range backends {
			if b.HealthHits.Load() < 3 {
				return false
			}
		}
		return true
	})
	for round := range 3 {
		var times []time.Time
		for _, b := range backends {
			times = append(times, b.HealthTimes()[round])
		}
		sort.Slice(times, func(i, j int) bool { return times[i].Before(times[j]) })
		if spread := times[len(times)-1].Sub(times[0]); spread < time.Millisecond {
			t.Fatalf("round %d: all 10 checks landed within %v", round, spread)
		} else {
			t.Logf("round %d: checks spread over %v", round, spread)
		}
	}
}

// A large pool that joins at once is checked evenly over the interval from
// the second round on: each backend's second check comes at a random moment
// within one interval after its first (which comes promptly), and the rounds
// after keep that phase. Checked here as the spread of the gaps between
// each backend's first and second checks over 200 backends; without the
// spread they all fall within the 10% jitter of one interval.
func TestChecksOfALargePoolSpreadOverTheInterval(t *testing.T) {
	const n, interval, buckets = 200, time.Second, 10
	c := lbtest.Start(t)
	var backends []*lbtest.Backend
	for i := range n {
		backends = append(backends, lbtest.NewBackend(t, fmt.Sprint(i), nil))
	}
	c.Load(t, site(c, "health_interval "+interval.String(), backends...))
	lbtest.Eventually(t, 20*time.Second, "two checks of every backend", func() bool {
		for _, b := range backends {
			if b.HealthHits.Load() < 2 {
				return false
			}
		}
		return true
	})
	var counts [buckets]int
	early := 0
	for _, b := range backends {
		times := b.HealthTimes()
		gap := times[1].Sub(times[0])
		counts[min(int(gap*buckets/interval), buckets-1)]++
		if gap < interval/2 {
			early++
		}
	}
	t.Logf("gaps between the first and the second check, in tenths of the interval: %v", counts)
	// About n/buckets in each. A check that is slow to complete (200 at
	// once on a loaded machine: 30% of the gaps in the last tenth were seen
	// under the race detector with ten other processes busy) delays the
	// next, so the later tenths get more: the bounds are loose, and
	// without the spread every gap is in the last tenth.
	if most := slices.Max(counts[:]); most > n/2 {
		t.Fatalf("%d of %d second checks within one tenth of the interval after the first: not spread (%v)", most, n, counts)
	}
	if early < n/5 || early > 4*n/5 {
		t.Fatalf("%d of %d second checks within half an interval of the first, want about half (%v)", early, n, counts)
	}
}

func TestKilledBackendUnderLoadCostsNoFailedGETAndIsDownWithinASecond(t *testing.T) {
	c := lbtest.Start(t)
	a := lbtest.NewBackend(t, "a", nil)
	victim := lbtest.NewBackend(t, "victim", nil)
	b := lbtest.NewBackend(t, "b", nil)
	c.Load(t, site(c, "", a, victim, b)) // default interval: 20s
	var stop atomic.Bool
	var sent, failed int64
	done := make(chan struct{})
	go func() {
		defer close(done)
		sent, failed = c.Traffic(8, 50000, "/", stop.Load)
	}()
	// The first check runs at a random moment within firstCheckSpread of
	// the load; killed before it, the victim could be found down by that
	// check rather than by a failing request. The next check is 20s away.
	lbtest.Eventually(t, 10*time.Second, "traffic on the victim and its first check", func() bool {
		return victim.Requests.Load() > 50 && victim.HealthHits.Load() > 0
	})
	victim.Close()
	lbtest.Eventually(t, time.Second, "the killed backend down in the stats", func() bool {
		return !c.Backend(t, "web", victim.URL()).Alive
	})
	before := a.Requests.Load() + b.Requests.Load()
	lbtest.Eventually(t, 10*time.Second, "traffic to move", func() bool { return a.Requests.Load()+b.Requests.Load() > before+200 })
	stop.Store(true)
	<-done
	if failed != 0 {
		t.Fatalf("%d of %d GETs failed when a backend was killed", failed, sent)
	}
	// Killing is not atomic (the server stops accepting, then drops its
	// connections), so a check can still pass in between and bring the
	// backend up for a moment: each change is logged once, so the lines
	// alternate, starting and ending with down.
	lines := c.Logs(`"status change"`, victim.URL())
	want := `"status":"down"`
	for i, line := range lines {
		if !strings.Contains(line, want) {
			t.Fatalf("status-change line %d is not %s:\n%s", i, want, strings.Join(lines, "\n"))
		}
		want = map[string]string{`"status":"down"`: `"status":"up"`, `"status":"up"`: `"status":"down"`}[want]
	}
	if len(lines)%2 != 1 {
		t.Fatalf("the killed backend's status-change lines do not end with down:\n%s", strings.Join(lines, "\n"))
	}
	if !strings.Contains(lines[0], "proxy error") {
		t.Fatalf("the reason does not say why: %s", lines[0])
	}
}

func TestStatusChangeIsLoggedOncePerChange(t *testing.T) {
	c := lbtest.Start(t)
	b := lbtest.NewBackend(t, "b", nil)
	c.Load(t, site(c, "health_interval 10ms", b))
	lbtest.Eventually(t, 5*time.Second, "checks", func() bool { return b.HealthHits.Load() > 3 })
	b.Health.Store(503)
	lbtest.Eventually(t, 5*time.Second, "down", func() bool { return !c.Backend(t, "web", b.URL()).Alive })
	hits := b.HealthHits.Load()
	lbtest.Eventually(t, 5*time.Second, "more failing checks", func() bool { return b.HealthHits.Load() > hits+5 })
	b.Health.Store(200)
	lbtest.Eventually(t, 5*time.Second, "up", func() bool { return c.Backend(t, "web", b.URL()).Alive })
	hits = b.HealthHits.Load()
	lbtest.Eventually(t, 5*time.Second, "more passing checks", func() bool { return b.HealthHits.Load() > hits+5 })

	type entry struct {
		Level, Logger, Msg, Pool, Backend, Status, Reason string
		CheckDuration                                     *float64 `json:"check_duration"`
	}
	var got []entry
	for _, line := range c.Logs(`"status change"`, b.URL()) {
		var e entry
		if err := json.Unmarshal([]byte(line), &e); err != nil {
			t.Fatal(err)
		}
		got = append(got, e)
	}
	if len(got) != 2 {
		t.Fatalf("want 2 status-change entries (down, up), got %d: %+v", len(got), got)
	}
	down, up := got[0], got[1]
	if down.Level != "warn" || down.Status != "down" || down.Reason != "status 503" ||
		up.Level != "info" || up.Status != "up" {
		t.Fatalf("entries %+v", got)
	}
	for _, e := range got {
		if e.Logger != "http.handlers.lbpool" || e.Pool != "web" || e.Backend != b.URL() || e.CheckDuration == nil {
			t.Fatalf("entry lacks a field: %+v", e)
		}
	}
	for _, line := range c.Logs(`"health check"`, b.URL()) {
		if !strings.Contains(line, `"level":"debug"`) {
			t.Fatalf("a probe that changed nothing logged above debug: %s", line)
		}
	}
}

// TestNewReasonOfADownBackendIsLoggedOnceAtWarn: a backend down with
// "connection refused" whose port then answers 302 stays down (under the
// strict health_status 2xx; by default a 302 passes), and the log says why
// at warn, once: not at every check while the reason stays.
func TestNewReasonOfADownBackendIsLoggedOnceAtWarn(t *testing.T) {
	c := lbtest.Start(t)
	b := lbtest.NewBackend(t, "b", nil)
	b.SetHealth(func(w http.ResponseWriter, r *http.Request) { http.Redirect(w, r, "/elsewhere", http.StatusFound) })
	b.Close()
	c.Load(t, site(c, "health_interval 10ms\n\t\thealth_status 2xx", b))
	lbtest.Eventually(t, 5*time.Second, "ten refused checks", func() bool {
		s := c.Backend(t, "web", b.URL())
		return !s.Alive && s.ConsecutiveFails >= 10 && s.LastCheck.Error == "connection refused"
	})
	if lines := c.Logs(`"reason change"`, b.URL()); len(lines) != 0 {
		t.Fatalf("the same reason at every check logged a reason change:\n%s", strings.Join(lines, "\n"))
	}
	b.Restart(t)
	lbtest.Eventually(t, 5*time.Second, "a check answered 302", func() bool {
		return c.Backend(t, "web", b.URL()).LastCheck.Status == http.StatusFound
	})
	hits := b.HealthHits.Load()
	lbtest.Eventually(t, 5*time.Second, "ten more checks", func() bool { return b.HealthHits.Load() >= hits+10 })

	type entry struct {
		Level, Msg, Pool, Backend, Status, Reason string
		PreviousReason                            string `json:"previous_reason"`
	}
	var changes []entry
	for _, line := range c.Logs(`"level":"warn"`, b.URL()) {
		var e entry
		if err := json.Unmarshal([]byte(line), &e); err != nil {
			t.Fatal(err)
		}
		changes = append(changes, e)
	}
	want := []entry{
		{"warn", "status change", "web", b.URL(), "down", "connection refused", ""},
		{"warn", "reason change", "web", b.URL(), "down", "status 302", "connection refused"},
	}
	if fmt.Sprint(changes) != fmt.Sprint(want) {
		t.Fatalf("warnings logged:\n%+v\nwant:\n%+v", changes, want)
	}
	if c.Backend(t, "web", b.URL()).Alive {
		t.Fatal("a backend answering 302 to checks that want 2xx came up")
	}
}

func TestSlowStartGivesARecoveredBackendASmallShareFirst(t *testing.T) {
	c := lbtest.Start(t)
	work := func(w http.ResponseWriter, r *http.Request) { time.Sleep(2 * time.Millisecond) }
	steady := lbtest.NewBackend(t, "steady", work)
	back := lbtest.NewBackend(t, "back", work)
	c.Load(t, site(c, "health_interval 20ms\n\t\tslow_start 3s", steady, back))
	for _, s := range c.Stats(t, "web") {
		if s.SlowStartPercent != 0 {
			t.Fatalf("%s ramps at process start (%v%%)", s.URL, s.SlowStartPercent)
		}
	}
	back.Health.Store(500)
	lbtest.Eventually(t, 5*time.Second, "down", func() bool { return !c.Backend(t, "web", back.URL()).Alive })

	share := func(d time.Duration) float64 {
		s0, b0 := steady.Requests.Load(), back.Requests.Load()
		if failed := loadFor(t, c, 8, d); failed != 0 {
			t.Fatalf("%d requests failed", failed)
		}
		ds, db := steady.Requests.Load()-s0, back.Requests.Load()-b0
		return float64(db) / float64(ds+db)
	}
	back.Health.Store(200)
	lbtest.Eventually(t, 5*time.Second, "up", func() bool { return c.Backend(t, "web", back.URL()).Alive })
	early := share(500 * time.Millisecond)
	lbtest.Eventually(t, 10*time.Second, "the ramp to end", func() bool {
		return c.Backend(t, "web", back.URL()).SlowStartPercent == 0
	})
	late := share(500 * time.Millisecond)
	t.Logf("recovered backend's share: %.1f%% in the first 500ms, %.1f%% after the window", early*100, late*100)
	if early > 0.30 || late < 0.40 {
		t.Fatalf("share %.2f early, %.2f late: want small first, then its full half", early, late)
	}
}

// loadFor runs GETs from clients for d and returns the failures.
func loadFor(t *testing.T, c *lbtest.Caddy, clients int, d time.Duration) int64 {
	t.Helper()
	deadline := time.Now().Add(d)
	_, failed := c.Traffic(clients, 1<<30, "/", func() bool { return time.Now().After(deadline) })
	return failed
}

func TestHealthStateSurvivesReload(t *testing.T) {
	c := lbtest.Start(t)
	up := lbtest.NewBackend(t, "up", nil)
	down := lbtest.NewBackend(t, "down", nil)
	down.Health.Store(500)
	c.Load(t, site(c, "health_interval 1h", up, down))
	lbtest.Eventually(t, 5*time.Second, "the first checks", func() bool {
		return !c.Backend(t, "web", down.URL()).Alive && c.Backend(t, "web", up.URL()).LastCheck != nil
	})
	before := c.Stats(t, "web")
	checks := down.HealthHits.Load()

	c.Load(t, site(c, "health_interval 1h\n\t\tretries 1", up, down)) // same checks, another setting
	after := c.Stats(t, "web")
	for i := range before {
		b, a := before[i], after[i]
		if a.Alive != b.Alive || a.StatusChanges != b.StatusChanges || a.ConsecutiveFails != b.ConsecutiveFails ||
			a.ConsecutivePasses != b.ConsecutivePasses || !derefTime(a.LastChange).Equal(derefTime(b.LastChange)) {
			t.Fatalf("%s changed across the reload:\nbefore %+v\nafter  %+v", b.URL, b, a)
		}
	}
	if status, _ := c.Get(t, c.URL("/")); status != 200 {
		t.Fatalf("status %d", status)
	}
	if down.Requests.Load() != 0 {
		t.Fatal("the down backend got traffic after the reload: its health was reset")
	}
	if n := down.HealthHits.Load(); n != checks {
		t.Fatalf("the reload re-checked a backend whose check did not change (%d → %d checks)", checks, n)
	}

	// a backend new to the pool starts up and is checked at once
	added := lbtest.NewBackend(t, "added", nil)
	added.Health.Store(500)
	c.Load(t, site(c, "health_interval 1h\n\t\tretries 1", up, down, added))
	lbtest.Eventually(t, 5*time.Second, "the new backend's first check", func() bool {
		return !c.Backend(t, "web", added.URL()).Alive
	})
}

func derefTime(t *time.Time) time.Time {
	if t == nil {
		return time.Time{}
	}
	return *t
}

func TestNoGoroutineGrowthAcrossReloadsAndPoolRemoval(t *testing.T) {
	c := lbtest.Start(t)
	var backends []*lbtest.Backend
	for i := range 4 {
		backends = append(backends, lbtest.NewBackend(t, fmt.Sprint(i), nil))
	}
	empty := fmt.Sprintf(":%d {\n\trespond ok\n}", c.HTTPPort)
	c.Load(t, empty)
	settle := func() int {
		c.CloseIdleConnections()
		return runtime.NumGoroutine()
	}
	baseline := settle()

	for i := range 50 {
		// alternate backends, settings, worker counts, load reports and a
		// second pool
		set := backends[i%2 : i%2+3]
		extra := fmt.Sprintf("health_interval %dms\n\t\tstats_uri /stats\n\t\tstats_workers %d", 50+i, 1+i%3)
		if i%3 == 0 {
			extra += "\n\t\tload_reports"
		}
		c.Load(t, site(c, extra, set...)+fmt.Sprintf("\n:%d {\n\tlbpool %s\n}", lbtest.FreePort(t), backends[3].Addr()))
		if i%10 == 0 {
			c.Get(t, c.URL("/"))
		}
	}
	c.Load(t, site(c, "health_interval 50ms\n\t\tstats_uri /stats\n\t\tload_reports", backends[:3]...))
	// 3 backends: 3 checkers, the default 3 stats workers, the pool's
	// fleet state sync (the second pool's has stopped with it) and its
	// load reports' weigher
	lbtest.EventuallyOr(t, 5*time.Second, "exactly 8 lbpool goroutines after 50 reloads", func() bool {
		return lbpoolGoroutines() == 8
	}, func() { t.Logf("%d lbpool goroutines", lbpoolGoroutines()); dumpGoroutines(t) })

	c.Load(t, empty)
	lbtest.EventuallyOr(t, 5*time.Second, "goroutines back at the baseline without pools", func() bool {
		return settle() <= baseline+2
	}, func() { t.Logf("baseline %d, now %d", baseline, settle()); dumpGoroutines(t) })
	if got := c.Stats(t, ""); len(got) != 0 {
		t.Fatalf("pools remain after removing every pool: %+v", got)
	}
}

// lbpoolGoroutines counts the goroutines running lbpool's own code.
func lbpoolGoroutines() int {
	var buf strings.Builder
	_ = pprof.Lookup("goroutine").WriteTo(&buf, 2)
	n := 0
	for _, g := range strings.Split(buf.String(), "\n\n") {
		if strings.Contains(g, "lbpool/leastconn.") {
			n++
		}
	}
	return n
}

func dumpGoroutines(t *testing.T) {
	var buf strings.Builder
	_ = pprof.Lookup("goroutine").WriteTo(&buf, 1)
	t.Log(buf.String())
}
