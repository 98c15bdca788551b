package leastconn

import (
	"io"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/lbpool/lbpool/internal/orca"
)

// report files a report of utilization util at t for b, as a response
// would, with requests answered since the last weighing.
func report(b *Backend, s *reportSettings, util float64, t time.Time, requests uint64) {
	b.keepReport(s, &orca.Report{App: util}, t.UnixNano())
	b.requests.Add(requests)
}

// reportingHandler is newTestHandler for a pool with load reports s.
func reportingHandler(s *reportSettings, weights ...int) *Handler {
	h := newTestHandler(weights...)
	h.lease.pool.spec.Store(&poolSpec{reports: s})
	return h
}

func learnedOf(bs []*Backend) []float64 {
	out := make([]float64, len(bs))
	for i, b := range bs {
		out[i] = float64(b.load.learned.Load()) / weightScale
	}
	return out
}

// The weights follow gRFC A58: qps / utilization, normalised to a mean of
// 1 over the backends with fresh reports, after the blackout and until the
// expiry; a backend without a usable report gets the mean; with fewer than
// two usable reports every backend gets 1.
func TestLearnedWeightsFollowA58(t *testing.T) {
	s := &reportSettings{blackout: 10 * time.Second, expiry: time.Minute, penalty: 1}
	h := reportingHandler(s, 1, 1, 1, 2)
	bs := h.viewed()
	t0 := time.Unix(1000, 0)
	at := func(d time.Duration) int64 { return t0.Add(d).UnixNano() }
	weighAt := func(d time.Duration) []float64 {
		weigh(s, bs, nil, at(d), 1)
		return learnedOf(bs)
	}
	for _, b := range bs[:3] {
		report(b, s, 0.5, t0, 100) // 100 qps at 0.5: raw weight 200
	}
	report(bs[2], s, 1.0, t0, 0) // C: twice the utilization for the same qps

	if got := weighAt(5 * time.Second); got[0] != 1 || got[2] != 1 {
		t.Fatalf("within the blackout: %v, want every weight 1", got)
	}
	for i, b := range bs[:3] {
		util := 0.5
		if i == 2 {
			util = 1
		}
		report(b, s, util, t0.Add(11*time.Second), 100)
	}
	got := weighAt(11 * time.Second)
	// raw 200, 200, 100: mean 166.7
	want := []float64{1.2, 1.2, 0.6, 1}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("after the blackout: learned %v, want %v (D never reported: the mean)", got, want)
		}
	}
	if bs[3].scaled.Load() != 2*weightScale || bs[2].scaled.Load() != 600 {
		t.Fatalf("scaled weights %d and %d, want configured × learned: 2000 and 600", bs[3].scaled.Load(), bs[2].scaled.Load())
	}

	// no requests since the last weighing: lbpool's own qps is 0, the
	// report's rps_fractional stands in when it has one
	bs[0].keepReport(s, &orca.Report{App: 0.5, RPS: 300, HasRPS: true}, at(12*time.Second))
	bs[1].keepReport(s, &orca.Report{App: 0.5, RPS: 100, HasRPS: true}, at(12*time.Second))
	if got := weighAt(12 * time.Second); got[0] != 1.5 || got[1] != 0.5 || got[2] != 1 {
		t.Fatalf("with reported rps and C without requests: %v, want 1.5 0.5 1", got)
	}

	// A and B expire: with no usable report left, every weight is 1, and
	// the next report starts a new blackout
	if got := weighAt(12*time.Second + time.Minute); got[0] != 1 || got[1] != 1 {
		t.Fatalf("after the expiry: %v, want 1", got)
	}
	if bs[0].load.since.Load() != 0 {
		t.Fatal("an expired backend keeps its blackout start")
	}

	// error penalty: eps/qps × penalty adds to the utilization
	s.blackout = time.Nanosecond
	bs[0].keepReport(s, &orca.Report{App: 0.5, RPS: 100, HasRPS: true, EPS: 50, HasEPS: true}, at(80*time.Second))
	bs[1].keepReport(s, &orca.Report{App: 0.5, RPS: 100, HasRPS: true, EPS: 0, HasEPS: true}, at(80*time.Second))
	if got := weighAt(81 * time.Second); got[0] != 0.667 || got[1] != 1.333 {
		t.Fatalf("with errors: %v, want 0.667 (100/(0.5+0.5)) and 1.333 (100/0.5)", got)
	}
}

// A report is read off the header, the header removed; a bad one is
// counted; a report without utilization is empty, not bad.
func TestTakeLoadReportRemovesTheHeader(t *testing.T) {
	s := &reportSettings{}
	h := reportingHandler(s, 1)
	b := h.viewed()[0]
	hdr := http.Header{"Endpoint-Load-Metrics": {"TEXT cpu_utilization=0.4"}, "Content-Type": {"text/plain"}}
	b.takeLoadReport(s, hdr, 1)
	if _, ok := hdr["Endpoint-Load-Metrics"]; ok || len(hdr) != 1 {
		t.Fatalf("header left: %v", hdr)
	}
	var st BackendStats
	b.loadStats(&st, time.Unix(0, 1))
	if st.ReportedUtilization == nil || *st.ReportedUtilization != 0.4 {
		t.Fatalf("reported utilization %v", st.ReportedUtilization)
	}
	b.takeLoadReport(s, http.Header{"Endpoint-Load-Metrics": {"TEXT cpu_utilization=x"}}, 2)
	b.takeLoadReport(s, http.Header{"Endpoint-Load-Metrics": {"TEXT mem_utilization=0.3"}}, 3)
	if b.load.bad.Load() != 1 || b.load.at.Load() != 1 {
		t.Fatalf("bad %d, last report at %d; want 1 and the first report's time", b.load.bad.Load(), b.load.at.Load())
	}
	hdr, vv := http.Header{}, []string{"TEXT cpu_utilization=0.4, rps_fractional=10"}
	if n := testing.AllocsPerRun(100, func() {
		hdr["Endpoint-Load-Metrics"] = vv
		b.takeLoadReport(s, hdr, 4)
	}); n != 0 {
		t.Fatalf("%v allocations per report, want 0", n)
	}
}

// The pick with learned weights beside the pick without: the same code
// reads the same atomic, so the numbers must match (go test -bench
// 'PickLearned|Pick3$' -count 6, interleaved).
func BenchmarkPickLearned3(b *testing.B) {
	h := newTestHandler(make([]int, 3)...)
	for i, be := range h.viewed() {
		be.setLearned([]int64{1200, 1200, 600}[i])
	}
	benchmarkPick(b, h)
}

// BenchmarkTakeLoadReport is what load_reports adds to each response: the
// TEXT report read and filed.
func BenchmarkTakeLoadReport(b *testing.B) {
	s := &reportSettings{}
	be := reportingHandler(s, 1).viewed()[0]
	hdr, vv := http.Header{}, []string{"TEXT cpu_utilization=0.4, application_utilization=0.45, rps_fractional=120"}
	b.ReportAllocs()
	for b.Loop() {
		hdr["Endpoint-Load-Metrics"] = vv
		be.takeLoadReport(s, hdr, 1)
	}
}

// BenchmarkProxyLoadReports is the whole request path with backends that
// send a report on every response, load_reports off (the header passes
// through) and on.
func BenchmarkProxyLoadReports(b *testing.B) {
	var addrs []string
	for range 3 {
		s := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Endpoint-Load-Metrics", "TEXT application_utilization=0.45, rps_fractional=120")
			_, _ = io.WriteString(w, "hello from a backend\n")
		}))
		b.Cleanup(s.Close)
		addrs = append(addrs, s.Listener.Addr().String())
	}
	for _, on := range []bool{false, true} {
		lb := &Handler{Name: "bench-reports-" + map[bool]string{false: "off", true: "on"}[on], HealthInterval: caddy.Duration(3600e9)}
		if on {
			lb.LoadReports = &LoadReports{}
		}
		for _, a := range addrs {
			lb.Backends = append(lb.Backends, BackendConfig{URL: a})
		}
		if err := lb.Provision(benchContext(b)); err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { _ = lb.Cleanup() })
		b.Run(map[bool]string{false: "off", true: "on"}[on], func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				serveLikeCaddy(b, lb, nil)
			}
		})
	}
}
