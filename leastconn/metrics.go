package leastconn

import (
	"errors"
	"math"
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

	descMaxConns = prometheus.NewDesc("caddy_lbpool_backend_max_conns",
		"The most requests the backend holds at once (0: no limit).", []string{"pool", "backend"}, nil)
	descEjected = prometheus.NewDesc("caddy_lbpool_backend_ejected",
		"Whether the backend is ejected for failed responses (1) or not (0).", []string{"pool", "backend"}, nil)
	descEjections = prometheus.NewDesc("caddy_lbpool_backend_ejections_total",
		"Times the backend was ejected for failed responses.", []string{"pool", "backend"}, nil)
	descHeld = prometheus.NewDesc("caddy_lbpool_backend_held",
		"Whether the backend is held out for failing requests soon after its checks brought it back (1) or not (0).", []string{"pool", "backend"}, nil)
	descHolds = prometheus.NewDesc("caddy_lbpool_backend_holds_total",
		"Times the backend was held out for failing requests soon after its checks brought it back.", []string{"pool", "backend"}, nil)
	descLearnedWeight = prometheus.NewDesc("caddy_lbpool_backend_learned_weight",
		"The weight learned from the backend's load reports (1: the mean; 1 without load_reports).", []string{"pool", "backend"}, nil)
	descReportedUtilization = prometheus.NewDesc("caddy_lbpool_backend_reported_utilization",
		"The utilization in the backend's last load report (NaN before any).", []string{"pool", "backend"}, nil)
	descReportAge = prometheus.NewDesc("caddy_lbpool_backend_report_age_seconds",
		"The age of the backend's last load report (NaN before any).", []string{"pool", "backend"}, nil)
	descBadReports = prometheus.NewDesc("caddy_lbpool_backend_bad_reports_total",
		"Load reports refused: unreadable, too long, bad numbers, unknown format.", []string{"pool", "backend"}, nil)
	descQueueDepth = prometheus.NewDesc("caddy_lbpool_queue_depth",
		"Requests waiting for a slot (every usable backend full).", []string{"pool"}, nil)
	descQueued = prometheus.NewDesc("caddy_lbpool_queued_total",
		"Requests that waited in the queue.", []string{"pool"}, nil)
	descQueueTimeouts = prometheus.NewDesc("caddy_lbpool_queue_timeouts_total",
		"Requests that waited past queue_timeout.", []string{"pool"}, nil)
	descHashSpills = prometheus.NewDesc("caddy_lbpool_hash_spills_total",
		"Requests a hashing policy sent past their key's first choice.", []string{"pool"}, nil)

	descPoolRetries = prometheus.NewDesc("caddy_lbpool_retries_total",
		"Retries started.", []string{"pool"}, nil)
	descBudgetExhausted = prometheus.NewDesc("caddy_lbpool_retry_budget_exhausted_total",
		"Retries the retry budget refused.", []string{"pool"}, nil)
	descBackendRetries = prometheus.NewDesc("caddy_lbpool_backend_retries_total",
		"Tries sent to the backend that were retries.", []string{"pool", "backend"}, nil)

	checkDuration = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Namespace: "caddy",
		Subsystem: "lbpool",
		Name:      "health_check_duration_seconds",
		Help:      "Duration of active health checks.",
		Buckets:   prometheus.DefBuckets,
	}, []string{"pool", "backend"})

	// responseTime is observed on the request path through each backend's
	// own series (Backend.responseTime), so a request pays one lock-free
	// Observe and no label lookup.
	responseTime = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Namespace: "caddy",
		Subsystem: "lbpool",
		Name:      "backend_response_time_seconds",
		Help:      "Time from sending a try to the backend to its response headers.",
		Buckets:   []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10},
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
	ch <- descMaxConns
	ch <- descEjected
	ch <- descEjections
	ch <- descHeld
	ch <- descHolds
	ch <- descLearnedWeight
	ch <- descReportedUtilization
	ch <- descReportAge
	ch <- descBadReports
	ch <- descQueueDepth
	ch <- descQueued
	ch <- descQueueTimeouts
	ch <- descHashSpills
	ch <- descPoolRetries
	ch <- descBudgetExhausted
	ch <- descBackendRetries
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
			ch <- prometheus.MustNewConstMetric(descBackendRetries, prometheus.CounterValue, float64(b.retries.Load()), p.name, b.URL())
			ch <- prometheus.MustNewConstMetric(descSticky, prometheus.CounterValue, float64(b.sticky.Load()), p.name, b.URL())
			f := b.flags.Load()
			capped, ejected := 0.0, 0.0
			if f&flagCapped != 0 {
				capped = float64(b.maxConns.Load())
			}
			if f&flagEjected != 0 {
				ejected = 1
			}
			ch <- prometheus.MustNewConstMetric(descMaxConns, prometheus.GaugeValue, capped, p.name, b.URL())
			ch <- prometheus.MustNewConstMetric(descEjected, prometheus.GaugeValue, ejected, p.name, b.URL())
			ch <- prometheus.MustNewConstMetric(descEjections, prometheus.CounterValue, float64(b.outlier.ejections.Load()), p.name, b.URL())
			held := 0.0
			if b.heldNow(time.Now()) {
				held = 1
			}
			ch <- prometheus.MustNewConstMetric(descHeld, prometheus.GaugeValue, held, p.name, b.URL())
			ch <- prometheus.MustNewConstMetric(descHolds, prometheus.CounterValue, float64(b.flap.total.Load()), p.name, b.URL())
			collectLoad(ch, p.name, b)
		}
	}
	for _, s := range Pools() {
		ch <- prometheus.MustNewConstMetric(descQueueDepth, prometheus.GaugeValue, float64(s.QueueDepth), s.Pool)
		ch <- prometheus.MustNewConstMetric(descQueued, prometheus.CounterValue, float64(s.QueuedTotal), s.Pool)
		ch <- prometheus.MustNewConstMetric(descQueueTimeouts, prometheus.CounterValue, float64(s.QueueTimeoutsTotal), s.Pool)
		ch <- prometheus.MustNewConstMetric(descHashSpills, prometheus.CounterValue, float64(s.HashSpillsTotal), s.Pool)
		ch <- prometheus.MustNewConstMetric(descPoolRetries, prometheus.CounterValue, float64(s.RetriesTotal), s.Pool)
		ch <- prometheus.MustNewConstMetric(descBudgetExhausted, prometheus.CounterValue, float64(s.RetryBudgetExhaustedTotal), s.Pool)
	}
}

// collectLoad sends b's load report series.
func collectLoad(ch chan<- prometheus.Metric, pool string, b *Backend) {
	var s BackendStats
	b.loadStats(&s, time.Now())
	ch <- prometheus.MustNewConstMetric(descLearnedWeight, prometheus.GaugeValue, s.LearnedWeight, pool, b.URL())
	ch <- prometheus.MustNewConstMetric(descBadReports, prometheus.CounterValue, float64(s.BadReportsTotal), pool, b.URL())
	util, age := math.NaN(), math.NaN() // before any report: unknown
	if s.ReportedUtilization != nil {
		util, age = *s.ReportedUtilization, *s.ReportAgeSeconds
	}
	ch <- prometheus.MustNewConstMetric(descReportedUtilization, prometheus.GaugeValue, util, pool, b.URL())
	ch <- prometheus.MustNewConstMetric(descReportAge, prometheus.GaugeValue, age, pool, b.URL())
}

// registerMetrics adds the collectors to the config's metrics registry.
func registerMetrics(ctx caddy.Context, logger *zap.Logger) {
	reg := ctx.GetMetricsRegistry()
	if reg == nil {
		return
	}
	for _, c := range []prometheus.Collector{registryCollector, checkDuration, responseTime} {
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
	responseTime.DeleteLabelValues(pool, b.URL())
}

// responseTimeOf is the backend's series of response times in its pool
// (none: a backend made alone, in a test).
func responseTimeOf(p *Pool, b *Backend) prometheus.Observer {
	pool := ""
	if p != nil {
		pool = p.name
	}
	return responseTime.WithLabelValues(pool, b.URL())
}
