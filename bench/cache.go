package main

import (
	"context"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// The cache scenario (-scenarios cache): 8 backends that each keep a cache
// of the keys they served in the last cacheTTL, answering a key they have
// (a hit) in cacheHit and any other (a miss) in cacheMiss; 64 clients send
// keys drawn from Zipf(1.1) over cacheKeys keys in the X-Key header. Each
// configuration gets fresh backends (empty caches), a warm-up, then a
// measured window: the hit ratio the backends saw, the clients' p50 and
// p99, and each backend's peak of requests in flight, against the bound of
// hash_balance_factor 1.25 with 64 clients, ceil(1.25 × 65 / 8) = 11.
//
// The configurations: lbpool hash on the header with the bound (1.25) and
// without it, lbpool least_conn, reverse_proxy's lb_policy header X-Key
// (rendezvous hashing, unbounded), and HAProxy's balance hdr(X-Key) with
// hash-type consistent and hash-balance-factor 125 when haproxy is on PATH.
const (
	scCache       = "cache"
	cacheBackends = 8
	cacheClients  = 64
	cacheKeys     = 10000
	cacheZipfS    = 1.1
	cacheTTL      = 10 * time.Second
	cacheHit      = 200 * time.Microsecond
	cacheMiss     = 5 * time.Millisecond
	cacheWarmup   = 3 * time.Second
	cacheFactor   = 1.25
)

// cacheConfig is one load balancer of the cache scenario (and of the
// heterogeneous one): a Caddy handler directive, or HAProxy.
type cacheConfig struct {
	name    string
	handler string                                   // "" for HAProxy
	haproxy func(site string, addrs []string) string // HAProxy's configuration, when handler is ""
}

var cacheConfigs = []cacheConfig{
	{name: "lbpool_hash", handler: "lbpool %s {\n\t\tname bench\n\t\tlb_policy header X-Key\n\t}"},
	{name: "lbpool_hash_off", handler: "lbpool %s {\n\t\tname bench\n\t\tlb_policy header X-Key\n\t\thash_balance_factor off\n\t}"},
	{name: "lbpool_least_conn", handler: "lbpool %s {\n\t\tname bench\n\t}"},
	{name: "rp_header", handler: "reverse_proxy %s {\n\t\tlb_policy header X-Key\n\t\ttransport http {\n\t\t\tkeepalive_idle_conns_per_host 1024\n\t\t}\n\t}"},
	{name: "haproxy", haproxy: haproxyHashConfig},
}

// cacheBackend is one backend with its cache and counters.
type cacheBackend struct {
	mu     sync.Mutex
	seen   map[string]time.Time
	hits   atomic.Int64
	misses atomic.Int64
	now    atomic.Int64
	peak   atomic.Int64
	srv    *http.Server
	addr   string
}

func (b *cacheBackend) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	n := b.now.Add(1)
	for p := b.peak.Load(); n > p && !b.peak.CompareAndSwap(p, n); p = b.peak.Load() {
	}
	key, now := r.Header.Get("X-Key"), time.Now()
	b.mu.Lock()
	last, ok := b.seen[key]
	b.seen[key] = now
	b.mu.Unlock()
	if ok && now.Sub(last) < cacheTTL {
		b.hits.Add(1)
		time.Sleep(cacheHit)
	} else {
		b.misses.Add(1)
		time.Sleep(cacheMiss)
	}
	b.now.Add(-1)
	_, _ = io.WriteString(w, "ok")
}

// resetCounters starts the measured window.
func (b *cacheBackend) resetCounters() {
	b.hits.Store(0)
	b.misses.Store(0)
	b.peak.Store(b.now.Load())
}

func startCacheBackends() ([]*cacheBackend, error) {
	bs := make([]*cacheBackend, cacheBackends)
	for i := range bs {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		b := &cacheBackend{seen: map[string]time.Time{}, addr: l.Addr().String()}
		b.srv = &http.Server{Handler: b}
		go func() { _ = b.srv.Serve(l) }()
		bs[i] = b
	}
	return bs, nil
}

// cacheResult is one configuration's figures.
type cacheResult struct {
	name     string
	requests int64
	failed   int64
	hitRatio float64
	p50, p99 time.Duration
	peaks    []int64
	skipped  string
}

// runCache runs the cache scenario and writes its table to stdout and
// cache.txt in the output folder.
func (h *harness) runCache(ctx context.Context) error {
	window := h.opts.WorkloadDuration * 2
	bound := int64(math.Ceil(cacheFactor * float64(cacheClients+1) / cacheBackends))
	var results []cacheResult
	for _, cfg := range cacheConfigs {
		fmt.Fprintf(h.opts.stdout, "cache: %s\n", cfg.name)
		r, err := h.runCacheOne(ctx, cfg, window)
		if err != nil {
			return fmt.Errorf("cache scenario, %s: %w", cfg.name, err)
		}
		results = append(results, r)
	}
	var t strings.Builder
	fmt.Fprintf(&t, "cache scenario: %d backends (hit %v, miss %v, keys kept %v), Zipf(%.1f) over %d keys, %d clients, %v measured after %v\n",
		cacheBackends, cacheHit, cacheMiss, cacheTTL, cacheZipfS, cacheKeys, cacheClients, window, cacheWarmup)
	fmt.Fprintf(&t, "bound of hash_balance_factor %.2f with %d clients: ceil(%.2f × %d / %d) = %d in flight per backend\n\n",
		cacheFactor, cacheClients, cacheFactor, cacheClients+1, cacheBackends, bound)
	fmt.Fprintf(&t, "| configuration | req/s | hit ratio | p50 | p99 | peak in flight (max) | peak in flight per backend |\n|---|---|---|---|---|---|---|\n")
	for _, r := range results {
		if r.skipped != "" {
			fmt.Fprintf(&t, "| %s | not run: %s | | | | | |\n", r.name, r.skipped)
			continue
		}
		fmt.Fprintf(&t, "| %s | %.0f | %.1f%% | %s | %s | %d | %v |\n", r.name, float64(r.requests)/window.Seconds(), 100*r.hitRatio,
			r.p50.Round(10*time.Microsecond), r.p99.Round(10*time.Microsecond), slices.Max(r.peaks), r.peaks)
		if r.failed > 0 {
			fmt.Fprintf(&t, "|   (%d requests failed) | | | | | | |\n", r.failed)
		}
	}
	fmt.Fprint(h.opts.stdout, "\n"+t.String())
	return os.WriteFile(filepath.Join(h.out, "cache.txt"), []byte(t.String()), 0o644)
}

// runCacheOne starts fresh backends and the load balancer, warms up and
// measures one configuration.
func (h *harness) runCacheOne(ctx context.Context, cfg cacheConfig, window time.Duration) (cacheResult, error) {
	res := cacheResult{name: cfg.name}
	bs, err := startCacheBackends()
	if err != nil {
		return res, err
	}
	site, stop, skip, err := balanceOver(ctx, h, scCache, cfg, bs)
	if err != nil || skip != "" {
		res.skipped = skip
		return res, err
	}
	defer stop()

	requester := func(g int) func() *http.Request {
		zipf := rand.NewZipf(rand.New(rand.NewPCG(uint64(g), 11)), cacheZipfS, 1, cacheKeys-1)
		return func() *http.Request {
			req, _ := http.NewRequest(http.MethodGet, "http://"+site+"/", nil)
			req.Header.Set("X-Key", fmt.Sprint("key-", zipf.Uint64()))
			return req
		}
	}
	var requests, failed int64
	res.p50, res.p99, requests, failed = closedLoop(ctx, cacheClients, cacheWarmup, window, requester, func() {
		for _, b := range bs {
			b.resetCounters()
		}
	})
	var hits, total int64
	for _, b := range bs {
		hits += b.hits.Load()
		total += b.hits.Load() + b.misses.Load()
		res.peaks = append(res.peaks, b.peak.Load())
	}
	if total > 0 {
		res.hitRatio = float64(hits) / float64(total)
	}
	res.requests, res.failed = requests, failed
	return res, nil
}

// closedLoop has clients send requests one after another for warmup and
// then window; requester(g) makes client g's requests. measure is called as
// the window begins. It returns the window's p50 and p99 and how many
// requests it sent and how many did not get a 200.
func closedLoop(ctx context.Context, clients int, warmup, window time.Duration, requester func(g int) func() *http.Request,
	measure func()) (p50, p99 time.Duration, requests, failed int64) {
	var measuring atomic.Bool
	lats := make([][]time.Duration, clients)
	var nRequests, nFailed atomic.Int64
	end := time.Now().Add(warmup + window)
	var wg sync.WaitGroup
	client := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: clients}}
	for g := range clients {
		wg.Go(func() {
			next := requester(g)
			for time.Now().Before(end) && ctx.Err() == nil {
				start := time.Now()
				resp, err := client.Do(next())
				if err == nil {
					_, _ = io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
				}
				if !measuring.Load() {
					continue
				}
				nRequests.Add(1)
				if err != nil || resp.StatusCode != http.StatusOK {
					nFailed.Add(1)
					continue
				}
				lats[g] = append(lats[g], time.Since(start))
			}
		})
	}
	select {
	case <-time.After(warmup):
	case <-ctx.Done():
	}
	measure()
	measuring.Store(true)
	wg.Wait()
	client.CloseIdleConnections()
	var all []time.Duration
	for _, l := range lats {
		all = append(all, l...)
	}
	slices.Sort(all)
	if len(all) > 0 {
		p50, p99 = all[len(all)/2], all[len(all)*99/100]
	}
	return p50, p99, nRequests.Load(), nFailed.Load()
}

// servedBackend is a backend the harness serves in its own process.
type servedBackend interface {
	address() string
	close()
}

func (b *cacheBackend) address() string { return b.addr }
func (b *cacheBackend) close()          { _ = b.srv.Close() }

// balanceOver starts cfg's load balancer in front of bs; stop stops it and
// closes bs, which are closed at once when it does not start.
func balanceOver[B servedBackend](ctx context.Context, h *harness, scenario string, cfg cacheConfig, bs []B) (site string, stop func(), skip string, err error) {
	addrs := make([]string, len(bs))
	for i, b := range bs {
		addrs[i] = b.address()
	}
	closeAll := func() {
		for _, b := range bs {
			b.close()
		}
	}
	site, stopBalancer, skip, err := h.startBalancer(ctx, scenario, cfg, addrs)
	if err != nil || skip != "" {
		closeAll()
		return "", nil, skip, err
	}
	return site, func() { stopBalancer(); closeAll() }, "", nil
}

// startBalancer starts Caddy with cfg's handler, or HAProxy, in front of
// addrs for the scenario; skip says why a configuration cannot run (no
// haproxy).
func (h *harness) startBalancer(ctx context.Context, scenario string, cfg cacheConfig, addrs []string) (site string, stop func(), skip string, err error) {
	sitePort, err := freePort()
	if err != nil {
		return "", nil, "", err
	}
	site = fmt.Sprintf("127.0.0.1:%d", sitePort)
	var spec procSpec
	var text string
	if cfg.handler == "" {
		bin, lookErr := exec.LookPath("haproxy")
		if lookErr != nil {
			return "", nil, "haproxy is not installed (apt-get install haproxy)", nil
		}
		text = cfg.haproxy(site, addrs)
		file := filepath.Join(h.tmp, "haproxy.cfg")
		if err := os.WriteFile(file, []byte(text), 0o644); err != nil {
			return "", nil, "", err
		}
		spec = procSpec{name: "haproxy", cpus: h.lbCPUs, env: h.env, bin: bin, args: []string{"-db", "-f", file},
			logFile: filepath.Join(h.tmp, "haproxy.log")}
	} else {
		adminPort, err := freePort()
		if err != nil {
			return "", nil, "", err
		}
		c := lbConfig{handler: func(siteSpec) string { return fmt.Sprintf(cfg.handler, strings.Join(addrs, " ")) }}
		text = caddyfile(c, adminPort, sitePort, siteSpec{})
		file := filepath.Join(h.tmp, "Caddyfile")
		if err := os.WriteFile(file, []byte(text), 0o644); err != nil {
			return "", nil, "", err
		}
		spec = procSpec{name: "caddy (" + cfg.name + ")", cpus: h.lbCPUs, env: h.env, grace: 300 * time.Millisecond,
			logFile: filepath.Join(h.tmp, "caddy.log"), bin: h.caddy, args: []string{"run", "--config", file, "--adapter", "caddyfile"}}
	}
	if err := os.WriteFile(filepath.Join(h.out, "caddyfiles", scenario+"-"+cfg.name+".conf"), []byte(text), 0o644); err != nil {
		return "", nil, "", err
	}
	p, err := h.procs.start(spec)
	if err != nil {
		return "", nil, "", err
	}
	if err := waitHTTP(ctx, p, "http://"+site+"/", 15*time.Second); err != nil {
		h.procs.stop(p)
		return "", nil, "", err
	}
	return site, func() { h.procs.stop(p) }, "", nil
}

// haproxyHashConfig is HAProxy's bounded consistent hash on the header, on
// 127.0.0.1 only.
func haproxyHashConfig(site string, addrs []string) string {
	return haproxyConfig(site, addrs, fmt.Sprintf("hdr(X-Key)\n\thash-type consistent\n\thash-balance-factor %d", int(cacheFactor*100)))
}

// haproxyConfig is HAProxy with the balance algorithm (and its lines) over
// addrs, on 127.0.0.1 only.
func haproxyConfig(site string, addrs []string, balance string) string {
	var servers strings.Builder
	for i, a := range addrs {
		fmt.Fprintf(&servers, "\tserver s%d %s\n", i, a)
	}
	return fmt.Sprintf(`global
	maxconn 4096

defaults
	mode http
	timeout connect 3s
	timeout client 30s
	timeout server 30s
	http-reuse always

frontend fe
	bind %s
	default_backend be

backend be
	balance %s
%s`, site, balance, servers.String())
}
