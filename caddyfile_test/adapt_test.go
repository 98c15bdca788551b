package caddyfile_test

import (
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2/caddyconfig"
	_ "github.com/caddyserver/caddy/v2/caddyconfig/caddyfile" // the caddyfile adapter
	"github.com/caddyserver/caddy/v2/caddytest"

	_ "github.com/lbpool/lbpool" // registers the lbpool directive and its order
)

// goldenSeparator splits a .caddyfiletest file into the Caddyfile and what it
// must adapt to: JSON when it starts with '{', otherwise an error substring.
const goldenSeparator = "\n----------\n"

// namesLine matches the file:line an adapt error must carry.
var namesLine = regexp.MustCompile(`Caddyfile:\d+`)

// TestCaddyfileAdapt protects the Caddyfile → JSON mapping of lbpool and the
// parse errors users see: each testdata/adapt/*.caddyfiletest file is one case.
func TestCaddyfileAdapt(t *testing.T) {
	files, err := filepath.Glob(filepath.Join("testdata", "adapt", "*.caddyfiletest"))
	if err != nil {
		t.Fatal(err)
	}
	if len(files) == 0 {
		t.Fatal("no golden files in testdata/adapt")
	}
	for _, path := range files {
		name := strings.TrimSuffix(filepath.Base(path), ".caddyfiletest")
		t.Run(name, func(t *testing.T) {
			caddyfile, expected := readGolden(t, path)
			if strings.HasPrefix(expected, "{") {
				if !caddytest.CompareAdapt(t, path, caddyfile, "caddyfile", expected) {
					t.Errorf("%s: adapted JSON differs from the golden JSON (diff on stdout)", path)
				}
				return
			}
			assertAdaptError(t, caddyfile, expected)
		})
	}
}

// readGolden returns the Caddyfile (ending in one newline, as the formatter
// wants) and the expected output of a golden file.
func readGolden(t *testing.T, path string) (caddyfile, expected string) {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	text := strings.ReplaceAll(string(data), "\r\n", "\n")
	before, after, found := strings.Cut(text, goldenSeparator)
	if !found {
		t.Fatalf("%s: no %q line between the Caddyfile and the expected output", path, strings.TrimSpace(goldenSeparator))
	}
	return strings.TrimSpace(before) + "\n", strings.TrimSpace(after)
}

// assertAdaptError adapts a Caddyfile that must fail, with an error that
// contains want and names the line.
func assertAdaptError(t *testing.T, caddyfile, want string) {
	t.Helper()
	if !namesLine.MatchString(want) {
		t.Fatalf("golden error %q must include the Caddyfile:<line> the error names", want)
	}
	cfg, _, err := adaptCaddyfile([]byte(caddyfile))
	if err == nil {
		t.Fatalf("adapted without error, want an error containing %q; got:\n%s", want, cfg)
	}
	if !strings.Contains(err.Error(), want) {
		t.Fatalf("error does not contain the expected text\nwant: %s\ngot:  %v", want, err)
	}
}

func adaptCaddyfile(body []byte) ([]byte, []caddyconfig.Warning, error) {
	return caddyconfig.GetAdapter("caddyfile").Adapt(body, map[string]any{"filename": "Caddyfile"})
}

// validBlock is a valid lbpool block using every option, as tokens; "\n"
// ends a line.
var validBlock = strings.Fields(`
lbpool a:80 b:80 { \n
	to https://c:443 \n
	weight a:80 2 \n
	name web \n
	health_uri /health \n
	health_interval 10s \n
	health_timeout 1s \n
	health_status 2xx \n
	health_body ^ok \n
	health_headers { \n
		Host example.com \n
	} \n
	health_passes 2 \n
	health_fails 2 \n
	stats_uri /stats \n
	stats_workers 3 \n
	retries 1 \n
	slow_start 30s \n
	dial_timeout 1s \n
	response_header_timeout 5s \n
	tls_insecure_skip_verify \n
	header_up Host {http.lbpool.backend.hostport} \n
	header_down -Server \n
	tls_trust_pool file ca.pem \n
	tls_client_auth c.pem k.pem \n
	tls_server_name c.internal \n
	tls_timeout 5s \n
	flap_hold 10s max 1m \n
	backup b:80 \n
	retry_budget 25% min 5 \n
	lb_retries 2 \n
	lb_try_duration 5s \n
	lb_try_interval 100ms \n
	lb_retry_match { \n
		method GET \n
		expression ` + "`{rp.status_code}==503`" + ` \n
	} \n
	sticky cookie srv { \n
		secret k \n
		max_age 1h \n
		path /app \n
		domain example.com \n
		secure \n
		samesite strict \n
	} \n
} \n`)

var fuzzOptions = []string{
	"lbpool", "to", "weight", "name", "health_uri", "health_interval", "health_timeout",
	"health_status", "health_body", "health_headers", "health_passes", "health_fails",
	"stats_uri", "stats_workers", "retries", "slow_start", "dial_timeout",
	"response_header_timeout", "tls_insecure_skip_verify", "bogus", "reverse_proxy",
	"header_up", "header_down", "tls_trust_pool", "tls_trusted_ca_certs", "tls_client_auth",
	"tls_server_name", "tls_timeout", "unix//run/a.sock", "+X-A", "-X-A",
	"sticky", "cookie", "secret", "max_age", "path", "domain", "secure", "samesite", "lax", "none",
	"flap_hold", "max", "off",
	"backup", "retry_budget", "min", "lb_retries", "lb_try_duration", "lb_try_interval",
	"lb_retry_match", "method", "expression",
}

var fuzzValues = []string{
	"0", "-1", "1", "1.5", "+5", "10001", "99999999999999999999", "abc", "2x", "5xx", "700",
	"(", "[a-", "/", "//x", "/%zz", "", " ", "a:80", "A:80", "a:99999", "a:0", ":80",
	"ftp://a", "http://", "http://a:80/x", "https://[::1]:443", "[::1", "%zz", "u:p@a:80",
	"20%", "1001%", "%", "`{rp.status_code}==503`", "`{rp.status_code}===`", "`",
	"{", "}", "\n", "1ms", "1ns", "-1s", "1d", "0s", "*", "/api/*", "@api", "{env.X}",
}

// TestCaddyfileErrorsNeverPanic feeds mutated versions of a valid lbpool
// block to the adapter: each must adapt to a config or fail with an error,
// never panic.
func TestCaddyfileErrorsNeverPanic(t *testing.T) {
	rng := rand.New(rand.NewPCG(2019, 80))
	for i := 0; i < 200; i++ {
		tokens := mutate(rng, validBlock)
		caddyfile := ":8080 {\n" + render(tokens) + "\n}\n"
		cfg, err := adaptNoPanic(t, caddyfile)
		switch {
		case err != nil && err.Error() == "":
			t.Errorf("case %d: empty error message for:\n%s", i, caddyfile)
		case err == nil && !json.Valid(cfg):
			t.Errorf("case %d: no error but invalid JSON %q for:\n%s", i, cfg, caddyfile)
		}
	}
}

// adaptNoPanic adapts caddyfile, turning a panic into a test failure.
func adaptNoPanic(t *testing.T, caddyfile string) (cfg []byte, err error) {
	t.Helper()
	defer func() {
		if r := recover(); r != nil {
			t.Errorf("adapter panicked: %v\ninput:\n%s", r, caddyfile)
			err = fmt.Errorf("panic: %v", r)
		}
	}()
	cfg, _, err = adaptCaddyfile([]byte(caddyfile))
	return cfg, err
}

// mutate applies one to three random edits to a copy of tokens: drop,
// duplicate, swap, or replace a token with an option name or a value.
func mutate(rng *rand.Rand, tokens []string) []string {
	out := append([]string(nil), tokens...)
	for n := 1 + rng.IntN(3); n > 0 && len(out) > 0; n-- {
		i := rng.IntN(len(out))
		switch rng.IntN(5) {
		case 0:
			out = append(out[:i], out[i+1:]...)
		case 1:
			out = append(out[:i+1], out[i:]...)
		case 2:
			j := rng.IntN(len(out))
			out[i], out[j] = out[j], out[i]
		case 3:
			out[i] = fuzzOptions[rng.IntN(len(fuzzOptions))]
		case 4:
			out[i] = fuzzValues[rng.IntN(len(fuzzValues))]
		}
	}
	return out
}

// render writes tokens as Caddyfile text, quoting those that need it.
func render(tokens []string) string {
	var b strings.Builder
	for _, tok := range tokens {
		switch {
		case tok == `\n` || tok == "\n":
			b.WriteString("\n")
			continue
		case tok == "" || strings.ContainsAny(tok, " \t"):
			tok = `"` + tok + `"`
		}
		b.WriteString(tok)
		b.WriteString(" ")
	}
	return b.String()
}
