package leastconn

import (
	"errors"
	"fmt"
	"sort"
	"strings"
	"time"
)

// This file is the read side of the registry, for the admin API: copies of
// backend state taken without holding any lock across I/O.

// Errors of the admin operations; the admin API maps them to statuses.
var (
	ErrUnknownPool    = errors.New("unknown pool")
	ErrUnknownBackend = errors.New("unknown backend")
	ErrBadState       = errors.New("state must be ready, drain or maint")
)

// Where a backend comes from, as stats show it.
const (
	SourceStatic = "static" // listed in the config
	SourceDNS    = "dns"    // found by a dynamic source
)

// CheckStats describes the last active health check.
type CheckStats struct {
	At         time.Time `json:"at"`
	DurationMS float64   `json:"duration_ms"`
	Status     int       `json:"status"`
	Error      string    `json:"error"`
}

// BackendStats is one backend of one pool as the stats API shows it.
type BackendStats struct {
	Pool string `json:"pool"`
	URL  string `json:"url"`

	// What lbpool speaks to the backend: `h1` (HTTP/1.1), `h2` (HTTP/2
	// over TLS, chosen by ALPN) or `h2c` (HTTP/2 with prior knowledge).
	Protocol string `json:"protocol"`

	Source            string      `json:"source"`
	Leaving           bool        `json:"leaving,omitempty"`
	Alive             bool        `json:"alive"`
	State             string      `json:"state"`
	Weight            int         `json:"weight"`
	ConfiguredWeight  int         `json:"configured_weight"`
	Uptime            string      `json:"uptime"`
	UptimeSeconds     int64       `json:"uptime_seconds"`
	MemoryUsage       string      `json:"memory_usage"`
	MemoryBytes       *int64      `json:"memory_bytes"`
	ActiveConnections int64       `json:"active_connections"`
	RequestsTotal     uint64      `json:"requests_total"`
	FailuresTotal     uint64      `json:"failures_total"`
	StatusChanges     int         `json:"status_changes"`
	LastCheck         *CheckStats `json:"last_check"`

	DowntimeSeconds   int64      `json:"downtime_seconds"`
	LastChange        *time.Time `json:"last_change"`
	ConsecutivePasses int        `json:"consecutive_passes"`
	ConsecutiveFails  int        `json:"consecutive_fails"`
	RetriesTotal      uint64     `json:"retries_total"`

	// A backup backend: it gets traffic only when no other backend can
	// take it.
	Backup           bool    `json:"backup"`
	LatencyEWMAMS    float64 `json:"latency_ewma_ms"`
	SlowStartPercent float64 `json:"slow_start_percent,omitempty"`

	// Requests routed to the backend by their sticky session cookie (a
	// subset of the requests); on a draining backend, the sessions left.
	StickyRequestsTotal uint64 `json:"sticky_requests_total"`

	// The most requests the backend holds at once; 0: no limit.
	MaxConns int64 `json:"max_conns"`

	// Whether the backend is out for failed responses (ejection), since
	// when and why (`5xx: 500`, `latency 2.1s`); its health is apart.
	Ejected       bool       `json:"ejected"`
	EjectedSince  *time.Time `json:"ejected_since,omitempty"`
	EjectedReason string     `json:"ejected_reason,omitempty"`

	// Times the backend was ejected.
	EjectionsTotal uint64 `json:"ejections_total"`

	// Whether the backend is held out for failing requests soon after its
	// checks brought it back (a flap hold; it is down meanwhile), until
	// when, why, and this hold's length in seconds.
	Held        bool       `json:"held"`
	HeldUntil   *time.Time `json:"held_until,omitempty"`
	HoldReason  string     `json:"hold_reason,omitempty"`
	HoldSeconds float64    `json:"hold_seconds,omitempty"`

	// Holds in a row, the current one included: the next hold is the base
	// doubled this many times (up to the max). 0 once the backend has gone
	// twice its last hold without another.
	HoldsInARow int `json:"holds_in_a_row"`

	// Times the backend was held out.
	HoldsTotal uint64 `json:"holds_total"`

	// Load reports (load_reports): the utilization in the backend's last
	// report and its age in seconds (null before any), the weight learned
	// from the reports (1: the mean, and always 1 with load_reports off;
	// the pick uses weight × learned_weight), and the reports refused as
	// unreadable (bad numbers, too long, unknown format).
	ReportedUtilization *float64 `json:"reported_utilization"`
	ReportAgeSeconds    *float64 `json:"report_age_seconds"`
	LearnedWeight       float64  `json:"learned_weight"`
	BadReportsTotal     uint64   `json:"bad_reports_total"`

	// Run-time changes (fleetstate.go): where the admin state and the
	// weight came from ("local" or "storage"), when and from which instance
	// they were set at run time (null and "" while the configured value
	// holds), and whether a change made here still waits to be saved.
	StateSource     string     `json:"state_source"`
	StateChangedAt  *time.Time `json:"state_changed_at"`
	StateChangedBy  string     `json:"state_changed_by,omitempty"`
	WeightSource    string     `json:"weight_source"`
	WeightChangedAt *time.Time `json:"weight_changed_at"`
	WeightChangedBy string     `json:"weight_changed_by,omitempty"`
	Unsaved         bool       `json:"unsaved,omitempty"`
}

// PoolStats is one pool's queue and ejections, as GET /lbpool/pools shows them.
type PoolStats struct {
	Pool string `json:"pool"`

	// Requests waiting for a slot now (every usable backend full), or under
	// try_duration for a backend to come back.
	QueueDepth int64 `json:"queue_depth"`

	// Requests that waited in the queue, ever.
	QueuedTotal uint64 `json:"queued_total"`

	// Requests that waited past queue_timeout and got 503.
	QueueTimeoutsTotal uint64 `json:"queue_timeouts_total"`

	// Backends ejected now.
	Ejected int64 `json:"ejected"`

	// Requests a hashing policy sent past their key's first choice: its
	// backend was over the bound (hash_balance_factor) or could not take
	// them (down, drained, full).
	HashSpillsTotal uint64 `json:"hash_spills_total"`
	// Retries started, ever.
	RetriesTotal uint64 `json:"retries_total"`

	// Retries the retry budget refused: the request got its last answer.
	RetryBudgetExhaustedTotal uint64 `json:"retry_budget_exhausted_total"`
}

// Pools returns the queue and ejection figures of every pool, by name.
func Pools() []PoolStats {
	defaultRegistry.mu.Lock()
	out := make([]PoolStats, 0, len(defaultRegistry.pools))
	for _, p := range defaultRegistry.pools {
		out = append(out, p.stats())
	}
	defaultRegistry.mu.Unlock()
	sort.Slice(out, func(i, j int) bool { return out[i].Pool < out[j].Pool })
	return out
}

func (p *Pool) stats() PoolStats {
	return PoolStats{
		Pool:               p.name,
		QueueDepth:         p.queue.waiting.Load(),
		QueuedTotal:        p.queue.queued.Load(),
		QueueTimeoutsTotal: p.queue.timeouts.Load(),
		Ejected:            p.ejected.Load(),
		HashSpillsTotal:    p.spills.Load(),

		RetriesTotal:              p.retriesTotal.Load(),
		RetryBudgetExhaustedTotal: p.budgetExhausted.Load(),
	}
}

// Stats returns every backend of the named pool (all pools when name is
// empty), pools by name and backends in config order; ErrUnknownPool when a
// named pool does not exist. (Caddy provisions sites in no fixed order, so
// the name is the stable order for pools.)
func Stats(name string) ([]BackendStats, error) {
	pools := defaultRegistry.backendsByPool(name)
	if name != "" && len(pools) == 0 {
		return nil, fmt.Errorf("%w: %q", ErrUnknownPool, name)
	}
	now := time.Now()
	var out []BackendStats
	for _, p := range pools {
		for i, b := range p.backends {
			out = append(out, b.snapshot(p.name, i < p.static, now))
		}
	}
	return out, nil
}

type poolBackends struct {
	pool     *Pool
	name     string
	backends []*Backend
	static   int // the first static backends are listed in the config; the others were found in DNS
}

func (r *registry) backendsByPool(name string) []poolBackends {
	r.mu.Lock()
	var out []poolBackends
	for n, p := range r.pools {
		if name == "" || n == name {
			bs, static := p.current()
			out = append(out, poolBackends{pool: p, name: n, backends: bs, static: static})
		}
	}
	r.mu.Unlock()
	sort.Slice(out, func(i, j int) bool { return out[i].name < out[j].name })
	return out
}

// SetState sets a backend's admin state (ready, drain or maint) and returns
// its stats; Change with only a state.
func SetState(pool, backend, state string) (BackendStats, error) {
	if state == "" {
		return BackendStats{}, ErrBadState
	}
	return Change(pool, backend, RuntimeChange{State: state})
}

// matches compares a backend reference from the admin API with this
// backend's configured and displayed forms.
func (b *Backend) matches(ref string) bool {
	ref = strings.TrimSpace(ref)
	if ref == "" {
		return false
	}
	if ref == b.addr.raw || ref == b.addr.display || ref == b.addr.key {
		return true
	}
	a, err := parseBackendURL(ref)
	return err == nil && a.key == b.addr.key
}

func (b *Backend) snapshot(pool string, static bool, now time.Time) BackendStats {
	s := BackendStats{
		Pool:                pool,
		URL:                 b.URL(),
		Protocol:            b.protocol(),
		Source:              SourceDNS,
		Weight:              int(b.weight.Load()),
		ActiveConnections:   b.active.Load(),
		RequestsTotal:       b.requests.Load(),
		FailuresTotal:       b.failures.Load(),
		RetriesTotal:        b.retries.Load(),
		Backup:              static && b.backup.Load(),
		StickyRequestsTotal: b.sticky.Load(),
		LatencyEWMAMS:       ms(b.latency.value()),
		SlowStartPercent:    roundTo(b.rampPercent(now), 1),
		EjectionsTotal:      b.outlier.ejections.Load(),
	}
	if b.flags.Load()&flagCapped != 0 {
		s.MaxConns = b.maxConns.Load()
	}
	if since, why := b.ejection(); !since.IsZero() {
		t := since.UTC()
		s.Ejected, s.EjectedSince, s.EjectedReason = true, &t, why
	}
	b.loadStats(&s, now)
	if mem := b.memoryBytes.Load(); mem >= 0 {
		s.MemoryBytes = &mem
		s.MemoryUsage = FormatBytes(mem)
	}

	// health changes happen under b.mu: read flags and bookkeeping together
	b.mu.Lock()
	flags := b.flags.Load()
	s.Alive = flags&flagDown == 0
	s.State = adminState(flags)
	s.Leaving = flags&flagLeaving != 0
	if static {
		s.Source = SourceStatic
	}
	var up time.Duration
	if s.Alive && !b.upSince.IsZero() {
		up = now.Sub(b.upSince)
	}
	down := b.downtime
	if !b.downSince.IsZero() {
		down += now.Sub(b.downSince)
	}
	s.StatusChanges = b.changes
	s.ConsecutivePasses = b.passes
	s.ConsecutiveFails = b.fails
	if !b.lastChange.IsZero() {
		t := b.lastChange.UTC()
		s.LastChange = &t
	}
	if lc := b.lastCheck; !lc.at.IsZero() {
		s.LastCheck = &CheckStats{At: lc.at.UTC(), DurationMS: ms(lc.duration), Status: lc.status, Error: lc.reason}
	}
	if b.heldNow(now) {
		t := time.Unix(0, b.flap.until.Load()).UTC()
		s.Held, s.HeldUntil, s.HoldReason, s.HoldSeconds = true, &t, b.flap.reason, b.flap.hold.Seconds()
	}
	s.HoldsInARow = b.flap.streak(now)
	b.mu.Unlock()
	s.HoldsTotal = b.flap.total.Load()

	s.UptimeSeconds = int64(up / time.Second)
	s.Uptime = FormatUptime(up)
	s.DowntimeSeconds = int64(down / time.Second)
	b.runtimeStats(&s)
	return s
}

// FormatUptime renders a duration as 00h:05m:23s; hours grow past 99.
func FormatUptime(d time.Duration) string {
	if d < 0 {
		d = 0
	}
	secs := int64(d / time.Second)
	return fmt.Sprintf("%02dh:%02dm:%02ds", secs/3600, secs/60%60, secs%60)
}

// FormatBytes renders a byte count with 1024-based units: 1.2 MB.
func FormatBytes(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	v := float64(n)
	units := []string{"KB", "MB", "GB", "TB", "PB", "EB"}
	i := -1
	for v >= unit && i < len(units)-1 {
		v /= unit
		i++
	}
	return fmt.Sprintf("%.1f %s", v, units[i])
}

func ms(d time.Duration) float64 { return roundTo(float64(d)/float64(time.Millisecond), 3) }

func roundTo(v float64, places int) float64 {
	p := 1.0
	for range places {
		p *= 10
	}
	return float64(int64(v*p+0.5)) / p
}
