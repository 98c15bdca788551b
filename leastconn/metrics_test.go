package leastconn

import (
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
)

func TestResponseTimeIsObservedInTheBackendsSeries(t *testing.T) {
	p := &Pool{name: "metrics-test"}
	b := newBackend(p, backendAddr{key: "http://rt:80", display: "http://rt:80", weight: 1})
	t.Cleanup(func() { forgetMetrics(p.name, b) })
	b.observe(time.Now(), 3*time.Millisecond, false)
	b.observe(time.Now(), 2*time.Second, false)
	var m dto.Metric
	if err := responseTime.WithLabelValues(p.name, b.URL()).(prometheus.Histogram).Write(&m); err != nil {
		t.Fatal(err)
	}
	if h := m.GetHistogram(); h.GetSampleCount() != 2 || h.GetSampleSum() < 2.003 || h.GetSampleSum() > 2.0031 {
		t.Fatalf("count %d sum %v, want 2 and 2.003", h.GetSampleCount(), h.GetSampleSum())
	}
}

// What a proxied response costs in bookkeeping: the moving average alone,
// and everything observe does (with the response-time histogram).
//
//	go test -run '^$' -bench Observe -benchmem ./leastconn
func BenchmarkObserveMovingAverageOnly(bm *testing.B) {
	b := newBackend(&Pool{name: "bench"}, backendAddr{key: "http://a:80", display: "http://a:80", weight: 1})
	for bm.Loop() {
		b.latency.observe(3 * time.Millisecond)
	}
}

func BenchmarkObserveWithResponseTime(bm *testing.B) {
	b := newBackend(&Pool{name: "bench"}, backendAddr{key: "http://a:80", display: "http://a:80", weight: 1})
	start := time.Now()
	for bm.Loop() {
		b.observe(start, 3*time.Millisecond, false)
	}
}

// Every core answering through the same backend: the histogram's atomics
// contend as the moving average's do.
func BenchmarkObserveWithResponseTimeParallel(bm *testing.B) {
	b := newBackend(&Pool{name: "bench"}, backendAddr{key: "http://a:80", display: "http://a:80", weight: 1})
	start := time.Now()
	bm.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			b.observe(start, 3*time.Millisecond, false)
		}
	})
}
