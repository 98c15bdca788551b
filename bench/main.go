// Command bench measures lbpool against Caddy's own reverse_proxy, in one
// command from the repository root:
//
//	go run ./bench            # about 29 minutes on a quiet machine; -quick: 4 minutes
//	go run ./bench -publish   # also copies the chart to docs/bench.svg
//	go run ./bench -quick -scenarios post,https   # some workloads only
//
// It builds ./cmd/caddy once (Caddy with the standard modules and lbpool),
// starts three fast backends on 127.0.0.1 (this program, as subprocesses),
// and runs these scenarios, each configuration in turn within every repeat
// so that ratios are paired between neighbours in time:
//
//   - throughput: 64 keep-alive clients; req/s, raw p50 and p99, and the load
//     balancer's CPU time per request (utime+stime from /proc over the
//     measured window only);
//   - quality: one backend 50 ms slow, 32 clients; p50, p99 and each
//     backend's share of the requests; in each repeat lbpool with least_time
//     also runs once with that backend fast (quality_fast), the reference
//     for its p99;
//   - flip: 32 clients, one backend turns 50 ms slow for 10 s, then fast
//     again; that backend's share per second, and how long after it turned
//     fast its share took to be back to 25%;
//   - post: 64 clients POST a 1 KiB JSON body, which the backends read whole;
//   - clients2000: 2000 keep-alive clients on small GETs; also Caddy's peak
//     RSS (VmHWM);
//   - websockets: 4000 idle websockets held open through the load balancer
//     (the backends answer RFC 6455's handshake, then only read); Caddy's
//     RSS per websocket, and its goroutines before, while held and after
//     closing them all, polled until back to the baseline;
//   - https_h1 and https_h2 (-scenarios https for both): small GETs to
//     backends that speak HTTP/1.1 or HTTP/2 over TLS, with a CA and a
//     certificate the harness makes at start and Caddy trusts;
//   - h2_clients: clients that speak HTTP/2 over TLS to Caddy, whose
//     certificate comes from its internal CA: 8 connections of 8 streams,
//     each stream alternating a small GET and a 1 KiB POST (h2load.go);
//   - scaling (-scenarios scaling for all its points): small GETs on pools
//     of 3, 30, 300 and 3,000 backends under 64 clients, and on 3 backends
//     under 2,000 and 5,000 clients, lbpool beside reverse_proxy; the
//     report gathers the points into one table and two pairs of curves
//     (scaling.go);
//   - options: small GETs with lbpool's request-path options all on
//     (lbpool_options: least_time, max_conns, sticky cookie kept by each
//     client, header_up with placeholders, an access log with log_append),
//     beside plain lbpool;
//   - cache: 8 caching backends (0.2 ms for a key seen in the last 10 s,
//     5 ms for a miss), Zipf(1.1) keys in X-Key from 64 clients; hit ratio,
//     p50/p99 and each backend's peak in flight for lbpool hash (bounded
//     and not), lbpool least_conn, reverse_proxy lb_policy header and
//     HAProxy's bounded consistent hash (see cache.go).
//   - grpc_unary, grpc_one_conn and grpc_stream (-scenarios grpc for all
//     three): grpc-go backends over h2c and a grpc-go load generator; 64
//     callers on 4 client connections (or one) making 100-byte unary calls,
//     or holding one server stream each of 1 KiB messages, through lbpool,
//     reverse_proxy, HAProxy and nginx; calls (messages) per second, LB CPU
//     per call and each backend's share (grpc.go).
//   - heterogeneous: three backends, one of half the capacity, that report
//     their utilization (ORCA endpoint-load-metrics); p50/p99 and shares for
//     lbpool least_conn, least_time, least_conn with load_reports,
//     reverse_proxy least_conn and HAProxy leastconn (heterogeneous.go).
//   - retry_storm: three backends that start answering 503 to every other
//     request half-way through; backend requests per client request and
//     the clients' success rate for lbpool with its retry budget and
//     without, reverse_proxy with lb_retries 2 and the same lb_retry_match,
//     and HAProxy (retry-on 503, retries 3) when installed (retrystorm.go).
//
// The configurations are lbpool (lb_policy least_conn and least_time, and
// lbpool_options in the options scenario), reverse_proxy with lb_policy
// least_conn and with round_robin, all in the same binary with equivalent
// settings (see configs.go), and Caddy's respond as the floor of what any
// proxy costs. Every scenario runs rp_least_conn, the baseline of every
// ratio, and respond where it can answer the same requests (it cannot
// tunnel a websocket). The newer workloads run fewer configurations and
// shorter windows (-workload-duration) to keep the default run near 20
// minutes on two cores.
// Caddy runs on one core and everything else (backends, load generator,
// harness) on another, with taskset where available. Each run starts a fresh
// Caddy, warms up, then measures. Before each repeat the harness waits a
// little for idle cores, and a repeat in which other work took over a fifth
// of Caddy's core runs again (-redo-noisy times in all), since pairing only
// helps when both sides of a pair saw the same machine. The harness raises
// its open-file limit to the hard limit before it starts anything, so every
// process inherits it, and says so if that is too low for 2000 clients or
// the websockets. Results go to stdout and bench/out/ (report.txt,
// results.json, chart.svg, the Caddyfiles used). -profile adds an
// unmeasured run of each named configuration with a CPU profile of Caddy,
// under the throughput load or those -profile-loads names.
//
// The same binary plays the backends (bench -backend ...) and the load
// generator (bench -load ...); the harness itself holds the websockets.
package main

import (
	"context"
	"crypto/tls"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"
)

func main() {
	if err := dispatch(os.Args[1:], os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

// dispatch runs the role the first argument names, or the harness.
func dispatch(args []string, stdout io.Writer) error {
	if len(args) > 0 {
		switch args[0] {
		case "-backend", "--backend":
			return runBackend(args[1:])
		case "-load", "--load":
			return runLoad(args[1:])
		case "-grpc-backend", "--grpc-backend":
			return runGRPCBackend(args[1:])
		case "-grpc-load", "--grpc-load":
			return runGRPCLoad(args[1:])
		}
	}
	opts, err := parseOptions(args)
	if err != nil {
		return err
	}
	opts.stdout = stdout
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	return run(ctx, opts)
}

// options are the harness's flags.
type options struct {
	Repeats      int           `json:"repeats"`
	Warmup       time.Duration `json:"warmup_ns"`
	Duration     time.Duration `json:"duration_ns"`
	Conns        int           `json:"conns"`
	QualityConns int           `json:"quality_conns"`
	SlowDelay    time.Duration `json:"slow_delay_ns"`
	// The flip scenario's measured window: FlipBefore fast, FlipSlow slow,
	// FlipAfter fast again.
	FlipBefore time.Duration `json:"flip_before_ns"`
	FlipSlow   time.Duration `json:"flip_slow_ns"`
	FlipAfter  time.Duration `json:"flip_after_ns"`
	// WorkloadDuration is the measured window of the post, clients2000,
	// https and options scenarios.
	WorkloadDuration time.Duration `json:"workload_duration_ns"`
	ManyConns        int           `json:"many_conns"` // clients of the clients2000 scenario
	// The scaling scenarios' points: pools of ScalingBackends backends
	// under Conns clients, and ScalingClients clients on three backends.
	ScalingBackends []int    `json:"scaling_backends"`
	ScalingClients  []int    `json:"scaling_clients"`
	Websockets      int      `json:"websockets"` // held open in the websockets scenario
	Configs         []string `json:"configs"`
	Scenarios       []string `json:"scenarios"`
	Quick           bool     `json:"quick"`

	out            string
	publish        bool
	pin            bool
	lbCPUs         string
	loadCPUs       string
	profile        []string
	profileLoads   []string // the scenarios whose load the profiles run under
	profileSeconds int
	quietWait      time.Duration
	redoNoisy      int
	caddyBin       string
	exe            string // the binary that plays backends and load generator
	stdout         io.Writer
}

func parseOptions(args []string) (options, error) {
	fs := flag.NewFlagSet("bench", flag.ContinueOnError)
	var o options
	var configs, scenarios, profile, profileLoads, scalingBackends, scalingClients string
	fs.IntVar(&o.Repeats, "repeats", 3, "repeats of every configuration, alternating")
	fs.DurationVar(&o.Warmup, "warmup", 2*time.Second, "load before each measured window")
	fs.DurationVar(&o.Duration, "duration", 8*time.Second, "measured window of each run")
	fs.IntVar(&o.Conns, "conns", 64, "keep-alive clients in the throughput scenario")
	fs.IntVar(&o.QualityConns, "quality-conns", 32, "keep-alive clients in the quality scenario")
	fs.DurationVar(&o.SlowDelay, "slow", 50*time.Millisecond, "delay of the slow backend in the quality and flip scenarios")
	fs.DurationVar(&o.FlipSlow, "flip-slow", 10*time.Second, "how long the backend stays slow in the flip scenario (measured: 2s before, 8s after)")
	fs.DurationVar(&o.WorkloadDuration, "workload-duration", 5*time.Second, "measured window of each run of the post, clients2000, https and options scenarios")
	fs.IntVar(&o.ManyConns, "many-conns", 2000, "keep-alive clients in the clients2000 scenario")
	fs.IntVar(&o.Websockets, "websockets", 4000, "idle websockets held open in the websockets scenario")
	fs.StringVar(&scalingBackends, "scaling-backends", "3,30,300,3000", "pool sizes of the scaling scenarios, under -conns clients (3 processes, the rest extra listeners in them)")
	fs.StringVar(&scalingClients, "scaling-clients", "2000,5000", "client counts of the scaling scenarios, on 3 backends (3 backends under -conns clients is the first point)")
	fs.StringVar(&configs, "configs", "lbpool,lbpool_least_time,lbpool_options,rp_least_conn,rp_round_robin,respond",
		"configurations, comma-separated; each scenario runs those of its own it finds here (see scenarios in main.go)")
	fs.StringVar(&scenarios, "scenarios", strings.Join(scenarioNames, ","), "scenarios, comma-separated; https stands for https_h1,https_h2, grpc for grpc_unary,grpc_one_conn,grpc_stream")
	fs.BoolVar(&o.Quick, "quick", false, "smoke test: 1 repeat of 1s runs after 0.3s warm-up (flip: 1s fast, 2s slow, 2s fast; 1000 websockets)")
	fs.StringVar(&o.out, "out", "", "folder for report.txt, results.json and chart.svg (default bench/out)")
	fs.BoolVar(&o.publish, "publish", false, "also copy the chart to docs/bench.svg")
	fs.BoolVar(&o.pin, "pin", true, "pin the load balancer and the rest to separate cores with taskset")
	fs.StringVar(&o.lbCPUs, "lb-cpus", "", "taskset CPU list for Caddy (default: the first usable core)")
	fs.StringVar(&o.loadCPUs, "load-cpus", "", "taskset CPU list for backends and load generator (default: the second usable core)")
	fs.StringVar(&profile, "profile", "", "configurations to profile in one extra, unmeasured run each under every -profile-loads load (CPU profile from Caddy's admin /debug/pprof)")
	fs.StringVar(&profileLoads, "profile-loads", scThroughput, "the scenarios whose load -profile runs under, comma-separated (throughput, post, clients2000, https_h1, https_h2, h2_clients, options)")
	fs.IntVar(&o.profileSeconds, "profile-seconds", 5, "length of each CPU profile")
	fs.DurationVar(&o.quietWait, "quiet-wait", 10*time.Second, "before each repeat, wait up to this long for idle cores")
	fs.IntVar(&o.redoNoisy, "redo-noisy", 2, "times in all a repeat may run again because other work took over 20% of the load balancer's core")
	fs.StringVar(&o.caddyBin, "caddy", "", "use this Caddy binary instead of building ./cmd/caddy")
	if err := fs.Parse(args); err != nil {
		return o, err
	}
	if fs.NArg() > 0 {
		return o, fmt.Errorf("unexpected arguments: %q", fs.Args())
	}
	o.FlipBefore, o.FlipAfter = 2*time.Second, 8*time.Second
	if o.Quick {
		// Flags given with -quick keep their values.
		set := map[string]bool{}
		fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
		quick := func(name string, v *time.Duration, to time.Duration) {
			if !set[name] {
				*v = to
			}
		}
		quick("warmup", &o.Warmup, 300*time.Millisecond)
		quick("duration", &o.Duration, time.Second)
		quick("workload-duration", &o.WorkloadDuration, time.Second)
		quick("flip-slow", &o.FlipSlow, 2*time.Second)
		quick("quiet-wait", &o.quietWait, 0)
		if !set["repeats"] {
			o.Repeats = 1
		}
		if !set["websockets"] {
			o.Websockets = 1000
		}
		if !set["redo-noisy"] {
			o.redoNoisy = 0
		}
		o.FlipBefore, o.FlipAfter = time.Second, 2*time.Second
	}
	o.Configs, o.Scenarios, o.profile = splitList(configs), splitList(scenarios), splitList(profile)
	if i := slices.Index(o.Scenarios, "https"); i >= 0 {
		o.Scenarios = slices.Replace(o.Scenarios, i, i+1, scHTTPS1, scHTTPS2)
	}
	var err error
	if o.ScalingBackends, err = positiveInts(scalingBackends); err != nil {
		return o, fmt.Errorf("-scaling-backends: %w", err)
	}
	if o.ScalingClients, err = positiveInts(scalingClients); err != nil {
		return o, fmt.Errorf("-scaling-clients: %w", err)
	}
	if i := slices.Index(o.Scenarios, scScaling); i >= 0 {
		o.Scenarios = slices.Replace(o.Scenarios, i, i+1, o.scalingNames()...)
	}
	if i := slices.Index(o.Scenarios, scGRPC); i >= 0 {
		o.Scenarios = slices.Replace(o.Scenarios, i, i+1, grpcScenarios...)
	}
	o.profileLoads = splitList(profileLoads)
	for _, l := range o.profileLoads {
		if !slices.Contains([]string{scThroughput, scPost, scClients, scHTTPS1, scHTTPS2, scH2, scOptions}, l) {
			return o, fmt.Errorf("-profile-loads: %q is not a load to profile under (throughput, post, clients2000, https_h1, https_h2, h2_clients, options)", l)
		}
	}
	for _, c := range append(slices.Clone(o.Configs), o.profile...) {
		if cfg, ok := configByName(c); !ok || cfg.peer {
			return o, fmt.Errorf("unknown configuration %q (known: %s; HAProxy and nginx run in the scenarios that compare with them)", c, configNames())
		}
	}
	if !slices.Contains(o.Configs, baseline) {
		return o, fmt.Errorf("-configs must include %s: every ratio is taken against it", baseline)
	}
	for _, s := range o.Scenarios {
		if !slices.Contains(scenarioNames, s) && s != scHTTPS1 && s != scHTTPS2 && !slices.Contains(grpcScenarios, s) &&
			!strings.HasPrefix(s, scScaling+"_") {
			return o, fmt.Errorf("unknown scenario %q (known: %s, https_h1, https_h2, %s)", s, strings.Join(scenarioNames, ", "), strings.Join(grpcScenarios, ", "))
		}
	}
	if o.Repeats < 1 || o.Conns < 1 || o.QualityConns < 1 || o.Duration <= 0 || o.Warmup < 0 || o.FlipSlow <= 0 ||
		o.WorkloadDuration <= 0 || o.ManyConns < 1 || o.Websockets < 1 {
		return o, errors.New("-repeats, -conns, -quality-conns, -duration, -flip-slow, -workload-duration, -many-conns and -websockets must be positive")
	}
	return o, nil
}

// positiveInts reads a comma-separated list of positive integers.
func positiveInts(s string) ([]int, error) {
	var out []int
	for _, part := range splitList(s) {
		n, err := strconv.Atoi(part)
		if err != nil || n < 1 {
			return nil, fmt.Errorf("%q is not a positive integer", part)
		}
		out = append(out, n)
	}
	return out, nil
}

func splitList(s string) []string {
	var out []string
	for part := range strings.SplitSeq(s, ",") {
		if part = strings.TrimSpace(part); part != "" {
			out = append(out, part)
		}
	}
	return out
}

// scenario is one workload, run for several configurations.
type scenario struct {
	Name    string   `json:"name"`
	Conns   int      `json:"conns"`
	Slow    int      `json:"slow_backend"` // index of the slow (or flipping) backend, -1 for none
	Delay   string   `json:"slow_delay"`
	Configs []string `json:"configs"`
	// Of names the scenario whose repeats run this one too, on its
	// backends with the slow one turned fast; it has no backends of its own.
	Of string `json:"of,omitempty"`

	// Method is the load generator's (GET if empty); a POST carries a JSON
	// body of BodyBytes.
	Method    string `json:"method,omitempty"`
	BodyBytes int    `json:"body_bytes,omitempty"`
	// HTTPS is the HTTP version the backends speak over TLS ("1.1" or "2"),
	// or "" for plain HTTP/1.1.
	HTTPS  string `json:"https,omitempty"`
	Sticky bool   `json:"sticky,omitempty"` // each client keeps its cookie
	// Websockets, if positive, makes the scenario hold that many idle
	// websockets instead of sending requests.
	Websockets int `json:"websockets,omitempty"`
	// AccessLog lists the configurations that write an access log, and
	// LogAppend those of them whose log also names each request's backend
	// (log_append upstream with the proxy's placeholder).
	AccessLog []string `json:"access_log,omitempty"`
	LogAppend []string `json:"log_append,omitempty"`
	// NotRun gives the reason for each configuration the scenario cannot
	// run.
	NotRun map[string]string `json:"not_run,omitempty"`
	// Backends is how many backends the proxies balance over (numBackends
	// when 0): numBackends processes, the rest extra listeners in them.
	Backends int `json:"backends,omitempty"`
	// H2 makes the clients speak HTTP/2 over TLS to Caddy, which has a
	// certificate from its internal CA, with H2Conns connections of
	// H2Streams streams each, alternating small GETs and POSTs of
	// BodyBytes.
	H2        bool `json:"h2_clients,omitempty"`
	H2Conns   int  `json:"h2_conns,omitempty"`
	H2Streams int  `json:"h2_streams,omitempty"`
	// Scaling is the axis a scaling scenario is a point of: "backends" or
	// "clients".
	Scaling string `json:"scaling,omitempty"`
	// GRPC is "unary" or "stream" in the gRPC scenarios (grpc.go), whose
	// Conns callers share ClientConns connections and send (or receive)
	// messages of MessageBytes.
	GRPC         string `json:"grpc,omitempty"`
	ClientConns  int    `json:"client_conns,omitempty"`
	MessageBytes int    `json:"message_bytes,omitempty"`

	delay time.Duration
}

// The scenarios' names.
const (
	scThroughput  = "throughput"
	scQuality     = "quality"
	scQualityFast = "quality_fast"
	scFlip        = "flip"
	scPost        = "post"
	scClients     = "clients2000"
	scWebsockets  = "websockets"
	scHTTPS1      = "https_h1"
	scHTTPS2      = "https_h2"
	scOptions     = "options"
	scH2          = "h2_clients"
	scScaling     = "scaling" // stands for its points, scaling_b<backends> and scaling_c<clients>
	leastTime     = "lbpool_least_time"
)

// scenarioNames are the scenarios -scenarios takes, in the order of a
// default run.
var scenarioNames = []string{scThroughput, scQuality, scFlip, scPost, scClients, scWebsockets, "https", scH2, scOptions, scGRPC, scScaling, scCache, scRetryStorm, scHeterogeneous}

// The h2_clients scenario's load: h2Conns connections of h2Streams
// concurrent streams each, as a few browser tabs would hold.
const (
	h2Conns   = 8
	h2Streams = 8
)

// scalingNames are the scaling scenarios' points: the backends axis
// (under -conns clients), then the clients axis (on numBackends backends,
// whose first point, -conns clients, is the backends axis's at
// numBackends).
func (o options) scalingNames() []string {
	var out []string
	for _, n := range o.ScalingBackends {
		out = append(out, fmt.Sprintf("%s_b%d", scScaling, n))
	}
	for _, n := range o.ScalingClients {
		out = append(out, fmt.Sprintf("%s_c%d", scScaling, n))
	}
	return out
}

// scalingPoint reads a scaling scenario's name: its axis, backends and
// clients.
func (o options) scalingPoint(name string) (axis string, backends, clients int, ok bool) {
	rest, found := strings.CutPrefix(name, scScaling+"_")
	if !found || len(rest) < 2 {
		return "", 0, 0, false
	}
	n, err := strconv.Atoi(rest[1:])
	if err != nil || n < 1 {
		return "", 0, 0, false
	}
	switch rest[0] {
	case 'b':
		return "backends", n, o.Conns, true
	case 'c':
		return "clients", numBackends, n, true
	}
	return "", 0, 0, false
}

// postBodyBytes is the size of the post scenario's JSON body.
const postBodyBytes = 1024

// flipConfigs are the configurations the flip scenario runs, of those
// selected.
var flipConfigs = []string{"lbpool", leastTime, "rp_least_conn"}

func scenarios(o options) []scenario {
	var out []scenario
	var general, proxies []string
	for _, c := range o.Configs {
		if cfg, _ := configByName(c); c == optionsConfig || cfg.peer {
			continue
		}
		general = append(general, c)
		if cfg, _ := configByName(c); cfg.proxies {
			proxies = append(proxies, c)
		}
	}
	// pick keeps the configurations that are selected, in this order.
	pick := func(names ...string) []string {
		var out []string
		for _, n := range names {
			if slices.Contains(o.Configs, n) {
				out = append(out, n)
			}
		}
		return out
	}
	small := func(name string) scenario {
		return scenario{Name: name, Conns: o.Conns, Slow: -1, Configs: pick("lbpool", baseline, "respond")}
	}
	for _, name := range o.Scenarios {
		switch name {
		case scThroughput:
			out = append(out, scenario{Name: name, Conns: o.Conns, Slow: -1, Configs: general})
		case scQuality:
			out = append(out, scenario{Name: name, Conns: o.QualityConns, Slow: 1, delay: o.SlowDelay,
				Delay: o.SlowDelay.String(), Configs: proxies})
			if slices.Contains(o.Configs, leastTime) {
				out = append(out, scenario{Name: scQualityFast, Conns: o.QualityConns, Slow: -1, Of: scQuality,
					Configs: []string{leastTime}})
			}
		case scFlip:
			var configs []string
			for _, c := range flipConfigs {
				if slices.Contains(o.Configs, c) {
					configs = append(configs, c)
				}
			}
			out = append(out, scenario{Name: name, Conns: o.QualityConns, Slow: 1, delay: o.SlowDelay,
				Delay: o.SlowDelay.String(), Configs: configs})
		case scPost:
			sc := small(name)
			sc.Method, sc.BodyBytes = "POST", postBodyBytes
			out = append(out, sc)
		case scClients:
			sc := small(name)
			sc.Conns = o.ManyConns
			out = append(out, sc)
		case scWebsockets:
			out = append(out, scenario{Name: name, Slow: -1, Websockets: o.Websockets, Configs: pick("lbpool", baseline),
				NotRun: map[string]string{"respond": "respond cannot tunnel a websocket"}})
		case scHTTPS1, scHTTPS2:
			sc := small(name)
			sc.HTTPS = map[string]string{scHTTPS1: "1.1", scHTTPS2: "2"}[name]
			out = append(out, sc)
		case scH2:
			sc := small(name)
			sc.Conns, sc.H2, sc.H2Conns, sc.H2Streams = h2Conns*h2Streams, true, h2Conns, h2Streams
			sc.Method, sc.BodyBytes = "MIX", postBodyBytes
			out = append(out, sc)
		case scOptions:
			sc := small(name)
			sc.Configs = pick("lbpool", optionsConfig, baseline, "respond")
			// every proxy writes the access log (Caddy's work, not an
			// lbpool option); naming the backend in it is the option
			sc.Sticky, sc.AccessLog = true, pick("lbpool", optionsConfig, baseline)
			sc.LogAppend = pick(optionsConfig, baseline)
			out = append(out, sc)
		case scGRPCUnary, scGRPCOneConn, scGRPCStream:
			out = append(out, grpcScenario(o, name, pick))
		default:
			if axis, backends, clients, ok := o.scalingPoint(name); ok {
				out = append(out, scenario{Name: name, Conns: clients, Slow: -1, Backends: backends, Scaling: axis,
					Configs: pick("lbpool", baseline)})
			}
		}
	}
	return out
}

// window is the measured window of each run of a scenario.
func (o options) window(sc scenario) time.Duration {
	if sc.Scaling != "" {
		return o.WorkloadDuration
	}
	switch sc.Name {
	case scFlip:
		return o.FlipBefore + o.FlipSlow + o.FlipAfter
	case scPost, scClients, scHTTPS1, scHTTPS2, scOptions, scH2, scGRPCUnary, scGRPCOneConn, scGRPCStream:
		return o.WorkloadDuration
	case scWebsockets:
		return o.wsHold()
	}
	return o.Duration
}

// warmup is the load before each measured window of the scenario: longer
// with many clients, whose first requests each open a connection to a
// backend.
func (o options) warmup(sc scenario) time.Duration {
	if sc.Name == scClients || sc.Conns > 1000 || sc.backends() > 100 {
		return o.Warmup + time.Second
	}
	return o.Warmup
}

// wsHold is how long the websockets stay open before they are measured.
func (o options) wsHold() time.Duration {
	if o.Quick {
		return 300 * time.Millisecond
	}
	return time.Second
}

// numBackends is how many backends every proxy configuration balances over,
// but in the scaling scenarios.
const numBackends = 3

// backends is how many backends the scenario's proxies balance over.
func (sc scenario) backends() int {
	if sc.Backends > 0 {
		return sc.Backends
	}
	return numBackends
}

// harness holds what every run shares.
type harness struct {
	opts   options
	procs  *procs
	caddy  string
	tmp    string
	out    string
	env    []string // Caddy's environment: config and data folders in tmp
	lbCPUs string
	ldCPUs string
	saved  map[string]bool // Caddyfiles already copied to out
	certs  *certFiles      // of the https scenarios' backends

	scs       []scenario
	warnings  []string
	redosLeft int         // repeats that may still run again for being noisy
	discarded []runRecord // runs of those repeats
}

func run(ctx context.Context, o options) error {
	began := time.Now()
	root, err := moduleRoot(ctx)
	if err != nil {
		return err
	}
	if o.out == "" {
		o.out = filepath.Join(root, "bench", "out")
	}
	if o.exe == "" {
		if o.exe, err = os.Executable(); err != nil {
			return err
		}
	}
	if err := os.MkdirAll(filepath.Join(o.out, "caddyfiles"), 0o755); err != nil {
		return err
	}
	tmp, err := os.MkdirTemp("", "lbpool-bench-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)

	h := &harness{opts: o, procs: newProcs(), tmp: tmp, out: o.out, saved: map[string]bool{}, redosLeft: o.redoNoisy}
	defer h.procs.stopAll()
	var note string
	h.lbCPUs, h.ldCPUs, note = pinning(o.pin, o.lbCPUs, o.loadCPUs)
	if err := pinSelf(h.ldCPUs); err != nil {
		return err
	}
	h.env = append(os.Environ(), "HOME="+tmp,
		"XDG_CONFIG_HOME="+filepath.Join(tmp, "config"), "XDG_DATA_HOME="+filepath.Join(tmp, "data"))

	scs := scenarios(o)
	// Before any process starts, so that Caddy, the backends and the load
	// generator inherit the raised limit.
	if err := raiseFileLimit(); err != nil {
		return err
	}
	loads := slices.Clone(scs)
	if len(o.profile) > 0 {
		for _, l := range o.profileLoads {
			loads = append(loads, profileLoad(o, l))
		}
	}
	for _, sc := range loads {
		if need := filesNeeded(sc); need > 0 && fileLimit() < uint64(need) {
			w := fmt.Sprintf("the open-file limit is %d (the hard limit), under the %d the %s scenario needs: raise it (ulimit -Hn, or LimitNOFILE) or expect it to fail",
				fileLimit(), need, sc.Name)
			h.warnings = append(h.warnings, w)
			fmt.Fprintln(o.stdout, "WARNING: "+w)
		}
		if sc.HTTPS != "" && h.certs == nil {
			certs, err := makeCertificates(tmp)
			if err != nil {
				return fmt.Errorf("certificates for the https scenarios: %w", err)
			}
			h.certs = &certs
		}
	}
	estimate := estimateDuration(o, scs)
	fmt.Fprintf(o.stdout, "lbpool bench: building ./cmd/caddy, then about %v of runs, more if a noisy repeat runs again (%s)\n",
		estimate.Round(time.Second), note)
	if o.caddyBin != "" {
		h.caddy = o.caddyBin
	} else if h.caddy, err = buildCaddy(ctx, root, tmp); err != nil {
		return err
	}
	h.gateGRPC(ctx, scs)

	if slices.Contains(o.Scenarios, scCache) {
		// its own backends, load and table (cache.go)
		if err := h.runCache(ctx); err != nil {
			return err
		}
	}
	if slices.Contains(o.Scenarios, scHeterogeneous) {
		// its own backends, load and table (heterogeneous.go)
		if err := h.runHeterogeneous(ctx); err != nil {
			return err
		}
	}
	if len(scs) == 0 && !slices.Contains(o.Scenarios, scRetryStorm) {
		return nil
	}
	res := &results{Machine: describeMachine(h.caddy), Options: o, Pinning: note,
		LBCPUs: h.lbCPUs, LoadCPUs: h.ldCPUs, Scenarios: scs}
	h.scs = scs
	for _, sc := range scs {
		if sc.Of != "" {
			continue // runs within its scenario's repeats
		}
		runs, err := h.runScenario(ctx, sc)
		if err != nil {
			return err
		}
		res.Runs = append(res.Runs, runs...)
	}
	if slices.Contains(o.Scenarios, scRetryStorm) {
		if res.RetryStorm, err = h.runRetryStorm(ctx); err != nil {
			return err
		}
	}
	for _, load := range o.profileLoads {
		for _, name := range o.profile {
			top, err := h.profileRun(ctx, profileLoad(o, load), name)
			if err != nil {
				return err
			}
			res.Profiles = append(res.Profiles, profileTop{Scenario: load, Config: name, Top: top})
		}
	}
	res.Warnings, res.Discarded = h.warnings, h.discarded
	res.Elapsed = time.Since(began).Round(time.Second).String()
	res.summarise()
	return h.write(res, root)
}

// filesNeeded is how many open files the scenario needs in Caddy, the
// process that holds the most: two per client (its own and one to a
// backend), two per backend (its health check's kept connection and one
// more), and some to spare.
func filesNeeded(sc scenario) int {
	return 2*max(sc.Conns, sc.Websockets) + 2*sc.backends() + 256
}

func estimateDuration(o options, scs []scenario) time.Duration {
	var total time.Duration
	for _, sc := range scs {
		each := o.warmup(sc) + o.window(sc) + 700*time.Millisecond
		if sc.Websockets > 0 {
			// opening them (about 2000 a second), then closing them
			each = time.Duration(sc.Websockets)*time.Second/2000 + o.window(sc) + 2*time.Second
		}
		total += time.Duration(len(sc.Configs)*o.Repeats) * each
	}
	return total + time.Duration(len(o.profile)*len(o.profileLoads))*(o.Warmup+time.Duration(o.profileSeconds+1)*time.Second+700*time.Millisecond)
}

// runScenario starts the scenario's backends and runs every configuration
// once per repeat, rotating the order so no configuration always goes first.
func (h *harness) runScenario(ctx context.Context, sc scenario) ([]runRecord, error) {
	backends, stop, err := h.startBackends(ctx, sc)
	if err != nil {
		return nil, err
	}
	defer stop()
	var runs []runRecord
	for r := 0; r < h.opts.Repeats; {
		h.waitQuiet(ctx)
		rep, err := h.runRepeat(ctx, sc, backends, r)
		if err != nil {
			return nil, err
		}
		if worst := noisiest(rep); worst > noisyLimit && h.redosLeft > 0 {
			// Paired ratios hold only if both sides of a pair ran on the
			// same machine conditions; other work landing in some runs of
			// a repeat breaks that, so the repeat runs again.
			h.redosLeft--
			w := fmt.Sprintf("%s, repeat %d: other work took up to %.0f%% of the load balancer's core; the repeat ran again (its runs are kept in results.json as discarded)",
				sc.Name, r+1, worst*100)
			h.warnings = append(h.warnings, w)
			fmt.Fprintln(h.opts.stdout, "  "+w)
			h.discarded = append(h.discarded, rep...)
			continue
		}
		runs = append(runs, rep...)
		r++
	}
	return runs, nil
}

// runRepeat runs every configuration of a scenario once, in the repeat's
// rotated order, then the scenarios run within it, with its slow backend
// turned fast.
func (h *harness) runRepeat(ctx context.Context, sc scenario, backends backendSet, r int) ([]runRecord, error) {
	var runs []runRecord
	for pos, name := range rotate(sc.Configs, r) {
		rec, err := h.runNamed(ctx, sc, name, backends, r)
		if err != nil {
			return nil, err
		}
		rec.Position = pos + 1
		runs = append(runs, rec)
	}
	for _, sub := range h.scs {
		if sub.Of != sc.Name {
			continue
		}
		slow := backends.addrs[sc.Slow]
		if err := switchBackend(slow, "/fast"); err != nil {
			return nil, err
		}
		for pos, name := range sub.Configs {
			rec, err := h.runNamed(ctx, sub, name, backends, r)
			if err != nil {
				return nil, err
			}
			rec.Position = len(sc.Configs) + pos + 1
			runs = append(runs, rec)
		}
		if err := switchBackend(slow, "/slow"); err != nil {
			return nil, err
		}
	}
	return runs, nil
}

// runNamed runs one configuration in a repeat and prints its figures.
func (h *harness) runNamed(ctx context.Context, sc scenario, name string, backends backendSet, r int) (runRecord, error) {
	cfg, _ := configByName(name)
	fmt.Fprintf(h.opts.stdout, "  %s, repeat %d/%d: %s ...", sc.Name, r+1, h.opts.Repeats, name)
	var rec runRecord
	var err error
	if sc.Websockets > 0 {
		rec, err = h.runWebsockets(ctx, sc, cfg, backends)
	} else if sc.GRPC != "" {
		rec, err = h.runGRPC(ctx, sc, cfg, backends)
	} else {
		rec, err = h.runOne(ctx, sc, cfg, backends, h.opts.warmup(sc), h.opts.window(sc), nil)
	}
	if err != nil {
		fmt.Fprintln(h.opts.stdout)
		return rec, fmt.Errorf("%s, repeat %d, %s: %w", sc.Name, r+1, name, err)
	}
	rec.Repeat = r + 1
	if ws := rec.WS; ws != nil {
		fmt.Fprintf(h.opts.stdout, " %d open in %.1fs, RSS %.1f KiB each, goroutines %d, %d held, %d after\n",
			ws.Opened, ws.OpenSeconds, ws.PerWebsocketKiB, ws.GoroutinesBefore, ws.GoroutinesHeld, ws.GoroutinesAfter)
		return rec, nil
	}
	fmt.Fprintf(h.opts.stdout, " %.0f req/s, p99 %.2f ms, LB %.1f µs/req, peak RSS %.0f MiB, others on LB core %.0f%%",
		rec.ReqPerSec, rec.P99us/1e3, rec.LBCPUPerReqUs, float64(rec.LBPeakRSSKiB)/1024, rec.OthersOnLBCore*100)
	if rec.Recovery != nil {
		fmt.Fprintf(h.opts.stdout, ", b%d back to %.0f%% %.2fs after turning fast", sc.Slow+1, recoveredShare*100, *rec.Recovery)
	} else if sc.Name == scFlip {
		fmt.Fprintf(h.opts.stdout, ", b%d not back to %.0f%% within %v", sc.Slow+1, recoveredShare*100, h.opts.FlipAfter)
	}
	fmt.Fprintln(h.opts.stdout)
	return rec, nil
}

// noisiest is the largest share of the load balancer's core that other work
// took in any of the runs.
func noisiest(runs []runRecord) float64 {
	var worst float64
	for _, r := range runs {
		worst = max(worst, r.OthersOnLBCore)
	}
	return worst
}

// quietLimit is how busy (0 to 1) a core may be, with nothing of the
// harness running, for the machine to count as quiet.
const quietLimit = 0.10

// waitQuiet waits, up to -quiet-wait, until the cores the runs use are
// nearly idle, so that other work on the machine does not land in one
// configuration's run and not its neighbour's. It notes a busy machine in
// the results and goes on.
func (h *harness) waitQuiet(ctx context.Context) {
	deadline := time.Now().Add(h.opts.quietWait)
	told := false
	for {
		before, err1 := readCPUTicks()
		select {
		case <-ctx.Done():
			return
		case <-time.After(500 * time.Millisecond):
		}
		after, err2 := readCPUTicks()
		if err1 != nil || err2 != nil {
			return
		}
		fracs := busyFractions(before, after)
		cores := []int{singleCore(h.lbCPUs), singleCore(h.ldCPUs)}
		if cores[0] < 0 || cores[1] < 0 {
			cores = cores[:0]
			for c := range fracs {
				cores = append(cores, c)
			}
		}
		var busiest float64
		var desc []string
		for _, c := range cores {
			if c < len(fracs) {
				busiest = max(busiest, fracs[c])
				desc = append(desc, fmt.Sprintf("core %d %.0f%%", c, fracs[c]*100))
			}
		}
		if busiest <= quietLimit {
			return
		}
		if time.Now().After(deadline) {
			w := fmt.Sprintf("the machine was busy before a repeat (%s, with none of the harness's load running)", strings.Join(desc, ", "))
			h.warnings = append(h.warnings, w)
			fmt.Fprintln(h.opts.stdout, "  warning: "+w)
			return
		}
		if !told {
			fmt.Fprintf(h.opts.stdout, "  waiting up to %v for a quiet machine (%s busy)\n", h.opts.quietWait, strings.Join(desc, ", "))
			told = true
		}
	}
}

func rotate(list []string, by int) []string {
	if len(list) == 0 {
		return nil
	}
	by %= len(list)
	return append(slices.Clone(list[by:]), list[:by]...)
}

// startBackends starts the scenario's backends (pinned with the load
// generator) and waits until each answers.
func (h *harness) startBackends(ctx context.Context, sc scenario) (bs backendSet, stop func(), err error) {
	var started []*proc
	var extraFiles []string
	stop = func() {
		for _, p := range started {
			h.procs.stop(p)
		}
	}
	for i := range numBackends {
		port, err := freePort()
		if err != nil {
			stop()
			return bs, nil, err
		}
		addr := fmt.Sprintf("127.0.0.1:%d", port)
		name := fmt.Sprintf("b%d", i+1)
		if sc.GRPC != "" {
			p, counter, err := h.startGRPCBackend(sc, name, addr)
			if err != nil {
				stop()
				return bs, nil, err
			}
			started = append(started, p)
			bs.addrs, bs.counters = append(bs.addrs, addr), append(bs.counters, counter)
			bs.pids = append(bs.pids, strconv.Itoa(p.pid()))
			continue
		}
		args := []string{"-backend", "-listen", addr, "-name", name}
		if sc.HTTPS != "" {
			port, err := freePort()
			if err != nil {
				stop()
				return bs, nil, err
			}
			tlsAddr := fmt.Sprintf("127.0.0.1:%d", port)
			listen := map[string]string{"1.1": "-tls-listen", "2": "-h2-listen"}[sc.HTTPS]
			args = append(args, listen, tlsAddr, "-cert", h.certs.Cert, "-key", h.certs.Key)
			bs.tlsAddrs = append(bs.tlsAddrs, tlsAddr)
		}
		// the scaling scenarios' extra backends: listeners in these three
		extra, extraFile := (sc.backends()-numBackends+numBackends-1-i)/numBackends, ""
		if extra > 0 {
			extraFile = filepath.Join(h.tmp, sc.Name+"-"+name+".addrs")
			os.Remove(extraFile)
			args = append(args, "-extra", strconv.Itoa(extra), "-extra-ip", fmt.Sprintf("127.0.%d.1", i+1), "-extra-file", extraFile)
			extraFiles = append(extraFiles, extraFile)
		}
		if i == sc.Slow {
			args = append(args, "-delay", sc.delay.String())
			if sc.Name == scFlip {
				args = append(args, "-fast")
			}
		}
		p, err := h.procs.start(procSpec{name: "backend " + name, cpus: h.ldCPUs, env: os.Environ(),
			logFile: filepath.Join(h.tmp, sc.Name+"-"+name+".log"), bin: h.opts.exe, args: args})
		if err != nil {
			stop()
			return bs, nil, err
		}
		started = append(started, p)
		bs.addrs, bs.counters = append(bs.addrs, addr), append(bs.counters, addr)
		bs.pids = append(bs.pids, strconv.Itoa(p.pid()))
	}
	for i, addr := range bs.counters {
		if err := waitHTTP(ctx, started[i], "http://"+addr+"/health", 10*time.Second); err != nil {
			stop()
			return bs, nil, err
		}
	}
	for _, f := range extraFiles {
		// written whole, once every listener listens
		b, err := os.ReadFile(f)
		if err != nil {
			stop()
			return bs, nil, fmt.Errorf("the extra backends' addresses: %w", err)
		}
		bs.addrs = append(bs.addrs, strings.Fields(string(b))...)
	}
	if n := len(slices.Compact(slices.Sorted(slices.Values(bs.addrs)))); n != sc.backends() {
		stop()
		return bs, nil, fmt.Errorf("%d backends listening on distinct addresses, want %d", n, sc.backends())
	}
	return bs, stop, nil
}

// backendSet is a scenario's running backends.
type backendSet struct {
	addrs    []string // host:port
	tlsAddrs []string // of their TLS listeners, in the https scenarios
	// counters are host:port of their /health and /count: addrs but for
	// gRPC backends, and in the scaling scenarios only the three
	// processes' plain listeners, whose /count counts all of the
	// process's listeners (the first numBackends addrs)
	counters []string
	pids     []string
}

// runOne runs one configuration: a fresh Caddy, the load generator (which
// warms up, then measures), and Caddy stopped again. During the measured
// window, during (if set) is called with Caddy's admin address.
// siteSpec is what the Caddyfile of a configuration in a scenario is made
// for.
func (h *harness) siteSpec(sc scenario, cfg lbConfig, backends backendSet) siteSpec {
	s := siteSpec{backends: backends.addrs, clientTLS: sc.H2}
	if sc.HTTPS != "" {
		s.backends, s.tls, s.version = backends.tlsAddrs, h.certs, sc.HTTPS
	}
	if slices.Contains(sc.AccessLog, cfg.Name) {
		s.accessLog = filepath.Join(h.tmp, "access-"+sc.Name+"-"+cfg.Name+".log")
		s.logAppend = slices.Contains(sc.LogAppend, cfg.Name)
	}
	return s
}

// startCaddy writes the configuration's Caddyfile for the scenario, starts
// a fresh Caddy with it and waits until its site answers. It returns the
// site's and the admin endpoint's host:port.
func (h *harness) startCaddy(ctx context.Context, sc scenario, cfg lbConfig, backends backendSet) (caddy *proc, site, admin string, err error) {
	adminPort, err1 := freePort()
	sitePort, err2 := freePort()
	if err := errors.Join(err1, err2); err != nil {
		return nil, "", "", err
	}
	file := filepath.Join(h.tmp, "Caddyfile")
	spec := h.siteSpec(sc, cfg, backends)
	if spec.accessLog != "" {
		// every run starts with an empty log: a file that grew over the
		// repeats would cost more to write to in later runs
		if err := os.Remove(spec.accessLog); err != nil && !errors.Is(err, os.ErrNotExist) {
			return nil, "", "", err
		}
	}
	text := caddyfile(cfg, adminPort, sitePort, spec)
	if err := os.WriteFile(file, []byte(text), 0o644); err != nil {
		return nil, "", "", err
	}
	if key := sc.Name + "-" + cfg.Name; !h.saved[key] {
		h.saved[key] = true
		if err := os.WriteFile(filepath.Join(h.out, "caddyfiles", key+".Caddyfile"), []byte(text), 0o644); err != nil {
			return nil, "", "", err
		}
	}

	// Caddy takes over a second to shut down gracefully, with nothing to
	// save here, so it gets little time before it is killed.
	caddy, err = h.procs.start(procSpec{name: "caddy (" + cfg.Name + ")", cpus: h.lbCPUs, env: h.env, grace: 300 * time.Millisecond,
		logFile: filepath.Join(h.tmp, "caddy.log"), bin: h.caddy,
		args: []string{"run", "--config", file, "--adapter", "caddyfile"}})
	if err != nil {
		return nil, "", "", err
	}
	site = fmt.Sprintf("127.0.0.1:%d", sitePort)
	scheme := "http://"
	if spec.clientTLS {
		scheme = "https://"
	}
	if err := waitHTTP(ctx, caddy, scheme+site+"/", 15*time.Second); err != nil {
		h.procs.stop(caddy)
		return nil, "", "", err
	}
	return caddy, site, fmt.Sprintf("127.0.0.1:%d", adminPort), nil
}

func (h *harness) runOne(ctx context.Context, sc scenario, cfg lbConfig, backends backendSet,
	warmup, duration time.Duration, during func(admin string) error) (runRecord, error) {
	rec := runRecord{Scenario: sc.Name, Config: cfg.Name}
	caddy, site, admin, err := h.startCaddy(ctx, sc, cfg, backends)
	if err != nil {
		return rec, err
	}
	defer h.procs.stop(caddy)

	var counters []string
	if cfg.proxies {
		counters = backends.counters
	}
	args := []string{"-load", "-addr", site, "-conns", strconv.Itoa(sc.Conns),
		"-warmup", warmup.String(), "-duration", duration.String(),
		"-lb-pid", strconv.Itoa(caddy.pid()), "-backends", strings.Join(counters, ","),
		"-backend-pids", strings.Join(backends.pids, ",")}
	if sc.Method != "" {
		args = append(args, "-method", sc.Method, "-body", strconv.Itoa(sc.BodyBytes))
	}
	if sc.Sticky {
		args = append(args, "-sticky")
	}
	if sc.H2 {
		args = append(args, "-h2", "-h2-conns", strconv.Itoa(sc.H2Conns), "-h2-streams", strconv.Itoa(sc.H2Streams),
			"-ca", filepath.Join(h.tmp, "data", "caddy", "pki", "authorities", "local", "root.crt"))
	}
	if sc.Name == scFlip {
		// The load generator turns the backend slow and fast on the
		// window's own clock, and counts each backend's requests per step.
		args = append(args, "-series", seriesStep.String(), "-flip", backends.addrs[sc.Slow],
			"-flip-at", h.opts.FlipBefore.String(), "-flip-for", h.opts.FlipSlow.String())
	}
	var stdout strings.Builder
	load, err := h.procs.start(procSpec{name: "load generator", cpus: h.ldCPUs, env: os.Environ(),
		stdout: &stdout, logFile: filepath.Join(h.tmp, "load.log"), bin: h.opts.exe, args: args})
	if err != nil {
		return rec, err
	}
	duringErr := make(chan error, 1)
	if during != nil {
		go func() {
			select {
			case <-time.After(warmup):
				duringErr <- during(admin)
			case <-ctx.Done():
				duringErr <- ctx.Err()
			}
		}()
	} else {
		duringErr <- nil
	}
	if err := h.procs.wait(ctx, load, warmup+duration+30*time.Second); err != nil {
		return rec, err
	}
	if err := <-duringErr; err != nil {
		return rec, err
	}
	if caddy.exited() {
		return rec, fmt.Errorf("caddy exited during the run: %v%s", caddy.err, logTail(caddy.log))
	}
	if err := rec.fill(stdout.String()); err != nil {
		return rec, err
	}
	if sc.Name == scFlip {
		rec.flipFigures(sc.Slow, h.opts.FlipBefore+h.opts.FlipSlow)
	}
	h.lbCoreFigures(&rec)
	return rec, nil
}

// lbCoreFigures derives what else ran on the load balancer's core, and its
// busy time per request, when the load balancer has a core of its own.
func (h *harness) lbCoreFigures(rec *runRecord) {
	if lb := singleCore(h.lbCPUs); lb >= 0 && lb < len(rec.CPUBusy) {
		rec.OthersOnLBCore = max(rec.CPUBusy[lb]-rec.CaddyCore, 0)
		rec.LBCorePerReqUs = rec.CPUBusy[lb] * rec.Seconds / float64(rec.Requests) * 1e6
	}
}

// waitHTTP polls url until it answers 200, p exits, or bound passes.
func waitHTTP(ctx context.Context, p *proc, url string, bound time.Duration) error {
	// an https URL is Caddy's own site with its internal CA's certificate,
	// which is not trusted here: this only waits until it answers
	tr := &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}
	defer tr.CloseIdleConnections()
	client := &http.Client{Timeout: time.Second, Transport: tr}
	deadline := time.Now().Add(bound)
	for {
		resp, err := client.Get(url)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return nil
			}
			err = fmt.Errorf("status %d", resp.StatusCode)
		}
		if p.exited() {
			return fmt.Errorf("%s exited before answering: %v%s", p.name, p.err, logTail(p.log))
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s did not answer %s within %v: %v%s", p.name, url, bound, err, logTail(p.log))
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// profileLoad is the scenario whose load a profile runs under: the
// scenario of that name, with every configuration.
func profileLoad(o options, name string) scenario {
	all := o
	all.Scenarios = []string{name}
	all.Configs = nil
	for _, c := range allConfigs {
		all.Configs = append(all.Configs, c.Name)
	}
	return scenarios(all)[0]
}

// profileRun runs one extra, unmeasured run of a configuration under a
// scenario's load and takes a CPU profile of Caddy from its admin endpoint
// in the middle of it.
func (h *harness) profileRun(ctx context.Context, sc scenario, name string) (string, error) {
	cfg, _ := configByName(name)
	backends, stop, err := h.startBackends(ctx, sc)
	if err != nil {
		return "", err
	}
	defer stop()
	secs := h.opts.profileSeconds
	file := filepath.Join(h.out, "profile-"+sc.Name+"-"+name+".pprof")
	fmt.Fprintf(h.opts.stdout, "  profile: %s under the %s load, %ds CPU profile ...\n", name, sc.Name, secs)
	_, err = h.runOne(ctx, sc, cfg, backends, h.opts.warmup(sc), time.Duration(secs+1)*time.Second, func(admin string) error {
		client := &http.Client{Timeout: time.Duration(secs+15) * time.Second}
		if err := saveURL(client, fmt.Sprintf("http://%s/debug/pprof/profile?seconds=%d", admin, secs), file); err != nil {
			return fmt.Errorf("profile: %w", err)
		}
		// where the memory is at the end of the window: the heap's
		// allocations and the runtime's own accounts (stacks, heap, GC)
		for _, snap := range []struct{ path, suffix string }{
			{"/debug/pprof/heap", ".heap.pprof"},
			{"/debug/vars", ".vars.json"},
		} {
			if err := saveURL(client, "http://"+admin+snap.path, strings.TrimSuffix(file, ".pprof")+snap.suffix); err != nil {
				return fmt.Errorf("profile: %w", err)
			}
		}
		return nil
	})
	if err != nil {
		return "", fmt.Errorf("profile of %s: %w", name, err)
	}
	out, err := exec.CommandContext(ctx, "go", "tool", "pprof", "-top", "-nodecount=15", file).Output()
	if err != nil {
		return "", fmt.Errorf("go tool pprof -top %s: %w", file, err)
	}
	return string(out), nil
}

// saveURL writes the body of a GET of url to file.
func saveURL(client *http.Client, url, file string) error {
	resp, err := client.Get(url)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s: status %d", url, resp.StatusCode)
	}
	f, err := os.Create(file)
	if err != nil {
		return err
	}
	if _, err := io.Copy(f, io.LimitReader(resp.Body, 64<<20)); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}
