package leastconn

import (
	"bytes"
	"fmt"
	"math"
	"net/http"
	"regexp"
	"sync/atomic"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/lbpool/lbpool/internal/orca"
)

// Load reports: backends tell their own load (ORCA's endpoint-load-metrics
// header, gRPC's endpoint-load-metrics-bin trailer, or the same fields from
// stats_uri), and each backend's learned weight follows gRFC A58's weighted
// round robin:
//
//	learned = qps / (utilization + error_penalty × eps / qps)
//
// normalised to a mean of 1 over the backends with fresh reports; a
// backend without one gets the mean. The request path only files the last
// report in atomics; a goroutine per pool weighs once a second and stores
// configured × learned in the atomic the picks read (Backend.scaled), so a
// pick costs what it cost before, on or off.

// Defaults of load_reports.
const (
	DefaultReportBlackout     = 10 * time.Second
	DefaultReportExpiry       = 3 * time.Minute
	DefaultReportErrorPenalty = 1.0
)

// Sources of load reports.
const (
	ReportsFromHeader = "header" // per response: endpoint-load-metrics, gRPC's -bin trailer
	ReportsFromStats  = "stats"  // per stats_uri fetch
)

const (
	weighEvery = time.Second // A58's weight_update_period
	// learned weights are held within these bounds (times the mean), so
	// one odd report cannot starve a backend or flood it
	minLearned = 0.01
	maxLearned = 16.0
)

// LoadReports turns the backends' own load reports into weights.
type LoadReports struct {
	// Where reports come from: `header` (the default) reads the ORCA
	// `endpoint-load-metrics` response header (TEXT, JSON or BIN form) and
	// gRPC's `endpoint-load-metrics-bin` trailer on every response;
	// `stats` reads the same field names from the stats_uri JSON, fetched
	// at every health check. Either way the report headers and trailer
	// never reach the client.
	Source string `json:"source,omitempty"`

	// The utilization to divide by: `application_utilization`,
	// `cpu_utilization`, `mem_utilization` or the name of a named metric
	// (`named_metrics.<name>` or `<name>`). Default:
	// application_utilization when above 0, else cpu_utilization.
	Metric string `json:"metric,omitempty"`

	// How long a backend must have reported before its reports steer, so
	// a backend that (re)starts is not flooded on its first, empty
	// reports. Default: 10s.
	Blackout caddy.Duration `json:"blackout,omitempty"`

	// How long a backend's last report steers when no new one comes; then
	// it gets the mean weight, and its blackout starts over with its next
	// report. Default: 3m.
	Expiry caddy.Duration `json:"expiry,omitempty"`

	// How much errors weigh: errors per second over requests per second,
	// times this, add to the utilization. 0 ignores errors. Default: 1.0.
	ErrorPenalty *float64 `json:"error_penalty,omitempty"`
}

// reportSettings are a pool's resolved load_reports; nil when off.
type reportSettings struct {
	fromStats bool
	metric    string // "" : application_utilization, else cpu_utilization
	named     string // the named metric's key, when metric names one
	blackout  time.Duration
	expiry    time.Duration
	penalty   float64
}

var metricName = regexp.MustCompile(`^[A-Za-z0-9_.\-]{1,100}$`)

// reportSpec resolves load_reports; nil when off.
func (h *Handler) reportSpec() (*reportSettings, error) {
	lr := h.LoadReports
	if lr == nil {
		return nil, nil
	}
	s := &reportSettings{metric: lr.Metric, named: orca.NamedKey(lr.Metric),
		blackout: time.Duration(lr.Blackout), expiry: time.Duration(lr.Expiry), penalty: DefaultReportErrorPenalty}
	setDefault(&s.blackout, DefaultReportBlackout)
	setDefault(&s.expiry, DefaultReportExpiry)
	if lr.ErrorPenalty != nil {
		s.penalty = *lr.ErrorPenalty
	}
	switch lr.Source {
	case "", ReportsFromHeader:
	case ReportsFromStats:
		s.fromStats = true
		if h.StatsURI == "" {
			return nil, fmt.Errorf("lbpool: load_reports stats reads stats_uri: set stats_uri")
		}
	default:
		return nil, fmt.Errorf("lbpool: load_reports: source %q is neither header nor stats", lr.Source)
	}
	switch {
	case lr.Metric != "" && !metricName.MatchString(lr.Metric):
		return nil, fmt.Errorf("lbpool: load_reports: metric %q is not a metric name (letters, digits, _ . -)", lr.Metric)
	case s.blackout < 0 || s.expiry < 0:
		return nil, fmt.Errorf("lbpool: load_reports: durations must be positive")
	case s.expiry <= weighEvery:
		return nil, fmt.Errorf("lbpool: load_reports: expiry %v must be longer than %v, how often weights are recomputed", s.expiry, weighEvery)
	case math.IsNaN(s.penalty) || s.penalty < 0 || s.penalty > 100:
		return nil, fmt.Errorf("lbpool: load_reports: error_penalty %v out of range 0-100", s.penalty)
	}
	return s, nil
}

// loadState is one backend's last load report and learned weight. The
// request path writes the report's figures one atomic at a time: a weigher
// reading between them may mix two reports, each figure a real one.
type loadState struct {
	util  atomic.Uint64 // math.Float64bits of the utilization
	rps   atomic.Uint64 // of the reported rps_fractional; 0: not reported
	eps   atomic.Uint64 // of the reported eps, +1 (0: not reported)
	at    atomic.Int64  // unix nanos of the last good report; 0: none yet
	since atomic.Int64  // unix nanos of the first report of this run (blackout); 0: none
	bad   atomic.Uint64 // reports refused: unreadable, too long, bad numbers

	learned atomic.Int64 // weightScale fixed point; weightScale (1.0) when off

	// the weigher's own, for lbpool's measured rates
	lastRequests, lastFailures uint64
}

// reportHeaders are the names a report travels under, in a header or a
// trailer (gRPC's trailers-only responses put trailers in the header).
var reportHeaders = [...]string{orca.Header, orca.BinTrailer}

// takeLoadReport removes the report headers from h, so the client never
// sees them, and keeps the report they carry when the pool reads headers.
// now is the response's time in unix nanos.
func (b *Backend) takeLoadReport(s *reportSettings, h http.Header, now int64) {
	for i, name := range reportHeaders {
		vv, ok := h[name]
		if !ok {
			continue
		}
		delete(h, name)
		if s.fromStats || len(vv) == 0 || vv[len(vv)-1] == "" {
			continue // announced trailers have no value until the body ends
		}
		v := vv[len(vv)-1]
		var r orca.Report
		var err error
		if i == 0 {
			r, err = orca.ParseHeader(v, s.named)
		} else {
			r, err = orca.ParseBinary(v, s.named)
		}
		if err != nil {
			b.load.bad.Add(1)
			continue
		}
		b.keepReport(s, &r, now)
	}
}

// statsReport reads the load report fields of a stats_uri JSON body;
// Prometheus text carries none.
func (b *Backend) statsReport(s *reportSettings, body []byte) {
	trimmed := bytes.TrimSpace(body)
	if len(trimmed) == 0 || trimmed[0] != '{' {
		return
	}
	r, err := orca.ParseJSON(trimmed, s.named)
	if err != nil {
		b.load.bad.Add(1)
		return
	}
	b.keepReport(s, &r, time.Now().UnixNano())
}

// keepReport files a good report. One without utilization is empty, as
// A58 reads it: ignored, not counted bad.
func (b *Backend) keepReport(s *reportSettings, r *orca.Report, now int64) {
	util := r.Utilization(s.metric)
	if util <= 0 || b.pool.spec.Load().reports == nil {
		return // empty; or a request of a config the pool has left, which had load reports
	}
	l := &b.load
	l.util.Store(math.Float64bits(util))
	var rps, eps uint64
	if r.HasRPS && r.RPS > 0 {
		rps = math.Float64bits(r.RPS)
	}
	if r.HasEPS {
		eps = math.Float64bits(r.EPS) + 1
	}
	if l.rps.Load() != rps {
		l.rps.Store(rps)
	}
	if l.eps.Load() != eps {
		l.eps.Store(eps)
	}
	l.at.Store(now)
	if l.since.Load() == 0 {
		l.since.CompareAndSwap(0, now)
	}
}

// setLearned sets b's learned weight and the scaled weight the picks read.
func (b *Backend) setLearned(l int64) {
	b.rt.mu.Lock()
	b.load.learned.Store(l)
	b.scaled.Store(b.weight.Load() * l)
	b.rt.mu.Unlock()
}

// rawWeight is A58's weight of one backend at now, from its last report
// and the rates lbpool measured over the last dt seconds; 0 when it has no
// usable report (none yet, expired, in its blackout, or empty).
func (b *Backend) rawWeight(s *reportSettings, now int64, dt float64) float64 {
	l := &b.load
	req, fail := b.requests.Load(), b.failures.Load()
	qps, eps := float64(req-l.lastRequests)/dt, float64(fail-l.lastFailures)/dt
	l.lastRequests, l.lastFailures = req, fail

	at := l.at.Load()
	if at == 0 {
		return 0
	}
	if now-at >= int64(s.expiry) {
		// stale: the next report starts the blackout over
		l.since.Store(0)
		return 0
	}
	if since := l.since.Load(); since == 0 || now-since < int64(s.blackout) {
		return 0
	}
	if r := l.rps.Load(); r != 0 {
		qps = math.Float64frombits(r)
	}
	if e := l.eps.Load(); e != 0 {
		eps = math.Float64frombits(e - 1)
	}
	util := math.Float64frombits(l.util.Load())
	if qps <= 0 || util <= 0 {
		return 0
	}
	return qps / (util + s.penalty*eps/qps)
}

// weigher recomputes a pool's learned weights once a second.
type weigher struct {
	r    *registry
	p    *Pool
	stop chan struct{}
	done chan struct{}
}

// applyReports starts or stops the pool's weigher to follow s. Called with
// r.mu held; the returned func waits for a stopped weigher and must be
// called after unlocking.
func (p *Pool) applyReports(r *registry, s *poolSpec) (stopOld func()) {
	old := p.weigher
	switch {
	case s != nil && s.reports != nil && old == nil:
		w := &weigher{r: r, p: p, stop: make(chan struct{}), done: make(chan struct{})}
		p.weigher = w
		go w.run()
	case (s == nil || s.reports == nil) && old != nil:
		p.weigher = nil
		close(old.stop)
		for _, b := range p.backends {
			// forgotten: stats show no report, and a new weigher starts
			// from none
			b.load.at.Store(0)
			b.load.since.Store(0)
			b.setLearned(weightScale)
		}
		return func() { <-old.done }
	}
	return func() {}
}

func (w *weigher) run() {
	defer close(w.done)
	t := time.NewTicker(weighEvery)
	defer t.Stop()
	var bs []*Backend
	var raw []float64
	last := time.Now()
	for {
		select {
		case <-w.stop:
			return
		case now := <-t.C:
			bs = w.members(bs[:0])
			raw = weigh(w.p.spec.Load().reports, bs, raw[:0], now.UnixNano(), now.Sub(last).Seconds())
			last = now
		}
	}
}

// members lists the pool's backends.
func (w *weigher) members(bs []*Backend) []*Backend {
	w.r.mu.Lock()
	defer w.r.mu.Unlock()
	for _, b := range w.p.backends {
		bs = append(bs, b)
	}
	return bs
}

// weigh sets the learned weights of bs: raw weights normalised to a mean
// of 1 over those that have one; the others get 1. With fewer than two
// raw weights every backend gets 1, as A58 falls back to round robin.
func weigh(s *reportSettings, bs []*Backend, raw []float64, now int64, dt float64) []float64 {
	if s == nil || dt <= 0 {
		return raw
	}
	sum, n := 0.0, 0
	for _, b := range bs {
		w := b.rawWeight(s, now, dt)
		raw = append(raw, w)
		if w > 0 {
			sum += w
			n++
		}
	}
	for i, b := range bs {
		l := 1.0
		if n >= 2 && raw[i] > 0 {
			l = min(max(raw[i]/(sum/float64(n)), minLearned), maxLearned)
		}
		if fixed := int64(math.Round(l * weightScale)); fixed != b.load.learned.Load() {
			b.setLearned(fixed)
		}
	}
	return raw
}

// loadStats fills the stats' load report fields.
func (b *Backend) loadStats(s *BackendStats, now time.Time) {
	l := &b.load
	s.LearnedWeight = float64(l.learned.Load()) / weightScale
	s.BadReportsTotal = l.bad.Load()
	if at := l.at.Load(); at != 0 {
		u := roundTo(math.Float64frombits(l.util.Load()), 4)
		age := roundTo(now.Sub(time.Unix(0, at)).Seconds(), 1)
		s.ReportedUtilization, s.ReportAgeSeconds = &u, &age
	}
}
