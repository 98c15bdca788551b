package leastconn

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy"
)

// The request path through each handler's ServeHTTP, side by side: lbpool
// and Caddy's reverse_proxy with least_conn, over the same three local
// backends, driven the way Caddy's server drives a handler.
//
//	go test -run '^$' -bench Proxy -benchmem ./leastconn

func benchBackends(b *testing.B) []string {
	var addrs []string
	for range 3 {
		s := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			_, _ = io.Copy(io.Discard, r.Body)
			w.Header().Set("Content-Type", "text/plain")
			_, _ = io.WriteString(w, "hello from a backend\n")
		}))
		b.Cleanup(s.Close)
		addrs = append(addrs, s.Listener.Addr().String())
	}
	return addrs
}

// benchServer stands for the Caddy server a request arrives on.
var benchServer = new(caddyhttp.Server)

func benchContext(b *testing.B) caddy.Context {
	ctx, err := caddy.ProvisionContext(&caddy.Config{})
	if err != nil {
		b.Fatal(err)
	}
	return ctx
}

// serveLikeCaddy runs one request through h with the request context Caddy's
// server sets up, and checks the answer: a GET, or a POST when body is set.
func serveLikeCaddy(b *testing.B, h caddyhttp.MiddlewareHandler, body []byte) {
	serveLikeCaddyIn(context.Background(), b, h, body)
}

// serveLikeCaddyIn is serveLikeCaddy with the request's context based on
// ctx (which may hold a server span, as Caddy's tracing handler sets).
func serveLikeCaddyIn(ctx context.Context, b *testing.B, h caddyhttp.MiddlewareHandler, body []byte) {
	req := httptest.NewRequestWithContext(ctx, http.MethodGet, "http://example.com/", nil)
	if body != nil {
		req = httptest.NewRequestWithContext(ctx, http.MethodPost, "http://example.com/", bytes.NewReader(body))
	}
	req.RemoteAddr = "127.0.0.1:40000"
	rec := httptest.NewRecorder()
	repl := caddy.NewReplacer()
	req = caddyhttp.PrepareRequest(req, repl, rec, benchServer)
	if err := h.ServeHTTP(rec, req, caddyhttp.HandlerFunc(func(http.ResponseWriter, *http.Request) error { return nil })); err != nil {
		b.Fatal(err)
	}
	if rec.Code != http.StatusOK {
		b.Fatalf("status %d", rec.Code)
	}
}

// benchHandlers provisions lbpool and reverse_proxy over the same backends.
func benchHandlers(b *testing.B) (lb *Handler, rp *reverseproxy.Handler) {
	addrs := benchBackends(b)
	ctx := benchContext(b)

	lb = &Handler{Name: "bench", HealthInterval: caddy.Duration(3600e9)}
	for _, a := range addrs {
		lb.Backends = append(lb.Backends, BackendConfig{URL: a})
	}
	if err := lb.Provision(ctx); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = lb.Cleanup() })

	rp = &reverseproxy.Handler{
		LoadBalancing: &reverseproxy.LoadBalancing{
			SelectionPolicyRaw: caddyconfig.JSONModuleObject(reverseproxy.LeastConnSelection{}, "policy", "least_conn", nil),
		},
	}
	for _, a := range addrs {
		rp.Upstreams = append(rp.Upstreams, &reverseproxy.Upstream{Dial: a})
	}
	raw, _ := json.Marshal(rp)
	rp = new(reverseproxy.Handler)
	_ = json.Unmarshal(raw, rp)
	if err := rp.Provision(ctx); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = rp.Cleanup() })
	return lb, rp
}

func BenchmarkProxy(b *testing.B) {
	lb, rp := benchHandlers(b)
	for _, tc := range []struct {
		name string
		h    caddyhttp.MiddlewareHandler
	}{{"lbpool", lb}, {"reverse_proxy", rp}} {
		b.Run(tc.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				serveLikeCaddy(b, tc.h, nil)
			}
		})
		b.Run(tc.name+"/parallel", func(b *testing.B) {
			b.ReportAllocs()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					serveLikeCaddy(b, tc.h, nil)
				}
			})
		})
	}
}

// BenchmarkProxyPOST sends a 1 KiB body: lbpool on its direct path, lbpool
// through net/http's Transport (as every body went before the direct path
// took them), and reverse_proxy.
//
//	go test -run '^$' -bench ProxyPOST -benchmem ./leastconn
func BenchmarkProxyPOST(b *testing.B) {
	lb, rp := benchHandlers(b)
	body := bytes.Repeat([]byte("x"), 1<<10)
	for _, tc := range []struct {
		name   string
		h      caddyhttp.MiddlewareHandler
		direct bool
	}{{"lbpool", lb, true}, {"lbpool/transport", lb, false}, {"reverse_proxy", rp, true}} {
		b.Run(tc.name, func(b *testing.B) {
			directBodies = tc.direct
			defer func() { directBodies = true }()
			b.ReportAllocs()
			for b.Loop() {
				serveLikeCaddy(b, tc.h, body)
			}
		})
	}
}

// BenchmarkProxyRetryBudget is the request path with the retry budget on
// (the default) and off, no retry happening: the budget costs a request
// nothing until it retries.
//
//	go test -run '^$' -bench ProxyRetryBudget -benchmem ./leastconn
func BenchmarkProxyRetryBudget(b *testing.B) {
	addrs := benchBackends(b)
	ctx := benchContext(b)
	handler := func(name string, rb *RetryBudget) *Handler {
		h := &Handler{Name: name, HealthInterval: caddy.Duration(3600e9), RetryBudget: rb}
		for _, a := range addrs {
			h.Backends = append(h.Backends, BackendConfig{URL: a})
		}
		if err := h.Provision(ctx); err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { _ = h.Cleanup() })
		return h
	}
	on, off := handler("budget-on", nil), handler("budget-off", &RetryBudget{Off: true})
	for _, tc := range []struct {
		name string
		h    *Handler
	}{{"on", on}, {"off", off}} {
		b.Run(tc.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				serveLikeCaddy(b, tc.h, nil)
			}
		})
	}
}

// BenchmarkRetryBookkeeping is what the retry budget adds to a request
// that does not retry: setting up its retry state and, at its end, finding
// no budget slot to give back.
func BenchmarkRetryBookkeeping(b *testing.B) {
	addrs := benchBackends(b)
	h := &Handler{Name: "bookkeeping", HealthInterval: caddy.Duration(3600e9)}
	for _, a := range addrs {
		h.Backends = append(h.Backends, BackendConfig{URL: a})
	}
	if err := h.Provision(benchContext(b)); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = h.Cleanup() })
	v := h.lease.view.Load()
	var st proxyState
	b.ReportAllocs()
	for b.Loop() {
		h.startRetries(&st.retry, v, st.start)
		h.endRetries(&st.retry)
	}
}
