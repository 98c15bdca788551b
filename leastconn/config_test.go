package leastconn

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
)

func TestDefaults(t *testing.T) {
	var h Handler
	if err := json.Unmarshal([]byte(`{"backends":[{"url":"app1:80"}]}`), &h); err != nil {
		t.Fatal(err)
	}
	s, err := h.poolSpec()
	if err != nil {
		t.Fatal(err)
	}
	for name, got := range map[string]any{
		"health_interval": s.healthInterval, "health_timeout": s.healthTimeout, "health_uri": s.healthURI,
		"health_status": s.healthStatus, "health_passes": s.healthPasses, "health_fails": s.healthFails,
		"stats_workers": s.statsWorkers, "slow_start": s.slowStart, "name": s.name,
		"health_down_interval": s.healthDownInterval, "health_method": s.healthMethod,
	} {
		want := map[string]any{
			"health_interval": 20 * time.Second, "health_timeout": 2 * time.Second, "health_uri": "/",
			"health_status": 0, "health_passes": 1, "health_fails": 1, // health_status 0: 2xx or 3xx
			"stats_workers": 3, "slow_start": time.Duration(0), "name": "http://app1:80",
			"health_down_interval": time.Second, "health_method": "GET",
		}[name]
		if got != want {
			t.Errorf("default %s = %v, want %v", name, got, want)
		}
	}
}

func TestNextCheckStaysWithinTenPercentOfTheInterval(t *testing.T) {
	const interval = 20 * time.Second
	seen := map[time.Duration]bool{}
	for range 1000 {
		d := nextCheckIn(interval)
		if d < interval*9/10 || d > interval*11/10 {
			t.Fatalf("next check in %v, outside 18s-22s", d)
		}
		seen[d] = true
	}
	if len(seen) < 900 {
		t.Fatalf("only %d distinct delays in 1000: not spread", len(seen))
	}
}

func TestParseBackendURL(t *testing.T) {
	tests := []struct {
		in, key, display, err string
	}{
		{in: "app1:80", key: "http://app1:80", display: "http://app1:80"},
		{in: "App1", key: "http://app1:80", display: "http://app1:80"},
		{in: "http://10.0.0.1:8080", key: "http://10.0.0.1:8080", display: "http://10.0.0.1:8080"},
		{in: "https://api.internal", key: "https://api.internal:443", display: "https://api.internal:443"},
		{in: "http://[::1]:9000", key: "http://[::1]:9000", display: "http://[::1]:9000"},
		{in: "http://user:hunter2@app:80", key: "http://app:80", display: "http://user:xxxxx@app:80"},
		{in: "ftp://a:21", err: "scheme"},
		{in: "http://a:80/path", err: "path"},
		{in: "a:99999", err: "port"},
		{in: "a:0", err: "port"},
		{in: "", err: "empty"},
		{in: "http://", err: "host"},
		{in: "http://user:hunter2@a:80/x", err: "path"},
	}
	for _, tc := range tests {
		a, err := parseBackendURL(tc.in)
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("%q: error %v, want one about %s", tc.in, err, tc.err)
			}
			if err != nil && strings.Contains(err.Error(), "hunter2") {
				t.Errorf("%q: error shows the password: %v", tc.in, err)
			}
			continue
		}
		if err != nil || a.key != tc.key || a.display != tc.display {
			t.Errorf("%q: got key %q display %q err %v, want %q %q", tc.in, a.key, a.display, err, tc.key, tc.display)
		}
	}
}

func TestParseStats(t *testing.T) {
	tests := []struct {
		name, body string
		want       int64
		err        bool
	}{
		{"seed JSON", `{"memory_usage": 1258291}`, 1258291, false},
		{"JSON float", `{"memory_usage": 1.5e6, "other": 1}`, 1500000, false},
		{"JSON without figure", `{"rss": 1}`, 0, true},
		{"JSON negative", `{"memory_usage": -5}`, 0, true},
		{"JSON broken", `{"memory_usage": `, 0, true},
		{"prometheus rss", "# TYPE process_resident_memory_bytes gauge\nprocess_resident_memory_bytes 2.5e+07\ngo_memstats_alloc_bytes 1e6\n", 25000000, false},
		{"prometheus alloc fallback", "# TYPE go_memstats_alloc_bytes gauge\ngo_memstats_alloc_bytes 1234\n", 1234, false},
		{"prometheus untyped", "process_resident_memory_bytes 42\n", 42, false},
		{"prometheus without figure", "up 1\n", 0, true},
		{"garbage", "<html>oops</html>", 0, true},
		{"empty", "", 0, true},
	}
	for _, tc := range tests {
		got, err := parseStats([]byte(tc.body))
		if (err != nil) != tc.err || got != tc.want {
			t.Errorf("%s: got %d, %v; want %d, error %v", tc.name, got, err, tc.want, tc.err)
		}
	}
}

func TestFormatting(t *testing.T) {
	for d, want := range map[time.Duration]string{
		0:                          "00h:00m:00s",
		323 * time.Second:          "00h:05m:23s",
		26*time.Hour + time.Minute: "26h:01m:00s",
		150 * time.Hour:            "150h:00m:00s",
		-time.Second:               "00h:00m:00s",
	} {
		if got := FormatUptime(d); got != want {
			t.Errorf("FormatUptime(%v) = %q, want %q", d, got, want)
		}
	}
	for n, want := range map[int64]string{
		0: "0 B", 1023: "1023 B", 1024: "1.0 KB", 1258291: "1.2 MB", 3 << 30: "3.0 GB",
	} {
		if got := FormatBytes(n); got != want {
			t.Errorf("FormatBytes(%d) = %q, want %q", n, got, want)
		}
	}
}

func TestStatusMatches(t *testing.T) {
	for _, tc := range []struct {
		got, want int
		ok        bool
	}{{200, 2, true}, {204, 2, true}, {301, 2, false}, {200, 200, true}, {204, 200, false}, {503, 5, true},
		{200, 0, true}, {302, 0, true}, {399, 0, true}, {404, 0, false}, {199, 0, false}} {
		if statusMatches(tc.got, tc.want) != tc.ok {
			t.Errorf("statusMatches(%d, %d) != %v", tc.got, tc.want, tc.ok)
		}
	}
}

// Header operations belong to each handler: handlers of one pool may send
// it different headers, while other settings must agree.
func TestHeaderOpsAreNotPartOfThePoolsSettings(t *testing.T) {
	fingerprint := func(config string) string {
		t.Helper()
		var h Handler
		if err := json.Unmarshal([]byte(config), &h); err != nil {
			t.Fatal(err)
		}
		s, err := h.poolSpec()
		if err != nil {
			t.Fatal(err)
		}
		return s.fingerprint
	}
	a := fingerprint(`{"name":"web","backends":[{"url":"a:80"}],"headers":{"request":{"set":{"X-Site":["a"]}}}}`)
	b := fingerprint(`{"name":"web","backends":[{"url":"a:80"}],"headers":{"response":{"delete":["Server"]}}}`)
	tls := fingerprint(`{"name":"web","backends":[{"url":"a:80"}],"tls":{"server_name":"a.test"}}`)
	if a != b {
		t.Error("two handlers differing only in header operations count as two settings of one pool")
	}
	if tls == a {
		t.Error("TLS settings are shared by the pool and must be part of its settings")
	}
}

// TestCountLimitsAreOneForTheCaddyfileAndJSON: every whole-number option
// takes its limit and refuses one more, in the Caddyfile (at parse time)
// and in JSON (at provision) alike, each error naming the option.
func TestCountLimitsAreOneForTheCaddyfileAndJSON(t *testing.T) {
	for name, limit := range countLimits {
		for _, n := range []int{limit, limit + 1} {
			var fromCaddyfile, fromJSON Handler
			cline, jfield := "", "" // max_fails needs fail_duration
			if ejectionOptions[name] {
				cline, jfield = "fail_duration 1s\n", `"fail_duration":1000000000,`
			}
			cerr := fromCaddyfile.UnmarshalCaddyfile(caddyfile.NewTestDispenser(fmt.Sprintf("lbpool a:80 {\n%s%s %d\n}", cline, name, n)))
			if err := json.Unmarshal(fmt.Appendf(nil, `{"backends":[{"url":"a:80"}],%s%q:%d}`, jfield, name, n), &fromJSON); err != nil {
				t.Fatal(err)
			}
			_, jerr := fromJSON.poolSpec()
			if n == limit {
				if cerr != nil || jerr != nil {
					t.Errorf("%s %d, the limit: Caddyfile %v, JSON %v", name, n, cerr, jerr)
				}
				continue
			}
			if cerr == nil || !strings.Contains(cerr.Error(), name) || jerr == nil || !strings.Contains(jerr.Error(), name) {
				t.Errorf("%s %d, over the limit: Caddyfile %v, JSON %v; want both refused, naming %s", name, n, cerr, jerr, name)
			}
		}
	}
}

// TestEjectionDefaultsNeedNoFailDuration: with ejection off, max_fails
// written out at its default changes nothing and loads, as does any
// max_ejected_percent (it bounds flap holds too); any other ejection option
// would be ignored and is refused.
func TestEjectionDefaultsNeedNoFailDuration(t *testing.T) {
	for fields, ok := range map[string]bool{
		`"max_fails":1,"max_ejected_percent":50`: true,
		`"max_fails":3`:                          false,
		`"max_ejected_percent":34`:               true,
		`"unhealthy_status":[5]`:                 false,
		`"unhealthy_latency":1000000`:            false,
	} {
		var h Handler
		if err := json.Unmarshal([]byte(`{"backends":[{"url":"a:80"}],`+fields+`}`), &h); err != nil {
			t.Fatal(err)
		}
		o, err := h.outlierSpec()
		if (err == nil) != ok || o != nil {
			t.Errorf("%s without fail_duration: ejection %v, error %v; want it to load: %v", fields, o, err, ok)
		}
	}
}
