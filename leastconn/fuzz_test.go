package leastconn

// Fuzz targets for everything lbpool parses from outside: the Caddyfile
// block, backend addresses and the stats a backend reports. The seed corpus
// (the f.Add calls and testdata/fuzz/<target>/) runs with every `go test`;
// `go test -run '^$' -fuzz '^FuzzX$' ./leastconn` explores from it.

import (
	"encoding/json"
	"math"
	"net"
	"strconv"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/lbpool/lbpool/internal/upstream"
)

// FuzzUnmarshalCaddyfile: any token stream is either an error that names
// its line or a handler whose configuration is valid. A stream the parser
// accepts must not fail later, when the config is loaded, where an error
// can no longer say which line is wrong.
func FuzzUnmarshalCaddyfile(f *testing.F) {
	for _, seed := range []string{
		"lbpool app1:80 app2:80",
		"lbpool {\n\tto http://a:80 https://b\n\tweight b:443 3\n}",
		"lbpool a:80 {\n\tname web\n\thealth_uri /health?full=1\n\thealth_interval 10s\n\thealth_timeout 2s\n" +
			"\thealth_status 2xx\n\thealth_body \"^ok\"\n\thealth_headers {\n\t\tHost status.internal\n\t\tX-Probe 1\n\t}\n" +
			"\thealth_passes 2\n\thealth_fails 3\n\tstats_uri /stats\n\tstats_workers 2\n\tretries 0\n\tslow_start 30s\n" +
			"\tdial_timeout 1s\n\tresponse_header_timeout 5s\n\ttls_insecure_skip_verify\n}",
		"lbpool http://ops:hunter2@a:80 [::1]:9000",
		"lbpool a:80 unix//run/a.sock {\n\theader_up Host {http.lbpool.backend.hostport}\n\theader_up X-A \"^(.*)$\" \"b-$1\"\n" +
			"\theader_down -Server\n\ttls_trust_pool file {\n\t\tpem_file ca.pem\n\t}\n\ttls_client_auth c.pem k.pem\n" +
			"\ttls_server_name b.internal\n\ttls_timeout 3s\n}",
		"lbpool a:80 {\n\tweight a:80 10000\n\thealth_status 503\n}",
		"lbpool a:80 {\n\tweight a:80 0\n}",
		"lbpool a:80 b:80 {\n\tbackup b:80\n\tretry_budget 25% min 5\n\tlb_retries 2\n\tlb_try_duration 5s\n" +
			"\tlb_try_interval 100ms\n\tlb_retry_match `{rp.status_code} == 503`\n\tlb_retry_match {\n\t\tmethod GET\n" +
			"\t\texpression `{rp.header.X-Retry} == \"yes\"`\n\t}\n}",
		"lbpool a:80 {\n\tretry_budget off\n\tlb_retry_match path /api/*\n}",
		"lbpool a:80 a:80",
		"lbpool ftp://a",
		"lbpool a:80 {\n\thealth_headers x\n}",
		"lbpool a:80 {\n\thealth_interval 0.5ms\n}",
		"lbpool a:80 {\n\tslow_start 1ns\n}",
		"lbpool",
		"lbpool {\n}",
		"lbpool a:80 {\n\t{\n\t}\n}",
		"lbpool a:80 {\n\tsticky cookie srv {\n\t\tsecret k\n\t\tmax_age 1h\n\t\tpath /app\n\t\tdomain .example.com\n" +
			"\t\tsecure\n\t\tsamesite none\n\t}\n}",
		"lbpool a:80 {\n\tsticky cookie {\n\t\tmax_age 0.5s\n\t}\n}",
		"lbpool a:80 b:80 {\n\tlb_policy hash {http.request.header.X}/{http.request.uri.path} {\n\t\tfallback random_choose 3\n\t}\n\thash_balance_factor 1.5\n}",
		"lbpool {\n\tlb_policy weighted_round_robin 3 1\n\tto a:80 b:80\n}",
		"lbpool a:80 {\n\tlb_policy cookie srv k {\n\t\tfallback first\n\t}\n}",
		"lbpool a:80 {\n\tlb_policy header X-Key\n\thash_balance_factor off\n}",
		"lbpool a:80 {\n\tsticky cookie \"a;b\"\n}",
	} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, input string) {
		// caddyfile.NewTestDispenser exits the process on a lexer error;
		// the lexer's own errors are Caddy's, so only lexed input goes on
		tokens, err := caddyfile.Tokenize([]byte(input), "Caddyfile")
		if err != nil {
			return
		}
		var h Handler
		if err := h.UnmarshalCaddyfile(caddyfile.NewDispenser(tokens)); err != nil {
			if err.Error() == "" {
				t.Fatal("an error without a message")
			}
			return
		}
		spec, err := h.poolSpec()
		if err != nil {
			t.Fatalf("the Caddyfile parser accepted %q, but loading it fails without a line: %v", input, err)
		}
		if err := h.provisionSticky(spec); err != nil {
			t.Fatalf("the Caddyfile parser accepted %q, but its sticky option fails without a line: %v", input, err)
		}
		if spec == nil || len(spec.backends) != len(h.Backends) || spec.name == "" {
			t.Fatalf("a config without its backends or name: %+v", spec)
		}
		// what the adapter writes (JSON) loads the same
		data, err := json.Marshal(&h)
		if err != nil {
			t.Fatal(err)
		}
		var back Handler
		if err := json.Unmarshal(data, &back); err != nil {
			t.Fatalf("the handler's JSON does not read back: %v\n%s", err, data)
		}
		again, err := back.poolSpec()
		if err != nil || again.fingerprint != spec.fingerprint {
			t.Fatalf("the JSON the adapter writes loads differently: %v\n%s", err, data)
		}
	})
}

// FuzzParseBackendURL: an address parses to scheme://host:port with a port
// in range, or fails; and a password never shows in what is displayed or in
// the error, whatever surrounds it.
func FuzzParseBackendURL(f *testing.F) {
	for _, seed := range [][4]string{
		{"http://", "ops", "hunter2", "app:80"},
		{"", "ops", "hunter2", "app:80"},
		{"https://", "ops", "hunter2", "[::1]:443"},
		{"http://", "ops", "hunter2", "app:99999"},
		{"http://", "ops", "hunter2", "app:80/path"},
		{"ftp://", "ops", "hunter2", "app"},
		{"unix//", "ops", "hunter2", "run/app.sock"},
		{"http://", "", "hunter2", ""},
	} {
		f.Add(seed[0], seed[1], seed[2], seed[3])
	}
	f.Fuzz(func(t *testing.T, head, user, pass, tail string) {
		raw := head + user + ":" + pass + "@" + tail
		a, err := parseBackendURL(raw)
		if err == nil {
			checkBackendAddr(t, raw, a)
		}
		if !secretOf(raw, pass) {
			return
		}
		if err != nil && strings.Contains(err.Error(), pass) {
			t.Fatalf("the error for %q shows the password: %v", raw, err)
		}
		if err == nil && strings.Contains(a.display, pass) {
			t.Fatalf("%q is displayed as %q, with the password", raw, a.display)
		}
	})
}

// secretOf tells whether pass is a password worth checking for in what is
// shown: long enough not to occur by chance, plain enough that no escaping
// changes it, and nowhere else in raw, nor in raw as an error quotes it
// (an escaped control character before digits, "\x00" then "00000", reads
// as "x0000000").
func secretOf(raw, pass string) bool {
	if len(pass) < 4 || strings.Count(raw, pass) != 1 || strings.Count(strconv.Quote(raw), pass) != 1 || strings.Contains("xxxxx", pass) {
		return false
	}
	for _, r := range pass {
		if !('a' <= r && r <= 'z' || 'A' <= r && r <= 'Z' || '0' <= r && r <= '9') {
			return false
		}
	}
	return true
}

func checkBackendAddr(t *testing.T, raw string, a backendAddr) {
	t.Helper()
	if a.network == "unix" {
		if a.scheme != "http" || a.key != unixPrefix+a.dial || a.display != a.key || !strings.HasPrefix(a.dial, "/") {
			t.Fatalf("%q: unix backend %+v", raw, a)
		}
		if path, ok := upstream.UnixSocketOf(a.hostport); !ok || path != a.dial {
			t.Fatalf("%q: the stand-in host %q names %q, not the socket %q", raw, a.hostport, path, a.dial)
		}
		return
	}
	if a.scheme != "http" && a.scheme != "https" {
		t.Fatalf("%q: scheme %q", raw, a.scheme)
	}
	host, port, err := net.SplitHostPort(a.hostport)
	if err != nil || host == "" {
		t.Fatalf("%q: host:port %q: %v", raw, a.hostport, err)
	}
	if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
		t.Fatalf("%q: port %q", raw, port)
	}
	if a.key != a.scheme+"://"+a.hostport {
		t.Fatalf("%q: key %q", raw, a.key)
	}
	if a.user == nil && a.display != a.key {
		t.Fatalf("%q: display %q, key %q", raw, a.display, a.key)
	}
	again, err := parseBackendURL(a.display)
	if a.user == nil && (err != nil || again.key != a.key) {
		t.Fatalf("%q: the displayed form %q does not parse to the same backend: %v", raw, a.display, err)
	}
}

// FuzzParseStats: any body a backend sends to stats_uri gives a memory
// figure that is a byte count, or an error; never a panic. A JSON figure is
// the one encoding/json reads.
func FuzzParseStats(f *testing.F) {
	for _, seed := range []string{
		`{"memory_usage": 1258291}`,
		` {"memory_usage": 1.5e6, "other": [1, {"x": null}]}`,
		`{"memory_usage": -1}`,
		`{"memory_usage": 1e300}`,
		`{"memory_usage": "12"}`,
		`{"memory_usage": null}`,
		`{}`,
		`{`,
		"# HELP process_resident_memory_bytes Resident memory size in bytes.\n" +
			"# TYPE process_resident_memory_bytes gauge\nprocess_resident_memory_bytes 5.24288e+07\n",
		"# TYPE go_memstats_alloc_bytes gauge\ngo_memstats_alloc_bytes 4.2e+06\n",
		"go_memstats_alloc_bytes{instance=\"a\"} 12 1700000000000\n",
		"# TYPE process_resident_memory_bytes counter\nprocess_resident_memory_bytes 7\n",
		"# TYPE process_resident_memory_bytes histogram\nprocess_resident_memory_bytes_bucket{le=\"+Inf\"} 1\n",
		"process_resident_memory_bytes NaN\n",
		"process_resident_memory_bytes +Inf\n",
		"<html>not stats</html>",
		"",
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		v, err := parseStats(body)
		if err != nil {
			if v != 0 || err.Error() == "" {
				t.Fatalf("error %q with figure %d", err, v)
			}
			return
		}
		if v < 0 || v > math.MaxInt64/2 {
			t.Fatalf("memory figure %d is not a byte count", v)
		}
		if again, err := parseStats(body); err != nil || again != v {
			t.Fatalf("parsed twice: %d, then %d (%v)", v, again, err)
		}
		if trimmed := strings.TrimSpace(string(body)); strings.HasPrefix(trimmed, "{") {
			var want struct {
				MemoryUsage *float64 `json:"memory_usage"`
			}
			if err := json.Unmarshal([]byte(trimmed), &want); err != nil || want.MemoryUsage == nil || int64(*want.MemoryUsage) != v {
				t.Fatalf("JSON %q read as %d; encoding/json reads %v (%v)", body, v, want.MemoryUsage, err)
			}
		}
	})
}
