package statsapi_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/bcrypt"

	"github.com/lbpool/lbpool/internal/lbtest"
)

// ---- the dashboard on a site route (lbpool_dashboard) ----

// authedSite is a site on the HTTP port whose /lbpool/ folder is the
// dashboard (with extra arguments: read_only) behind basic_auth as ops /
// secret, and whose other paths go to a pool named web.
func authedSite(t *testing.T, c *lbtest.Caddy, extra string, backends ...*lbtest.Backend) string {
	hash, err := bcrypt.GenerateFromPassword([]byte("secret"), bcrypt.MinCost)
	if err != nil {
		t.Fatal(err)
	}
	addrs := make([]string, len(backends))
	for i, b := range backends {
		addrs[i] = b.Addr()
	}
	return fmt.Sprintf(`:%d {
	basic_auth /lbpool/* {
		ops %s
	}
	lbpool_dashboard /lbpool/* %s
	lbpool %s {
		name web
		health_uri /health
	}
}`, c.HTTPPort, hash, extra, strings.Join(addrs, " "))
}

// siteDo sends a request to the site; creds adds ops' credentials.
func siteDo(t *testing.T, c *lbtest.Caddy, method, path, body string, creds bool, headers map[string]string) (*http.Response, []byte) {
	t.Helper()
	req, err := http.NewRequest(method, c.URL(path), strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if creds {
		req.SetBasicAuth("ops", "secret")
	}
	for k, v := range headers {
		req.Header.Set(k, v)
	}
	resp, err := c.Client().Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	return resp, data
}

func TestSiteDashboardNeedsTheSitesCredentialsAndAnswersFromTheAdminRoutes(t *testing.T) {
	c := lbtest.Start(t)
	a := lbtest.NewBackend(t, "a", nil)
	c.Load(t, authedSite(t, c, "", a))
	for _, path := range []string{"/lbpool/", "/lbpool/stats", "/lbpool/dashboard.js"} {
		if resp, _ := siteDo(t, c, "GET", path, "", false, nil); resp.StatusCode != http.StatusUnauthorized {
			t.Errorf("GET %s without credentials: %d, want 401", path, resp.StatusCode)
		}
	}
	state := fmt.Sprintf(`{"pool":"web","backend":%q,"state":"drain"}`, a.Addr())
	if resp, _ := siteDo(t, c, "POST", "/lbpool/state", state, false, map[string]string{"Content-Type": "application/json"}); resp.StatusCode != http.StatusUnauthorized {
		t.Errorf("POST /lbpool/state without credentials: %d, want 401", resp.StatusCode)
	}
	if s := c.Backend(t, "web", a.URL()); s.State != "ready" {
		t.Fatalf("a POST without credentials changed the state to %q", s.State)
	}

	resp, body := siteDo(t, c, "GET", "/lbpool/", "", true, nil)
	if resp.StatusCode != 200 || !strings.Contains(string(body), `<script type="module" src="dashboard.js">`) ||
		!strings.Contains(resp.Header.Get("Content-Security-Policy"), "frame-ancestors 'none'") {
		t.Fatalf("GET /lbpool/ with credentials: %d, CSP %q\n%s", resp.StatusCode, resp.Header.Get("Content-Security-Policy"), body)
	}
	_, admin := c.Admin(t, "GET", "/lbpool/stats?pool=web", "")
	var fromSite, fromAdmin []map[string]any
	if resp, body := siteDo(t, c, "GET", "/lbpool/stats?pool=web", "", true, nil); resp.StatusCode != 200 ||
		json.Unmarshal(body, &fromSite) != nil || json.Unmarshal(admin, &fromAdmin) != nil ||
		len(fromSite) != 1 || fromSite[0]["url"] != fromAdmin[0]["url"] {
		t.Fatalf("GET /lbpool/stats on the site: %d %s; on the admin endpoint %s", resp.StatusCode, body, admin)
	}
	if resp, body := siteDo(t, c, "GET", "/lbpool/nothing", "", true, nil); resp.StatusCode != 404 || !strings.Contains(string(body), `"error"`) {
		t.Errorf("GET /lbpool/nothing: %d %s, want a 404 with a JSON error", resp.StatusCode, body)
	}
	if code, body := c.Get(t, c.URL("/app")); code != 200 || body != "a" {
		t.Errorf("GET /app: %d %q, want the pool's backend", code, body)
	}
}

func TestSiteDashboardRefusesStateChangesABrowserCouldForge(t *testing.T) {
	c := lbtest.Start(t)
	a := lbtest.NewBackend(t, "a", nil)
	c.Load(t, authedSite(t, c, "", a))
	origin := fmt.Sprintf("http://127.0.0.1:%d", c.HTTPPort)
	state := fmt.Sprintf(`{"pool":"web","backend":%q,"state":"maint"}`, a.Addr())
	for _, tc := range []struct {
		name    string
		headers map[string]string
		status  int
	}{
		{"another site's fetch", map[string]string{"Content-Type": "application/json", "Origin": "http://evil.example", "Sec-Fetch-Site": "cross-site"}, 403},
		{"another site's form", map[string]string{"Content-Type": "text/plain", "Origin": "http://evil.example"}, 403},
		{"a sibling site", map[string]string{"Content-Type": "application/json", "Origin": "http://other.127.0.0.1.nip.io", "Sec-Fetch-Site": "same-site"}, 403},
		{"an old browser's cross-site POST", map[string]string{"Content-Type": "application/json", "Origin": "http://evil.example"}, 403},
		{"the page's origin with a form body", map[string]string{"Content-Type": "application/x-www-form-urlencoded", "Origin": origin, "Sec-Fetch-Site": "same-origin"}, 415},
	} {
		if resp, body := siteDo(t, c, "POST", "/lbpool/state", state, true, tc.headers); resp.StatusCode != tc.status {
			t.Errorf("%s: %d %s, want %d", tc.name, resp.StatusCode, body, tc.status)
		}
	}
	if resp, _ := siteDo(t, c, "GET", "/lbpool/state", "", true, nil); resp.StatusCode != http.StatusMethodNotAllowed {
		t.Errorf("GET /lbpool/state: %d, want 405", resp.StatusCode)
	}
	if s := c.Backend(t, "web", a.URL()); s.State != "ready" {
		t.Fatalf("a refused POST changed the state to %q", s.State)
	}
	page := map[string]string{"Content-Type": "application/json", "Origin": origin, "Sec-Fetch-Site": "same-origin"}
	if resp, body := siteDo(t, c, "POST", "/lbpool/state", state, true, page); resp.StatusCode != 200 {
		t.Fatalf("the page's own POST: %d %s", resp.StatusCode, body)
	}
	if s := c.Backend(t, "web", a.URL()); s.State != "maint" {
		t.Fatalf("after the page's POST the state is %q, want maint", s.State)
	}
	// a client that is no browser (curl) sends neither Origin nor Sec-Fetch-Site
	ready := strings.Replace(state, "maint", "ready", 1)
	if resp, body := siteDo(t, c, "POST", "/lbpool/state", ready, true, map[string]string{"Content-Type": "application/json"}); resp.StatusCode != 200 {
		t.Fatalf("a POST from curl: %d %s", resp.StatusCode, body)
	}
}

func TestSiteDashboardInABrowserBehindBasicAuth(t *testing.T) {
	c := lbtest.Start(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	b := startBrowser(t, ctx)
	apps := []*lbtest.Backend{lbtest.NewBackend(t, "app1", nil), lbtest.NewBackend(t, "app2", nil)}
	// the admin endpoint as lbtest configures it: browsers are refused there
	c.Load(t, authedSite(t, c, "", apps...))

	// the browser answers the site's challenge with the credentials of the URL
	b.open(fmt.Sprintf("http://ops:secret@127.0.0.1:%d/lbpool/", c.HTTPPort), 1280, 800)
	b.waitPage("the pool's two rows, up, with buttons", func(p dashboardPage) bool {
		rows := p.rows("web")
		return len(p.Pools) == 1 && len(rows) == 2 && rows[0].Word == "up" && rows[1].Word == "up" && len(rows[0].Buttons) == 4
	})
	b.click(b.button(apps[1].URL(), "drain"))
	b.waitPage("app2 shown as drain", func(p dashboardPage) bool {
		r := p.row("web", apps[1].URL())
		return r.Word == "drain" && r.Message == "drain: done"
	})
	if s := c.Backend(t, "web", apps[1].URL()); s.State != "drain" {
		t.Fatalf("after the drain button the stats say %q", s.State)
	}
	b.assertNoProblems()

	// read only: the same rows, no buttons, and the POST the page would send is refused
	c.Load(t, authedSite(t, c, "read_only", apps...))
	b.open(fmt.Sprintf("http://ops:secret@127.0.0.1:%d/lbpool/", c.HTTPPort), 1280, 800)
	b.waitPage("the two rows without buttons", func(p dashboardPage) bool {
		rows := p.rows("web")
		return len(rows) == 2 && rows[1].Word == "drain" && len(rows[0].Buttons)+len(rows[1].Buttons) == 0 &&
			!strings.Contains(p.Text, "Admin state")
	})
	b.assertNoProblems()
	origin := fmt.Sprintf("http://127.0.0.1:%d", c.HTTPPort)
	ready := fmt.Sprintf(`{"pool":"web","backend":%q,"state":"ready"}`, apps[1].Addr())
	page := map[string]string{"Content-Type": "application/json", "Origin": origin, "Sec-Fetch-Site": "same-origin"}
	if resp, body := siteDo(t, c, "POST", "/lbpool/state", ready, true, page); resp.StatusCode != http.StatusForbidden {
		t.Fatalf("POST /lbpool/state on a read-only dashboard: %d %s, want 403", resp.StatusCode, body)
	}
	if s := c.Backend(t, "web", apps[1].URL()); s.State != "drain" {
		t.Fatalf("a read-only dashboard changed the state to %q", s.State)
	}
}
