package caddyfile_test

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/lbpool/lbpool/internal/lbtest"
	"github.com/lbpool/lbpool/leastconn"
)

// testRefresh is the refresh of the tests' DNS sources.
const testRefresh = "100ms"

// dnsSite is a site whose pool "web" finds its members as the A records of
// name on the test's DNS server, with extra options.
func dnsSite(c *lbtest.Caddy, d *lbtest.DNS, name string, port int, extra string) string {
	return fmt.Sprintf(`:%d {
	lbpool {
		name web
		health_uri /health
		dynamic a %s %d {
			refresh %s
			resolvers %s
		}
		%s
	}
}`, c.HTTPPort, name, port, testRefresh, d.Addr, extra)
}

func ips(bs ...*lbtest.Backend) []string {
	var out []string
	for _, b := range bs {
		out = append(out, b.IP())
	}
	return out
}

// members returns the pool's stats by URL.
func members(t *testing.T, c *lbtest.Caddy) map[string]leastconn.BackendStats {
	t.Helper()
	out := map[string]leastconn.BackendStats{}
	for _, s := range c.Stats(t, "web") {
		out[s.URL] = s
	}
	return out
}

// allAlive reports whether exactly these backends are the pool's members,
// each alive and found through DNS.
func allAlive(t *testing.T, c *lbtest.Caddy, bs ...*lbtest.Backend) bool {
	ms := members(t, c)
	if len(ms) != len(bs) {
		return false
	}
	for _, b := range bs {
		s, ok := ms[b.URL()]
		if !ok || !s.Alive || s.Source != "dns" {
			return false
		}
	}
	return true
}

func discovery(t *testing.T, c *lbtest.Caddy) []leastconn.DiscoveryStatus {
	t.Helper()
	status, body := c.Admin(t, http.MethodGet, "/lbpool/discovery", "")
	if status != http.StatusOK {
		t.Fatalf("GET /lbpool/discovery: %d %s", status, body)
	}
	var out []leastconn.DiscoveryStatus
	if err := json.Unmarshal(body, &out); err != nil {
		t.Fatalf("discovery JSON: %v\n%s", err, body)
	}
	return out
}

// heldOnSlow makes backends that hold each request for /slow until release
// is closed (or the request's connection closes: a test that fails before
// it closes release still ends), and answer the others with their name
// after a millisecond.
func heldOnSlow(release <-chan struct{}) func(name string) http.HandlerFunc {
	return func(name string) http.HandlerFunc {
		return func(w http.ResponseWriter, r *http.Request) {
			if r.URL.Path == "/slow" {
				select { // a test that fails before it releases still ends
				case <-release:
				case <-r.Context().Done():
				}
			}
			time.Sleep(time.Millisecond)
			_, _ = io.WriteString(w, name)
		}
	}
}

// heldOneByOne sends n requests for /slow, each once the one before is in
// flight: the picks then see each other's counts, and least_conn puts one
// on each of n idle members (concurrent picks may both take the same one,
// as a pick reads the counts before it adds its own). Each request's error
// arrives on the channel when it ends.
func heldOneByOne(t *testing.T, c *lbtest.Caddy, n int) <-chan error {
	t.Helper()
	slow := make(chan error, n)
	for i := range n {
		go func() {
			_, err := lbtest.GetResending(c.Client(), c.URL("/slow"))
			slow <- err
		}()
		lbtest.Eventually(t, 10*time.Second, fmt.Sprintf("%d slow requests in flight", i+1), func() bool {
			var active int64
			for _, m := range members(t, c) {
				active += m.ActiveConnections
			}
			return active == int64(i+1)
		})
	}
	return slow
}

func TestDiscoveredMembersAreCheckedAndBalanced(t *testing.T) {
	c := lbtest.Start(t)
	d := lbtest.NewDNS(t)
	bs, port := lbtest.NewBackendsOnLoopback(t, 3, nil)
	static := lbtest.NewBackend(t, "static", nil)
	d.SetA("app.lbtest", ips(bs...)...)
	c.Load(t, fmt.Sprintf(`:%d {
	lbpool %s {
		name web
		health_uri /health
		dynamic a app.lbtest %d {
			refresh %s
			resolvers %s
		}
	}
}`, c.HTTPPort, static.Addr(), port, testRefresh, d.Addr))
	lbtest.Eventually(t, 10*time.Second, "3 members up", func() bool {
		ms := members(t, c)
		return len(ms) == 4 && ms[bs[0].URL()].Alive && ms[bs[1].URL()].Alive && ms[bs[2].URL()].Alive
	})
	ms := members(t, c)
	if ms[static.URL()].Source != "static" || ms[bs[0].URL()].Source != "dns" {
		t.Fatalf("sources: %+v", ms)
	}
	for _, b := range bs {
		if b.HealthHits.Load() == 0 {
			t.Fatalf("member %s is up without a check", b.Name)
		}
	}
	counts := map[string]int{}
	for range 40 {
		status, body := c.Get(t, c.URL("/"))
		if status != 200 {
			t.Fatalf("status %d: %s", status, body)
		}
		counts[body]++
	}
	for _, name := range []string{"static", "m2", "m3", "m4"} {
		if counts[name] != 10 {
			t.Fatalf("idle rotation over a static backend and 3 members: %v", counts)
		}
	}
	got := discovery(t, c)
	if len(got) != 1 || got[0].Pool != "web" || got[0].Kind != "a" || got[0].Name != "app.lbtest" ||
		got[0].Members != 3 || got[0].Error != "" || got[0].LastLookup == nil {
		t.Fatalf("discovery: %+v", got)
	}
	_, body := c.Admin(t, http.MethodGet, "/lbpool/discovery", "")
	t.Logf("GET /lbpool/discovery:\n%s", body)
	// a member is in the metrics like a static backend
	status, metrics := c.Admin(t, http.MethodGet, "/metrics", "")
	want := fmt.Sprintf(`caddy_lbpool_backend_up{backend=%q,pool="web"} 1`, bs[1].URL())
	if status != 200 || !strings.Contains(string(metrics), want) {
		t.Fatalf("metrics lack %s", want)
	}
	// and takes admin state
	if status, body := c.Admin(t, http.MethodPost, "/lbpool/state",
		fmt.Sprintf(`{"pool":"web","backend":%q,"state":"drain"}`, bs[0].URL())); status != 200 {
		t.Fatalf("state: %d %s", status, body)
	}
	before := bs[0].Requests.Load()
	for range 20 {
		c.Get(t, c.URL("/"))
	}
	if bs[0].Requests.Load() != before {
		t.Fatal("a drained member took new requests")
	}
}

func TestScaleUpUnderLoadNewMemberServesAfterItsFirstCheck(t *testing.T) {
	c := lbtest.Start(t)
	d := lbtest.NewDNS(t)
	var firstServed sync.Map // member name → time of its first request
	bs, port := lbtest.NewBackendsOnLoopback(t, 3, func(name string) http.HandlerFunc {
		return func(w http.ResponseWriter, r *http.Request) {
			firstServed.LoadOrStore(name, time.Now())
			_, _ = io.WriteString(w, name)
		}
	})
	d.SetA("app.lbtest", ips(bs[:2]...)...)
	c.Load(t, dnsSite(c, d, "app.lbtest", port, "slow_start 5s"))
	lbtest.Eventually(t, 10*time.Second, "2 members up", func() bool { return allAlive(t, c, bs[:2]...) })

	var stop atomic.Bool
	var sent, failed int64
	done := make(chan struct{})
	go func() {
		defer close(done)
		sent, failed = c.Traffic(4, 1_000_000, "/", stop.Load)
	}()
	lbtest.Eventually(t, 10*time.Second, "traffic", func() bool { return bs[0].Requests.Load() > 50 })
	changed := time.Now()
	d.SetA("app.lbtest", ips(bs...)...)
	lbtest.Eventually(t, 10*time.Second, "the new member serving", func() bool { return bs[2].Requests.Load() > 0 })
	stop.Store(true)
	<-done
	first, _ := firstServed.Load("m4")
	checks := bs[2].HealthTimes()
	if len(checks) == 0 || !checks[0].Before(first.(time.Time)) {
		t.Fatalf("the new member served before its first check (checks %v, first request %v)", checks, first)
	}
	t.Logf("join: DNS change → first check %v → first request served %v (refresh %s)",
		checks[0].Sub(changed).Round(time.Millisecond), first.(time.Time).Sub(changed).Round(time.Millisecond), testRefresh)
	if failed != 0 {
		t.Fatalf("%d of %d requests failed while a member joined", failed, sent)
	}
	if s := members(t, c)[bs[2].URL()]; s.SlowStartPercent == 0 {
		t.Fatalf("the joined member does not ramp up under slow_start: %+v", s)
	}
	if n := len(c.Logs(`"member joined"`, bs[2].URL())); n != 1 {
		t.Fatalf("%d join lines for the new member, want 1", n)
	}
}

func TestScaleDownUnderLoadFailsNothingAndSendsNothingAfterLeaving(t *testing.T) {
	c := lbtest.Start(t)
	d := lbtest.NewDNS(t)
	release := make(chan struct{})
	bs, port := lbtest.NewBackendsOnLoopback(t, 3, heldOnSlow(release))
	leaver := bs[2]
	d.SetA("app.lbtest", ips(bs...)...)
	c.Load(t, dnsSite(c, d, "app.lbtest", port, ""))
	lbtest.Eventually(t, 10*time.Second, "3 members up", func() bool { return allAlive(t, c, bs...) })

	// a long request on each member, so the leaver has one in flight
	slow := heldOneByOne(t, c, 3)
	lbtest.Eventually(t, 10*time.Second, "a slow request on the leaver", func() bool {
		return members(t, c)[leaver.URL()].ActiveConnections == 1
	})

	var stop atomic.Bool
	var sent, failed int64
	done := make(chan struct{})
	go func() {
		defer close(done)
		sent, failed = c.Traffic(4, 1_000_000, "/", stop.Load)
	}()
	t.Cleanup(func() { stop.Store(true); <-done }) // also when the test fails early
	lbtest.Eventually(t, 10*time.Second, "traffic on the leaver", func() bool { return leaver.Requests.Load() > 50 })
	changed := time.Now()
	d.SetA("app.lbtest", ips(bs[:2]...)...)
	lbtest.Eventually(t, 10*time.Second, "the leaver marked leaving", func() bool {
		return members(t, c)[leaver.URL()].Leaving
	})
	marked := time.Now()
	afterMark := leaver.Requests.Load()
	// its in-flight request keeps it in the stats while traffic goes on
	others := bs[0].Requests.Load()
	lbtest.Eventually(t, 10*time.Second, "traffic on the others", func() bool { return bs[0].Requests.Load() > others+100 })
	if _, still := members(t, c)[leaver.URL()]; !still {
		t.Fatal("the leaver left the stats with a request in flight")
	}
	if got := leaver.Requests.Load(); got > afterMark+1 {
		// one request may have been picked just before the mark
		t.Fatalf("the leaving member took %d new requests", got-afterMark)
	}
	close(release)
	for range 3 {
		if err := <-slow; err != nil {
			t.Fatalf("a request in flight on a leaving member: %v", err)
		}
	}
	lbtest.Eventually(t, 10*time.Second, "the leaver gone from stats", func() bool {
		_, still := members(t, c)[leaver.URL()]
		return !still
	})
	left := time.Now()
	gone := leaver.Requests.Load()
	before := bs[0].Requests.Load()
	lbtest.Eventually(t, 10*time.Second, "more traffic", func() bool { return bs[0].Requests.Load() > before+200 })
	stop.Store(true)
	<-done
	if got := leaver.Requests.Load(); got != gone {
		t.Fatalf("the member got %d requests after it left", got-gone)
	}
	if failed != 0 {
		t.Fatalf("%d of %d requests failed while a member left", failed, sent)
	}
	t.Logf("leave: DNS change → no new requests within %v; in-flight request released → gone from stats within %v",
		marked.Sub(changed).Round(time.Millisecond), left.Sub(marked).Round(time.Millisecond))
	status, body := c.Admin(t, http.MethodGet, "/metrics", "")
	if status != 200 || strings.Contains(string(body), leaver.URL()) {
		t.Fatal("the member that left is still in the metrics")
	}
	if n := len(c.Logs(`"member left"`, leaver.URL())); n != 1 {
		t.Fatalf("%d left lines, want 1", n)
	}
	checks := leaver.HealthHits.Load()
	time.Sleep(300 * time.Millisecond) // several check intervals of none
	if leaver.HealthHits.Load() != checks {
		t.Fatal("the member that left is still checked")
	}
}

func TestMemberBackBeforeLeavingStaysAndAfterLeavingStartsFresh(t *testing.T) {
	c := lbtest.Start(t)
	d := lbtest.NewDNS(t)
	release := make(chan struct{})
	bs, port := lbtest.NewBackendsOnLoopback(t, 2, heldOnSlow(release))
	m := bs[1]
	d.SetA("app.lbtest", ips(bs...)...)
	c.Load(t, dnsSite(c, d, "app.lbtest", port, ""))
	lbtest.Eventually(t, 10*time.Second, "2 members up", func() bool { return allAlive(t, c, bs...) })
	for range 10 {
		c.Get(t, c.URL("/"))
	}
	slow := heldOneByOne(t, c, 2)
	lbtest.Eventually(t, 10*time.Second, "a request in flight on m", func() bool {
		return members(t, c)[m.URL()].ActiveConnections == 1
	})
	served := members(t, c)[m.URL()].RequestsTotal

	d.SetA("app.lbtest", bs[0].IP())
	lbtest.Eventually(t, 10*time.Second, "m leaving", func() bool { return members(t, c)[m.URL()].Leaving })
	d.SetA("app.lbtest", ips(bs...)...)
	lbtest.Eventually(t, 10*time.Second, "m back", func() bool {
		s, ok := members(t, c)[m.URL()]
		return ok && !s.Leaving && s.Alive
	})
	if s := members(t, c)[m.URL()]; s.RequestsTotal != served {
		t.Fatalf("a member back before it left lost its counters: %d, was %d", s.RequestsTotal, served)
	}
	close(release)
	for range 2 {
		if err := <-slow; err != nil {
			t.Fatal(err)
		}
	}

	d.SetA("app.lbtest", bs[0].IP())
	lbtest.Eventually(t, 10*time.Second, "m gone", func() bool { _, ok := members(t, c)[m.URL()]; return !ok })
	d.SetA("app.lbtest", ips(bs...)...)
	lbtest.Eventually(t, 10*time.Second, "m joined again", func() bool { return allAlive(t, c, bs...) })
	if s := members(t, c)[m.URL()]; s.RequestsTotal != 0 || s.StatusChanges != 1 {
		t.Fatalf("a member back after it left does not start fresh: %+v", s)
	}
	if n := len(c.Logs(`"member joined"`, m.URL())); n != 2 {
		t.Fatalf("%d join lines, want 2", n)
	}
}

func TestDiscoveredMemberFailingItsCheckGetsNoTraffic(t *testing.T) {
	c := lbtest.Start(t)
	d := lbtest.NewDNS(t)
	bs, port := lbtest.NewBackendsOnLoopback(t, 2, nil)
	bs[1].Health.Store(503)
	d.SetA("app.lbtest", ips(bs...)...)
	c.Load(t, dnsSite(c, d, "app.lbtest", port, "health_interval 50ms"))
	lbtest.Eventually(t, 10*time.Second, "both checked", func() bool {
		return members(t, c)[bs[0].URL()].Alive && bs[1].HealthHits.Load() > 2
	})
	if failed := load(t, c, 4, 200, "/"); failed != 0 {
		t.Fatalf("%d requests failed", failed)
	}
	if n := bs[1].Requests.Load(); n != 0 {
		t.Fatalf("a member listed in DNS but failing its checks got %d requests", n)
	}
	if s := members(t, c)[bs[1].URL()]; s.Alive || s.LastCheck == nil || s.LastCheck.Status != 503 {
		t.Fatalf("stats of the failing member: %+v", s)
	}
}

func TestDNSFailureKeepsTheMembers(t *testing.T) {
	c := lbtest.Start(t)
	d := lbtest.NewDNS(t)
	bs, port := lbtest.NewBackendsOnLoopback(t, 2, nil)
	d.SetA("app.lbtest", ips(bs...)...)
	c.Load(t, dnsSite(c, d, "app.lbtest", port, ""))
	lbtest.Eventually(t, 10*time.Second, "2 members up", func() bool { return allAlive(t, c, bs...) })

	d.SetRcode("app.lbtest", dns.RcodeServerFailure)
	lbtest.Eventually(t, 10*time.Second, "the error shown", func() bool {
		got := discovery(t, c)
		return len(got) == 1 && got[0].Error != "" && got[0].Members == 2
	})
	queries := d.Queries.Load()
	lbtest.Eventually(t, 10*time.Second, "more failing lookups", func() bool { return d.Queries.Load() > queries+5 })
	if failed := load(t, c, 4, 200, "/"); failed != 0 {
		t.Fatalf("%d requests failed while DNS answered SERVFAIL", failed)
	}
	d.Stop()
	time.Sleep(300 * time.Millisecond) // lookups against a closed port, several refreshes
	if failed := load(t, c, 4, 200, "/"); failed != 0 || !allAlive(t, c, bs...) {
		t.Fatalf("%d requests failed with the DNS server down", failed)
	}
	source := fmt.Sprintf("app.lbtest:%d", port) // this test's source in the log
	if n := len(c.Logs(`"dns lookup failed`, source)); n != 1 {
		t.Fatalf("%d warnings for one streak of failed lookups, want 1", n)
	}
	d.Restart(t)
	d.SetA("app.lbtest", ips(bs...)...)
	lbtest.Eventually(t, 10*time.Second, "the error cleared", func() bool {
		got := discovery(t, c)
		return len(got) == 1 && got[0].Error == ""
	})
	lines := c.Logs(`"dns lookup works again"`, source)
	if len(lines) != 1 || !strings.Contains(lines[0], `"level":"info"`) {
		t.Fatalf("want one info line when lookups work again: %v", lines)
	}
}

func TestFirstLookupFailingLeavesThePoolEmptyUntilOneWorks(t *testing.T) {
	c := lbtest.Start(t)
	d := lbtest.NewDNS(t)
	bs, port := lbtest.NewBackendsOnLoopback(t, 1, nil)
	d.SetRcode("app.lbtest", dns.RcodeNameError)
	c.Load(t, dnsSite(c, d, "app.lbtest", port, ""))
	lbtest.Eventually(t, 10*time.Second, "a failed lookup", func() bool {
		got := discovery(t, c)
		return len(got) == 1 && got[0].Error != ""
	})
	resp, err := c.Client().Get(c.URL("/"))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusServiceUnavailable || resp.Header.Get("Retry-After") == "" {
		t.Fatalf("empty pool: status %d, Retry-After %q", resp.StatusCode, resp.Header.Get("Retry-After"))
	}
	d.SetA("app.lbtest", bs[0].IP())
	lbtest.Eventually(t, 10*time.Second, "served once DNS answers", func() bool {
		status, _ := c.Get(t, c.URL("/"))
		return status == 200
	})
}

func TestSRVPriorityGroupsFailOverAndWeightsApply(t *testing.T) {
	c := lbtest.Start(t)
	d := lbtest.NewDNS(t)
	bs, port := lbtest.NewBackendsOnLoopback(t, 3, nil)
	for i, b := range bs {
		d.SetA(fmt.Sprintf("m%d.lbtest", i), b.IP())
	}
	d.SetSRV("_http._tcp.app.lbtest",
		lbtest.SRV{Target: "m0.lbtest", Port: uint16(port), Priority: 10, Weight: 3},
		lbtest.SRV{Target: "m1.lbtest", Port: uint16(port), Priority: 10, Weight: 0},
		lbtest.SRV{Target: "m2.lbtest", Port: uint16(port), Priority: 20, Weight: 5})
	c.Load(t, fmt.Sprintf(`:%d {
	lbpool {
		name web
		health_uri /health
		health_interval 50ms
		dynamic srv _http._tcp.app.lbtest {
			refresh %s
			resolvers %s
		}
	}
}`, c.HTTPPort, testRefresh, d.Addr))
	lbtest.Eventually(t, 10*time.Second, "3 members up", func() bool { return allAlive(t, c, bs...) })
	ms := members(t, c)
	if ms[bs[0].URL()].Weight != 3 || ms[bs[1].URL()].Weight != 1 || ms[bs[2].URL()].Weight != 5 {
		t.Fatalf("SRV weights (3, 0, 5) as pool weights: %d %d %d, want 3 1 5",
			ms[bs[0].URL()].Weight, ms[bs[1].URL()].Weight, ms[bs[2].URL()].Weight)
	}
	if failed := load(t, c, 8, 400, "/"); failed != 0 {
		t.Fatalf("%d failed", failed)
	}
	if bs[2].Requests.Load() != 0 || bs[0].Requests.Load() <= bs[1].Requests.Load() {
		t.Fatalf("priority 10 (weights 3, 1) then 20: %d %d %d",
			bs[0].Requests.Load(), bs[1].Requests.Load(), bs[2].Requests.Load())
	}
	bs[0].Health.Store(503)
	bs[1].Health.Store(503)
	lbtest.Eventually(t, 10*time.Second, "the first group down", func() bool {
		ms := members(t, c)
		return !ms[bs[0].URL()].Alive && !ms[bs[1].URL()].Alive
	})
	if failed := load(t, c, 4, 100, "/"); failed != 0 || bs[2].Requests.Load() != 100 {
		t.Fatalf("failover to priority 20: %d failed, %d served there", failed, bs[2].Requests.Load())
	}
	bs[1].Health.Store(200)
	lbtest.Eventually(t, 10*time.Second, "m1 up", func() bool { return members(t, c)[bs[1].URL()].Alive })
	backup := bs[2].Requests.Load()
	if failed := load(t, c, 4, 100, "/"); failed != 0 || bs[2].Requests.Load() != backup {
		t.Fatalf("traffic stays on the backup group when the first is up again: %d failed, %d more there",
			failed, bs[2].Requests.Load()-backup)
	}
}

func TestBadDNSAnswersAreBoundedAndPanicNothing(t *testing.T) {
	c := lbtest.Start(t)
	d := lbtest.NewDNS(t)
	d.SetA("empty.lbtest")
	d.SetCNAME("loop1.lbtest", "loop2.lbtest")
	d.SetCNAME("loop2.lbtest", "loop1.lbtest")
	var many []string
	for i := range 1000 {
		many = append(many, fmt.Sprintf("127.1.%d.%d", i/250, 1+i%250))
	}
	d.SetA("many.lbtest", many...)
	d.SetSRV("_http._tcp.loop.lbtest", lbtest.SRV{Target: "loop1.lbtest", Port: 80})
	port := lbtest.FreePort(t)
	site := func(pool, kind, name string) string {
		portArg := fmt.Sprint(port)
		if kind == "srv" {
			portArg = ""
		}
		return fmt.Sprintf(`
	handle /%[1]s {
		lbpool {
			name %[1]s
			health_interval 1m
			dynamic %[2]s %[3]s %[4]s {
				refresh %[5]s
				resolvers %[6]s
			}
		}
	}`, pool, kind, name, portArg, testRefresh, d.Addr)
	}
	c.Load(t, fmt.Sprintf(":%d {%s%s%s%s\n}", c.HTTPPort,
		site("empty", "a", "empty.lbtest"), site("loop", "a", "loop1.lbtest"),
		site("srvloop", "srv", "_http._tcp.loop.lbtest"), site("many", "a", "many.lbtest")))
	lbtest.Eventually(t, 20*time.Second, "every source looked up", func() bool {
		got := discovery(t, c)
		if len(got) != 4 {
			return false
		}
		for _, s := range got {
			if s.LastLookup == nil || (s.Pool == "many") != (s.Members > 0) {
				return false
			}
		}
		return true
	})
	for _, s := range discovery(t, c) {
		switch {
		case s.Pool == "many" && (s.Members != leastconn.MaxMembers || s.Error != ""):
			t.Fatalf("1000 addresses: %+v, want %d members", s, leastconn.MaxMembers)
		case s.Pool != "many" && (s.Members != 0 || s.Error == ""):
			t.Fatalf("a bad answer gave members or no error: %+v", s)
		}
		t.Logf("%s: %d members, error %q", s.Pool, s.Members, s.Error)
	}
	if n := len(c.Stats(t, "many")); n != leastconn.MaxMembers {
		t.Fatalf("%d members in stats, want %d", n, leastconn.MaxMembers)
	}
	if n := len(c.Logs(`"dns answer has more addresses than a source takes"`, fmt.Sprintf("many.lbtest:%d", port))); n != 1 {
		t.Fatalf("%d warnings about the cap, want 1", n)
	}
	for _, pool := range []string{"empty", "loop"} {
		if status, _ := c.Get(t, c.URL("/"+pool)); status != http.StatusServiceUnavailable {
			t.Fatalf("%s: status %d, want 503", pool, status)
		}
	}
	c.Load(t, fmt.Sprintf(":%d {\n\trespond ok\n}", c.HTTPPort))
}

func TestReloadKeepsDiscoveredMembersAndNoGoroutineOutlivesTheConfig(t *testing.T) {
	c := lbtest.Start(t)
	d := lbtest.NewDNS(t)
	bs, port := lbtest.NewBackendsOnLoopback(t, 2, nil)
	d.SetA("app.lbtest", ips(bs...)...)
	empty := fmt.Sprintf(":%d {\n\trespond ok\n}", c.HTTPPort)
	c.Load(t, empty)
	settle := func() int {
		c.CloseIdleConnections()
		return lbpoolGoroutines()
	}
	baseline := settle()
	c.Load(t, dnsSite(c, d, "app.lbtest", port, ""))
	lbtest.Eventually(t, 10*time.Second, "2 members up", func() bool { return allAlive(t, c, bs...) })
	for range 10 {
		c.Get(t, c.URL("/"))
	}
	if status, body := c.Admin(t, http.MethodPost, "/lbpool/state",
		fmt.Sprintf(`{"pool":"web","backend":%q,"state":"drain"}`, bs[0].URL())); status != 200 {
		t.Fatalf("state: %d %s", status, body)
	}
	before := members(t, c)
	for i := range 20 {
		c.Load(t, dnsSite(c, d, "app.lbtest", port, fmt.Sprintf("health_interval %dms", 500+i)))
	}
	after := members(t, c)
	for _, b := range bs {
		if after[b.URL()].RequestsTotal != before[b.URL()].RequestsTotal || after[b.URL()].StatusChanges != 1 {
			t.Fatalf("a reload reset a member: before %+v after %+v", before[b.URL()], after[b.URL()])
		}
	}
	if after[bs[0].URL()].State != "drain" {
		t.Fatal("a reload lost a member's admin state")
	}
	if n := len(c.Logs(`"member joined"`, bs[1].URL())); n != 1 {
		t.Fatalf("%d join lines across 20 reloads, want 1", n)
	}
	// 2 checkers, one source and the pool's fleet state sync
	lbtest.EventuallyOr(t, 5*time.Second, "4 lbpool goroutines", func() bool {
		return settle() == baseline+4
	}, func() { t.Logf("%d lbpool goroutines", settle()); dumpGoroutines(t) })
	c.Load(t, empty)
	lbtest.EventuallyOr(t, 5*time.Second, "no lbpool goroutine left", func() bool {
		return settle() == baseline
	}, func() { t.Logf("baseline %d, now %d", baseline, settle()); dumpGoroutines(t) })
	if got := discovery(t, c); len(got) != 0 {
		t.Fatalf("sources remain: %+v", got)
	}
}
