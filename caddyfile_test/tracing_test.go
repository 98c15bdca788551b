package caddyfile_test

import (
	"compress/gzip"
	"encoding/hex"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	coltracepb "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	commonpb "go.opentelemetry.io/proto/otlp/common/v1"
	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"
	"google.golang.org/protobuf/proto"

	"github.com/lbpool/lbpool/internal/lbtest"
)

// otlpReceiver is an OpenTelemetry collector's trace service over OTLP/HTTP
// (POST /v1/traces, protobuf): what Caddy's exporter sends its spans to.
type otlpReceiver struct {
	srv   *httptest.Server
	mu    sync.Mutex
	spans []*tracepb.Span
}

func newOTLPReceiver(t *testing.T) *otlpReceiver {
	rc := &otlpReceiver{}
	rc.srv = httptest.NewServer(http.HandlerFunc(rc.export))
	t.Cleanup(rc.srv.Close)
	return rc
}

func (rc *otlpReceiver) export(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost || r.URL.Path != "/v1/traces" {
		http.NotFound(w, r)
		return
	}
	var body io.Reader = http.MaxBytesReader(w, r.Body, 16<<20)
	if r.Header.Get("Content-Encoding") == "gzip" {
		gz, err := gzip.NewReader(body)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		body = gz
	}
	data, err := io.ReadAll(body)
	var req coltracepb.ExportTraceServiceRequest
	if err == nil {
		err = proto.Unmarshal(data, &req)
	}
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	rc.mu.Lock()
	for _, rs := range req.ResourceSpans {
		for _, ss := range rs.ScopeSpans {
			rc.spans = append(rc.spans, ss.Spans...)
		}
	}
	rc.mu.Unlock()
	resp, _ := proto.Marshal(&coltracepb.ExportTraceServiceResponse{})
	w.Header().Set("Content-Type", "application/x-protobuf")
	_, _ = w.Write(resp)
}

// trace returns the spans received of the trace that has a span with
// attribute key = value, ordered by start.
func (rc *otlpReceiver) trace(key, value string) []*tracepb.Span {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	var id []byte
	for _, s := range rc.spans {
		if spanAttr(s, key) == value {
			id = s.TraceId
		}
	}
	var out []*tracepb.Span
	for _, s := range rc.spans {
		if id != nil && string(s.TraceId) == string(id) {
			out = append(out, s)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].StartTimeUnixNano < out[j].StartTimeUnixNano })
	return out
}

// spanAttr is a span's attribute as text; "" when it has none by that key.
func spanAttr(s *tracepb.Span, key string) string {
	for _, kv := range s.Attributes {
		if kv.Key == key {
			return anyValue(kv.Value)
		}
	}
	return ""
}

func anyValue(v *commonpb.AnyValue) string {
	switch x := v.GetValue().(type) {
	case *commonpb.AnyValue_StringValue:
		return x.StringValue
	case *commonpb.AnyValue_IntValue:
		return fmt.Sprint(x.IntValue)
	case *commonpb.AnyValue_DoubleValue:
		return fmt.Sprint(x.DoubleValue)
	case *commonpb.AnyValue_BoolValue:
		return fmt.Sprint(x.BoolValue)
	}
	return v.String()
}

// dumpTrace shows spans as a tree, one line each.
func dumpTrace(spans []*tracepb.Span) string {
	var b strings.Builder
	depth := map[string]int{}
	for _, s := range spans {
		d := depth[string(s.ParentSpanId)]
		depth[string(s.SpanId)] = d + 1
		kind := strings.TrimPrefix(s.Kind.String(), "SPAN_KIND_")
		fmt.Fprintf(&b, "%s%s [%s] span %x parent %x %.1fms", strings.Repeat("  ", d), s.Name, kind,
			s.SpanId, s.ParentSpanId, float64(s.EndTimeUnixNano-s.StartTimeUnixNano)/1e6)
		if s.Status != nil && s.Status.Code == tracepb.Status_STATUS_CODE_ERROR {
			fmt.Fprintf(&b, " ERROR %q", s.Status.Message)
		}
		b.WriteString("\n")
		keys := make([]string, 0, len(s.Attributes))
		for _, kv := range s.Attributes {
			keys = append(keys, kv.Key+"="+anyValue(kv.Value))
		}
		sort.Strings(keys)
		fmt.Fprintf(&b, "%s  %s\n", strings.Repeat("  ", d), strings.Join(keys, " "))
	}
	return b.String()
}

// traceparentSpan is the span ID a traceparent header names.
func traceparentSpan(tp string) string {
	parts := strings.Split(tp, "-")
	if len(parts) != 4 {
		return ""
	}
	return parts[2]
}

// tracedSite points Caddy's exporter at rc (the OTEL_* variables Caddy's
// tracing handler reads when it creates its tracer provider) and returns a
// site with tracing before lbpool. At the end of the test a config without
// tracing is loaded, so the provider flushes and stops while rc listens.
func tracedSite(t *testing.T, c *lbtest.Caddy, rc *otlpReceiver, lb string) string {
	t.Setenv("OTEL_TRACES_EXPORTER", "otlp")
	t.Setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")
	t.Setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", rc.srv.URL+"/v1/traces")
	t.Setenv("OTEL_BSP_SCHEDULE_DELAY", "50")
	t.Cleanup(func() { c.Load(t, fmt.Sprintf(":%d {\n\trespond 200\n}\n", c.HTTPPort)) })
	return fmt.Sprintf(":%d {\n\ttracing {\n\t\tspan caddy\n\t}\n%s\n}\n", c.HTTPPort, lb)
}

// hangUp is a backend that reads the request and closes the connection
// without answering.
func hangUp(w http.ResponseWriter, r *http.Request) {
	conn, _, err := http.NewResponseController(w).Hijack()
	if err == nil {
		conn.Close()
	}
}

func TestTracingOneClientSpanPerTry(t *testing.T) {
	c := lbtest.Start(t)
	rc := newOTLPReceiver(t)
	var mu sync.Mutex
	seen := map[string]string{} // backend name -> traceparent it got
	record := func(name string, then http.HandlerFunc) http.HandlerFunc {
		return func(w http.ResponseWriter, r *http.Request) {
			mu.Lock()
			seen[name] = r.Header.Get("Traceparent")
			mu.Unlock()
			then(w, r)
		}
	}
	refuses := lbtest.NewBackend(t, "refuses", nil)
	hangs := lbtest.NewBackend(t, "hangs", record("hangs", hangUp))
	answers := lbtest.NewBackend(t, "answers", record("answers", func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.WriteString(w, "answers")
	}))
	c.Load(t, tracedSite(t, c, rc, fmt.Sprintf(`	lbpool %s %s %s {
		name traced
		health_uri /health
		lb_policy first
	}`, refuses.Addr(), hangs.Addr(), answers.Addr())))
	// each backend passed its first check; the next is health_interval (20s) away
	lbtest.Eventually(t, 10*time.Second, "every backend up and checked", func() bool {
		for _, s := range c.Stats(t, "traced") {
			if !s.Alive || s.LastCheck == nil || s.LastCheck.Error != "" {
				return false
			}
		}
		return true
	})
	refuses.Close() // up in the pool, refusing connections

	code, body := c.Get(t, c.URL("/retried"))
	if code != http.StatusOK || body != "answers" {
		t.Fatalf("GET /retried: %d %q, want 200 from the third backend", code, body)
	}
	var spans []*tracepb.Span
	lbtest.Eventually(t, 10*time.Second, "the server span and three client spans exported", func() bool {
		spans = rc.trace("url.full", "http://"+answers.Addr()+"/retried")
		return len(spans) == 4
	})
	t.Logf("the spans of GET /retried as the OTLP receiver got them:\n%s", dumpTrace(spans))

	server := spans[0]
	if server.Kind != tracepb.Span_SPAN_KIND_SERVER || len(server.ParentSpanId) != 0 {
		t.Fatalf("first span: %s %s with parent %x, want Caddy's server span", server.Name, server.Kind, server.ParentSpanId)
	}
	want := []struct {
		backend, pick, resend, status, errorType string
	}{
		{refuses.Addr(), "first", "0", "", "connection_refused"},
		{hangs.Addr(), "retry", "1", "", "connection_terminated"},
		{answers.Addr(), "retry", "2", "200", ""},
	}
	host, _, _ := net.SplitHostPort(answers.Addr())
	for i, w := range want {
		s := spans[i+1]
		_, port, _ := net.SplitHostPort(w.backend)
		got := []string{s.Name, s.Kind.String(), string(s.ParentSpanId), spanAttr(s, "server.address"), spanAttr(s, "server.port"),
			spanAttr(s, "http.request.method"), spanAttr(s, "lbpool.pool"), spanAttr(s, "lbpool.pick"),
			spanAttr(s, "http.request.resend_count"), spanAttr(s, "http.response.status_code"), spanAttr(s, "error.type")}
		exp := []string{"GET", "SPAN_KIND_CLIENT", string(server.SpanId), host, port,
			"GET", "traced", w.pick, w.resend, w.status, w.errorType}
		if strings.Join(got, "|") != strings.Join(exp, "|") {
			t.Errorf("try %d's span:\n got %q\nwant %q", i, got, exp)
		}
	}
	mu.Lock()
	defer mu.Unlock()
	t.Logf("traceparent the backends got: hangs %s, answers %s", seen["hangs"], seen["answers"])
	for i, name := range []string{"hangs", "answers"} {
		if got, want := traceparentSpan(seen[name]), hex.EncodeToString(spans[i+2].SpanId); got != want {
			t.Errorf("backend %s got traceparent %q, want it to name its try's span %s", name, seen[name], want)
		}
	}
}

func TestTracingRecordsTheQueueWait(t *testing.T) {
	c := lbtest.Start(t)
	rc := newOTLPReceiver(t)
	release := make(chan struct{})
	b := lbtest.NewBackend(t, "one", func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/held" {
			select { // a test that fails before it releases still ends
			case <-release:
			case <-r.Context().Done():
			}
		}
	})
	c.Load(t, tracedSite(t, c, rc, fmt.Sprintf(`	lbpool %s {
		name traced
		health_uri /health
		max_conns 1
	}`, b.Addr())))
	lbtest.Eventually(t, 10*time.Second, "the backend up and checked", func() bool {
		s := c.Stats(t, "traced")[0]
		return s.Alive && s.LastCheck != nil
	})

	var wg sync.WaitGroup
	defer wg.Wait()
	defer func() {
		select {
		case <-release:
		default:
			close(release)
		}
	}()
	get := func(path string) {
		defer wg.Done()
		if resp, err := c.Client().Get(c.URL(path)); err == nil {
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
		}
	}
	wg.Add(2)
	go get("/held")
	lbtest.Eventually(t, 10*time.Second, "the backend holding /held", func() bool { return b.Requests.Load() == 1 })
	go get("/queued")
	lbtest.Eventually(t, 10*time.Second, "/queued in the queue", func() bool {
		return namedPoolStats(t, c, "traced").QueueDepth == 1
	})
	time.Sleep(20 * time.Millisecond) // a wait the span must show (not a bound on anything)
	close(release)
	wg.Wait()

	var spans []*tracepb.Span
	lbtest.Eventually(t, 10*time.Second, "the spans of /queued exported", func() bool {
		spans = rc.trace("url.full", "http://"+b.Addr()+"/queued")
		return len(spans) == 3
	})
	t.Logf("the spans of GET /queued:\n%s", dumpTrace(spans))
	server, queue, try := spans[0], spans[1], spans[2]
	if queue.Name != "lbpool queue" || string(queue.ParentSpanId) != string(server.SpanId) {
		t.Errorf("second span %q with parent %x, want the queue's under the server span %x", queue.Name, queue.ParentSpanId, server.SpanId)
	}
	if d := time.Duration(queue.EndTimeUnixNano - queue.StartTimeUnixNano); d < 20*time.Millisecond {
		t.Errorf("the queue span lasts %v, want at least the 20ms the request waited", d)
	}
	var waited float64
	if _, err := fmt.Sscan(spanAttr(try, "lbpool.queue_wait_ms"), &waited); err != nil || waited < 20 {
		t.Errorf("the try's lbpool.queue_wait_ms is %q, want at least 20", spanAttr(try, "lbpool.queue_wait_ms"))
	}
	if try.Kind != tracepb.Span_SPAN_KIND_CLIENT || spanAttr(try, "http.response.status_code") != "200" {
		t.Errorf("third span: %s status %q, want the client span of the try that was answered", try.Kind, spanAttr(try, "http.response.status_code"))
	}
}
