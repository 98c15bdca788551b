package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"
)

// runRecord is one measured run of one configuration.
type runRecord struct {
	Scenario string `json:"scenario"`
	Repeat   int    `json:"repeat"`
	Position int    `json:"position"` // its place in the repeat's order
	Config   string `json:"config"`
	loadResult

	ReqPerSec       float64 `json:"req_per_sec"`
	LBCPUPerReqUs   float64 `json:"lb_cpu_per_request_us"`
	LoadCPUPerReqUs float64 `json:"load_cpu_per_request_us"` // load generator and backends
	// CaddyCore is the share of one core Caddy used; OthersOnLBCore is what
	// else kept the load balancer's core busy (other processes, interrupts),
	// a sign of a noisy machine when it is large.
	CaddyCore      float64 `json:"caddy_core"`
	OthersOnLBCore float64 `json:"others_on_lb_core"`
	// LBCorePerReqUs is all the busy time of the load balancer's core per
	// request: Caddy plus interrupts and network work the kernel charges to
	// no process, and anything else that ran there. An upper bound.
	LBCorePerReqUs float64   `json:"lb_core_per_request_us,omitempty"`
	Shares         []float64 `json:"backend_shares,omitempty"` // of the requests the backends counted

	// Of the flip scenario: the flipping backend's share in each second of
	// the window, and how long after it turned fast its share was back to
	// recoveredShare (null: not within the window).
	FlipShares []*float64 `json:"flip_shares_per_second,omitempty"`
	Recovery   *float64   `json:"recovery_s,omitempty"`

	// WS is what a run of the websockets scenario found.
	WS *wsFigures `json:"websockets,omitempty"`
}

// seriesStep is how often the flip scenario counts each backend's requests.
const seriesStep = 250 * time.Millisecond

// recoveredShare is the share a backend that turned fast again must be back
// to (three equal backends get a third each).
const recoveredShare = 0.25

// flipFigures derives the flipping backend's share per second and its
// recovery from the per-step counts; fastAt is when in the window it turned
// fast again. Recovery ends with the first step, wholly after fastAt, in
// which its share reached recoveredShare.
func (r *runRecord) flipFigures(slow int, fastAt time.Duration) {
	share := func(steps [][]int64) *float64 {
		var mine, total int64
		for _, st := range steps {
			for i, n := range st {
				total += n
				if i == slow {
					mine += n
				}
			}
		}
		if total == 0 {
			return nil
		}
		return ptr(float64(mine) / float64(total))
	}
	step := time.Duration(r.SeriesStep * float64(time.Second))
	if step <= 0 || len(r.Series) == 0 || slow < 0 || slow >= len(r.Series[0]) {
		return
	}
	perSecond := max(int(time.Second/step), 1)
	for i := 0; i < len(r.Series); i += perSecond {
		r.FlipShares = append(r.FlipShares, share(r.Series[i:min(i+perSecond, len(r.Series))]))
	}
	for k := range r.Series {
		begin := time.Duration(k) * step
		if v := share(r.Series[k : k+1]); begin >= fastAt && v != nil && *v >= recoveredShare {
			r.Recovery = ptr((begin + step - fastAt).Seconds())
			return
		}
	}
}

// fill reads the load generator's JSON and derives the rates.
func (r *runRecord) fill(loadJSON string) error {
	if err := json.Unmarshal([]byte(loadJSON), &r.loadResult); err != nil {
		return fmt.Errorf("load generator output %q: %w", loadJSON, err)
	}
	if r.Requests == 0 || r.Seconds <= 0 {
		return fmt.Errorf("no request completed in the measured window")
	}
	r.ReqPerSec = float64(r.Requests) / r.Seconds
	r.LBCPUPerReqUs = r.LBCPUSeconds / float64(r.Requests) * 1e6
	r.LoadCPUPerReqUs = r.LoadCPUSeconds / float64(r.Requests) * 1e6
	r.CaddyCore = r.LBCPUSeconds / r.Seconds
	var total int64
	for _, n := range r.Backends {
		total += n
	}
	for _, n := range r.Backends {
		if total > 0 {
			r.Shares = append(r.Shares, float64(n)/float64(total))
		}
	}
	return nil
}

// metric is one figure of a run, with the direction that is better.
type metric struct {
	Name   string
	Unit   string
	Higher bool // higher is better
	value  func(r *runRecord, slow int) float64
}

var (
	metricReqPerSec = metric{"req/s", "", true, func(r *runRecord, _ int) float64 { return r.ReqPerSec }}
	metricP50       = metric{"p50", "ms", false, func(r *runRecord, _ int) float64 { return r.P50us / 1e3 }}
	metricP99       = metric{"p99", "ms", false, func(r *runRecord, _ int) float64 { return r.P99us / 1e3 }}
	metricLBCPU     = metric{"LB CPU/req", "µs", false, func(r *runRecord, _ int) float64 { return r.LBCPUPerReqUs }}
	metricLBCore    = metric{"LB core/req", "µs", false, func(r *runRecord, _ int) float64 { return r.LBCorePerReqUs }}
	metricPeakRSS   = metric{"peak RSS", "MiB", false, func(r *runRecord, _ int) float64 { return float64(r.LBPeakRSSKiB) / 1024 }}
	metricWSRSS     = metric{"RSS per websocket", "KiB", false, func(r *runRecord, _ int) float64 {
		if r.WS == nil {
			return math.NaN()
		}
		return r.WS.PerWebsocketKiB
	}}
	metricWSGoroutines = metric{"goroutines per websocket", "", false, func(r *runRecord, _ int) float64 {
		if r.WS == nil || r.WS.Opened == 0 {
			return math.NaN()
		}
		return float64(r.WS.GoroutinesHeld-r.WS.GoroutinesBefore) / float64(r.WS.Opened)
	}}
	metricSlowShare = metric{"slow share", "%", false, func(r *runRecord, slow int) float64 {
		if slow < 0 || slow >= len(r.Shares) {
			return math.NaN()
		}
		return r.Shares[slow] * 100
	}}
)

// scenarioMetrics are the ratios reported per scenario.
func scenarioMetrics(sc scenario) []metric {
	switch {
	case sc.Slow >= 0:
		return []metric{metricSlowShare, metricP99, metricP50, metricReqPerSec, metricLBCPU}
	case sc.Websockets > 0:
		return []metric{metricWSRSS, metricWSGoroutines}
	case sc.Name == scClients || sc.Scaling != "":
		return []metric{metricLBCPU, metricPeakRSS, metricP99, metricP50, metricReqPerSec}
	case sc.GRPC == "stream":
		// the gaps between a stream's messages say little across proxies
		// that batch differently
		return []metric{metricLBCPU, metricLBCore, metricReqPerSec}
	}
	return []metric{metricLBCPU, metricLBCore, metricP99, metricP50, metricReqPerSec}
}

// noisyLimit is the share of the load balancer's core that other work may
// take in a run before the report calls the run noisy.
const noisyLimit = 0.20

// ratio is one configuration's metric over another's (the baseline, or
// respond, or plain lbpool), paired within each repeat. Missing values (a
// zero denominator) are null.
type ratio struct {
	Scenario  string     `json:"scenario"`
	Config    string     `json:"config"`
	Against   string     `json:"against"`
	Metric    string     `json:"metric"`
	PerRepeat []*float64 `json:"per_repeat"`
	Median    *float64   `json:"median"`
}

// target is one of an issue's goals, checked on the median over the
// repeats of a figure taken within each repeat.
type target struct {
	Issue     string     `json:"issue"` // "issue 6", "issue 14", or perfIssue
	Scenario  string     `json:"scenario"`
	Config    string     `json:"config"`
	Metric    string     `json:"metric"` // what the figure is
	Limit     float64    `json:"limit"`  // the figure must be at most this
	Unit      string     `json:"unit"`   // x (a ratio), % or s
	PerRepeat []*float64 `json:"per_repeat"`
	Median    *float64   `json:"median"`
	MetIn     int        `json:"met_in_repeats"`
	Repeats   int        `json:"repeats"`
	Met       bool       `json:"met"`
}

// targetDef defines a target: value is its figure in one repeat, nil when
// that repeat has none.
type targetDef struct {
	issue            string
	scenario, config string
	metric           string
	limit            float64
	unit             string
	value            func(res *results, rep int) *float64
}

// pairedTarget is issue 6's kind: config's metric ÷ other's in the same
// repeat of the scenario.
func pairedTarget(issue string, scenario, config, other string, m metric, limit float64) targetDef {
	return targetDef{issue, scenario, config, m.Name + " ÷ " + other, limit, "x", func(res *results, rep int) *float64 {
		sc := res.scenario(scenario)
		return res.ratioIn(*sc, rep, config, other, m)
	}}
}

// runTarget is a figure of one run of config in the scenario.
func runTarget(issue string, scenario, config, name string, limit float64, unit string, f func(sc scenario, r *runRecord) *float64) targetDef {
	return targetDef{issue, scenario, config, name, limit, unit, func(res *results, rep int) *float64 {
		if r := res.find(scenario, rep, config); r != nil {
			return f(*res.scenario(scenario), r)
		}
		return nil
	}}
}

// perfIssue names the performance issue's targets, which are not numbered.
const perfIssue = "the performance issue"

var targets = []targetDef{
	pairedTarget("issue 6", scThroughput, "lbpool", baseline, metricLBCPU, 0.67),
	pairedTarget("issue 6", scThroughput, "lbpool", baseline, metricP99, 1.00),
	pairedTarget("issue 6", scQuality, "lbpool", baseline, metricSlowShare, 1.00),
	pairedTarget("issue 6", scQuality, "lbpool", baseline, metricP99, 1.00),

	runTarget("issue 14", scQuality, leastTime, "slow backend's share", 0.2, "%", func(sc scenario, r *runRecord) *float64 {
		return finite(metricSlowShare.value(r, sc.Slow))
	}),
	{"issue 14", scQuality, leastTime, "p99 ÷ its p99 with 3 fast backends (" + scQualityFast + ")", 1.5, "x", func(res *results, rep int) *float64 {
		slow, fast := res.find(scQuality, rep, leastTime), res.find(scQualityFast, rep, leastTime)
		if slow == nil || fast == nil || fast.P99us <= 0 {
			return nil
		}
		return ptr(slow.P99us / fast.P99us)
	}},
	runTarget("issue 14", scFlip, leastTime, fmt.Sprintf("seconds until its share is back to %.0f%%", recoveredShare*100), 5, "s", func(_ scenario, r *runRecord) *float64 {
		return r.Recovery
	}),
	pairedTarget("issue 14", scThroughput, leastTime, "lbpool", metricLBCPU, 1.03),
	runTarget("issue 14", scThroughput, leastTime, "largest ÷ smallest backend share", 1.05, "x", func(_ scenario, r *runRecord) *float64 {
		if len(r.Shares) == 0 || slices.Min(r.Shares) <= 0 {
			return nil
		}
		return ptr(slices.Max(r.Shares) / slices.Min(r.Shares))
	}),

	pairedTarget(perfIssue, scThroughput, "lbpool", "respond", metricLBCPU, 1.7),
	pairedTarget(perfIssue, scThroughput, "lbpool", baseline, metricLBCPU, 0.5),
	pairedTarget(perfIssue, scPost, "lbpool", baseline, metricLBCPU, 0.5),
	pairedTarget(perfIssue, scClients, "lbpool", baseline, metricLBCPU, 0.5),
	pairedTarget(perfIssue, scClients, "lbpool", baseline, metricPeakRSS, 0.6),
	runTarget(perfIssue, scWebsockets, "lbpool", "Caddy's RSS per websocket", 20, " KiB", func(sc scenario, r *runRecord) *float64 {
		return finite(metricWSRSS.value(r, sc.Slow))
	}),
	runTarget(perfIssue, scWebsockets, "lbpool", "Caddy's goroutines per websocket", 2, "", func(sc scenario, r *runRecord) *float64 {
		return finite(metricWSGoroutines.value(r, sc.Slow))
	}),
	pairedTarget(perfIssue, scOptions, optionsConfig, "lbpool", metricLBCPU, 1.15),

	pairedTarget("issue 29", scH2, "lbpool", baseline, metricLBCPU, 0.6),
	pairedTarget("issue 26", scGRPCUnary, "lbpool", baseline, metricLBCPU, 0.9),
	runTarget("issue 26", scGRPCOneConn, "lbpool", "largest distance of a backend's share from a third", 3, "%", func(_ scenario, r *runRecord) *float64 {
		return shareSpread(r)
	}),
}

// shareSpread is how far, in percentage points, the backend share farthest
// from an even split is from it; nil without shares.
func shareSpread(r *runRecord) *float64 {
	if len(r.Shares) == 0 {
		return nil
	}
	var worst float64
	for _, s := range r.Shares {
		worst = max(worst, math.Abs(s-1/float64(len(r.Shares)))*100)
	}
	return &worst
}

func finite(v float64) *float64 {
	if math.IsNaN(v) {
		return nil
	}
	return &v
}

// profileTop is the top of one configuration's CPU profile.
type profileTop struct {
	Scenario string `json:"scenario"` // whose load
	Config   string `json:"config"`
	Top      string `json:"top"`
}

// results is everything one harness run found; it is written as JSON.
type results struct {
	Command   string       `json:"command"`
	Date      string       `json:"date"`
	Elapsed   string       `json:"elapsed"`
	Machine   machine      `json:"machine"`
	Pinning   string       `json:"pinning"`
	LBCPUs    string       `json:"lb_cpus"`   // taskset list; "" when not pinned
	LoadCPUs  string       `json:"load_cpus"` // backends, load generator, harness
	Options   options      `json:"options"`
	Scenarios []scenario   `json:"scenarios"`
	Runs      []runRecord  `json:"runs"`
	Ratios    []ratio      `json:"ratios"`
	Targets   []target     `json:"targets"`
	Profiles  []profileTop `json:"profiles,omitempty"`
	// Scaling is the scaling scenarios' medians, axis by axis (scaling.go).
	Scaling []scalingPoint `json:"scaling,omitempty"`
	// RetryStorm is the retry_storm scenario's figures (retrystorm.go).
	RetryStorm []stormRecord `json:"retry_storm,omitempty"`
	Warnings   []string      `json:"warnings,omitempty"`
	Discarded  []runRecord   `json:"discarded_runs,omitempty"` // of repeats that ran again for being noisy
}

// find returns the run of a configuration in a repeat of a scenario.
func (res *results) find(sc string, repeat int, config string) *runRecord {
	for i := range res.Runs {
		r := &res.Runs[i]
		if r.Scenario == sc && r.Repeat == repeat && r.Config == config {
			return r
		}
	}
	return nil
}

// summarise computes the paired ratios and checks the targets.
func (res *results) summarise() {
	res.Date = time.Now().UTC().Format("2006-01-02 15:04 MST")
	res.Command = "go run ./bench" + commandArgs()
	res.Ratios, res.Targets = nil, nil
	var noisy int
	var worst float64
	for _, r := range res.Runs {
		if r.OthersOnLBCore > noisyLimit {
			noisy++
			worst = max(worst, r.OthersOnLBCore)
		}
	}
	if noisy > 0 {
		res.Warnings = append(res.Warnings, fmt.Sprintf("in %d of %d runs, other work took over %.0f%% of the load balancer's core (up to %.0f%%): those runs are noisy",
			noisy, len(res.Runs), noisyLimit*100, worst*100))
	}
	for _, sc := range res.Scenarios {
		if !sc.paired() {
			continue
		}
		for _, m := range scenarioMetrics(sc) {
			for _, c := range sc.Configs {
				if c != baseline {
					res.Ratios = append(res.Ratios, res.pairedRatio(sc, c, baseline, m))
				}
			}
		}
		// CPU per request over what Caddy costs without proxying, and
		// over plain lbpool's for lbpool with options.
		for _, against := range []string{"respond", "lbpool"} {
			if !slices.Contains(sc.Configs, against) || (against == "lbpool" && sc.Name != scOptions) {
				continue
			}
			for _, c := range sc.Configs {
				if cfg, _ := configByName(c); cfg.proxies && c != against {
					res.Ratios = append(res.Ratios, res.pairedRatio(sc, c, against, metricLBCPU))
				}
			}
		}
	}
	for _, t := range targets {
		sc := res.scenario(t.scenario)
		if sc == nil || !slices.Contains(sc.Configs, t.config) {
			continue
		}
		tg := target{Issue: t.issue, Scenario: t.scenario, Config: t.config, Metric: t.metric, Limit: t.limit, Unit: t.unit,
			Repeats: res.Options.Repeats}
		var vals []float64
		for rep := 1; rep <= res.Options.Repeats; rep++ {
			v := t.value(res, rep)
			tg.PerRepeat = append(tg.PerRepeat, v)
			if v != nil {
				vals = append(vals, *v)
				if *v <= t.limit {
					tg.MetIn++
				}
			}
		}
		if len(vals) > 0 {
			tg.Median = ptr(median(vals))
		}
		// A repeat without the figure (a backend never back to its share)
		// misses the target, so it cannot be met on the others' median.
		tg.Met = tg.Median != nil && *tg.Median <= t.limit && len(vals) == len(tg.PerRepeat)
		res.Targets = append(res.Targets, tg)
	}
	res.Scaling = res.scalingPoints()
}

// paired says whether the scenario's ratios to the baseline are reported:
// it runs the baseline, and its runs are alike over the window.
func (sc scenario) paired() bool {
	return sc.Name != scFlip && slices.Contains(sc.Configs, baseline)
}

func (res *results) scenario(name string) *scenario {
	for i := range res.Scenarios {
		if res.Scenarios[i].Name == name {
			return &res.Scenarios[i]
		}
	}
	return nil
}

// ratioIn is config's metric ÷ other's in one repeat of the scenario.
func (res *results) ratioIn(sc scenario, rep int, config, other string, m metric) *float64 {
	a, b := res.find(sc.Name, rep, config), res.find(sc.Name, rep, other)
	if a == nil || b == nil {
		return nil
	}
	num, den := m.value(a, sc.Slow), m.value(b, sc.Slow)
	switch {
	case num == 0 && den == 0:
		return ptr(1.0)
	case den > 0 && !math.IsNaN(num):
		return ptr(num / den)
	}
	return nil
}

func (res *results) pairedRatio(sc scenario, config, against string, m metric) ratio {
	rt := ratio{Scenario: sc.Name, Config: config, Against: against, Metric: m.Name}
	var vals []float64
	for rep := 1; rep <= res.Options.Repeats; rep++ {
		v := res.ratioIn(sc, rep, config, against, m)
		if v != nil {
			vals = append(vals, *v)
		}
		rt.PerRepeat = append(rt.PerRepeat, v)
	}
	if len(vals) > 0 {
		rt.Median = ptr(median(vals))
	}
	return rt
}

func ptr[T any](v T) *T { return &v }

func median(vals []float64) float64 {
	s := slices.Clone(vals)
	slices.Sort(s)
	n := len(s)
	if n%2 == 1 {
		return s[n/2]
	}
	return (s[n/2-1] + s[n/2]) / 2
}

// commandArgs is the harness's own flags, for the reproducing command.
func commandArgs() string {
	var b strings.Builder
	for _, a := range os.Args[1:] {
		if strings.HasPrefix(a, "-test.") {
			continue // run from the test
		}
		b.WriteString(" " + a)
	}
	return b.String()
}

// machine describes where the numbers come from.
type machine struct {
	CPU    string `json:"cpu"`
	Cores  int    `json:"cores"`
	OS     string `json:"os"`
	Kernel string `json:"kernel"`
	Go     string `json:"go"`
	Caddy  string `json:"caddy"`
}

func describeMachine(caddyBin string) machine {
	m := machine{Cores: runtime.NumCPU(), Go: runtime.Version(), CPU: "unknown", OS: runtime.GOOS}
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for line := range strings.Lines(string(b)) {
			if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "model name" {
				m.CPU = strings.TrimSpace(v)
				break
			}
		}
	}
	if b, err := os.ReadFile("/etc/os-release"); err == nil {
		for line := range strings.Lines(string(b)) {
			if v, ok := strings.CutPrefix(strings.TrimSpace(line), "PRETTY_NAME="); ok {
				m.OS = strings.Trim(v, `"`)
			}
		}
	}
	if b, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		m.Kernel = strings.TrimSpace(string(b))
	}
	if out, err := exec.Command(caddyBin, "version").Output(); err == nil {
		m.Caddy, _, _ = strings.Cut(strings.TrimSpace(string(out)), " ")
	}
	return m
}

// write prints the report and writes report.txt, results.json and chart.svg
// (and docs/bench.svg with -publish).
func (h *harness) write(res *results, root string) error {
	var text bytes.Buffer
	res.report(&text)
	fmt.Fprint(h.opts.stdout, "\n"+text.String())
	js, err := json.MarshalIndent(res, "", "  ")
	if err != nil {
		return err
	}
	svg := res.chart()
	files := map[string][]byte{"report.txt": text.Bytes(), "results.json": js, "chart.svg": svg}
	for name, b := range files {
		if err := os.WriteFile(filepath.Join(h.out, name), b, 0o644); err != nil {
			return err
		}
	}
	fmt.Fprintf(h.opts.stdout, "\nwrote %s: report.txt, results.json, chart.svg, caddyfiles/\n", relTo(root, h.out))
	if h.opts.publish {
		docs := filepath.Join(root, "docs")
		if err := os.MkdirAll(docs, 0o755); err != nil {
			return err
		}
		if err := os.WriteFile(filepath.Join(docs, "bench.svg"), svg, 0o644); err != nil {
			return err
		}
		fmt.Fprintln(h.opts.stdout, "published the chart to docs/bench.svg")
	}
	return nil
}

func relTo(root, path string) string {
	if rel, err := filepath.Rel(root, path); err == nil && !strings.HasPrefix(rel, "..") {
		return rel
	}
	return path
}

// report writes the plain-text report.
func (res *results) report(w io.Writer) {
	m := res.Machine
	o := res.Options
	fmt.Fprintf(w, "lbpool bench, %s, %s\n", res.Date, res.Command)
	fmt.Fprintf(w, "machine: %s, %d cores, %s, kernel %s, %s, Caddy %s\n", m.CPU, m.Cores, m.OS, m.Kernel, m.Go, m.Caddy)
	fmt.Fprintf(w, "pinning: %s\n", res.Pinning)
	fmt.Fprintf(w, "each run: a fresh Caddy, %v warm-up, %v measured; %d repeats, configurations rotated in each; took %s\n",
		o.Warmup, o.Duration, o.Repeats, res.Elapsed)
	fmt.Fprintf(w, "  shorter for the heavier workloads: post, clients2000, https and options measure %v each (clients2000 warms up 1s longer);\n",
		o.WorkloadDuration)
	fmt.Fprintf(w, "  a websockets run opens them all, holds them %v, measures, closes them and waits for Caddy's goroutines\n", o.wsHold())
	fmt.Fprintln(w, "latency: raw per request (request written to last byte read), closed loop, no coordinated-omission correction")
	fmt.Fprintln(w, "LB CPU/req (LB µs/req): Caddy's utime+stime over the measured window ÷ requests completed in it;")
	fmt.Fprintln(w, "  LB core/req: all busy time of Caddy's core ÷ requests (adds interrupts and other work there: an upper bound)")
	fmt.Fprintln(w, "peak RSS: Caddy's VmHWM (/proc) at the end of the measured window, so since it started")
	fmt.Fprintln(w, "load generator: this harness (Go, raw HTTP/1.1 keep-alive; HTTP/2 over TLS in h2_clients), sharing its core with the backends;")
	fmt.Fprintln(w, "  when that core nears 100% busy, req/s is capped by it and not by the load balancer")

	for _, warning := range res.Warnings {
		fmt.Fprintln(w, "warning: "+warning)
	}

	for _, sc := range res.Scenarios {
		fmt.Fprintln(w)
		switch {
		case sc.Name == scFlip:
			fmt.Fprintf(w, "== flip: %d backends, b%d fast for %v, then answers after %s for %v, then fast again for %v; %d keep-alive clients\n",
				numBackends, sc.Slow+1, o.FlipBefore, sc.Delay, o.FlipSlow, o.FlipAfter, sc.Conns)
		case sc.Of != "":
			fmt.Fprintf(w, "== %s: %d fast backends (the %s scenario's, its slow one turned fast, run in each of its repeats); %d keep-alive clients\n",
				sc.Name, numBackends, sc.Of, sc.Conns)
		case sc.Websockets > 0:
			fmt.Fprintf(w, "== websockets: %d idle websockets held open through the load balancer to %d backends (upgrade to /ws with\n"+
				"RFC 6455's handshake, then nothing sent); KiB/websocket = (RSS held - RSS before) ÷ opened; goroutines count as back\n"+
				"at most %d over the baseline (Caddy's admin /debug/pprof/goroutine)\n", sc.Websockets, numBackends, goroutineSlack)
		case sc.Slow >= 0:
			fmt.Fprintf(w, "== quality: %d backends, b%d answers after %s; %d keep-alive clients\n", numBackends, sc.Slow+1, sc.Delay, sc.Conns)
		case sc.H2:
			fmt.Fprintf(w, "== %s: %d fast backends; %d HTTP/2 clients (%d TLS connections of %d streams each)%s\n",
				sc.Name, sc.backends(), sc.Conns, sc.H2Conns, sc.H2Streams, scenarioNotes[sc.Name])
		case sc.Scaling != "":
			fmt.Fprintf(w, "== %s: %d fast backends; %d keep-alive clients on small GETs (a point of the scaling table below)\n",
				sc.Name, sc.backends(), sc.Conns)
		case sc.GRPC != "":
			fmt.Fprintln(w, grpcHeading(sc))
		default:
			fmt.Fprintf(w, "== %s: %d fast backends; %d keep-alive clients%s\n", sc.Name, sc.backends(), sc.Conns, scenarioNotes[sc.Name])
		}
		for _, c := range slices.Sorted(maps.Keys(sc.NotRun)) {
			fmt.Fprintf(w, "%s: n/a (%s)\n", c, sc.NotRun[c])
		}
		for rep := 1; rep <= o.Repeats; rep++ {
			if sc.Websockets > 0 {
				res.wsTable(w, sc, rep)
				continue
			}
			res.repeatTable(w, sc, rep)
			if sc.Name == scFlip {
				res.flipTable(w, sc, rep)
			}
		}
		if sc.paired() {
			res.ratioTables(w, sc)
		}
	}
	res.scalingTable(w)
	res.targetTables(w)
	for _, p := range res.Profiles {
		fmt.Fprintln(w)
		fmt.Fprintf(w, "== CPU profile of Caddy, %s, %s load (go tool pprof -top -nodecount=15)\n", p.Config, p.Scenario)
		fmt.Fprint(w, p.Top)
	}
}

func (res *results) repeatTable(w io.Writer, sc scenario, rep int) {
	var order []string
	for _, r := range res.Runs {
		if r.Scenario == sc.Name && r.Repeat == rep {
			order = append(order, r.Config)
		}
	}
	fmt.Fprintf(w, "repeat %d (in this order)\n", rep)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	head := "config\treq/s\tp50 ms\tp99 ms\tmax ms\tLB µs/req\tLB core µs/req\tload µs/req\tCaddy\tothers on LB core\tload core\tpeak RSS MiB\t"
	if sc.GRPC != "" {
		head = strings.NewReplacer("req/s", sc.unit()+"s/s", "/req", "/"+sc.unit(), "Caddy\t", "LB\t").Replace(head)
	}
	shares := sc.Slow >= 0 || sc.GRPC != ""
	if shares {
		for i := range numBackends {
			name := fmt.Sprintf("b%d", i+1)
			if i == sc.Slow && sc.Name == scFlip {
				name += " flips"
			} else if i == sc.Slow {
				name += " slow"
			}
			head += name + "\t"
		}
	}
	if sc.GRPC == "stream" {
		head += "open streams\t"
	}
	fmt.Fprintln(tw, head+"errors\t")
	lb, ld := singleCore(res.LBCPUs), singleCore(res.LoadCPUs)
	for _, name := range order {
		r := res.find(sc.Name, rep, name)
		line := fmt.Sprintf("%s\t%.0f\t%.2f\t%.2f\t%.1f\t%.1f\t%s\t%.1f\t%.0f%%\t%s\t%s\t%.0f\t", r.Config, r.ReqPerSec, r.P50us/1e3, r.P99us/1e3,
			r.MaxUs/1e3, r.LBCPUPerReqUs, orDash(r.LBCorePerReqUs), r.LoadCPUPerReqUs, r.CaddyCore*100, others(r, lb), busy(r.CPUBusy, ld),
			float64(r.LBPeakRSSKiB)/1024)
		if shares {
			for i := range numBackends {
				if i < len(r.Shares) {
					line += fmt.Sprintf("%.1f%%\t", r.Shares[i]*100)
				} else {
					line += "-\t"
				}
			}
		}
		if sc.GRPC == "stream" {
			line += strings.Trim(strings.ReplaceAll(fmt.Sprint(r.OpenStreams), " ", "/"), "[]") + "\t"
		}
		fmt.Fprintf(tw, "%s%d\t\n", line, r.Errors)
	}
	tw.Flush()
}

// scenarioNotes complete the heading of the newer scenarios: what they do
// and where the configurations differ.
var scenarioNotes = map[string]string{
	scPost: fmt.Sprintf(", POST with a %d-byte JSON body (application/json), which the backends read whole.\n"+
		"respond does not read the body in its handler; Caddy's HTTP server (net/http) reads and discards the rest of a body this small\n"+
		"before it reads the next request on the connection, so Caddy reads every body in every configuration", postBodyBytes),
	scClients: " on small GETs; peak RSS is Caddy's VmHWM",
	scHTTPS1: ", small GETs; the backends speak HTTP/1.1 over TLS (ALPN offers http/1.1 only), with a certificate from a CA\n" +
		"the harness makes and Caddy trusts (tls_trust_pool file); reverse_proxy with versions 1.1, lbpool negotiates by ALPN",
	scHTTPS2: ", small GETs; the backends speak HTTP/2 over TLS (net/http's server; other versions are answered 505,\n" +
		"so a proxy that fell back to HTTP/1.1 shows as errors); reverse_proxy with versions 2; lbpool has no versions option:\n" +
		"its transport speaks HTTP/2 to every HTTPS backend that offers it (ALPN)",
	scH2: fmt.Sprintf(";\nCaddy serves HTTPS with a certificate from its internal CA (tls internal), which the clients trust; each stream\n"+
		"alternates a small GET and a POST of a %d-byte JSON body, half of the streams starting with each; the backends\n"+
		"speak plain HTTP/1.1. The clients are golang.org/x/net/http2's (per-request allocations on the load generator's core)", postBodyBytes),
	scOptions: fmt.Sprintf(", small GETs; %s is lbpool with lb_policy least_time, max_conns 1000, sticky cookie\n"+
		"(each client keeps and sends back its cookie), header_up X-Test and Host set to %s, and log_append upstream %s;\n"+
		"every proxy writes an access log to a file (Caddy's log directive: its cost is Caddy's, in both sides of\n"+
		"lbpool_options ÷ lbpool), and rp_least_conn also names the backend in it, with log_append upstream %s;\n"+
		"respond writes no access log", optionsConfig, lbpoolUpstream, lbpoolUpstream, rpUpstream),
}

// wsTable shows a websockets repeat: Caddy's memory and goroutines before
// the websockets were opened, while they were held, and after they closed.
func (res *results) wsTable(w io.Writer, sc scenario, rep int) {
	fmt.Fprintf(w, "repeat %d (in this order)\n", rep)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "config\topened\topen s\tRSS before MiB\tRSS held MiB\tRSS after MiB\tKiB/websocket\tgoroutines before\theld\tafter\tback after\t")
	for _, r := range res.Runs {
		if r.Scenario != sc.Name || r.Repeat != rep || r.WS == nil {
			continue
		}
		ws := r.WS
		back := fmt.Sprintf("not within %v", wsBackBound)
		if ws.BackSeconds != nil {
			back = fmt.Sprintf("%.1fs", *ws.BackSeconds)
		}
		fmt.Fprintf(tw, "%s\t%d\t%.1f\t%.1f\t%.1f\t%.1f\t%.1f\t%d\t%d\t%d\t%s\t\n", r.Config, ws.Opened, ws.OpenSeconds,
			float64(ws.RSSBeforeKiB)/1024, float64(ws.RSSHeldKiB)/1024, float64(ws.RSSAfterKiB)/1024, ws.PerWebsocketKiB,
			ws.GoroutinesBefore, ws.GoroutinesHeld, ws.GoroutinesAfter, back)
	}
	tw.Flush()
}

// flipTable shows the flipping backend's share in each second of a flip
// repeat, one column per configuration, and its recovery.
func (res *results) flipTable(w io.Writer, sc scenario, rep int) {
	o := res.Options
	var runs []*runRecord
	head := "second\tb" + strconv.Itoa(sc.Slow+1) + "\t"
	for _, name := range sc.Configs {
		if r := res.find(sc.Name, rep, name); r != nil {
			runs = append(runs, r)
			head += name + "\t"
		}
	}
	fmt.Fprintf(w, "b%d's share of the requests in each second of repeat %d\n", sc.Slow+1, rep)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, head)
	seconds := 0
	for _, r := range runs {
		seconds = max(seconds, len(r.FlipShares))
	}
	for i := range seconds {
		at := time.Duration(i) * time.Second
		state := "fast"
		if at >= o.FlipBefore && at < o.FlipBefore+o.FlipSlow {
			state = "slow"
		}
		line := fmt.Sprintf("%d-%d\t%s\t", i, i+1, state)
		for _, r := range runs {
			if i < len(r.FlipShares) && r.FlipShares[i] != nil {
				line += fmt.Sprintf("%.1f%%\t", *r.FlipShares[i]*100)
			} else {
				line += "-\t"
			}
		}
		fmt.Fprintln(tw, line)
	}
	line := fmt.Sprintf("back to %.0f%% after\t\t", recoveredShare*100)
	for _, r := range runs {
		if r.Recovery != nil {
			line += fmt.Sprintf("%.2fs\t", *r.Recovery)
		} else {
			line += fmt.Sprintf("> %vs\t", o.FlipAfter.Seconds())
		}
	}
	fmt.Fprintln(tw, line)
	tw.Flush()
}

// targetTables shows each issue's targets with their verdicts.
func (res *results) targetTables(w io.Writer) {
	issue := ""
	var tw *tabwriter.Writer
	for _, t := range res.Targets {
		if t.Issue != issue {
			if tw != nil {
				tw.Flush()
			}
			issue = t.Issue
			fmt.Fprintln(w)
			fmt.Fprintf(w, "== targets of %s: median over the repeats of the figure in each\n", issue)
			tw = tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
			fmt.Fprintln(tw, "scenario\tconfig\tfigure\tlimit\tmedian\tmet in\tverdict\t")
		}
		verdict := "missed"
		if t.Met {
			verdict = "met"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t≤ %s\t%s\t%d/%d\t%s\t\n", t.Scenario, t.Config, t.Metric, fmtFigure(&t.Limit, t.Unit),
			fmtFigure(t.Median, t.Unit), t.MetIn, t.Repeats, verdict)
	}
	if tw != nil {
		tw.Flush()
	}
}

// fmtFigure prints a target's figure in its unit.
func fmtFigure(v *float64, unit string) string {
	switch {
	case v == nil:
		return "-"
	case unit == "x":
		return fmtRatio(v)
	case unit == "%":
		return fmt.Sprintf("%.2f%%", *v)
	}
	return fmt.Sprintf("%.2f%s", *v, unit)
}

// ratioTables shows the scenario's paired ratios, one table for each
// configuration they are taken against.
func (res *results) ratioTables(w io.Writer, sc scenario) {
	for _, against := range []string{baseline, "respond", "lbpool"} {
		res.ratioTable(w, sc, against)
	}
}

func (res *results) ratioTable(w io.Writer, sc scenario, against string) {
	var rows []ratio
	for _, rt := range res.Ratios {
		if rt.Scenario == sc.Name && rt.Against == against {
			rows = append(rows, rt)
		}
	}
	if len(rows) == 0 {
		return
	}
	fmt.Fprintf(w, "ratios to %s, paired within each repeat (config ÷ %s; below 1 is better except req/s)\n", against, against)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	head := "metric\tconfig\t"
	for rep := 1; rep <= res.Options.Repeats; rep++ {
		head += fmt.Sprintf("r%d\t", rep)
	}
	fmt.Fprintln(tw, head+"median\t")
	for _, rt := range rows {
		line := rt.Metric + "\t" + rt.Config + "\t"
		for _, v := range rt.PerRepeat {
			line += fmtRatio(v) + "\t"
		}
		fmt.Fprintln(tw, line+fmtRatio(rt.Median)+"\t")
	}
	tw.Flush()
}

func fmtRatio(v *float64) string {
	if v == nil {
		return "-"
	}
	return fmt.Sprintf("%.2fx", *v)
}

// singleCore is the core a taskset list names when it names exactly one,
// else -1 (the busy columns then show "-").
func singleCore(list string) int {
	n, err := strconv.Atoi(list)
	if err != nil {
		return -1
	}
	return n
}

func orDash(v float64) string {
	if v == 0 {
		return "-"
	}
	return fmt.Sprintf("%.1f", v)
}

// others is the LB core's busy share not spent in Caddy.
func others(r *runRecord, core int) string {
	if core < 0 || core >= len(r.CPUBusy) {
		return "-"
	}
	return fmt.Sprintf("%.0f%%", max(r.CPUBusy[core]-r.CaddyCore, 0)*100)
}

func busy(fracs []float64, core int) string {
	if core < 0 || core >= len(fracs) {
		return "-"
	}
	return fmt.Sprintf("%.0f%%", fracs[core]*100)
}
