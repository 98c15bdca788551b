package caddyfile_test

import (
	"encoding/json"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
)

// The drop-in promise: a reverse_proxy block with reverse_proxy replaced by
// lbpool adapts with the same meaning. Each testdata/dropin/*.caddyfile is
// adapted twice, as written and with lbpool; every setting in
// reverse_proxy's JSON must be in lbpool's, at the place rpToLB names.
// Each testdata/dropin_refused/*.caddyfile is something lbpool refuses: its
// .want file holds the one-line error and the line it names.

// rpToLB maps reverse_proxy's JSON paths (flattened, # for any index) to
// lbpool's, by the longest matching prefix; what no rule names keeps its
// path (headers, rewrite, request_buffers, response_buffers,
// flush_interval, trusted_proxies, proxy_status_name, stream_*).
var rpToLB = []struct{ from, to string }{
	{"upstreams.#.dial", "backends.#.url"},
	{"health_checks.active.uri", "health_uri"},
	{"health_checks.active.port", "health_port"},
	{"health_checks.active.method", "health_method"},
	{"health_checks.active.body", "health_request_body"},
	{"health_checks.active.headers.", "health_headers."},
	{"health_checks.active.follow_redirects", "health_follow_redirects"},
	{"health_checks.active.interval", "health_interval"},
	{"health_checks.active.timeout", "health_timeout"},
	{"health_checks.active.expect_status", "health_status"},
	{"health_checks.active.expect_body", "health_body"},
	{"health_checks.active.passes", "health_passes"},
	{"health_checks.active.fails", "health_fails"},
	{"health_checks.passive.fail_duration", "fail_duration"},
	{"health_checks.passive.max_fails", "max_fails"},
	{"health_checks.passive.unhealthy_status.", "unhealthy_status."},
	{"health_checks.passive.unhealthy_latency", "unhealthy_latency"},
	{"health_checks.passive.unhealthy_request_count", "max_conns"}, // lbpool queues beyond it
	{"transport.protocol", "-"},                                    // http: the only one lbpool has
	{"transport.tls.except_ports.", "-"},                           // checked on the backends' schemes
	{"transport.", ""},                                             // the same names, at the top
	{"dynamic_upstreams.source", "dynamic.0.kind"},
	{"dynamic_upstreams.resolver.addresses.", "dynamic.0.resolvers."},
	{"dynamic_upstreams.versions.", "-"}, // checked as a list below
	{"dynamic_upstreams.", "dynamic.0."},
	{"load_balancing.selection_policy.policy", "lb_policy"},
	{"load_balancing.selection_policy.key", "lb_policy_key"},   // query
	{"load_balancing.selection_policy.field", "lb_policy_key"}, // header
	{"load_balancing.selection_policy.fallback.policy", "lb_fallback"},
	{"load_balancing.retries", "retries"},
	{"load_balancing.try_duration", "try_duration"},
	{"load_balancing.try_interval", "try_interval"},
	{"load_balancing.retry_match.", "retry_match."},
}

func TestReverseProxyCorpusAdaptsWithTheSameMeaning(t *testing.T) {
	t.Setenv("BACKEND", "app.internal:8080")
	files, err := filepath.Glob(filepath.Join("testdata", "dropin", "*.caddyfile"))
	if err != nil || len(files) < 20 {
		t.Fatalf("want at least 20 configs in testdata/dropin, found %d (%v)", len(files), err)
	}
	same := 0
	for _, path := range files {
		ok := t.Run(strings.TrimSuffix(filepath.Base(path), ".caddyfile"), func(t *testing.T) {
			src, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			rp := adaptedHandler(t, string(src), "reverse_proxy")
			lb := adaptedHandler(t, strings.ReplaceAll(string(src), "reverse_proxy", "lbpool"), "lbpool")
			for _, problem := range sameMeaning(rp, lb) {
				t.Error(problem)
			}
		})
		if ok {
			same++
		}
	}
	t.Logf("%d of %d reverse_proxy configs adapt in lbpool with the same meaning", same, len(files))
}

func TestReverseProxyOptionsOutOfScopeFailWithOneLine(t *testing.T) {
	files, err := filepath.Glob(filepath.Join("testdata", "dropin_refused", "*.caddyfile"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no configs in testdata/dropin_refused (%v)", err)
	}
	for _, path := range files {
		t.Run(strings.TrimSuffix(filepath.Base(path), ".caddyfile"), func(t *testing.T) {
			src, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			want, err := os.ReadFile(strings.TrimSuffix(path, ".caddyfile") + ".want")
			if err != nil {
				t.Fatal(err)
			}
			assertAdaptError(t, strings.ReplaceAll(string(src), "reverse_proxy", "lbpool"), strings.TrimSpace(string(want)))
		})
	}
}

// adaptedHandler adapts a Caddyfile and returns its one handler's JSON.
func adaptedHandler(t *testing.T, caddyfile, name string) map[string]any {
	t.Helper()
	cfg, _, err := adaptCaddyfile([]byte(caddyfile))
	if err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	var doc struct {
		Apps struct {
			HTTP struct {
				Servers map[string]struct {
					Routes []struct {
						Handle []map[string]any `json:"handle"`
					} `json:"routes"`
				} `json:"servers"`
			} `json:"http"`
		} `json:"apps"`
	}
	if err := json.Unmarshal(cfg, &doc); err != nil {
		t.Fatal(err)
	}
	for _, srv := range doc.Apps.HTTP.Servers {
		for _, route := range srv.Routes {
			for _, h := range route.Handle {
				if h["handler"] == name {
					return h
				}
			}
		}
	}
	t.Fatalf("no %s handler in %s", name, cfg)
	return nil
}

// sameMeaning lists what of reverse_proxy's settings lbpool's JSON lacks
// or has otherwise.
func sameMeaning(rp, lb map[string]any) []string {
	rpFlat, lbFlat := flatten(rp), flatten(lb)
	var problems []string
	keys := make([]string, 0, len(rpFlat))
	for k := range rpFlat {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		if k == "handler" {
			continue
		}
		to := mapPath(k)
		if to == "-" || k == "transport.tls" && rpFlat[k] == "{}" {
			continue // TLS with defaults: the https:// of each backend says it (withScheme)
		}
		want := rpFlat[k]
		if strings.HasPrefix(k, "upstreams.") {
			want = withScheme(want, rpFlat)
			if h2cWritten(rpFlat, lbFlat) {
				want = "h2c://" + want
			}
		}
		if strings.HasPrefix(k, "transport.versions.") && h2cWritten(rpFlat, lbFlat) {
			continue // the h2c:// of each backend says it
		}
		if got, ok := lbFlat[to]; !ok || got != want {
			problems = append(problems, fmt.Sprintf("reverse_proxy's %s = %s; lbpool's %s = %s (present: %v)", k, want, to, got, ok))
		}
	}
	// dynamic versions: {"ipv4": true} there, ["ipv4"] here
	for _, v := range []string{"ipv4", "ipv6"} {
		if rpFlat["dynamic_upstreams.versions."+v] == "true" && !hasValue(lbFlat, "dynamic.0.versions.", v) {
			problems = append(problems, "dynamic versions "+v+" not carried")
		}
	}
	return problems
}

// withScheme is the backend address lbpool writes for an upstream: https://
// when reverse_proxy's transport has TLS and the port is not excepted.
func withScheme(dial string, rp map[string]string) string {
	hasTLS := false
	for k := range rp {
		hasTLS = hasTLS || strings.HasPrefix(k, "transport.tls")
	}
	if !hasTLS || strings.Contains(dial, "{") {
		return dial
	}
	_, port, _ := net.SplitHostPort(dial)
	for k, v := range rp {
		if strings.HasPrefix(k, "transport.tls.except_ports.") && v == port {
			return dial
		}
	}
	return "https://" + dial
}

// h2cWritten: reverse_proxy's h2c:// upstreams, which its adapter turns
// into versions h2c 2, kept as h2c:// backends by lbpool's.
func h2cWritten(rp, lb map[string]string) bool {
	return hasValue(rp, "transport.versions.", "h2c") && !hasValue(lb, "versions.", "h2c")
}

func hasValue(flat map[string]string, prefix, v string) bool {
	for k, got := range flat {
		if strings.HasPrefix(k, prefix) && got == v {
			return true
		}
	}
	return false
}

// mapPath is lbpool's path for one of reverse_proxy's.
func mapPath(k string) string {
	parts := strings.Split(k, ".") // indices as #, to match the rules
	var idx []string
	for i, p := range parts {
		if p != "" && strings.Trim(p, "0123456789") == "" {
			parts[i], idx = "#", append(idx, p)
		}
	}
	generic := strings.Join(parts, ".")
	best := -1
	for i, r := range rpToLB {
		if strings.HasPrefix(generic, r.from) && (best < 0 || len(r.from) > len(rpToLB[best].from)) {
			best = i
		}
	}
	if best < 0 {
		return k
	}
	r := rpToLB[best]
	if r.to == "-" {
		return "-"
	}
	out := r.to + strings.TrimPrefix(generic, r.from)
	for _, i := range idx { // in order: each rule keeps the indices it names
		out = strings.Replace(out, "#", i, 1)
	}
	return out
}

// flatten turns JSON into path → value text; an empty object is "{}".
func flatten(v any) map[string]string {
	out := map[string]string{}
	var walk func(prefix string, v any)
	walk = func(prefix string, v any) {
		switch x := v.(type) {
		case map[string]any:
			if len(x) == 0 {
				out[prefix] = "{}"
			}
			for k, e := range x {
				walk(join(prefix, k), e)
			}
		case []any:
			for i, e := range x {
				walk(join(prefix, fmt.Sprint(i)), e)
			}
		default:
			out[prefix] = fmt.Sprint(x)
		}
	}
	walk("", v)
	return out
}

func join(prefix, k string) string {
	if prefix == "" {
		return k
	}
	return prefix + "." + k
}

func TestFromReverseProxyPageExamplesAdapt(t *testing.T) {
	page, err := os.ReadFile(filepath.Join("..", "docs", "from-reverse-proxy.md"))
	if err != nil {
		t.Fatal(err)
	}
	blocks := strings.Split(string(page), "```caddyfile\n")[1:]
	if len(blocks) == 0 {
		t.Fatal("no Caddyfile example on the page")
	}
	for _, b := range blocks {
		example, _, _ := strings.Cut(b, "```")
		cfg, _, err := adaptCaddyfile([]byte(example))
		if err != nil || !strings.Contains(string(cfg), `"handler":"lbpool"`) {
			t.Fatalf("the page's example does not adapt to an lbpool handler: %v\n%s", err, cfg)
		}
	}
}
