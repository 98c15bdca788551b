package caddyfile_test

import (
	"encoding/json"
	"fmt"
	"net/http"
	"reflect"
	"strings"
	"testing"

	"github.com/lbpool/lbpool/internal/lbtest"
)

// retryMatchLines are lb_retry_match lines in reverse_proxy's own syntax:
// request matchers, expressions on the line and in a block, several sets.
var retryMatchLines = []string{
	"lb_retry_match method POST PUT",
	"lb_retry_match `{rp.status_code} in [502, 503]`",
	"lb_retry_match expression `{rp.is_transport_error} == true`",
	"lb_retry_match {\n\t\t\tmethod GET\n\t\t\texpression `{rp.header.X-Retry} == \"yes\"`\n\t\t}",
	"lb_retry_match {\n\t\t\tpath /api/*\n\t\t\theader X-Idempotent true\n\t\t}\n\t\tlb_retry_match `{rp.header.grpc-status} == \"14\"`",
}

// handlerJSON adapts a site with one handler and returns that handler's JSON.
func handlerJSON(t *testing.T, directive, lines string) map[string]any {
	t.Helper()
	cfg, err := lbtest.Adapt(fmt.Sprintf(":8080 {\n\t%s 127.0.0.1:9001 127.0.0.1:9002 {\n\t\t%s\n\t}\n}\n", directive, lines))
	if err != nil {
		t.Fatalf("%s with %q: %v", directive, lines, err)
	}
	var doc any
	if err := json.Unmarshal(cfg, &doc); err != nil {
		t.Fatal(err)
	}
	if h := findHandler(doc, directive); h != nil {
		return h
	}
	t.Fatalf("no handler in %s", cfg)
	return nil
}

// findHandler is the first object in doc whose "handler" is name.
func findHandler(doc any, name string) map[string]any {
	switch v := doc.(type) {
	case map[string]any:
		if v["handler"] == name {
			return v
		}
		for _, x := range v {
			if h := findHandler(x, name); h != nil {
				return h
			}
		}
	case []any:
		for _, x := range v {
			if h := findHandler(x, name); h != nil {
				return h
			}
		}
	}
	return nil
}

func TestRetryMatchAdaptsAsReverseProxys(t *testing.T) {
	for _, lines := range retryMatchLines {
		rp := handlerJSON(t, "reverse_proxy", lines)
		lb := handlerJSON(t, "lbpool", lines)
		want := rp["load_balancing"].(map[string]any)["retry_match"]
		got := lb["retry_match"]
		if want == nil || !reflect.DeepEqual(got, want) {
			t.Errorf("%s:\nlbpool:        %v\nreverse_proxy: %v", strings.ReplaceAll(lines, "\n", " "), got, want)
		}
	}
}

// sideBySide is a site with lbpool on /lb/* and reverse_proxy on /rp/*,
// over the same backends, each with lb_retries 1 and the same lines.
func sideBySide(c *lbtest.Caddy, lines string, bs ...*lbtest.Backend) string {
	addrs := make([]string, len(bs))
	for i, b := range bs {
		addrs[i] = b.Addr()
	}
	to := strings.Join(addrs, " ")
	return fmt.Sprintf(`:%d {
	handle /lb/* {
		lbpool %s {
			name web
			health_uri /health
			lb_retries 1
			%s
		}
	}
	handle /rp/* {
		reverse_proxy %s {
			lb_retries 1
			%s
		}
	}
}`, c.HTTPPort, to, lines, to, lines)
}

func TestPOSTAnswered503IsRetriedAsReverseProxyRetriesIt(t *testing.T) {
	c := lbtest.Start(t)
	bs := answering503(t, 2)
	for _, tc := range []struct {
		name, lines string
		tries       int64
	}{
		{"no lb_retry_match", "", 1},
		{"request matchers exclude POST", "lb_retry_match {\n\t\t\t\tmethod GET\n\t\t\t\texpression `{rp.status_code} == 503`\n\t\t\t}", 1},
		{"a bare status expression", "lb_retry_match `{rp.status_code} == 503`", 2},
	} {
		c.Load(t, sideBySide(c, tc.lines, bs...))
		waitAlive(t, c, bs...)
		for _, prefix := range []string{"/rp/", "/lb/"} {
			before := backendRequests(bs)
			resp, err := c.Client().Post(c.URL(prefix), "text/plain", nil)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			tries := backendRequests(bs) - before
			t.Logf("%s, %s: POST answered %d after %d tries", tc.name, prefix, resp.StatusCode, tries)
			if tries != tc.tries || resp.StatusCode != http.StatusServiceUnavailable {
				t.Errorf("%s, %s: POST answered %d after %d tries; want 503 after %d", tc.name, prefix, resp.StatusCode, tries, tc.tries)
			}
		}
	}
}
