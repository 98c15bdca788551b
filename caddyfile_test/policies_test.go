package caddyfile_test

import (
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/lbpool/lbpool/internal/lbtest"
)

// The selection policies end to end: reverse_proxy's under their names, and
// hash with its bound.

// named starts n backends named b0, b1, ... that answer their name.
func named(t *testing.T, n int, handler func(name string) http.HandlerFunc) []*lbtest.Backend {
	t.Helper()
	bs := make([]*lbtest.Backend, n)
	for i := range bs {
		name := fmt.Sprintf("b%d", i)
		var h http.HandlerFunc
		if handler != nil {
			h = handler(name)
		}
		bs[i] = lbtest.NewBackend(t, name, h)
	}
	return bs
}

// getAs sends GET path with the headers (name, value pairs) and returns the
// body (the backend's name) and the response.
func getAs(t *testing.T, c *lbtest.Caddy, path string, headers ...string) (string, *http.Response) {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, c.URL(path), nil)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i+1 < len(headers); i += 2 {
		req.Header.Set(headers[i], headers[i+1])
	}
	resp, err := c.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %d %s %v", path, resp.StatusCode, body, err)
	}
	return string(body), resp
}

func TestRoundRobinRotatesExactly(t *testing.T) {
	c := lbtest.Start(t)
	bs := named(t, 3, nil)
	c.Load(t, site(c, "lb_policy round_robin", bs...))
	first, _ := getAs(t, c, "/")
	start := int(first[1] - '0')
	for i := 1; i < 30; i++ {
		got, _ := getAs(t, c, "/")
		if want := fmt.Sprintf("b%d", (start+i)%3); got != want {
			t.Fatalf("request %d went to %s, want %s", i, got, want)
		}
	}
}

func TestWeightedRoundRobinGivesThreeToOneUnderConcurrency(t *testing.T) {
	c := lbtest.Start(t)
	bs := named(t, 2, nil)
	c.Load(t, site(c, "lb_policy weighted_round_robin 3 1", bs...))
	if _, failed := c.Traffic(8, 800, "/", nil); failed != 0 {
		t.Fatalf("%d requests failed", failed)
	}
	a, b := bs[0].Requests.Load(), bs[1].Requests.Load()
	t.Logf("weighted_round_robin 3 1: %d and %d", a, b)
	if a+b != 800 || a < 590 || a > 610 {
		t.Fatalf("weights 3 1 gave %d and %d, want 600 and 200", a, b)
	}
}

func TestFirstStaysOnTheFirstUntilItIsDown(t *testing.T) {
	c := lbtest.Start(t)
	bs := named(t, 3, nil)
	c.Load(t, site(c, "lb_policy first\n\t\thealth_interval 50ms", bs...))
	for range 20 {
		if got, _ := getAs(t, c, "/"); got != "b0" {
			t.Fatalf("first went to %s while b0 is up", got)
		}
	}
	bs[0].Health.Store(http.StatusServiceUnavailable)
	lbtest.Eventually(t, 10*time.Second, "b0 down", func() bool { return !c.Backend(t, "web", bs[0].URL()).Alive })
	for range 10 {
		if got, _ := getAs(t, c, "/"); got != "b1" {
			t.Fatalf("with b0 down, first went to %s, want b1", got)
		}
	}
}

// keepsKeys sends each key 3 times through header (or "query" or "path")
// and fails if a key moves; it returns how many backends the keys used.
func keepsKeys(t *testing.T, c *lbtest.Caddy, n int, send func(key string) string) int {
	t.Helper()
	home := map[string]string{}
	used := map[string]bool{}
	for round := range 3 {
		for k := range n {
			key := fmt.Sprintf("key-%d", k)
			got := send(key)
			if round == 0 {
				home[key] = got
				used[got] = true
			} else if got != home[key] {
				t.Fatalf("%s went to %s, then to %s", key, home[key], got)
			}
		}
	}
	return len(used)
}

func TestHashingPoliciesKeepTheirKeyOnOneBackend(t *testing.T) {
	c := lbtest.Start(t)
	bs := named(t, 4, nil)
	cases := []struct {
		policy string
		send   func(key string) string
	}{
		{"uri_hash", func(k string) string { b, _ := getAs(t, c, "/"+k); return b }},
		{"query tenant", func(k string) string { b, _ := getAs(t, c, "/x?tenant="+k); return b }},
		{"header X-Key", func(k string) string { b, _ := getAs(t, c, "/", "X-Key", k); return b }},
		{"hash {http.request.header.X-User}/{http.request.uri.path}", func(k string) string { b, _ := getAs(t, c, "/p", "X-User", k); return b }},
		{"hash {http.request.cookie.session}", func(k string) string { b, _ := getAs(t, c, "/", "Cookie", "session="+k); return b }},
	}
	for _, tc := range cases {
		t.Run(strings.Fields(tc.policy)[0], func(t *testing.T) {
			c.Load(t, site(c, "lb_policy "+tc.policy, bs...))
			if used := keepsKeys(t, c, 40, tc.send); used < 3 {
				t.Fatalf("40 keys used %d of 4 backends", used)
			}
		})
	}
}

func TestIPHashAndClientIPHash(t *testing.T) {
	c := lbtest.Start(t)
	bs := named(t, 4, nil)
	c.Load(t, site(c, "lb_policy ip_hash", bs...))
	first, _ := getAs(t, c, "/")
	for range 10 {
		if got, _ := getAs(t, c, "/", "X-Forwarded-For", fmt.Sprint("198.51.100.", rand.N(200))); got != first {
			t.Fatalf("ip_hash moved one client from %s to %s", first, got)
		}
	}
	// client_ip_hash takes the client IP the server's trusted proxies give
	globals := strings.TrimSuffix(strings.TrimSpace(c.Globals()), "}") +
		"\tservers {\n\t\ttrusted_proxies static 127.0.0.1/32\n\t\tclient_ip_headers X-Forwarded-For\n\t}\n}\n"
	if err := c.LoadCaddyfile(globals + site(c, "lb_policy client_ip_hash", bs...)); err != nil {
		t.Fatal(err)
	}
	used := keepsKeys(t, c, 40, func(k string) string {
		b, _ := getAs(t, c, "/", "X-Forwarded-For", fmt.Sprintf("198.51.100.%d", len(k)*7+int(k[len(k)-1])))
		return b
	})
	if used < 2 {
		t.Fatalf("client IPs used %d backends", used)
	}
}

func TestCookiePolicySetsTheCookieAndHonoursIt(t *testing.T) {
	c := lbtest.Start(t)
	bs := named(t, 3, nil)
	c.Load(t, site(c, "lb_policy cookie srv s3cret\n\t\theader_down X-Pick {http.lbpool.pick}", bs...))
	home, resp := getAs(t, c, "/")
	var value string
	for _, line := range resp.Header.Values("Set-Cookie") {
		if v, ok := strings.CutPrefix(line, "srv="); ok {
			value, _, _ = strings.Cut(v, ";")
		}
	}
	if value == "" {
		t.Fatalf("no srv cookie set: %v", resp.Header.Values("Set-Cookie"))
	}
	for range 10 {
		got, resp := getAs(t, c, "/", "Cookie", "srv="+value)
		if got != home || resp.Header.Get("X-Pick") != "sticky" {
			t.Fatalf("the cookie of %s went to %s (pick %q)", home, got, resp.Header.Get("X-Pick"))
		}
	}
}

func TestRandomChooseTwoKeepsASlowBackendLow(t *testing.T) {
	c := lbtest.Start(t)
	bs := named(t, 3, nil)
	slow := lbtest.NewBackend(t, "slow", func(w http.ResponseWriter, r *http.Request) {
		time.Sleep(50 * time.Millisecond)
	})
	c.Load(t, site(c, "lb_policy random_choose 2", append(bs, slow)...))
	if failed := load(t, c, 16, 800, "/"); failed != 0 {
		t.Fatalf("%d requests failed", failed)
	}
	share := float64(slow.Requests.Load()) / 800
	t.Logf("random_choose 2: the slow backend took %.1f%%", 100*share)
	if share >= 0.10 {
		t.Fatalf("the 50 ms backend took %.1f%% of requests, want under 10%%", 100*share)
	}
}

// TestPolicyLinesCarryOverFromReverseProxy adapts the same lb_policy lines
// under reverse_proxy and lbpool and compares what each keeps.
func TestPolicyLinesCarryOverFromReverseProxy(t *testing.T) {
	lines := []string{
		"round_robin", "random", "first", "ip_hash", "client_ip_hash", "uri_hash", "least_conn",
		"random_choose 3", "query tenant", "header X-Key", "weighted_round_robin 3 1",
		"cookie srv s3cret", "header X-Key {\n\t\t\tfallback round_robin\n\t\t}",
	}
	for _, line := range lines {
		rp := adaptedHandler(t, ":8080 {\n\treverse_proxy a:80 b:80 {\n\t\tlb_policy "+line+"\n\t}\n}\n", "reverse_proxy")
		lb := adaptedHandler(t, ":8080 {\n\tlbpool a:80 b:80 {\n\t\tlb_policy "+line+"\n\t}\n}\n", "lbpool")
		sel, _ := rp["load_balancing"].(map[string]any)["selection_policy"].(map[string]any)
		name := sel["policy"].(string)
		switch name {
		case "cookie":
			st, _ := lb["sticky"].(map[string]any)
			if st["name"] != sel["name"] || st["secret"] != sel["secret"] {
				t.Errorf("%s: reverse_proxy %v, lbpool sticky %v", line, sel, st)
			}
			continue
		case "least_conn":
			if lb["lb_policy"] != nil && lb["lb_policy"] != name {
				t.Errorf("%s: lbpool lb_policy %v", line, lb["lb_policy"])
			}
			continue
		}
		if lb["lb_policy"] != name {
			t.Errorf("%s: reverse_proxy policy %q, lbpool %v", line, name, lb["lb_policy"])
		}
		for rpField, lbField := range map[string]string{"key": "lb_policy_key", "field": "lb_policy_key", "choose": "lb_choose"} {
			if v, ok := sel[rpField]; ok && fmt.Sprint(v) != fmt.Sprint(lb[lbField]) {
				t.Errorf("%s: reverse_proxy %s %v, lbpool %s %v", line, rpField, v, lbField, lb[lbField])
			}
		}
		if fb, ok := sel["fallback"].(map[string]any); ok && fb["policy"] != lb["lb_fallback"] {
			t.Errorf("%s: reverse_proxy fallback %v, lbpool %v", line, fb["policy"], lb["lb_fallback"])
		}
		if ws, ok := sel["weights"].([]any); ok {
			backends := lb["backends"].([]any)
			for i, w := range ws {
				if got := backends[i].(map[string]any)["weight"]; fmt.Sprint(got) != fmt.Sprint(w) {
					t.Errorf("%s: backend %d has weight %v, reverse_proxy %v", line, i, got, w)
				}
			}
		}
	}
}

// inflight wraps a backend handler that takes d, recording the most
// requests the backend held at once.
type inflight struct {
	now, peak atomic.Int64
}

func (f *inflight) handler(d time.Duration) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		n := f.now.Add(1)
		for p := f.peak.Load(); n > p && !f.peak.CompareAndSwap(p, n); p = f.peak.Load() {
		}
		time.Sleep(d)
		f.now.Add(-1)
	}
}

// measured starts n backends of delay d that record their peak in-flight.
func measured(t *testing.T, n int, d time.Duration) ([]*lbtest.Backend, []*inflight) {
	fs := make([]*inflight, n)
	for i := range fs {
		fs[i] = &inflight{}
	}
	k := 0
	bs := named(t, n, func(string) http.HandlerFunc { k++; return fs[k-1].handler(d) })
	return bs, fs
}

// hashSpills reads the pool's hash_spills_total from /lbpool/pools.
func hashSpills(t *testing.T, c *lbtest.Caddy) uint64 {
	t.Helper()
	return poolStats(t, c).HashSpillsTotal
}

// hammer sends total GETs from clients goroutines, each with the header
// X-Key set to key(), and returns how many failed.
func hammer(c *lbtest.Caddy, clients, total int, key func(*rand.Rand) string) int64 {
	var sent, failed atomic.Int64
	var wg sync.WaitGroup
	for g := range clients {
		wg.Go(func() {
			rng := rand.New(rand.NewPCG(uint64(g), 7))
			for sent.Add(1) <= int64(total) {
				req, _ := http.NewRequest(http.MethodGet, c.URL("/"), nil)
				req.Header.Set("X-Key", key(rng))
				resp, err := c.Client().Do(req)
				if err != nil {
					failed.Add(1)
					continue
				}
				_, _ = io.Copy(io.Discard, resp.Body)
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

func TestHashHotKeyIsBoundedAndUnboundedWithoutTheFactor(t *testing.T) {
	c := lbtest.Start(t)
	bound := int64(math.Ceil(1.25 * 33 / 8)) // 6
	for _, tc := range []struct {
		factor string
		check  func(peaks []int64)
	}{
		{"1.25", func(peaks []int64) {
			for i, p := range peaks {
				if p > bound {
					t.Errorf("backend %d held %d requests of the hot key at once, bound %d", i, p, bound)
				}
			}
		}},
		{"off", func(peaks []int64) {
			if top := maxOf(peaks); top != 32 {
				t.Errorf("without the bound the key's backend held %d at once, want all 32", top)
			}
		}},
	} {
		bs, fs := measured(t, 8, 20*time.Millisecond)
		c.Load(t, site(c, "lb_policy header X-Key\n\t\thash_balance_factor "+tc.factor, bs...))
		before := hashSpills(t, c)
		if failed := hammer(c, 32, 32*15, func(*rand.Rand) string { return "viral-video" }); failed != 0 {
			t.Fatalf("%d requests failed", failed)
		}
		spills := hashSpills(t, c) - before
		if (tc.factor == "off") != (spills == 0) {
			t.Errorf("hash_balance_factor %s: %d spills in /lbpool/pools", tc.factor, spills)
		}
		if _, metrics := c.Admin(t, http.MethodGet, "/metrics", ""); !strings.Contains(string(metrics), `caddy_lbpool_hash_spills_total{pool="web"}`) {
			t.Errorf("/metrics has no caddy_lbpool_hash_spills_total for the pool")
		}
		peaks := make([]int64, len(fs))
		for i, f := range fs {
			peaks[i] = f.peak.Load()
		}
		t.Logf("hash_balance_factor %s: peak in-flight per backend %v (bound %d)", tc.factor, peaks, bound)
		tc.check(peaks)
	}
}

func maxOf(xs []int64) int64 {
	m := int64(0)
	for _, x := range xs {
		m = max(m, x)
	}
	return m
}

// TestHashZipfStaysUnderTheBoundAndMostlyOnFirstChoices sends Zipf(1.1)
// keys over 10,000 keys from 64 clients to 8 backends: unbounded, where
// every request goes to its key's first choice and the backends' shares
// show how uneven the keys are, then with the default factor 1.25 and with
// 2. A backend whose keys bring more than f/8 of the requests must pass the
// excess on, so the best any bound can do is 1 - Σ max(0, share - f/8) on
// first choices: at 1.25 that ceiling is itself 84-91% for this key mix
// (it depends on where the hot keys land), so 90% on first choices cannot
// be asked of the default; the bounded run must stay under the bound at
// every moment and come within 20 points of its ceiling (bursts of 64
// requests over bounds of 10 or 11 spill too). At 2 the run must put at
// least 90% on first choices, under its bound, or come within 5 points of
// its ceiling where the hot keys make that lower: three of the hottest on
// one backend give it 40% of the requests and a ceiling of 85% (seen once
// in a run of the whole suite: 84.1% measured).
func TestHashZipfStaysUnderTheBoundAndMostlyOnFirstChoices(t *testing.T) {
	c := lbtest.Start(t)
	const total = 6000
	zipf := func(rng *rand.Rand) string { return fmt.Sprint("k", zipfKey(rng, 10000, 1.1)) }
	// the same backends (the same key space) for every run
	bs, fs := measured(t, 8, 10*time.Millisecond)
	c.Load(t, site(c, "lb_policy header X-Key\n\t\thash_balance_factor off", bs...))
	if failed := hammer(c, 64, total, zipf); failed != 0 {
		t.Fatalf("%d requests failed", failed)
	}
	shares := make([]float64, len(bs))
	for i, b := range bs {
		shares[i] = float64(b.Requests.Load()) / total
	}
	t.Logf("zipf 1.1 over 10,000 keys, 64 clients: unbounded shares %.3f", shares)

	for _, f := range []float64{1.25, 2} {
		best := 1.0
		for _, share := range shares {
			best -= max(0, share-f/8)
		}
		for _, fb := range fs {
			fb.peak.Store(0)
		}
		c.Load(t, site(c, fmt.Sprintf("lb_policy header X-Key\n\t\thash_balance_factor %g", f), bs...))
		before := hashSpills(t, c)
		if failed := hammer(c, 64, total, zipf); failed != 0 {
			t.Fatalf("factor %g: %d requests failed", f, failed)
		}
		bound := int64(math.Ceil(f * 65 / 8)) // 64 clients: at most 64 in flight
		peaks := make([]int64, len(fs))
		for i, fb := range fs {
			peaks[i] = fb.peak.Load()
			if peaks[i] > bound {
				t.Errorf("factor %g: backend %d held %d at once, bound %d", f, i, peaks[i], bound)
			}
		}
		first := 1 - float64(hashSpills(t, c)-before)/total
		t.Logf("factor %g: the best the bound allows on first choices: %.1f%%; measured: %.1f%%, peaks %v (bound %d)",
			f, 100*best, 100*first, peaks, bound)
		if want := min(0.9, best-0.05); f == 2 && first < want {
			t.Errorf("factor 2: %.1f%% of requests went to their key's first choice, want at least %.1f%%", 100*first, 100*want)
		}
		if first < best-0.20 {
			t.Errorf("factor %g: %.1f%% of requests went to their key's first choice, want within 20 points of %.1f%%", f, 100*first, 100*best)
		}
	}
}

// zipfKey draws a key rank in [0, n) with P(k) ∝ 1/(k+1)^s.
func zipfKey(rng *rand.Rand, n int, s float64) int {
	zipfOnce.Do(func() {
		zipfCDF = make([]float64, n)
		sum := 0.0
		for k := range n {
			sum += 1 / math.Pow(float64(k+1), s)
			zipfCDF[k] = sum
		}
		for k := range zipfCDF {
			zipfCDF[k] /= sum
		}
	})
	u := rng.Float64()
	lo, hi := 0, len(zipfCDF)-1
	for lo < hi {
		mid := (lo + hi) / 2
		if zipfCDF[mid] < u {
			lo = mid + 1
		} else {
			hi = mid
		}
	}
	return lo
}

var (
	zipfOnce sync.Once
	zipfCDF  []float64
)

func TestHashKeysStayAcrossRequestsAndAReloadMovesOnlyTheRemovedBackendsKeys(t *testing.T) {
	c := lbtest.Start(t)
	bs := named(t, 8, nil)
	c.Load(t, site(c, "lb_policy header X-Key\n\t\theader_down X-Pick {http.lbpool.pick}", bs...))
	home := map[string]string{}
	send := func(k string) string {
		b, resp := getAs(t, c, "/", "X-Key", k)
		if p := resp.Header.Get("X-Pick"); p != "hash" {
			t.Fatalf("sequential requests: pick %q, want hash", p)
		}
		return b
	}
	keepsKeys(t, c, 200, func(k string) string {
		b := send(k)
		home[k] = b
		return b
	})
	// reload without b5: only b5's keys move
	c.Load(t, site(c, "lb_policy header X-Key\n\t\theader_down X-Pick {http.lbpool.pick}", append(append([]*lbtest.Backend{}, bs[:5]...), bs[6:]...)...))
	moved := 0
	for k, was := range home {
		got := send(k)
		if was == "b5" {
			moved++
			continue
		}
		if got != was {
			t.Fatalf("%s moved from %s to %s though only b5 left", k, was, got)
		}
	}
	t.Logf("200 keys: %d were on b5 and moved; the others stayed", moved)
}

func TestHashRetryAndAnOutBackendTakeTheKeysNextChoice(t *testing.T) {
	c := lbtest.Start(t)
	bs := named(t, 4, nil)
	c.Load(t, site(c, "lb_policy header X-Key\n\t\thealth_interval 1m\n\t\theader_down X-Pick {http.lbpool.pick}", bs...))
	home, _ := getAs(t, c, "/", "X-Key", "tenant-7")
	byName(t, home, bs...).Close() // refuses connections from now on
	next, resp := getAs(t, c, "/", "X-Key", "tenant-7")
	if next == home || resp.Header.Get("X-Pick") != "retry" {
		t.Fatalf("with %s gone the key went to %s (pick %q), want a retry elsewhere", home, next, resp.Header.Get("X-Pick"))
	}
	for range 10 {
		got, resp := getAs(t, c, "/", "X-Key", "tenant-7")
		if got != next {
			t.Fatalf("the key's next choice was %s, then %s (pick %q)", next, got, resp.Header.Get("X-Pick"))
		}
	}
}
