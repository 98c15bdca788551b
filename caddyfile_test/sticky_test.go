package caddyfile_test

import (
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/lbpool/lbpool/internal/lbtest"
)

// stickyOpts is the sticky option of the tests' pools.
const stickyOpts = "sticky cookie {\n\t\t\tsecret test-secret\n\t\t}"

// session is one client that keeps the lb cookie as a browser does: sent
// with every request, replaced by each Set-Cookie.
type session struct {
	c      *lbtest.Caddy
	client *http.Client
	url    string
	value  string // the lb cookie's value; "" before the first response
}

func newSession(c *lbtest.Caddy, url string) *session {
	return &session{c: c, client: c.Client(), url: url}
}

// get sends one GET with the cookie and returns the body (the backend's
// name) and the Set-Cookie of lb the response carried ("" for none).
func (s *session) get() (body, setCookie string, err error) {
	req, err := http.NewRequest(http.MethodGet, s.url, nil)
	if err != nil {
		return "", "", err
	}
	if s.value != "" {
		req.Header.Set("Cookie", "theme=dark; lb="+s.value)
	}
	resp, err := s.client.Do(req)
	if err != nil {
		return "", "", err
	}
	data, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		return "", "", err
	}
	if resp.StatusCode != http.StatusOK {
		return "", "", fmt.Errorf("status %d: %s", resp.StatusCode, data)
	}
	for _, line := range resp.Header.Values("Set-Cookie") {
		if strings.HasPrefix(line, "lb=") {
			setCookie = line
			c, perr := http.ParseSetCookie(line)
			if perr != nil {
				return "", "", fmt.Errorf("set-cookie %q: %v", line, perr)
			}
			s.value = c.Value
		}
	}
	return string(data), setCookie, nil
}

// mustGet is get that fails the test on an error.
func (s *session) mustGet(t *testing.T) (body, setCookie string) {
	t.Helper()
	body, setCookie, err := s.get()
	if err != nil {
		t.Fatal(err)
	}
	return body, setCookie
}

// byName finds a backend by the name it answers with.
func byName(t *testing.T, name string, bs ...*lbtest.Backend) *lbtest.Backend {
	t.Helper()
	for _, b := range bs {
		if b.Name == name {
			return b
		}
	}
	t.Fatalf("no backend answers %q", name)
	return nil
}

func setState(t *testing.T, c *lbtest.Caddy, b *lbtest.Backend, state string) {
	t.Helper()
	status, body := c.Admin(t, http.MethodPost, "/lbpool/state", fmt.Sprintf(`{"pool":"web","backend":%q,"state":%q}`, b.URL(), state))
	if status != http.StatusOK {
		t.Fatalf("state %s: %d %s", state, status, body)
	}
}

// jittery answers with its name after 1-3ms, so concurrent requests overlap.
func jittery(name string) http.HandlerFunc {
	var n atomic.Int64
	return func(w http.ResponseWriter, r *http.Request) {
		time.Sleep(time.Duration(1+n.Add(1)%3) * time.Millisecond)
		_, _ = io.WriteString(w, name)
	}
}

func TestStickyFirstResponseSetsTheCookieAndTheSessionStaysUnderLoad(t *testing.T) {
	c := lbtest.Start(t)
	bs := []*lbtest.Backend{
		lbtest.NewBackend(t, "a", jittery("a")), lbtest.NewBackend(t, "b", jittery("b")), lbtest.NewBackend(t, "c", jittery("c")),
	}
	c.Load(t, site(c, stickyOpts, bs...))

	s := newSession(c, c.URL("/"))
	home, set := s.mustGet(t)
	if set == "" {
		t.Fatal("the first response sets no lb cookie")
	}
	for _, want := range []string{"; Path=/", "; HttpOnly", "; SameSite=Lax"} {
		if !strings.Contains(set, want) {
			t.Errorf("Set-Cookie %q lacks %q", set, want)
		}
	}
	if strings.Contains(set, "Secure") {
		t.Errorf("Set-Cookie %q is Secure over plain HTTP", set)
	}
	for _, b := range bs {
		_, port, _ := net.SplitHostPort(b.Addr())
		if strings.Contains(s.value, port) || strings.Contains(s.value, "127.0.0.1") {
			t.Fatalf("the cookie value %q names an address", s.value)
		}
	}

	// 8 other clients load the pool, each request a new session
	var stop atomic.Bool
	var sent, failed int64
	done := make(chan struct{})
	before := map[string]int64{}
	for _, b := range bs {
		before[b.Name] = b.Requests.Load()
	}
	go func() {
		defer close(done)
		sent, failed = c.Traffic(8, 20000, "/", stop.Load)
	}()
	lbtest.Eventually(t, 10*time.Second, "load on every backend", func() bool {
		for _, b := range bs {
			if b.Requests.Load() < before[b.Name]+20 {
				return false
			}
		}
		return true
	})
	for i := range 50 {
		body, set := s.mustGet(t)
		if body != home || set != "" {
			t.Fatalf("request %d with the cookie of %s went to %s (Set-Cookie %q)", i, home, body, set)
		}
	}
	stop.Store(true)
	<-done
	if failed != 0 {
		t.Fatalf("%d of %d requests of the other clients failed", failed, sent)
	}
	var shares []string
	for _, b := range bs {
		n := b.Requests.Load() - before[b.Name]
		if b.Name == home {
			n -= 50
		}
		shares = append(shares, fmt.Sprintf("%s %.1f%%", b.Name, 100*float64(n)/float64(sent)))
		if float64(n) < 0.2*float64(sent) {
			t.Errorf("new sessions no longer balance: %s took %d of %d", b.Name, n, sent)
		}
	}
	t.Logf("50 requests of one session on %s; the other clients' %d new sessions: %s", home, sent, strings.Join(shares, ", "))
	for _, b := range bs {
		st := c.Backend(t, "web", b.URL())
		want := uint64(0)
		if b.Name == home {
			want = 50
		}
		if st.StickyRequestsTotal != want {
			t.Errorf("%s: sticky_requests_total %d, want %d", b.Name, st.StickyRequestsTotal, want)
		}
	}
}

func TestStickyRequestsCountInTheActiveCounts(t *testing.T) {
	c := lbtest.Start(t)
	release := make(chan struct{})
	var held atomic.Int64
	handler := func(name string) http.HandlerFunc {
		return func(w http.ResponseWriter, r *http.Request) {
			if r.URL.Path == "/slow" {
				held.Add(1)
				select { // a test that fails before it releases still ends
				case <-release:
				case <-r.Context().Done():
				}
			}
			_, _ = io.WriteString(w, name)
		}
	}
	bs := []*lbtest.Backend{
		lbtest.NewBackend(t, "a", handler("a")), lbtest.NewBackend(t, "b", handler("b")), lbtest.NewBackend(t, "c", handler("c")),
	}
	c.Load(t, site(c, stickyOpts, bs...))
	s := newSession(c, c.URL("/"))
	home, _ := s.mustGet(t)
	slow := &session{c: c, client: c.Client(), url: c.URL("/slow"), value: s.value}
	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() { _, _, _ = slow.get() })
	}
	defer wg.Wait()
	defer close(release)
	lbtest.Eventually(t, 10*time.Second, "4 sticky requests held", func() bool { return held.Load() == 4 })
	if n := c.Backend(t, "web", byName(t, home, bs...).URL()).ActiveConnections; n != 4 {
		t.Fatalf("4 sticky requests in flight count %d active connections", n)
	}
	for range 10 {
		if status, body := c.Get(t, c.URL("/")); status != 200 || body == home {
			t.Fatalf("a new session went to %s (status %d), which holds 4 sticky requests", body, status)
		}
	}
}

func TestStickyForgedStaleAndGoneValuesAreReplaced(t *testing.T) {
	c := lbtest.Start(t)
	bs := []*lbtest.Backend{lbtest.NewBackend(t, "a", nil), lbtest.NewBackend(t, "b", nil)}
	c.Load(t, site(c, "sticky cookie {\n\t\t\tsecret old-secret\n\t\t}", bs...))
	s := newSession(c, c.URL("/"))
	s.mustGet(t)
	stale := s.value

	c.Load(t, site(c, stickyOpts, bs...))
	for _, tc := range []struct{ name, value string }{
		{"forged", strings.Repeat("A", len(stale))},
		{"stale (another secret)", stale},
		{"garbage", "not-a-value"},
		{"an address", bs[0].Addr()},
	} {
		s.value = tc.value
		_, set := s.mustGet(t)
		if set == "" || s.value == tc.value {
			t.Fatalf("a %s value %q was not replaced (Set-Cookie %q)", tc.name, tc.value, set)
		}
		// the new value holds
		home, _ := s.mustGet(t)
		for range 5 {
			if body, set := s.mustGet(t); body != home || set != "" {
				t.Fatalf("after replacing a %s value the session moved to %s (Set-Cookie %q)", tc.name, body, set)
			}
		}
	}

	// a backend taken out of the config: its sessions move
	home, _ := s.mustGet(t)
	rest := bs[0]
	if home == "a" {
		rest = bs[1]
	}
	old := s.value
	c.Load(t, site(c, stickyOpts, rest))
	body, set := s.mustGet(t)
	if body != rest.Name || set == "" || s.value == old {
		t.Fatalf("the session of a backend gone from the config went to %s with Set-Cookie %q", body, set)
	}
}

func TestStickyDrainKeepsSessionsAndTakesNoNewOnes(t *testing.T) {
	c := lbtest.Start(t)
	bs := []*lbtest.Backend{lbtest.NewBackend(t, "a", nil), lbtest.NewBackend(t, "b", nil), lbtest.NewBackend(t, "c", nil)}
	c.Load(t, site(c, stickyOpts, bs...))
	s := newSession(c, c.URL("/"))
	home, _ := s.mustGet(t)
	drained := byName(t, home, bs...)
	setState(t, c, drained, "drain")

	for i := range 20 {
		if body, set := s.mustGet(t); body != home || set != "" {
			t.Fatalf("request %d of a session on a draining backend went to %s (Set-Cookie %q)", i, body, set)
		}
	}
	before := drained.Requests.Load()
	for range 30 {
		fresh := newSession(c, c.URL("/"))
		if body, _ := fresh.mustGet(t); body == home {
			t.Fatal("a new session went to the draining backend")
		}
	}
	if n := drained.Requests.Load() - before; n != 0 {
		t.Fatalf("the draining backend took %d new sessions", n)
	}
	st := c.Backend(t, "web", drained.URL())
	if st.State != "drain" || st.StickyRequestsTotal != 20 {
		t.Fatalf("stats of the draining backend: state %s, sticky_requests_total %d, want drain and 20", st.State, st.StickyRequestsTotal)
	}
}

// keepAsking runs the session's GETs until stop and reports what it saw.
type askResult struct {
	sent, failed int
	bodies       []string // in order
	sets         []string // the Set-Cookie of each response
	at           []time.Time
}

func keepAsking(s *session, stop *atomic.Bool) <-chan askResult {
	out := make(chan askResult, 1)
	go func() {
		var r askResult
		for !stop.Load() {
			body, set, err := s.get()
			r.sent++
			if err != nil {
				r.failed++
				continue
			}
			r.bodies = append(r.bodies, body)
			r.sets = append(r.sets, set)
			r.at = append(r.at, time.Now())
		}
		out <- r
	}()
	return out
}

// moved returns when the session first answered from another backend than
// home after since, and checks it then stayed there with no other cookie.
func moved(t *testing.T, r askResult, home string, since time.Time) (to string, after time.Duration) {
	t.Helper()
	for i, body := range r.bodies {
		if r.at[i].Before(since) || body == home {
			continue
		}
		if r.sets[i] == "" {
			t.Fatalf("the session moved from %s to %s without a new cookie", home, body)
		}
		for j := i + 1; j < len(r.bodies); j++ {
			if r.bodies[j] != body || r.sets[j] != "" {
				t.Fatalf("after moving to %s the session went to %s (Set-Cookie %q)", body, r.bodies[j], r.sets[j])
			}
		}
		return body, r.at[i].Sub(since)
	}
	t.Fatalf("the session never left %s", home)
	return "", 0
}

func TestStickyMaintAndAKilledBackendMoveTheSessionWithoutAFailedRequest(t *testing.T) {
	c := lbtest.Start(t)
	bs := []*lbtest.Backend{lbtest.NewBackend(t, "a", nil), lbtest.NewBackend(t, "b", nil), lbtest.NewBackend(t, "c", nil)}
	c.Load(t, site(c, stickyOpts, bs...)) // default interval 20s: only the retry sees the kill
	s := newSession(c, c.URL("/"))
	home, _ := s.mustGet(t)

	// maint
	var stop atomic.Bool
	results := keepAsking(s, &stop)
	lbtest.Eventually(t, 5*time.Second, "the session's requests to go on", func() bool {
		return byName(t, home, bs...).Requests.Load() > 20
	})
	others := func(except string) int64 {
		var n int64
		for _, b := range bs {
			if b.Name != except {
				n += b.Requests.Load()
			}
		}
		return n
	}
	base := others(home)
	maintAt := time.Now()
	setState(t, c, byName(t, home, bs...), "maint")
	lbtest.Eventually(t, 5*time.Second, "the session's requests elsewhere", func() bool { return others(home) > base+20 })
	stop.Store(true)
	r := <-results
	if r.failed != 0 {
		t.Fatalf("%d of %d requests failed when the session's backend went into maint", r.failed, r.sent)
	}
	next, after := moved(t, r, home, maintAt)
	t.Logf("maint: the session moved from %s to %s %v after the POST was sent, %d requests, none failed", home, next, after, r.sent)

	// killed: the retry moves it
	victim := byName(t, next, bs...)
	stop.Store(false)
	results = keepAsking(s, &stop)
	lbtest.Eventually(t, 5*time.Second, "the session's requests on its new backend", func() bool {
		return victim.Requests.Load() > 20
	})
	base = others(next)
	killedAt := time.Now()
	victim.Close()
	lbtest.Eventually(t, 5*time.Second, "the session's requests elsewhere", func() bool { return others(next) > base+20 })
	stop.Store(true)
	r = <-results
	if r.failed != 0 {
		t.Fatalf("%d of %d GETs failed when the session's backend was killed", r.failed, r.sent)
	}
	last, after := moved(t, r, next, killedAt)
	if last == home {
		t.Fatalf("the session moved back to %s, which is in maint", home)
	}
	t.Logf("killed: the session moved from %s to %s %v after the kill, %d requests, none failed", next, last, after, r.sent)
}

func TestStickyValueIsTheSameAfterAReloadAndARestart(t *testing.T) {
	c := lbtest.Start(t)
	bs := []*lbtest.Backend{lbtest.NewBackend(t, "a", nil), lbtest.NewBackend(t, "b", nil), lbtest.NewBackend(t, "c", nil)}
	c.Load(t, site(c, stickyOpts, bs...))
	values := map[string]string{} // backend → the value new sessions get
	for range 3 {
		s := newSession(c, c.URL("/"))
		body, _ := s.mustGet(t)
		values[body] = s.value
	}
	if len(values) != 3 {
		t.Fatalf("3 new sessions on an idle pool went to %d backends", len(values))
	}
	check := func(when string) {
		t.Helper()
		for name, v := range values {
			s := newSession(c, c.URL("/"))
			s.value = v
			if body, set := s.mustGet(t); body != name || set != "" {
				t.Fatalf("%s: the session of %s went to %s (Set-Cookie %q)", when, name, body, set)
			}
		}
		got := map[string]string{}
		for range 3 {
			s := newSession(c, c.URL("/"))
			body, _ := s.mustGet(t)
			got[body] = s.value
		}
		for name, v := range values {
			if got[name] != v {
				t.Fatalf("%s: a new session on %s gets %q, before it got %q", when, name, got[name], v)
			}
		}
	}
	// a reload that reorders the backends and changes another option
	c.Load(t, site(c, stickyOpts+"\n\t\thealth_interval 10s", bs[2], bs[0], bs[1]))
	check("after a reload")

	lbtest.Stop()
	c.CloseIdleConnections()
	c.Load(t, site(c, stickyOpts, bs...))
	check("after a restart")
}

func TestStickyCookieIsSecureOverTLS(t *testing.T) {
	c := lbtest.Start(t)
	b := lbtest.NewBackend(t, "a", nil)
	ca := newTestCA(t)
	certFile, keyFile, _ := ca.issue(t, "site", []string{"127.0.0.1"}, false)
	port := lbtest.FreePort(t)
	c.Load(t, fmt.Sprintf(`https://127.0.0.1:%d {
	tls %s %s
	lbpool %s {
		name web
		health_uri /health
		%s
	}
}`, port, certFile, keyFile, b.Addr(), stickyOpts))
	client := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		TLSClientConfig: &tls.Config{RootCAs: ca.Pool},
	}}
	defer client.CloseIdleConnections()
	s := &session{c: c, client: client, url: fmt.Sprintf("https://127.0.0.1:%d/", port)}
	var set string
	lbtest.Eventually(t, 10*time.Second, "the HTTPS site to answer", func() bool {
		var err error
		_, set, err = s.get()
		return err == nil
	})
	if !strings.Contains(set, "; Secure") || !strings.Contains(set, "; HttpOnly") {
		t.Fatalf("Set-Cookie over TLS is %q, want Secure and HttpOnly", set)
	}
	if body, set := s.mustGet(t); body != "a" || set != "" {
		t.Fatalf("the session over TLS went to %s (Set-Cookie %q)", body, set)
	}
}

func TestStickyWebsocketUpgradeCarryingTheCookieLandsOnItsBackend(t *testing.T) {
	c := lbtest.Start(t)
	bs := []*lbtest.Backend{echoWebsocket(t, "a", nil), echoWebsocket(t, "b", nil), echoWebsocket(t, "c", nil)}
	c.Load(t, site(c, stickyOpts, bs...))
	s := newSession(c, c.URL("/"))
	home, _ := s.mustGet(t)

	upgrade := func(cookie string) (name, setCookie string) {
		conn, _, name, resp := upgradeWebsocket(t, c, cookie)
		conn.Close()
		return name, resp.Header.Get("Set-Cookie")
	}
	for range 6 {
		if name, set := upgrade("Cookie: lb=" + s.value + "\r\n"); name != home || set != "" {
			t.Fatalf("an upgrade with the cookie of %s reached %s (Set-Cookie %q)", home, name, set)
		}
	}
	// an upgrade without a cookie starts a session
	if _, set := upgrade(""); !strings.HasPrefix(set, "lb=") {
		t.Fatalf("an upgrade without a cookie got Set-Cookie %q", set)
	}
	if st := c.Backend(t, "web", byName(t, home, bs...).URL()); st.StickyRequestsTotal != 6 {
		t.Fatalf("sticky_requests_total %d after 6 sticky upgrades", st.StickyRequestsTotal)
	}
}

func TestStickyDiscoveredMemberKeepsItsSessionsUntilItLeavesDNS(t *testing.T) {
	c := lbtest.Start(t)
	d := lbtest.NewDNS(t)
	release := make(chan struct{})
	bs, port := lbtest.NewBackendsOnLoopback(t, 3, heldOnSlow(release))
	d.SetA("app.lbtest", ips(bs...)...)
	c.Load(t, dnsSite(c, d, "app.lbtest", port, stickyOpts))
	lbtest.Eventually(t, 10*time.Second, "3 members up", func() bool { return allAlive(t, c, bs...) })

	s := newSession(c, c.URL("/"))
	home, set := s.mustGet(t)
	if set == "" {
		t.Fatal("a new session on discovered members got no cookie")
	}
	for range 20 {
		if body, set := s.mustGet(t); body != home || set != "" {
			t.Fatalf("the session of member %s went to %s (Set-Cookie %q)", home, body, set)
		}
	}
	homeURL := byName(t, home, bs...).URL()
	// a request of the session held on the member keeps it leaving, not gone
	slow := &session{c: c, client: c.Client(), url: c.URL("/slow"), value: s.value}
	heldDone := make(chan struct{})
	go func() { defer close(heldDone); _, _, _ = slow.get() }()
	defer func() { <-heldDone }()
	defer close(release)
	lbtest.Eventually(t, 5*time.Second, "the held request on the member", func() bool {
		return members(t, c)[homeURL].ActiveConnections == 1
	})
	var rest []*lbtest.Backend
	for _, b := range bs {
		if b.Name != home {
			rest = append(rest, b)
		}
	}
	d.SetA("app.lbtest", ips(rest...)...)
	lbtest.Eventually(t, 10*time.Second, "the session's member to be leaving", func() bool { return members(t, c)[homeURL].Leaving })
	body, set := s.mustGet(t)
	if body == home || set == "" {
		t.Fatalf("the session of a member leaving DNS went to %s (Set-Cookie %q)", body, set)
	}
	for range 5 {
		if again, set := s.mustGet(t); again != body || set != "" {
			t.Fatalf("after the move the session went to %s (Set-Cookie %q)", again, set)
		}
	}
}
