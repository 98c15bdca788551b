package leastconn

import (
	"context"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"

	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
)

// BenchmarkProxyTraced is BenchmarkProxy's lbpool without and with a
// server span in the request's context (Caddy's tracing handler before
// lbpool), spans recorded and dropped; "server span" is the cost of that
// span alone, Caddy's part of the traced run.
//
//	go test -run '^$' -bench ProxyTraced -benchmem ./leastconn
func BenchmarkProxyTraced(b *testing.B) {
	lb, _ := benchHandlers(b)
	tp := sdktrace.NewTracerProvider(sdktrace.WithSyncer(tracetest.NewNoopExporter()))
	b.Cleanup(func() { _ = tp.Shutdown(context.Background()) })
	tracer := tp.Tracer("caddy")
	b.Run("untraced", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			serveLikeCaddy(b, lb, nil)
		}
	})
	b.Run("server span", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			_, span := tracer.Start(context.Background(), "GET")
			span.End()
		}
	})
	b.Run("traced", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			ctx, span := tracer.Start(context.Background(), "GET")
			serveLikeCaddyIn(ctx, b, lb, nil)
			span.End()
		}
	})
}

// BenchmarkTraceOfUntraced is what a request without tracing pays: the
// look for a span in a context as deep as Caddy's server makes it.
func BenchmarkTraceOfUntraced(b *testing.B) {
	req := httptest.NewRequest(http.MethodGet, "http://example.com/", nil)
	req = caddyhttp.PrepareRequest(req, caddy.NewReplacer(), httptest.NewRecorder(), benchServer)
	b.ReportAllocs()
	for b.Loop() {
		if traceOf(req) != nil {
			b.Fatal("a span in an untraced request")
		}
	}
}
