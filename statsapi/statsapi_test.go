package statsapi_test

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/lbpool/lbpool/internal/lbtest"
)

func TestMain(m *testing.M) {
	code := m.Run()
	lbtest.Stop()
	os.Exit(code)
}

// pool is a site with one lbpool named web over the backends.
func pool(c *lbtest.Caddy, extra string, backends ...*lbtest.Backend) string {
	return c.Site(extra, backends...)
}

func TestStatsShowEveryBackendWithCountsThatMatchTheBackends(t *testing.T) {
	c := lbtest.Start(t)
	var bs []*lbtest.Backend
	for i := range 3 {
		bs = append(bs, lbtest.NewBackend(t, fmt.Sprint("app", i+1), nil))
	}
	other := lbtest.NewBackend(t, "other", nil)
	c.Load(t, pool(c, "", bs...)+fmt.Sprintf(`
:%d {
	lbpool %s {
		name api
		weight %s 2
	}
}`, lbtest.FreePort(t), other.Addr(), other.Addr()))
	for range 31 {
		if status, _ := c.Get(t, c.URL("/")); status != 200 {
			t.Fatalf("status %d", status)
		}
	}
	lbtest.Eventually(t, 5*time.Second, "first checks", func() bool {
		for _, s := range c.Stats(t, "web") {
			if s.LastCheck == nil {
				return false
			}
		}
		return true
	})

	status, body := c.Admin(t, http.MethodGet, "/lbpool/stats?pool=web", "")
	if status != 200 {
		t.Fatalf("status %d", status)
	}
	var raw []map[string]any
	if err := json.Unmarshal(body, &raw); err != nil {
		t.Fatal(err)
	}
	if len(raw) != 3 {
		t.Fatalf("%d entries for pool web, want 3", len(raw))
	}
	for i, entry := range raw {
		for _, key := range []string{"pool", "url", "alive", "state", "weight", "uptime", "uptime_seconds",
			"memory_usage", "memory_bytes", "active_connections", "requests_total", "failures_total",
			"status_changes", "last_check", "downtime_seconds", "last_change", "consecutive_passes",
			"consecutive_fails", "retries_total", "latency_ewma_ms", "sticky_requests_total"} {
			if _, ok := entry[key]; !ok {
				t.Errorf("entry %d lacks %q", i, key)
			}
		}
		if entry["url"] != bs[i].URL() {
			t.Errorf("entry %d is %v, want %s (config order)", i, entry["url"], bs[i].URL())
		}
		if entry["memory_usage"] != "" || entry["memory_bytes"] != nil {
			t.Errorf("without stats_uri memory is %v / %v, want \"\" / null", entry["memory_usage"], entry["memory_bytes"])
		}
		check := entry["last_check"].(map[string]any)
		for _, key := range []string{"at", "duration_ms", "status", "error"} {
			if _, ok := check[key]; !ok {
				t.Errorf("last_check lacks %q", key)
			}
		}
	}

	var total uint64
	for i, s := range c.Stats(t, "web") {
		if s.RequestsTotal != uint64(bs[i].Requests.Load()) {
			t.Errorf("%s: requests_total %d, backend counted %d", s.URL, s.RequestsTotal, bs[i].Requests.Load())
		}
		if !s.Alive || s.State != "ready" || s.ActiveConnections != 0 || s.Uptime == "" || s.LatencyEWMAMS <= 0 {
			t.Errorf("%s: %+v", s.URL, s)
		}
		total += s.RequestsTotal
	}
	if total != 31 {
		t.Fatalf("requests_total adds to %d, want 31", total)
	}
	if w := c.Backend(t, "api", other.URL()).Weight; w != 2 {
		t.Fatalf("weight %d, want 2", w)
	}
	if all := c.Stats(t, ""); len(all) != 4 || all[0].Pool != "api" || all[1].URL != bs[0].URL() {
		t.Fatalf("unfiltered stats: %d entries, want 4: pool api, then web in config order", len(all))
	}
	status, body = c.Admin(t, http.MethodGet, "/lbpool/stats?pool=nope", "")
	assertJSONError(t, status, body, http.StatusNotFound)
}

func assertJSONError(t *testing.T, status int, body []byte, want int) {
	t.Helper()
	var e struct {
		Error string `json:"error"`
	}
	if status != want || json.Unmarshal(body, &e) != nil || e.Error == "" {
		t.Fatalf("got %d %s, want %d with a JSON error field", status, body, want)
	}
}

func TestMemoryFromJSONAndPrometheusBackends(t *testing.T) {
	c := lbtest.Start(t)
	jsonB := lbtest.NewBackend(t, "json", func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/stats" {
			_, _ = io.WriteString(w, `{"memory_usage": 1258291}`)
		}
	})
	promB := lbtest.NewBackend(t, "prom", func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/stats" {
			w.Header().Set("Content-Type", "text/plain; version=0.0.4")
			_, _ = io.WriteString(w, "# HELP process_resident_memory_bytes Resident memory size in bytes.\n"+
				"# TYPE process_resident_memory_bytes gauge\nprocess_resident_memory_bytes 5.24288e+07\n")
		}
	})
	c.Load(t, pool(c, "health_interval 50ms\n\t\tstats_uri /stats", jsonB, promB))
	want := map[string]int64{jsonB.URL(): 1258291, promB.URL(): 52428800}
	text := map[string]string{jsonB.URL(): "1.2 MB", promB.URL(): "50.0 MB"}
	lbtest.Eventually(t, 5*time.Second, "memory figures", func() bool {
		for _, s := range c.Stats(t, "web") {
			if s.MemoryBytes == nil {
				return false
			}
			if *s.MemoryBytes != want[s.URL] || s.MemoryUsage != text[s.URL] {
				t.Fatalf("%s: memory %d %q, want %d %q", s.URL, *s.MemoryBytes, s.MemoryUsage, want[s.URL], text[s.URL])
			}
		}
		return true
	})
}

func TestSlowStatsEndpointDoesNotDelayHealthChecks(t *testing.T) {
	c := lbtest.Start(t)
	release := make(chan struct{})
	var fetches atomic.Int64
	slowStats := func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/stats" {
			fetches.Add(1)
			select {
			case <-release:
			case <-r.Context().Done():
			}
		}
	}
	var bs []*lbtest.Backend
	for i := range 4 {
		bs = append(bs, lbtest.NewBackend(t, fmt.Sprint(i), slowStats))
	}
	defer close(release)
	c.Load(t, pool(c, "health_interval 20ms\n\t\thealth_timeout 5s\n\t\tstats_uri /stats\n\t\tstats_workers 1", bs...))
	// one worker holds one fetch; the queue holds one more; the rest is
	// skipped while every backend keeps being checked
	start := bs[0].HealthHits.Load()
	lbtest.Eventually(t, 10*time.Second, "20 more checks of every backend while the stats worker is stuck", func() bool {
		for _, b := range bs {
			if b.HealthHits.Load() < start+20 {
				return false
			}
		}
		return true
	})
	if n := fetches.Load(); n != 1 {
		t.Fatalf("%d stats fetches in flight with one worker, want 1", n)
	}
	lbtest.Eventually(t, 5*time.Second, "a skipped fetch logged at debug", func() bool {
		return len(c.Logs(`"stats fetch skipped: queue full"`, `"level":"debug"`)) > 0
	})
}

func TestBadStatsKeepTheLastGoodValueAndTraffic(t *testing.T) {
	c := lbtest.Start(t)
	var bad atomic.Bool
	var badFetches atomic.Int64
	b := lbtest.NewBackend(t, "b", func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/stats" {
			_, _ = io.WriteString(w, "ok")
			return
		}
		if !bad.Load() {
			_, _ = io.WriteString(w, `{"memory_usage": 2048}`)
			return
		}
		switch badFetches.Add(1) % 3 {
		case 0:
			_, _ = io.WriteString(w, "<html>not stats</html>")
		case 1: // endless body: the read is capped
			chunk := []byte(strings.Repeat("9", 64<<10))
			for range 64 {
				if _, err := w.Write(chunk); err != nil {
					return
				}
			}
		default:
			w.WriteHeader(500)
		}
	})
	c.Load(t, pool(c, "health_interval 20ms\n\t\tstats_uri /stats", b))
	lbtest.Eventually(t, 5*time.Second, "a good figure", func() bool {
		s := c.Backend(t, "web", b.URL())
		return s.MemoryBytes != nil && *s.MemoryBytes == 2048
	})
	bad.Store(true)
	lbtest.Eventually(t, 10*time.Second, "6 bad answers", func() bool { return badFetches.Load() >= 6 })
	for range 20 {
		if status, body := c.Get(t, c.URL("/")); status != 200 || body != "ok" {
			t.Fatalf("traffic got %d %q with a broken stats endpoint", status, body)
		}
	}
	s := c.Backend(t, "web", b.URL())
	if s.MemoryBytes == nil || *s.MemoryBytes != 2048 || !s.Alive {
		t.Fatalf("memory %v alive %v: want the last good 2048 and the backend up", s.MemoryBytes, s.Alive)
	}
}

func TestDrainLetsInFlightFinishAndSendsNothingNew(t *testing.T) {
	c := lbtest.Start(t)
	entered := make(chan struct{}, 1)
	release := make(chan struct{})
	var releaseOnce sync.Once
	a := lbtest.NewBackend(t, "a", func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/slow" {
			entered <- struct{}{}
			<-release
		}
		_, _ = io.WriteString(w, "a")
	})
	// registered after a's cleanup so it runs first: a's server waits for
	// the held request on close
	t.Cleanup(func() { releaseOnce.Do(func() { close(release) }) })
	b := lbtest.NewBackend(t, "b", nil)
	c.Load(t, pool(c, "", a, b))

	// start a long request on a: /slow on b answers at once, so send until
	// one lands on a (ties rotate: at most two tries)
	var wg sync.WaitGroup
	var slowStatus atomic.Int64
	for landed := false; !landed; {
		finished := make(chan struct{})
		wg.Go(func() {
			defer close(finished)
			status, _ := c.Get(t, c.URL("/slow"))
			slowStatus.Store(int64(status))
		})
		select {
		case <-entered:
			landed = true
		case <-finished: // it went to b
		}
	}
	status, body := c.Admin(t, http.MethodPost, "/lbpool/state", fmt.Sprintf(`{"pool":"web","backend":%q,"state":"drain"}`, a.Addr()))
	var s struct {
		URL               string `json:"url"`
		State             string `json:"state"`
		ActiveConnections int64  `json:"active_connections"`
	}
	if status != 200 || json.Unmarshal(body, &s) != nil || s.State != "drain" || s.URL != a.URL() || s.ActiveConnections != 1 {
		t.Fatalf("drain answered %d %s", status, body)
	}
	before := a.Requests.Load()
	for range 20 {
		if status, body := c.Get(t, c.URL("/")); status != 200 || body != "b" {
			t.Fatalf("new request while a drains: %d %q, want b", status, body)
		}
	}
	if a.Requests.Load() != before {
		t.Fatal("a drained backend got new requests")
	}
	releaseOnce.Do(func() { close(release) })
	wg.Wait()
	if slowStatus.Load() != 200 {
		t.Fatalf("the in-flight request on the drained backend ended with %d, want 200", slowStatus.Load())
	}
	if st := c.Backend(t, "web", a.URL()); st.ActiveConnections != 0 || st.State != "drain" || !st.Alive {
		t.Fatalf("after draining: %+v", st)
	}

	// admin state survives a reload; ready brings the backend back
	c.Load(t, pool(c, "retries 1", a, b))
	if st := c.Backend(t, "web", a.URL()); st.State != "drain" {
		t.Fatalf("state %q after a reload, want drain", st.State)
	}
	if status, _ := c.Admin(t, http.MethodPost, "/lbpool/state", `{"pool":"web","backend":"`+a.URL()+`","state":"ready"}`); status != 200 {
		t.Fatalf("ready: %d", status)
	}
	for range 4 {
		c.Get(t, c.URL("/"))
	}
	if a.Requests.Load() == before {
		t.Fatal("a ready backend got no traffic")
	}
}

func TestMaintStopsChecksAndTraffic(t *testing.T) {
	c := lbtest.Start(t)
	a := lbtest.NewBackend(t, "a", nil)
	b := lbtest.NewBackend(t, "b", nil)
	c.Load(t, pool(c, "health_interval 20ms", a, b))
	lbtest.Eventually(t, 5*time.Second, "checks", func() bool { return a.HealthHits.Load() > 2 })
	if status, body := c.Admin(t, http.MethodPost, "/lbpool/state", `{"pool":"web","backend":"`+a.Addr()+`","state":"maint"}`); status != 200 {
		t.Fatalf("maint: %d %s", status, body)
	}
	hits := a.HealthHits.Load()
	otherHits := b.HealthHits.Load()
	lbtest.Eventually(t, 10*time.Second, "20 checks of the other backend", func() bool { return b.HealthHits.Load() > otherHits+20 })
	if n := a.HealthHits.Load(); n > hits+1 { // one check may have been under way
		t.Fatalf("a backend in maint was checked %d more times", n-hits)
	}
	for range 10 {
		if _, body := c.Get(t, c.URL("/")); body != "b" {
			t.Fatalf("a backend in maint got traffic")
		}
	}
	c.Admin(t, http.MethodPost, "/lbpool/state", `{"pool":"web","backend":"`+a.Addr()+`","state":"ready"}`)
	lbtest.Eventually(t, 5*time.Second, "checks to resume", func() bool { return a.HealthHits.Load() > hits+2 })
}

func TestStateAPIErrors(t *testing.T) {
	c := lbtest.Start(t)
	a := lbtest.NewBackend(t, "a", nil)
	c.Load(t, pool(c, "", a))
	tests := []struct {
		name, method, path, body string
		want                     int
	}{
		{"bad JSON", "POST", "/lbpool/state", `{"pool":`, 400},
		{"unknown field", "POST", "/lbpool/state", `{"pool":"web","backend":"x","state":"drain","x":1}`, 400},
		{"missing field", "POST", "/lbpool/state", `{"pool":"web","state":"drain"}`, 400},
		{"bad state", "POST", "/lbpool/state", `{"pool":"web","backend":"` + a.Addr() + `","state":"off"}`, 400},
		{"unknown pool", "POST", "/lbpool/state", `{"pool":"nope","backend":"` + a.Addr() + `","state":"drain"}`, 404},
		{"unknown backend", "POST", "/lbpool/state", `{"pool":"web","backend":"10.9.9.9:1","state":"drain"}`, 404},
		{"GET state", "GET", "/lbpool/state", "", 405},
		{"POST stats", "POST", "/lbpool/stats", "{}", 405},
		{"too large", "POST", "/lbpool/state", `{"pool":"` + strings.Repeat("x", 70<<10) + `"}`, 413},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			status, body := c.Admin(t, tc.method, tc.path, tc.body)
			assertJSONError(t, status, body, tc.want)
		})
	}
}

// TestStateBodyIsOneJSONValueWithinTheLimit: the body is read to its end
// (up to the limit and one byte more) before anything is decoded, so a
// body over 64 KiB is a 413 whatever JSON it starts with, and within the
// limit only whitespace may follow the object. Nothing of a refused body
// reaches the pool.
func TestStateBodyIsOneJSONValueWithinTheLimit(t *testing.T) {
	c := lbtest.Start(t)
	a := lbtest.NewBackend(t, "a", nil)
	c.Load(t, pool(c, "", a))
	const limit = 64 << 10
	drain := fmt.Sprintf(`{"pool":"web","backend":%q,"state":"drain"}`, a.Addr())
	ready := strings.Replace(drain, "drain", "ready", 1)
	for _, tc := range []struct {
		name, body string
		want       int
	}{
		{"10 MiB of whitespace after the object", drain + strings.Repeat(" ", 10<<20), 413},
		{"whitespace to one byte over the limit", drain + strings.Repeat("\n", limit+1-len(drain)), 413},
		{"a second object", drain + ` {}`, 400},
		{"the object twice", drain + drain, 400},
		{"a word after the object", drain + ` x`, 400},
		{"a closing bracket after the object", drain + `]`, 400},
		{"a closing brace after the object", drain + "\n}", 400},
		{"a NUL byte after the object", drain + "\x00", 400},
		{"a non-breaking space after the object", drain + "\u00a0", 400},
	} {
		t.Run(tc.name, func(t *testing.T) {
			status, body := c.Admin(t, http.MethodPost, "/lbpool/state", tc.body)
			if st := c.Backend(t, "web", a.URL()); st.State != "ready" {
				c.Admin(t, http.MethodPost, "/lbpool/state", ready)
				t.Errorf("the body changed the state to %q", st.State)
			}
			assertJSONError(t, status, body, tc.want)
		})
	}
	// JSON's own whitespace after the object, to exactly the limit, is fine
	body := drain + strings.Repeat(" \t\r\n", limit)[:limit-len(drain)]
	if status, answer := c.Admin(t, http.MethodPost, "/lbpool/state", body); status != 200 {
		t.Fatalf("a body of exactly %d bytes, whitespace after the object: %d %s", limit, status, answer)
	}
	if st := c.Backend(t, "web", a.URL()); st.State != "drain" {
		t.Fatalf("state %q after an accepted drain", st.State)
	}
}

func TestMetricsOnTheAdminEndpoint(t *testing.T) {
	c := lbtest.Start(t)
	a := lbtest.NewBackend(t, "a", nil)
	c.Load(t, pool(c, "health_interval 20ms", a))
	for range 5 {
		c.Get(t, c.URL("/"))
	}
	lbtest.Eventually(t, 5*time.Second, "a check", func() bool { return a.HealthHits.Load() > 1 })
	_, body := c.Admin(t, http.MethodGet, "/metrics", "")
	labels := fmt.Sprintf(`{backend="%s",pool="web"}`, a.URL())
	for _, want := range []string{
		"caddy_lbpool_backend_up" + labels + " 1",
		"caddy_lbpool_backend_active_connections" + labels + " 0",
		"caddy_lbpool_backend_requests_total" + labels + " 5",
		"caddy_lbpool_backend_failures_total" + labels + " 0",
		"caddy_lbpool_backend_sticky_requests_total" + labels + " 0",
		"caddy_lbpool_health_check_duration_seconds_count" + labels,
	} {
		if !strings.Contains(string(body), want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
}

func TestRoutesExistOnlyOnTheAdminEndpoint(t *testing.T) {
	c := lbtest.Start(t)
	a := lbtest.NewBackend(t, "a", nil)
	c.Load(t, pool(c, "", a))
	if status, body := c.Get(t, c.URL("/lbpool/stats")); status != 200 || body != "a" {
		t.Fatalf("the site answered /lbpool/stats itself: %d %q", status, body)
	}
	if a.Requests.Load() != 1 {
		t.Fatal("the site did not proxy /lbpool/stats like any other path")
	}
}

func TestCredentialsAreRedactedEverywhere(t *testing.T) {
	c := lbtest.Start(t)
	var auth atomic.Value
	a := lbtest.NewBackend(t, "a", nil)
	a.SetHealth(func(w http.ResponseWriter, r *http.Request) {
		user, pass, _ := r.BasicAuth()
		auth.Store(user + ":" + pass)
		w.WriteHeader(503)
	})
	c.Load(t, fmt.Sprintf(`:%d {
	lbpool http://ops:hunter2@%s {
		name secret
		health_uri /health
		health_interval 20ms
	}
}`, c.HTTPPort, a.Addr()))
	redacted := "http://ops:xxxxx@" + a.Addr()
	lbtest.Eventually(t, 5*time.Second, "the backend down", func() bool { return !c.Backend(t, "secret", redacted).Alive })
	if auth.Load() != "ops:hunter2" {
		t.Fatalf("health check sent basic auth %v", auth.Load())
	}
	_, stats := c.Admin(t, http.MethodGet, "/lbpool/stats", "")
	_, metrics := c.Admin(t, http.MethodGet, "/metrics", "")
	logs := strings.Join(c.Logs("lbpool"), "\n")
	for where, text := range map[string]string{"stats": string(stats), "metrics": string(metrics), "logs": logs} {
		if strings.Contains(text, "hunter2") {
			t.Errorf("the password shows in the %s", where)
		}
	}
	if !strings.Contains(logs, redacted) {
		t.Error("the status-change log does not name the backend by its redacted URL")
	}
	if status, _ := c.Admin(t, http.MethodPost, "/lbpool/state", `{"pool":"secret","backend":"`+redacted+`","state":"drain"}`); status != 200 {
		t.Fatalf("matching by the redacted URL: %d", status)
	}
}
