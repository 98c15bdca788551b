package leastconn

import (
	"errors"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
)

// Metrics are read from the registry when scraped, so the request path
// pays nothing for them. Caddy makes a new metrics registry for every config
// load; the collectors are process-wide and registered into each, so
// counters carry on across reloads like the state they read.

var (
	descUp = prometheus.NewDesc("caddy_lbpool_backend_up",
		"Whether the backend passes its health checks (1) or not (0).", []string{"pool", "backend"}, nil)
	descActive = prometheus.NewDesc("caddy_lbpool_backend_active_connections",
		"Requests in flight to the backend.", []string{"pool", "backend"}, nil)
	descRequests = prometheus.NewDesc("caddy_lbpool_backend_requests_total",
		"Requests the backend answered.", []string{"pool", "backend"}, nil)
	descFailures = prometheus.NewDesc("caddy_lbpool_backend_failures_total",
		"Tries to the backend that failed.", []string{"pool", "backend"}, nil)
	descSticky = prometheus.NewDesc("caddy_lbpool_backend_sticky_requests_total",
		"Requests routed to the backend by their sticky session cookie.", []string{"pool", "backend"}, nil)

	checkDuration = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Namespace: "caddy",
		Subsystem: "lbpool",
		Name:      "health_check_duration_seconds",
		Help:      "Duration of active health checks.",
		Buckets:   prometheus.DefBuckets,
	}, []string{"pool", "backend"})

	registryCollector = backendCollector{}
)

type backendCollector struct{}

func (backendCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- descUp
	ch <- descActive
	ch <- descRequests
	ch <- descFailures
	ch <- descSticky
}

func (backendCollector) Collect(ch chan<- prometheus.Metric) {
	for _, p := range defaultRegistry.backendsByPool("") {
		for _, b := range p.backends {
			up := 0.0
			if b.flags.Load()&flagDown == 0 {
				up = 1
			}
			ch <- prometheus.MustNewConstMetric(descUp, prometheus.GaugeValue, up, p.name, b.URL())
			ch <- prometheus.MustNewConstMetric(descActive, prometheus.GaugeValue, float64(b.active.Load()), p.name, b.URL())
			ch <- prometheus.MustNewConstMetric(descRequests, prometheus.CounterValue, float64(b.requests.Load()), p.name, b.URL())
			ch <- prometheus.MustNewConstMetric(descFailures, prometheus.CounterValue, float64(b.failures.Load()), p.name, b.URL())
			ch <- prometheus.MustNewConstMetric(descSticky, prometheus.CounterValue, float64(b.sticky.Load()), p.name, b.URL())
		}
	}
}

// registerMetrics adds the collectors to the config's metrics registry.
func registerMetrics(ctx caddy.Context, logger *zap.Logger) {
	reg := ctx.GetMetricsRegistry()
	if reg == nil {
		return
	}
	for _, c := range []prometheus.Collector{registryCollector, checkDuration} {
		if err := reg.Register(c); err != nil {
			var already prometheus.AlreadyRegisteredError
			if !errors.As(err, &already) {
				logger.Warn("registering metrics", zap.Error(err))
			}
		}
	}
}

func observeCheck(pool string, b *Backend, d time.Duration) {
	checkDuration.WithLabelValues(pool, b.URL()).Observe(d.Seconds())
}

// forgetMetrics drops the series of a backend that left its pool.
func forgetMetrics(pool string, b *Backend) {
	checkDuration.DeleteLabelValues(pool, b.URL())
}
