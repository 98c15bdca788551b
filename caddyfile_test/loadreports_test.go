package caddyfile_test

import (
	"context"
	"encoding/base64"
	"fmt"
	"go/parser"
	"go/token"
	"io"
	"math"
	"net/http"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	v3orcapb "github.com/cncf/xds/go/xds/data/orca/v3"
	"google.golang.org/grpc"
	testpb "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/metadata"
	grpcorca "google.golang.org/grpc/orca"
	"google.golang.org/protobuf/proto"

	"github.com/lbpool/lbpool/internal/docblocks"
	"github.com/lbpool/lbpool/internal/lbtest"
	"github.com/lbpool/lbpool/internal/orca"
)

// loadMeter is the load a backend really has: its utilization is its
// cost per request times the requests it answered in the last second.
type loadMeter struct {
	cost   float64
	report atomic.Bool // reports are sent
	mu     sync.Mutex
	times  []time.Time // requests in the last second
}

func newLoadMeter(cost float64) *loadMeter {
	m := &loadMeter{cost: cost}
	m.report.Store(true)
	return m
}

// request counts one request and returns the utilization to report.
func (m *loadMeter) request() float64 {
	now := time.Now()
	m.mu.Lock()
	defer m.mu.Unlock()
	i := 0
	for i < len(m.times) && now.Sub(m.times[i]) > time.Second {
		i++
	}
	m.times = append(m.times[:0], m.times[i:]...)
	m.times = append(m.times, now)
	return m.cost * float64(len(m.times)) / 1000
}

// reporter is an HTTP backend that reports the load it really has in
// endpoint-load-metrics. Every request takes as long (5 ms), so from the
// outside (active requests, latency) all reporters look alike.
type reporter struct {
	*lbtest.Backend
	*loadMeter
}

func newReporter(t *testing.T, name string, cost float64) *reporter {
	r := &reporter{loadMeter: newLoadMeter(cost)}
	r.Backend = lbtest.NewBackend(t, name, func(w http.ResponseWriter, _ *http.Request) {
		util := r.request()
		if r.report.Load() {
			w.Header().Set("Endpoint-Load-Metrics", fmt.Sprintf("TEXT application_utilization=%.4f, mem_utilization=0.2", util))
		}
		time.Sleep(5 * time.Millisecond)
		_, _ = io.WriteString(w, name)
	})
	return r
}

// grpcInterceptor makes a gRPC backend report the meter's load per call
// with grpc-go's orca package (the endpoint-load-metrics-bin trailer), each
// call taking 5 ms.
func (m *loadMeter) grpcInterceptor(srv any, ss grpc.ServerStream, _ *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
	util := m.request()
	if rec := grpcorca.CallMetricsRecorderFromContext(ss.Context()); rec != nil && m.report.Load() {
		rec.SetApplicationUtilization(util)
	}
	time.Sleep(5 * time.Millisecond)
	return handler(srv, ss)
}

// shares counts each backend's requests (read by its counter) over d and
// returns their shares.
func shares(d time.Duration, counters ...func() int64) []float64 {
	before := make([]int64, len(counters))
	for i, count := range counters {
		before[i] = count()
	}
	time.Sleep(d)
	out := make([]float64, len(counters))
	var total int64
	for i, count := range counters {
		n := count() - before[i]
		out[i] = float64(n)
		total += n
	}
	for i := range out {
		out[i] /= float64(max(total, 1))
	}
	return out
}

func requestCounters(bs ...*reporter) []func() int64 {
	out := make([]func() int64, len(bs))
	for i, b := range bs {
		out[i] = b.Requests.Load
	}
	return out
}

func learned(t *testing.T, c *lbtest.Caddy, b *reporter) float64 {
	return c.Backend(t, "web", b.URL()).LearnedWeight
}

func checkShares(t *testing.T, what string, got []float64, want []float64, tolerance float64) {
	t.Helper()
	t.Logf("%s: shares %.3f", what, got)
	for i := range got {
		if math.Abs(got[i]-want[i]) > tolerance {
			t.Errorf("%s: backend %d has %.1f%% of the requests, want %.0f%% ± %.0f%%", what, i, 100*got[i], 100*want[i], 100*tolerance)
		}
	}
}

// Three backends look alike from the outside, but C's requests cost twice
// A's and B's, and their reports say so: least_conn with load_reports
// gives C half of A's share (20/40/40), and equal shares again once C's
// reports expire; without load_reports each gets a third.
func TestLoadReportsSteerThePickAndExpire(t *testing.T) {
	c := lbtest.Start(t)
	a, b, cc := newReporter(t, "a", 1), newReporter(t, "b", 1), newReporter(t, "c", 2)
	all := []*reporter{a, b, cc}
	c.Load(t, c.Site("load_reports {\n\t\t\tblackout 1s\n\t\t\texpiry 3s\n\t\t}", a.Backend, b.Backend, cc.Backend))
	stop := backgroundTraffic(t, c, 16)

	start := time.Now()
	lbtest.Eventually(t, 15*time.Second, "C's learned weight below 0.7", func() bool {
		return learned(t, c, cc) < 0.7
	})
	t.Logf("learned weights steer %v after the traffic began: a %.2f b %.2f c %.2f", time.Since(start).Round(100*time.Millisecond),
		learned(t, c, a), learned(t, c, b), learned(t, c, cc))
	checkShares(t, "with load_reports", shares(3*time.Second, requestCounters(all...)...), []float64{0.4, 0.4, 0.2}, 0.05)
	st := c.Backend(t, "web", cc.URL())
	if st.ReportedUtilization == nil || *st.ReportedUtilization <= 0 || st.ReportAgeSeconds == nil || st.BadReportsTotal != 0 {
		t.Errorf("C's stats: reported_utilization %v, report_age_seconds %v, bad_reports_total %d", st.ReportedUtilization, st.ReportAgeSeconds, st.BadReportsTotal)
	}

	cc.report.Store(false)
	silent := time.Now()
	lbtest.Eventually(t, 10*time.Second, "C's learned weight back to 1", func() bool {
		return learned(t, c, cc) == 1
	})
	back := time.Since(silent)
	t.Logf("C back to the mean %v after its last report (expiry 3s)", back.Round(100*time.Millisecond))
	if back > 3*time.Second+2*time.Second {
		t.Errorf("C's weight came back %v after its last report, want within the 3s expiry and a recomputation", back)
	}
	checkShares(t, "C silent", shares(2*time.Second, requestCounters(all...)...), []float64{1.0 / 3, 1.0 / 3, 1.0 / 3}, 0.05)

	// A reload closes, unanswered, a connection whose request the old
	// server reads after its shutdown began (see lbtest.GetResending), so
	// the traffic, which counts any unanswered request as failed, pauses
	// over the reload.
	stop()
	c.Load(t, c.Site("", a.Backend, b.Backend, cc.Backend))
	stop = backgroundTraffic(t, c, 16)
	cc.report.Store(true)
	if st := c.Backend(t, "web", a.URL()); st.LearnedWeight != 1 || st.ReportedUtilization != nil {
		t.Errorf("without load_reports, learned_weight %v and reported_utilization %v, want 1 and none", st.LearnedWeight, st.ReportedUtilization)
	}
	checkShares(t, "without load_reports", shares(2*time.Second, requestCounters(all...)...), []float64{1.0 / 3, 1.0 / 3, 1.0 / 3}, 0.03)
	stop()
}

// The same with gRPC backends reporting per call through grpc-go's orca
// package: the endpoint-load-metrics-bin trailer steers the pick to
// 20/40/40, and the client never sees the trailer.
func TestLoadReportsFromGRPCTrailersSteerThePick(t *testing.T) {
	c := lbtest.Start(t)
	meters := []*loadMeter{newLoadMeter(1), newLoadMeter(1), newLoadMeter(2)}
	var bs []*grpcBackend
	var urls []string
	for _, m := range meters {
		b := startGRPCBackend(t, false, grpcorca.CallMetricsServerOption(nil), grpc.ChainStreamInterceptor(m.grpcInterceptor))
		bs, urls = append(bs, b), append(urls, b.url())
	}
	conn := grpcSite(t, c, "load_reports {\n\t\t\tblackout 1s\n\t\t\texpiry 3s\n\t\t}", urls...)

	var halt atomic.Bool
	var failed atomic.Int64
	var wg sync.WaitGroup
	for range 16 {
		wg.Go(func() {
			for !halt.Load() {
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				var trailer metadata.MD
				err := conn.Invoke(ctx, "/lbtest.Test/Unary", new(testpb.Empty), new(testpb.Empty), grpc.Trailer(&trailer))
				cancel()
				if err != nil || len(trailer.Get("endpoint-load-metrics-bin")) > 0 {
					failed.Add(1)
				}
			}
		})
	}
	defer func() {
		halt.Store(true)
		wg.Wait()
		if n := failed.Load(); n != 0 {
			t.Errorf("%d calls failed or saw the report trailer", n)
		}
	}()

	start := time.Now()
	lbtest.Eventually(t, 15*time.Second, "the small backend's learned weight below 0.7", func() bool {
		return c.Backend(t, "grpc", bs[2].url()).LearnedWeight < 0.7
	})
	t.Logf("learned weights steer %v after the calls began", time.Since(start).Round(100*time.Millisecond))
	got := shares(3*time.Second, bs[0].calls.Load, bs[1].calls.Load, bs[2].calls.Load)
	checkShares(t, "gRPC with load_reports", got, []float64{0.4, 0.4, 0.2}, 0.05)
}

// Garbage reports are refused and counted; no request fails for them and
// the client sees neither the header nor the trailer.
func TestLoadReportsGarbageIsCountedAndNeverReachesTheClient(t *testing.T) {
	c := lbtest.Start(t)
	bin, _ := proto.Marshal(&v3orcapb.OrcaLoadReport{CpuUtilization: 0.25})
	garbage := []string{
		"TEXT cpu_utilization=abc",
		"TEXT cpu_utilization=NaN",
		"TEXT application_utilization=-1",
		"TEXT cpu_utilization=" + strings.Repeat("9", 100<<10),
		"XML <load/>",
		`JSON {"cpu_utilization": "high"}`,
		"BIN %%%",
	}
	be := lbtest.NewBackend(t, "a", func(w http.ResponseWriter, r *http.Request) {
		switch v := r.URL.Query().Get("r"); v {
		case "trailer":
			w.Header().Set("Trailer", "Endpoint-Load-Metrics-Bin")
			_, _ = io.WriteString(w, "body")
			w.Header().Set("Endpoint-Load-Metrics-Bin", base64.RawStdEncoding.EncodeToString(bin))
		default:
			var i int
			fmt.Sscan(v, &i)
			w.Header().Set("Endpoint-Load-Metrics", garbage[i])
			_, _ = io.WriteString(w, "body")
		}
	})
	c.Load(t, c.Site("load_reports", be))
	for i := range garbage {
		resp, err := c.Client().Get(c.URL(fmt.Sprintf("/?r=%d", i)))
		if err != nil {
			t.Fatalf("garbage %d: %v", i, err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || string(body) != "body" || resp.Header.Get("Endpoint-Load-Metrics") != "" {
			t.Errorf("garbage %d: status %d, body %q, header %q", i, resp.StatusCode, body, resp.Header.Get("Endpoint-Load-Metrics"))
		}
	}
	st := c.Backend(t, "web", be.URL())
	if st.BadReportsTotal != uint64(len(garbage)) || st.ReportedUtilization != nil {
		t.Errorf("bad_reports_total %d, reported_utilization %v; want %d and none", st.BadReportsTotal, st.ReportedUtilization, len(garbage))
	}

	resp, err := c.Client().Get(c.URL("/?r=trailer"))
	if err != nil {
		t.Fatal(err)
	}
	_, _ = io.ReadAll(resp.Body)
	resp.Body.Close()
	if _, ok := resp.Trailer["Endpoint-Load-Metrics-Bin"]; ok || resp.Header.Get("Trailer") != "" {
		t.Errorf("the client saw the report trailer: %v, Trailer %q", resp.Trailer, resp.Header.Get("Trailer"))
	}
	st = c.Backend(t, "web", be.URL())
	if st.ReportedUtilization == nil || *st.ReportedUtilization != 0.25 {
		t.Errorf("after a trailer report, reported_utilization %v, want 0.25", st.ReportedUtilization)
	}
}

// With load_reports stats, the same fields come from stats_uri.
func TestLoadReportsFromStatsURI(t *testing.T) {
	c := lbtest.Start(t)
	be := lbtest.NewBackend(t, "a", func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/stats" {
			_, _ = io.WriteString(w, `{"memory_usage": 1000, "cpu_utilization": 0.5, "named_metrics": {"queue": 7}}`)
		}
	})
	c.Load(t, c.Site("health_interval 100ms\n\t\tstats_uri /stats\n\t\tload_reports stats {\n\t\t\tmetric named_metrics.queue\n\t\t}", be))
	lbtest.Eventually(t, 5*time.Second, "the stats report read", func() bool {
		u := c.Backend(t, "web", be.URL()).ReportedUtilization
		return u != nil && *u == 7
	})
}

// reportTemplate finds the TEXT report a snippet writes, with the
// utilization's formatting expression in it.
var reportTemplate = regexp.MustCompile("TEXT [^\"`]*")

// reportFormat matches the formatting expressions of the snippets: Go's
// verb, Python's f-string field, JavaScript's template field.
var reportFormat = regexp.MustCompile(`%\.3f|\{utilization\(\):\.3f\}|\$\{utilization\(\)\.toFixed\(3\)\}`)

// The Go, Python and Node snippets of docs/load-reports.md set the header
// lbpool reads, with a report it accepts once the figure is filled in; the
// Go one parses as Go.
func TestDocLoadReportSnippetsSendAGoodReport(t *testing.T) {
	blocks, err := docblocks.Read(filepath.Join(repoRoot, "docs", "load-reports.md"))
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]bool{}
	for _, b := range blocks {
		if b.Lang != "go" && b.Lang != "python" && b.Lang != "javascript" {
			continue
		}
		seen[b.Lang] = true
		if !strings.Contains(b.Text, `"Endpoint-Load-Metrics"`) {
			t.Errorf("%s: no Endpoint-Load-Metrics header", b.Where(0))
		}
		tmpl := reportTemplate.FindString(b.Text)
		report := reportFormat.ReplaceAllString(tmpl, "0.500")
		if r, err := orca.ParseHeader(report, ""); err != nil || r.Utilization("") != 0.5 {
			t.Errorf("%s: the report %q (from %q) reads as %+v, %v", b.Where(0), report, tmpl, r, err)
		}
		if b.Lang == "go" {
			src := "package p\nfunc f() {\n" + b.Text + "}\n"
			if _, err := parser.ParseFile(token.NewFileSet(), "snippet.go", src, 0); err != nil {
				t.Errorf("%s: %v", b.Where(0), err)
			}
		}
	}
	if len(seen) != 3 {
		t.Errorf("snippets found for %v, want go, python and javascript", seen)
	}
}
