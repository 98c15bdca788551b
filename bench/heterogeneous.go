package main

import (
	"context"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"time"
)

// The heterogeneous scenario (-scenarios heterogeneous): three backends of
// which one has half the capacity of the others. Each backend serves with
// hetWorkers workers; a request holds one for the backend's service time
// (hetService, twice that on the small one) and waits in line when all are
// busy, so a backend's latency grows with the load it is given, as a
// machine's does. Each backend reports its real utilization (the share of
// its workers' time busy over the last second) in the ORCA
// endpoint-load-metrics header. 64 clients; p50, p99 and each backend's
// share for lbpool least_conn, least_time and least_conn with
// load_reports, reverse_proxy least_conn and HAProxy leastconn.
//
// From the outside the small backend looks like the others until it is
// loaded: least_conn gives every backend the same number of requests in
// flight, so the small one's line is twice as slow. Its reports say it is
// as busy as the others with half their requests, and load_reports gives it
// half their weight.
const (
	scHeterogeneous = "heterogeneous"
	hetClients      = 64
	hetWorkers      = 4
	hetService      = 50 * time.Millisecond
	hetWarmup       = 5 * time.Second // beyond load_reports' blackout (2s here) and a recomputation
)

var hetConfigs = []cacheConfig{
	{name: "lbpool_least_conn", handler: "lbpool %s {\n\t\tname bench\n\t}"},
	{name: "lbpool_least_time", handler: "lbpool %s {\n\t\tname bench\n\t\tlb_policy least_time\n\t}"},
	{name: "lbpool_load_reports", handler: "lbpool %s {\n\t\tname bench\n\t\tload_reports {\n\t\t\tblackout 2s\n\t\t}\n\t}"},
	{name: "rp_least_conn", handler: "reverse_proxy %s {\n\t\tlb_policy least_conn\n\t\ttransport http {\n\t\t\tkeepalive_idle_conns_per_host 1024\n\t\t}\n\t}"},
	{name: "haproxy", haproxy: haproxyLeastConnConfig},
}

// hetBackend is one backend: its workers, its busy time and its requests.
type hetBackend struct {
	service  time.Duration
	workers  chan struct{}
	busy     atomic.Int64  // nanoseconds its workers were busy, ever
	util     atomic.Uint64 // math.Float64bits of the utilization over the last second
	requests atomic.Int64
	srv      *http.Server
	addr     string
}

func (b *hetBackend) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	b.workers <- struct{}{}
	time.Sleep(b.service)
	b.busy.Add(int64(b.service))
	<-b.workers
	b.requests.Add(1)
	w.Header().Set("Endpoint-Load-Metrics", fmt.Sprintf("TEXT application_utilization=%.3f", math.Float64frombits(b.util.Load())))
	_, _ = io.WriteString(w, "ok")
}

// measure keeps util: the busy time of the last second over what the
// workers could give, every 100 ms, until ctx ends.
func (b *hetBackend) measure(ctx context.Context) {
	t := time.NewTicker(100 * time.Millisecond)
	defer t.Stop()
	var ring [10]int64
	for i := 0; ; i++ {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		now := b.busy.Load()
		old := ring[i%len(ring)]
		ring[i%len(ring)] = now
		if i >= len(ring) {
			b.util.Store(math.Float64bits(float64(now-old) / float64(hetWorkers*int64(time.Second))))
		}
	}
}

func (b *hetBackend) address() string { return b.addr }
func (b *hetBackend) close()          { _ = b.srv.Close() }

func startHetBackends(ctx context.Context) ([]*hetBackend, error) {
	bs := make([]*hetBackend, numBackends)
	for i := range bs {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		service := hetService
		if i == numBackends-1 {
			service *= 2 // the small one
		}
		b := &hetBackend{service: service, workers: make(chan struct{}, hetWorkers), addr: l.Addr().String()}
		b.srv = &http.Server{Handler: b}
		go func() { _ = b.srv.Serve(l) }()
		go b.measure(ctx)
		bs[i] = b
	}
	return bs, nil
}

// hetResult is one configuration's figures.
type hetResult struct {
	name     string
	requests int64
	failed   int64
	p50, p99 time.Duration
	shares   []float64
	skipped  string
}

// runHeterogeneous runs the scenario and writes its table to stdout and
// heterogeneous.txt in the output folder.
func (h *harness) runHeterogeneous(ctx context.Context) error {
	window := h.opts.WorkloadDuration * 2
	var results []hetResult
	for _, cfg := range hetConfigs {
		fmt.Fprintf(h.opts.stdout, "%s: %s\n", scHeterogeneous, cfg.name)
		r, err := h.runHetOne(ctx, cfg, window)
		if err != nil {
			return fmt.Errorf("%s scenario, %s: %w", scHeterogeneous, cfg.name, err)
		}
		results = append(results, r)
	}
	var t strings.Builder
	fmt.Fprintf(&t, "heterogeneous scenario: %d backends of %d workers, %v per request (the third: %v, half the capacity), reporting their utilization; %d clients, %v measured after %v\n\n",
		numBackends, hetWorkers, hetService, 2*hetService, hetClients, window, hetWarmup)
	fmt.Fprintf(&t, "| configuration | req/s | p50 | p99 | shares (the third is the small one) |\n|---|---|---|---|---|\n")
	for _, r := range results {
		if r.skipped != "" {
			fmt.Fprintf(&t, "| %s | not run: %s | | | |\n", r.name, r.skipped)
			continue
		}
		shares := make([]string, len(r.shares))
		for i, s := range r.shares {
			shares[i] = fmt.Sprintf("%.1f%%", 100*s)
		}
		fmt.Fprintf(&t, "| %s | %.0f | %s | %s | %s |\n", r.name, float64(r.requests)/window.Seconds(),
			r.p50.Round(100*time.Microsecond), r.p99.Round(100*time.Microsecond), strings.Join(shares, " / "))
		if r.failed > 0 {
			fmt.Fprintf(&t, "|   (%d requests failed) | | | | |\n", r.failed)
		}
	}
	fmt.Fprint(h.opts.stdout, "\n"+t.String())
	return os.WriteFile(filepath.Join(h.out, "heterogeneous.txt"), []byte(t.String()), 0o644)
}

// runHetOne starts fresh backends and the load balancer, warms up and
// measures one configuration.
func (h *harness) runHetOne(ctx context.Context, cfg cacheConfig, window time.Duration) (hetResult, error) {
	res := hetResult{name: cfg.name}
	bctx, cancel := context.WithCancel(ctx)
	defer cancel()
	bs, err := startHetBackends(bctx)
	if err != nil {
		return res, err
	}
	site, stop, skip, err := balanceOver(ctx, h, scHeterogeneous, cfg, bs)
	if err != nil || skip != "" {
		res.skipped = skip
		return res, err
	}
	defer stop()

	requester := func(int) func() *http.Request {
		return func() *http.Request {
			req, _ := http.NewRequest(http.MethodGet, "http://"+site+"/", nil)
			return req
		}
	}
	before := make([]int64, len(bs))
	res.p50, res.p99, res.requests, res.failed = closedLoop(ctx, hetClients, hetWarmup, window, requester, func() {
		for i, b := range bs {
			before[i] = b.requests.Load()
		}
	})
	var total int64
	for i, b := range bs {
		total += b.requests.Load() - before[i]
	}
	for i, b := range bs {
		res.shares = append(res.shares, float64(b.requests.Load()-before[i])/float64(max(total, 1)))
	}
	return res, nil
}

// haproxyLeastConnConfig is HAProxy's leastconn over addrs.
func haproxyLeastConnConfig(site string, addrs []string) string {
	return haproxyConfig(site, addrs, "leastconn")
}
