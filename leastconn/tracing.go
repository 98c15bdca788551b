package leastconn

import (
	"context"
	"errors"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"go.opentelemetry.io/contrib/propagators/autoprop"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/propagation"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"
)

// Tracing. When Caddy's tracing handler runs before lbpool, the request's
// context holds its server span; each try then gets a client span under it
// (OpenTelemetry's HTTP client conventions, plus why that backend was
// picked), and the backend gets a traceparent naming that try's span, so
// its own spans sort by try. A wait in the queue, or for a backend to come
// back under try_duration, is a span of its own. Without a traced context
// a request pays one ctx.Value lookup and a nil check per try.

// tracerName names lbpool's spans' instrumentation scope.
const tracerName = "github.com/lbpool/lbpool"

// propagator is the one Caddy's tracing handler uses: autoprop's, set by
// OTEL_PROPAGATORS (W3C trace context and baggage by default).
var propagator = sync.OnceValue(func() propagation.TextMapPropagator {
	return autoprop.NewTextMapPropagator()
})

// sdkTracer is lbpool's tracer of Caddy's tracer provider, kept while the
// provider lasts (Caddy keeps one while any config traces): asking the
// provider takes its lock.
var sdkTracer atomic.Pointer[providerTracer]

type providerTracer struct {
	provider *sdktrace.TracerProvider
	tracer   trace.Tracer
}

// tracerOf returns lbpool's tracer of span's provider.
func tracerOf(span trace.Span) trace.Tracer {
	tp := span.TracerProvider()
	sdk, ok := tp.(*sdktrace.TracerProvider)
	if !ok {
		return tp.Tracer(tracerName)
	}
	if c := sdkTracer.Load(); c != nil && c.provider == sdk {
		return c.tracer
	}
	t := sdk.Tracer(tracerName)
	sdkTracer.Store(&providerTracer{sdk, t})
	return t
}

// requestTrace is a traced request's tracing state; nil when the request
// is not traced.
type requestTrace struct {
	ctx    context.Context // holds the server span: the parent of every span here
	tracer trace.Tracer
	try    trace.Span    // the try under way
	failed string        // set when the try broke off after its status went out
	waited time.Duration // the last wait, recorded on the next try's span
}

// traceOf returns the tracing state of a request Caddy's tracing handler
// traces, or nil.
func traceOf(r *http.Request) *requestTrace {
	span := trace.SpanFromContext(r.Context())
	if !span.SpanContext().IsValid() {
		return nil
	}
	return &requestTrace{ctx: r.Context(), tracer: tracerOf(span)}
}

// wait records a wait that began at start (kind: queue, or try_duration
// for a wait for a backend to come back) as a span, and for the next try.
func (rt *requestTrace) wait(kind, pool string, start time.Time) {
	end := time.Now()
	rt.waited = end.Sub(start)
	_, span := rt.tracer.Start(rt.ctx, "lbpool "+kind, trace.WithTimestamp(start),
		trace.WithAttributes(attribute.String("lbpool.pool", pool)))
	span.End(trace.WithTimestamp(end))
}

// startTry opens the span of a try to b and puts its traceparent on out.
func (rt *requestTrace) startTry(out *http.Request, b *Backend, st *proxyState) {
	a := &b.addr
	attrs := make([]attribute.KeyValue, 0, 10)
	attrs = append(attrs,
		attribute.String("http.request.method", out.Method),
		attribute.String("server.address", a.phHost),
		attribute.String("url.full", a.scheme+"://"+a.hostport+out.URL.RequestURI()),
		attribute.Int("http.request.resend_count", st.tries-1),
		attribute.String("lbpool.pool", st.pool),
		attribute.String("lbpool.backend", a.display),
		attribute.String("lbpool.pick", st.pick),
	)
	if port, err := strconv.Atoi(a.phPort); err == nil {
		attrs = append(attrs, attribute.Int("server.port", port))
	}
	if rt.waited > 0 {
		attrs = append(attrs, attribute.Float64("lbpool.queue_wait_ms", millis(rt.waited)))
		rt.waited = 0
	}
	ctx, span := rt.tracer.Start(rt.ctx, out.Method, trace.WithSpanKind(trace.SpanKindClient),
		trace.WithAttributes(attrs...))
	rt.try = span
	rt.failed = ""
	propagator().Inject(ctx, propagation.HeaderCarrier(out.Header))
}

// broke records that the try's response broke off after its status went
// out (the request is then aborted).
func (rt *requestTrace) broke(err error) {
	rt.failed = "client_gone"
	if errors.Is(err, errBackendRead) {
		rt.failed = "connection_terminated"
	}
}

// endTry closes the try's span: err is proxyTo's, resp the backend's
// answer (nil when there was none).
func (rt *requestTrace) endTry(err error, resp *http.Response) {
	span := rt.try
	rt.try = nil
	status := 0
	if resp != nil {
		status = resp.StatusCode
		span.SetAttributes(attribute.Int("http.response.status_code", status))
	}
	var fail *tryError
	switch {
	case errors.As(err, &fail):
		errorType := proxyErrorType(0, fail.err)
		switch {
		case fail.answered:
			errorType = strconv.Itoa(status)
		case fail.timeout:
			errorType = "http_response_timeout"
		}
		span.SetAttributes(attribute.String("error.type", errorType))
		span.SetStatus(codes.Error, fail.err.Error())
	case err != nil:
		span.SetAttributes(attribute.String("error.type", proxyErrorType(0, err)))
		span.SetStatus(codes.Error, err.Error())
	case rt.failed != "":
		span.SetAttributes(attribute.String("error.type", rt.failed))
		span.SetStatus(codes.Error, "the response broke off")
	case status >= 400:
		span.SetAttributes(attribute.String("error.type", strconv.Itoa(status)))
		span.SetStatus(codes.Error, "")
	}
	span.End()
}
