package statsapi_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/lbpool/lbpool/internal/lbtest"
)

// ---- the page, without a browser ----

func TestDashboardServesThePageAndItsAssetsWithAStrictPolicy(t *testing.T) {
	c := lbtest.Start(t)
	c.Load(t, pool(c, "", lbtest.NewBackend(t, "a", nil)))
	tests := []struct {
		path, contentType string
	}{
		{"/lbpool/", "text/html; charset=utf-8"},
		{"/lbpool/dashboard", "text/html; charset=utf-8"},
		{"/lbpool/dashboard.css", "text/css; charset=utf-8"},
		{"/lbpool/dashboard.js", "text/javascript; charset=utf-8"},
	}
	pages := map[string]string{}
	for _, tc := range tests {
		t.Run(tc.path, func(t *testing.T) {
			resp, body := adminGet(t, c, tc.path, nil)
			if resp.StatusCode != 200 || len(body) == 0 {
				t.Fatalf("status %d, %d bytes", resp.StatusCode, len(body))
			}
			for header, want := range map[string]string{
				"Content-Type":            tc.contentType,
				"X-Content-Type-Options":  "nosniff",
				"Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
			} {
				if got := resp.Header.Get(header); got != want {
					t.Errorf("%s: %q, want %q", header, got, want)
				}
			}
			pages[tc.path] = string(body)
		})
	}

	// the page loads exactly the two assets, from its own origin
	html := pages["/lbpool/"]
	var refs []string
	for _, m := range regexp.MustCompile(`(?:src|href)="([^"]*)"`).FindAllStringSubmatch(html, -1) {
		if !strings.HasPrefix(m[1], "data:") {
			refs = append(refs, m[1])
		}
	}
	slices.Sort(refs)
	if want := []string{"dashboard.css", "dashboard.js", "stats", "stats"}; !slices.Equal(refs, want) {
		t.Errorf("the page refers to %q, want %q (relative, on its own origin)", refs, want)
	}
	if js := strings.ReplaceAll(pages["/lbpool/dashboard.js"], `"http://www.w3.org/2000/svg"`, ""); strings.Contains(js, "://") {
		t.Error("the script names an absolute URL; it must call only its own origin")
	}

	for _, tc := range []struct {
		method, path string
		want         int
	}{
		{"GET", "/lbpool/nope", 404},
		{"GET", "/lbpool/dashboard.js/x", 404},
		{"POST", "/lbpool/", 405},
		{"DELETE", "/lbpool/dashboard.css", 405},
	} {
		status, body := c.Admin(t, tc.method, tc.path, "")
		assertJSONError(t, status, body, tc.want)
	}
}

// browserAdmin is the admin block docs/dashboard.md gives for opening the
// dashboard in a browser: Caddy rejects a browser request that carries
// Sec-Fetch-* headers but neither Origin nor Referer (a typed or bookmarked
// URL) unless the empty origin is allowed.
func browserAdmin(port int) string {
	return fmt.Sprintf("admin localhost:%d {\n\t\torigins localhost:%d 127.0.0.1:%d \"\"\n\t}", port, port, port)
}

// loadForBrowser loads site with browserAdmin instead of the plain admin
// line of lbtest's globals.
func loadForBrowser(t *testing.T, c *lbtest.Caddy, site string) {
	t.Helper()
	plain := fmt.Sprintf("admin localhost:%d\n", c.AdminPort)
	globals := c.Globals()
	if !strings.Contains(globals, plain) {
		t.Fatalf("lbtest's globals have no %q line to replace:\n%s", plain, globals)
	}
	if err := c.LoadCaddyfile(strings.Replace(globals, plain, browserAdmin(c.AdminPort)+"\n", 1) + site); err != nil {
		t.Fatalf("loading: %v", err)
	}
}

func TestDashboardOpensInABrowserOnlyWithTheEmptyOriginAllowed(t *testing.T) {
	c := lbtest.Start(t)
	a := lbtest.NewBackend(t, "a", nil)
	typedURL := map[string]string{"Sec-Fetch-Mode": "navigate", "Sec-Fetch-Site": "none", "Sec-Fetch-Dest": "document"}
	origin := fmt.Sprintf("http://localhost:%d", c.AdminPort)
	post := map[string]string{"Origin": origin, "Sec-Fetch-Mode": "cors", "Sec-Fetch-Site": "same-origin", "Content-Type": "application/json"}
	state := fmt.Sprintf(`{"pool":"web","backend":%q,"state":"ready"}`, a.Addr())

	c.Load(t, pool(c, "", a))
	if resp, body := adminGet(t, c, "/lbpool/", typedURL); resp.StatusCode != http.StatusForbidden {
		t.Fatalf("with the default admin config a typed URL got %d %s; Caddy now lets browsers in: "+
			"drop the origins advice from docs/dashboard.md", resp.StatusCode, body)
	}
	if resp, body := adminDo(t, c, "POST", "/lbpool/state", state, post); resp.StatusCode != 200 {
		t.Fatalf("the page's own POST with the default admin config: %d %s", resp.StatusCode, body)
	}

	loadForBrowser(t, c, pool(c, "", a))
	if resp, body := adminGet(t, c, "/lbpool/", typedURL); resp.StatusCode != 200 {
		t.Fatalf("with the empty origin allowed a typed URL got %d %s", resp.StatusCode, body)
	}
	for name, headers := range map[string]map[string]string{
		"another site":     {"Origin": "http://evil.example", "Sec-Fetch-Mode": "cors", "Sec-Fetch-Site": "cross-site"},
		"a no-cors embed":  {"Referer": origin + "/lbpool/", "Sec-Fetch-Mode": "no-cors"},
		"an opaque origin": {"Origin": "null"},
	} {
		if resp, _ := adminDo(t, c, "POST", "/lbpool/state", state, headers); resp.StatusCode/100 != 4 {
			t.Errorf("a POST from %s got %d, want it rejected", name, resp.StatusCode)
		}
	}
	if resp, body := adminDo(t, c, "POST", "/lbpool/state", state, post); resp.StatusCode != 200 {
		t.Fatalf("the page's own POST: %d %s", resp.StatusCode, body)
	}
}

func adminGet(t *testing.T, c *lbtest.Caddy, path string, headers map[string]string) (*http.Response, []byte) {
	t.Helper()
	return adminDo(t, c, "GET", path, "", headers)
}

func adminDo(t *testing.T, c *lbtest.Caddy, method, path, body string, headers map[string]string) (*http.Response, []byte) {
	t.Helper()
	req, err := http.NewRequest(method, fmt.Sprintf("http://localhost:%d%s", c.AdminPort, path), strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range headers {
		req.Header.Set(k, v)
	}
	// a new connection each time: every config load replaces the admin
	// server, and a POST sent on a connection it is closing is not retried
	client := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	resp, err := client.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp, b
}

// ---- the page in a real browser ----

// trafficBackend answers after 5-60 ms, so that connections overlap, and
// reports memory and a load at /stats.
func trafficBackend(t *testing.T, name string, memory int64) *lbtest.Backend {
	return lbtest.NewBackend(t, name, func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/stats" {
			fmt.Fprintf(w, `{"memory_usage": %d, "cpu_utilization": 0.25}`, memory)
			return
		}
		time.Sleep(time.Duration(5+rand.IntN(55)) * time.Millisecond)
		_, _ = io.WriteString(w, name)
	})
}

// sendTraffic has that many clients send requests to url, one after
// another each, until the test ends.
func sendTraffic(t *testing.T, c *lbtest.Caddy, url string, clients int) {
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	for range clients {
		wg.Go(func() {
			for ctx.Err() == nil {
				req, _ := http.NewRequestWithContext(ctx, "GET", url, nil)
				if resp, err := c.Client().Do(req); err == nil {
					_, _ = io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
				}
				time.Sleep(time.Duration(rand.IntN(40)) * time.Millisecond)
			}
		})
	}
	t.Cleanup(func() { cancel(); wg.Wait() })
}

// stickySession starts a session on the pool at c.URL("/") and sends n
// more requests with its cookie; it returns which of the backends (each
// answering with its name) served them.
func stickySession(t *testing.T, c *lbtest.Caddy, n int, backends []*lbtest.Backend) *lbtest.Backend {
	t.Helper()
	resp, err := c.Client().Get(c.URL("/"))
	if err != nil {
		t.Fatal(err)
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	var cookie *http.Cookie
	for _, ck := range resp.Cookies() {
		if ck.Name == "lb" {
			cookie = ck
		}
	}
	if cookie == nil {
		t.Fatal("no lb cookie on the first response of a sticky pool")
	}
	var name string
	for range n {
		req, _ := http.NewRequest(http.MethodGet, c.URL("/"), nil)
		req.AddCookie(cookie)
		resp, err := c.Client().Do(req)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if name != "" && string(body) != name {
			t.Fatalf("the session went to %s, then %s", name, body)
		}
		name = string(body)
	}
	for _, b := range backends {
		if b.Name == name {
			return b
		}
	}
	t.Fatalf("no backend answers %q", name)
	return nil
}

func TestDashboardInABrowserShowsBackendsAndDrainsOne(t *testing.T) {
	c := lbtest.Start(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	b := startBrowser(t, ctx)

	apps := []*lbtest.Backend{
		trafficBackend(t, "app1", 41<<20+300<<10),
		trafficBackend(t, "app2", 38<<20+700<<10),
		trafficBackend(t, "app3", 44<<20+100<<10),
	}
	loadForBrowser(t, c, pool(c, "health_interval 500ms\n\t\tstats_uri /stats\n\t\tload_reports stats\n\t\tslow_start 1m\n\t\tsticky cookie", apps...))
	sendTraffic(t, c, c.URL("/"), 6)
	home := stickySession(t, c, 5, apps) // the other clients send no cookie
	adminErrors := len(c.Logs(`"logger":"admin.api"`, `"request error"`))

	// as a user types it, with Caddy's default admin host name
	b.open(fmt.Sprintf("http://localhost:%d/lbpool/", c.AdminPort), 1280, 800)
	b.waitPage("three rows, all up, with memory and a check", func(p dashboardPage) bool {
		rows := p.rows("web")
		if len(p.Pools) != 1 || len(rows) != 3 {
			return false
		}
		for i, r := range rows {
			if r.URL != apps[i].URL() || r.Word != "up" || r.Memory == "–" || !strings.Contains(r.Check, "ms") {
				return false
			}
		}
		return true
	})
	b.waitPage("the learned weight and the reported utilization beside the weight", func(p dashboardPage) bool {
		for _, r := range p.rows("web") {
			if !strings.Contains(r.Note, "learned ×1.00; utilization 0.25") {
				return false
			}
		}
		return true
	})
	b.waitPage("the sticky column: 5 on the session's backend, 0 on the others", func(p dashboardPage) bool {
		for _, r := range p.rows("web") {
			want := "0"
			if r.URL == home.URL() {
				want = "5"
			}
			if r.Sticky != want {
				return false
			}
		}
		return true
	})
	// requests per second come from successive samples: a few polls draw
	// every backend's sparkline (a screenshot for the docs waits longer)
	screenshot := os.Getenv("LBPOOL_SCREENSHOT")
	if screenshot != "" {
		time.Sleep(25 * time.Second)
	}
	b.waitPage("req/s and a sparkline of 3 samples for every backend", func(p dashboardPage) bool {
		for _, r := range p.rows("web") {
			if rate, err := strconv.ParseFloat(r.Rate, 64); err != nil || rate <= 0 || r.Samples < 3 {
				return false
			}
		}
		return true
	})

	// drain app2 with its button; the answer shows in the row
	b.click(b.button(apps[1].URL(), "drain"))
	b.waitPage("app2 shown as drain, marked changed, with the result", func(p dashboardPage) bool {
		r := p.row("web", apps[1].URL())
		return r.Word == "drain" && r.Changed && r.Message == "drain: done" && slices.Equal(r.Pressed, []string{"drain"})
	})
	if s := c.Backend(t, "web", apps[1].URL()); s.State != "drain" {
		t.Fatalf("after the drain button the stats say %q", s.State)
	}
	b.waitPage("the drain marker to go after a few seconds", func(p dashboardPage) bool {
		r := p.row("web", apps[1].URL())
		return r.Word == "drain" && !r.Changed
	})

	// stop app3: the page turns it down
	apps[2].Close()
	b.waitPage("app3 shown as down and marked changed, the others unchanged", func(p dashboardPage) bool {
		rows := p.rows("web")
		return len(rows) == 3 && rows[2].Word == "down" && rows[2].Changed &&
			rows[0].Word == "up" && rows[1].Word == "drain"
	})
	// the picture of README.md and docs/dashboard.md, when asked for; else a throwaway one
	shot := filepath.Join(t.TempDir(), "dashboard.png")
	if screenshot != "" {
		shot = repoPath(t, screenshot)
	}
	b.screenshot(shot)
	b.viewport(1280, 800, false)

	// a weight from the page: set, shown, then back to the configured one
	if err := b.eval(`(() => { const i = [...document.querySelectorAll("tr.backend")].find((r) => r.dataset.url === `+jsString(apps[0].URL())+`).querySelector("input.weight-in"); i.value = "4"; return true; })()`, nil); err != nil {
		t.Fatal(err)
	}
	b.click(b.button(apps[0].URL(), "weight"))
	b.waitPage("app1 shown with weight 4", func(p dashboardPage) bool {
		r := p.row("web", apps[0].URL())
		return r.Message == "weight 4: done" && strings.Contains(p.Text, "weight 4 (set; configured 1)")
	})
	if s := c.Backend(t, "web", apps[0].URL()); s.Weight != 4 || s.ConfiguredWeight != 1 {
		t.Fatalf("after the weight button the stats say weight %d, configured %d", s.Weight, s.ConfiguredWeight)
	}
	if err := b.eval(`(() => { const i = [...document.querySelectorAll("tr.backend")].find((r) => r.dataset.url === `+jsString(apps[0].URL())+`).querySelector("input.weight-in"); i.value = ""; return true; })()`, nil); err != nil {
		t.Fatal(err)
	}
	b.click(b.button(apps[0].URL(), "weight"))
	b.waitPage("app1 back at its configured weight", func(p dashboardPage) bool {
		return p.row("web", apps[0].URL()).Message == "configured weight: done" && !strings.Contains(p.Text, "weight 4")
	})
	if s := c.Backend(t, "web", apps[0].URL()); s.Weight != 1 {
		t.Fatalf("after an empty weight the stats say weight %d", s.Weight)
	}

	// ready brings app2 back, from the page
	b.click(b.button(apps[1].URL(), "ready"))
	b.waitPage("app2 up again", func(p dashboardPage) bool {
		r := p.row("web", apps[1].URL())
		return r.Word == "up" && r.Message == "ready: done" && slices.Equal(r.Pressed, []string{"ready"})
	})

	// app3 comes back and ramps up
	apps[2].Restart(t)
	b.waitPage("app3 in slow start", func(p dashboardPage) bool {
		r := p.row("web", apps[2].URL())
		return regexp.MustCompile(`^slow start \d+%$`).MatchString(r.Word) && r.Changed
	})

	b.assertNoProblems()
	if n := len(c.Logs(`"logger":"admin.api"`, `"request error"`)); n != adminErrors {
		t.Fatalf("Caddy's admin endpoint rejected %d of the page's requests:\n%s", n-adminErrors,
			strings.Join(c.Logs(`"logger":"admin.api"`, `"request error"`)[adminErrors:], "\n"))
	}
}

func TestDashboardInABrowserGroupsTwoPoolsOfTwentyBackends(t *testing.T) {
	c := lbtest.Start(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	b := startBrowser(t, ctx)

	// 30 backends: api has the first 20, web the last 20, so 10 are in both
	var all []*lbtest.Backend
	for i := range 30 {
		all = append(all, lbtest.NewBackend(t, fmt.Sprint("b", i), nil))
	}
	api, web := all[:20], all[10:]
	loadForBrowser(t, c, pool(c, "", web...)+fmt.Sprintf(`
:%d {
	lbpool %s {
		name api
		health_uri /health
	}
}`, lbtest.FreePort(t), strings.Join(addrs(api), " ")))

	b.open(fmt.Sprintf("http://localhost:%d/lbpool/", c.AdminPort), 1280, 900)
	b.waitPage("40 rows in two pools, all up", func(p dashboardPage) bool {
		if len(p.Pools) != 2 {
			return false
		}
		for _, r := range slices.Concat(p.rows("api"), p.rows("web")) {
			if r.Word != "up" {
				return false
			}
		}
		return len(p.rows("api")) == 20 && len(p.rows("web")) == 20
	})
	p := b.page()
	if p.Pools[0].Name != "api" || p.Pools[1].Name != "web" {
		t.Fatalf("pools shown as %s, %s; want api, web (by name)", p.Pools[0].Name, p.Pools[1].Name)
	}
	for name, want := range map[string][]*lbtest.Backend{"api": api, "web": web} {
		for i, r := range p.rows(name) {
			if r.URL != want[i].URL() {
				t.Fatalf("pool %s row %d is %s, want %s (config order)", name, i, r.URL, want[i].URL())
			}
			if wantName := "Drain " + r.URL + " in pool " + name; !slices.Contains(r.Buttons, wantName) {
				t.Fatalf("pool %s row %d: buttons named %q, want one named %q", name, i, r.Buttons, wantName)
			}
		}
	}
	if p.Overflow {
		t.Fatal("the page is wider than a 1280px window")
	}

	// a backend in both pools is drained in one pool only
	shared := all[15].URL()
	b.click(b.buttonIn("web", shared, "drain"))
	b.waitPage("the shared backend drained in web only", func(p dashboardPage) bool {
		return p.row("web", shared).Word == "drain" && p.row("api", shared).Word == "up"
	})
	if s := c.Backend(t, "api", shared); s.State != "ready" {
		t.Fatalf("the backend's state in pool api is %q, want ready", s.State)
	}

	// a phone: every row is still there in its place, nothing is wider
	// than the screen, and the buttons are large enough to tap
	b.viewport(390, 844, true)
	b.waitPage("the phone layout", func(p dashboardPage) bool {
		for name, want := range map[string][]*lbtest.Backend{"api": api, "web": web} {
			rows := p.rows(name)
			if len(rows) != len(want) {
				return false
			}
			for i, r := range rows {
				if r.URL != want[i].URL() {
					return false
				}
			}
		}
		return !p.Overflow && p.SmallestButton >= 24
	})
	b.assertNoProblems()
}

func TestDashboardInABrowserShowsEjectionAndTheQueue(t *testing.T) {
	c := lbtest.Start(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	b := startBrowser(t, ctx)

	// pool web: bad answers 500 to requests and 200 to its checks, so it
	// stays up and is ejected for its responses
	good := lbtest.NewBackend(t, "good", nil)
	bad := lbtest.NewBackend(t, "bad", func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(500) })
	// pool held: one backend, one request at a time, each held until released
	release := make(chan struct{})
	var arrived atomic.Int64
	slow := lbtest.NewBackend(t, "slow", func(w http.ResponseWriter, r *http.Request) {
		arrived.Add(1)
		select {
		case <-release:
		case <-r.Context().Done():
		}
		_, _ = io.WriteString(w, "slow")
	})
	var releaseOnce sync.Once
	releaseAll := func() { releaseOnce.Do(func() { close(release) }) }
	t.Cleanup(releaseAll) // before the backend closes, which waits for its requests
	heldPort := lbtest.FreePort(t)
	loadForBrowser(t, c, pool(c, "fail_duration 30s\n\t\tmax_fails 1\n\t\tunhealthy_status 5xx", good, bad)+fmt.Sprintf(`
:%d {
	lbpool %s {
		name held
		health_uri /health
		max_conns 1
		queue_timeout 30s
	}
}`, heldPort, slow.Addr()))

	b.open(fmt.Sprintf("http://localhost:%d/lbpool/", c.AdminPort), 1280, 800)
	b.waitPage("both pools up, held with its cap and no queue yet", func(p dashboardPage) bool {
		web, held := p.rows("web"), p.rows("held")
		return len(web) == 2 && len(held) == 1 && web[0].Word == "up" && web[1].Word == "up" && held[0].Word == "up" &&
			held[0].Note == "max 1" && !strings.Contains(p.info("held"), "queue")
	})

	for i := 0; i < 20 && !c.Backend(t, "web", bad.URL()).Ejected; i++ {
		c.Get(t, c.URL("/"))
	}
	if s := c.Backend(t, "web", bad.URL()); !s.Ejected || !s.Alive {
		t.Fatalf("bad after 20 requests: ejected %v, alive %v; want ejected and alive", s.Ejected, s.Alive)
	}
	b.waitPage("bad shown as ejected, with the reason, and counted", func(p dashboardPage) bool {
		r := p.row("web", bad.URL())
		return r.Word == "ejected" && r.Note == "ejected: 5xx: 500" && r.Changed &&
			p.row("web", good.URL()).Word == "up" &&
			strings.Contains(p.info("web"), "1 up · 1 ejected") && strings.Contains(p.Summary, "2 up · 1 ejected")
	})

	// one request held at the backend, one more waits in the queue
	heldURL := fmt.Sprintf("http://127.0.0.1:%d/", heldPort)
	answers := make(chan int, 2)
	get := func() {
		resp, err := c.Client().Get(heldURL)
		if err != nil {
			answers <- 0
			return
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		answers <- resp.StatusCode
	}
	go get()
	lbtest.Eventually(t, 5*time.Second, "the first request at the backend", func() bool { return arrived.Load() == 1 })
	go get()
	b.waitPage("pool held with one request waiting", func(p dashboardPage) bool {
		return strings.Contains(p.info("held"), "· queue 1 waiting · 1 queued · 0 timed out")
	})
	releaseAll()
	for range 2 {
		select {
		case code := <-answers:
			if code != 200 {
				t.Fatalf("a request to pool held: status %d", code)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("the released requests did not finish in 10s")
		}
	}
	b.waitPage("pool held with none waiting", func(p dashboardPage) bool {
		return strings.Contains(p.info("held"), "· queue 0 waiting · 1 queued · 0 timed out")
	})
	b.assertNoProblems()
}

func addrs(backends []*lbtest.Backend) []string {
	out := make([]string, len(backends))
	for i, b := range backends {
		out[i] = b.Addr()
	}
	return out
}

// repoPath resolves a relative path against the repository root (where
// go.mod is), since tests run in their package's directory.
func repoPath(t *testing.T, path string) string {
	if filepath.IsAbs(path) {
		return path
	}
	dir, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return filepath.Join(dir, path)
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			t.Fatalf("no go.mod above the test's directory to resolve %s against", path)
		}
		dir = parent
	}
}

// dashboardPage is what the page shows, read from its DOM.
type dashboardPage struct {
	Pools []struct {
		Name string         `json:"name"`
		Info string         `json:"info"`
		Rows []dashboardRow `json:"rows"`
	} `json:"pools"`
	Summary        string  `json:"summary"`
	Overflow       bool    `json:"overflow"`
	SmallestButton float64 `json:"smallestButton"`
	Text           string  `json:"text"`
}

type dashboardRow struct {
	URL     string   `json:"url"`
	Word    string   `json:"word"`
	Note    string   `json:"note"`
	Changed bool     `json:"changed"`
	Memory  string   `json:"memory"`
	Sticky  string   `json:"sticky"`
	Rate    string   `json:"rate"`
	Samples int      `json:"samples"`
	Check   string   `json:"check"`
	Message string   `json:"message"`
	Pressed []string `json:"pressed"`
	Buttons []string `json:"buttons"`
}

func (p dashboardPage) rows(pool string) []dashboardRow {
	for _, s := range p.Pools {
		if s.Name == pool {
			return s.Rows
		}
	}
	return nil
}

// info is a pool's line beside its name.
func (p dashboardPage) info(pool string) string {
	for _, s := range p.Pools {
		if s.Name == pool {
			return s.Info
		}
	}
	return ""
}

func (p dashboardPage) row(pool, url string) dashboardRow {
	for _, r := range p.rows(pool) {
		if r.URL == url {
			return r
		}
	}
	return dashboardRow{}
}

const readPage = `(() => {
	const text = (root, sel) => { const e = root.querySelector(sel); return e ? e.textContent.trim() : ""; };
	const buttons = [...document.querySelectorAll("button")].filter((b) => b.offsetParent);
	return {
		pools: [...document.querySelectorAll("section.pool")].map((s) => ({
			name: s.dataset.pool,
			info: text(s, ".pool-info"),
			rows: [...s.querySelectorAll("tr.backend")].map((r) => ({
				url: r.dataset.url,
				word: text(r, ".badge"),
				note: text(r, ".weight"),
				changed: r.classList.contains("changed") && !r.querySelector(".flag").hidden,
				memory: text(r, "td.col-memory"),
				sticky: text(r, "td.col-sticky"),
				rate: text(r, "td.col-rate"),
				samples: r.querySelector(".spark-line").points.length,
				check: text(r, "td.col-check"),
				message: text(r, ".msg"),
				pressed: [...r.querySelectorAll("button[aria-pressed=true]")].map((b) => b.dataset.action),
				buttons: [...r.querySelectorAll("button")].map((b) => b.getAttribute("aria-label")),
			})),
		})),
		summary: text(document, "#summary"),
		overflow: [document.documentElement, ...document.querySelectorAll(".table-wrap")].some((e) => e.scrollWidth > e.clientWidth),
		smallestButton: buttons.length ? Math.min(...buttons.map((b) => b.getBoundingClientRect().height)) : 0,
		text: document.body.innerText,
	};
})()`

// ---- a small DevTools protocol client ----

// browser is a headless Chromium driven over the DevTools protocol on a
// pipe (--remote-debugging-pipe): no port to open, no dependency. One page,
// one session; every call is bounded by the test's context.
type browser struct {
	t       *testing.T
	ctx     context.Context
	cmd     *exec.Cmd
	send    *os.File // the browser reads commands on its fd 3
	recv    *os.File // and writes answers and events on its fd 4
	dir     string   // the browser's home: profile, caches, crash database
	stderr  *os.File // a file, so that Wait does not wait for helpers that inherit it
	session string
	exited  chan struct{}
	sendMu  sync.Mutex
	nextID  atomic.Int64

	mu       sync.Mutex
	waiting  map[int64]chan cdpMessage
	problems []string // exceptions, console errors, refused requests
}

type cdpMessage struct {
	ID        int64           `json:"id,omitempty"`
	Method    string          `json:"method,omitempty"`
	Params    json.RawMessage `json:"params,omitempty"`
	SessionID string          `json:"sessionId,omitempty"`
	Result    json.RawMessage `json:"result,omitempty"`
	Error     *struct {
		Message string `json:"message"`
	} `json:"error,omitempty"`
}

// findChromium returns the browser to test with: $LBPOOL_CHROMIUM, else
// Chromium or Chrome on PATH. Without one the test is skipped, except in CI,
// where it fails.
func findChromium(t *testing.T) string {
	if path := os.Getenv("LBPOOL_CHROMIUM"); path != "" {
		return path
	}
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome", "google-chrome-stable"} {
		if path, err := exec.LookPath(name); err == nil {
			return path
		}
	}
	const msg = "no browser for the dashboard test: install Chromium (Debian: apt-get install chromium; .ci/run does it) " +
		"or set LBPOOL_CHROMIUM to a Chromium or Chrome binary"
	if ci := os.Getenv("CI"); ci != "" && ci != "false" && ci != "0" {
		t.Fatal(msg + " (CI is set, so this fails instead of skipping)")
	}
	t.Skip(msg)
	return ""
}

func startBrowser(t *testing.T, ctx context.Context) *browser {
	t.Helper()
	path := findChromium(t)
	browserIn, send, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	recv, browserOut, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	dir, err := os.MkdirTemp("", "lbpool-browser-")
	if err != nil {
		t.Fatal(err)
	}
	stderr, err := os.Create(filepath.Join(dir, "stderr.log"))
	if err != nil {
		t.Fatal(err)
	}
	b := &browser{t: t, ctx: ctx, send: send, recv: recv, dir: dir, stderr: stderr,
		exited: make(chan struct{}), waiting: map[int64]chan cdpMessage{}}
	b.cmd = exec.Command(path,
		"--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
		"--disable-background-networking", "--disable-component-update", "--disable-sync",
		"--disable-extensions", "--hide-scrollbars", "--mute-audio",
		"--user-data-dir="+filepath.Join(dir, "profile"), "--remote-debugging-pipe", "about:blank")
	b.cmd.Env = append(os.Environ(), "HOME="+dir, "XDG_CONFIG_HOME="+dir+"/.config", "XDG_CACHE_HOME="+dir+"/.cache")
	b.cmd.ExtraFiles = []*os.File{browserIn, browserOut}
	b.cmd.Stderr = stderr
	if err := b.cmd.Start(); err != nil {
		t.Fatalf("starting %s: %v", path, err)
	}
	browserIn.Close()
	browserOut.Close()
	t.Cleanup(b.close)
	go b.read()

	var target struct {
		TargetID string `json:"targetId"`
	}
	b.call("", "Target.createTarget", map[string]any{"url": "about:blank"}, &target)
	var attached struct {
		SessionID string `json:"sessionId"`
	}
	b.call("", "Target.attachToTarget", map[string]any{"targetId": target.TargetID, "flatten": true}, &attached)
	b.session = attached.SessionID
	for _, domain := range []string{"Page.enable", "Runtime.enable", "Log.enable"} {
		b.call(b.session, domain, nil, nil)
	}
	return b
}

// close ends the browser this test started, by its process: politely,
// then by force after 5s.
func (b *browser) close() {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_ = b.callErr(ctx, "", "Browser.close", nil, nil)
	waited := make(chan struct{})
	go func() { _ = b.cmd.Wait(); close(waited) }()
	select {
	case <-waited:
	case <-time.After(5 * time.Second):
		_ = b.cmd.Process.Kill()
		<-waited
	}
	b.send.Close()
	b.recv.Close()
	b.stderr.Close()
	// the crash handler leaves just after the browser; its files with it
	for i := 0; os.RemoveAll(b.dir) != nil && i < 20; i++ {
		time.Sleep(100 * time.Millisecond)
	}
}

// stderrTail is the end of what the browser wrote to stderr.
func (b *browser) stderrTail() string {
	data, _ := os.ReadFile(b.stderr.Name())
	if len(data) > 4000 {
		data = append([]byte("…"), data[len(data)-4000:]...)
	}
	return string(data)
}

func (b *browser) read() {
	defer close(b.exited)
	r := bufio.NewReader(b.recv)
	for {
		data, err := r.ReadBytes(0)
		if err != nil {
			return
		}
		var m cdpMessage
		if json.Unmarshal(data[:len(data)-1], &m) != nil {
			continue
		}
		b.mu.Lock()
		if ch, ok := b.waiting[m.ID]; ok && m.ID != 0 {
			delete(b.waiting, m.ID)
			ch <- m
		} else if m.ID == 0 {
			b.event(m)
		}
		b.mu.Unlock()
	}
}

// event keeps what the page should never do: throw, log an error (a
// refused request or a CSP violation shows up as one), or crash.
func (b *browser) event(m cdpMessage) {
	var p struct {
		ExceptionDetails struct {
			Text      string `json:"text"`
			Exception struct {
				Description string `json:"description"`
			} `json:"exception"`
		} `json:"exceptionDetails"`
		Entry struct {
			Level string `json:"level"`
			Text  string `json:"text"`
			URL   string `json:"url"`
		} `json:"entry"`
		Type string `json:"type"`
		Args []struct {
			Value any `json:"value"`
		} `json:"args"`
	}
	_ = json.Unmarshal(m.Params, &p)
	switch {
	case m.Method == "Runtime.exceptionThrown":
		b.problems = append(b.problems, "exception: "+p.ExceptionDetails.Text+" "+p.ExceptionDetails.Exception.Description)
	case m.Method == "Log.entryAdded" && p.Entry.Level == "error":
		b.problems = append(b.problems, "error: "+p.Entry.Text+" "+p.Entry.URL)
	case m.Method == "Runtime.consoleAPICalled" && (p.Type == "error" || p.Type == "assert"):
		b.problems = append(b.problems, fmt.Sprint("console.", p.Type, ": ", p.Args))
	case m.Method == "Inspector.targetCrashed":
		b.problems = append(b.problems, "the page crashed")
	}
}

// call sends a command and decodes its result; an error fails the test.
func (b *browser) call(session, method string, params, result any) {
	b.t.Helper()
	if err := b.callErr(b.ctx, session, method, params, result); err != nil {
		b.t.Fatal(err)
	}
}

func (b *browser) callErr(ctx context.Context, session, method string, params, result any) error {
	id := b.nextID.Add(1)
	ch := make(chan cdpMessage, 1)
	b.mu.Lock()
	b.waiting[id] = ch
	b.mu.Unlock()
	defer func() {
		b.mu.Lock()
		delete(b.waiting, id)
		b.mu.Unlock()
	}()
	msg, err := json.Marshal(struct {
		ID        int64  `json:"id"`
		Method    string `json:"method"`
		Params    any    `json:"params,omitempty"`
		SessionID string `json:"sessionId,omitempty"`
	}{id, method, params, session})
	if err != nil {
		return err
	}
	b.sendMu.Lock()
	_, err = b.send.Write(append(msg, 0))
	b.sendMu.Unlock()
	if err != nil {
		return fmt.Errorf("%s: %w", method, err)
	}
	select {
	case m := <-ch:
		if m.Error != nil {
			return fmt.Errorf("%s: %s", method, m.Error.Message)
		}
		if result != nil {
			return json.Unmarshal(m.Result, result)
		}
		return nil
	case <-ctx.Done():
		return fmt.Errorf("%s: %w", method, ctx.Err())
	case <-b.exited:
		return fmt.Errorf("%s: the browser exited; its stderr:\n%s", method, b.stderrTail())
	}
}

// eval runs a JS expression in the page and decodes its value.
func (b *browser) eval(expr string, out any) error {
	var res struct {
		Result struct {
			Value json.RawMessage `json:"value"`
		} `json:"result"`
		ExceptionDetails *struct {
			Text      string `json:"text"`
			Exception struct {
				Description string `json:"description"`
			} `json:"exception"`
		} `json:"exceptionDetails"`
	}
	if err := b.callErr(b.ctx, b.session, "Runtime.evaluate", map[string]any{
		"expression": expr, "returnByValue": true, "awaitPromise": true,
	}, &res); err != nil {
		return err
	}
	if d := res.ExceptionDetails; d != nil {
		return errors.New(d.Text + " " + d.Exception.Description)
	}
	if out == nil {
		return nil
	}
	return json.Unmarshal(res.Result.Value, out)
}

func (b *browser) viewport(width, height int, mobile bool) {
	b.t.Helper()
	b.call(b.session, "Emulation.setDeviceMetricsOverride", map[string]any{
		"width": width, "height": height, "deviceScaleFactor": 1, "mobile": mobile,
	}, nil)
}

// open sizes the window and loads url as a typed address (no referrer).
func (b *browser) open(url string, width, height int) {
	b.t.Helper()
	b.viewport(width, height, false)
	var nav struct {
		ErrorText string `json:"errorText"`
	}
	b.call(b.session, "Page.navigate", map[string]any{"url": url}, &nav)
	if nav.ErrorText != "" {
		b.t.Fatalf("opening %s: %s", url, nav.ErrorText)
	}
}

func (b *browser) page() dashboardPage {
	b.t.Helper()
	var p dashboardPage
	if err := b.eval(readPage, &p); err != nil {
		b.t.Fatalf("reading the page: %v", err)
	}
	return p
}

// waitPage reads the page every 50ms until cond holds, for up to 10s.
func (b *browser) waitPage(what string, cond func(dashboardPage) bool) {
	b.t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	var p dashboardPage
	for {
		p = dashboardPage{}
		err := b.eval(readPage, &p)
		if err == nil && cond(p) {
			return
		}
		if time.Now().After(deadline) || b.ctx.Err() != nil {
			b.t.Fatalf("timed out waiting for %s (last error: %v); the page says:\n%s\nbrowser problems: %q",
				what, err, p.Text, b.problemList())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// button is a JS expression for a row's button; buttonIn narrows it to a
// pool.
func (b *browser) button(url, action string) string {
	return fmt.Sprintf(`[...document.querySelectorAll("tr.backend")].find((r) => r.dataset.url === %s).querySelector("button[data-action=%s]")`,
		jsString(url), action)
}

func (b *browser) buttonIn(pool, url, action string) string {
	return fmt.Sprintf(`document.querySelector("section.pool[data-pool=" + CSS.escape(%s) + "]").querySelector("tr[data-url=" + CSS.escape(%s) + "] button[data-action=%s]")`,
		jsString(pool), jsString(url), action)
}

// click presses the left mouse button on the middle of the element, as a
// user would: the element must be visible and on top there.
func (b *browser) click(element string) {
	b.t.Helper()
	var at struct {
		X, Y float64
		OK   bool
	}
	err := b.eval(`(() => {
		const e = `+element+`;
		e.scrollIntoView({block: "center"});
		const r = e.getBoundingClientRect();
		const x = r.x + r.width / 2, y = r.y + r.height / 2;
		return {x, y, ok: r.width > 0 && e.contains(document.elementFromPoint(x, y))};
	})()`, &at)
	if err != nil || !at.OK {
		b.t.Fatalf("cannot click %s (visible and on top: %v, error: %v)", element, at.OK, err)
	}
	for _, typ := range []string{"mouseMoved", "mousePressed", "mouseReleased"} {
		b.call(b.session, "Input.dispatchMouseEvent", map[string]any{
			"type": typ, "x": at.X, "y": at.Y, "button": "left", "clickCount": 1,
		}, nil)
	}
	// move away, so no hover style stays behind
	b.call(b.session, "Input.dispatchMouseEvent", map[string]any{"type": "mouseMoved", "x": 0, "y": 0}, nil)
}

// screenshot saves the whole page, as wide as the window, as a PNG at
// twice the pixel density.
func (b *browser) screenshot(path string) {
	b.t.Helper()
	var size struct{ Width, Height float64 }
	if err := b.eval(`({width: window.innerWidth, height: Math.ceil(document.body.getBoundingClientRect().height)})`, &size); err != nil {
		b.t.Fatal(err)
	}
	b.call(b.session, "Emulation.setDeviceMetricsOverride", map[string]any{
		"width": int(size.Width), "height": int(size.Height), "deviceScaleFactor": 2, "mobile": false,
	}, nil)
	var shot struct {
		Data string `json:"data"`
	}
	b.call(b.session, "Page.captureScreenshot", map[string]any{"format": "png"}, &shot)
	png, err := base64.StdEncoding.DecodeString(shot.Data)
	if err != nil || !bytes.HasPrefix(png, []byte("\x89PNG")) || len(png) < 10<<10 {
		b.t.Fatalf("the screenshot is not a PNG of the page (%d bytes, %v)", len(png), err)
	}
	if err := os.WriteFile(path, png, 0o644); err != nil {
		b.t.Fatal(err)
	}
	b.t.Logf("screenshot: %s (%d bytes)", path, len(png))
}

func (b *browser) problemList() []string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return slices.Clone(b.problems)
}

func (b *browser) assertNoProblems() {
	b.t.Helper()
	if p := b.problemList(); len(p) > 0 {
		b.t.Fatalf("the page had problems:\n%s", strings.Join(p, "\n"))
	}
}

func jsString(s string) string {
	q, _ := json.Marshal(s)
	return string(q)
}
