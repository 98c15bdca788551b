package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// The retry_storm scenario: three backends that, in the middle of the run,
// start answering 503 to every other request (their /health stays 200).
// Each proxy retries 503s on another backend; what counts is how many
// backend requests a client request becomes once the backends shed load,
// and how many client requests still succeed. lbpool runs with its retry
// budget (the default) and without; reverse_proxy with lb_retries 2 and the
// same lb_retry_match; HAProxy, when installed, with retry-on 503 and
// retries 3.

const scRetryStorm = "retry_storm"

// stormRecord is one proxy's figures in the retry_storm scenario, over the
// half of the window in which the backends shed.
type stormRecord struct {
	Config          string  `json:"config"`
	ClientRequests  int64   `json:"client_requests"`
	Succeeded       int64   `json:"succeeded"`
	BackendRequests int64   `json:"backend_requests"`
	PerClient       float64 `json:"backend_requests_per_client_request"`
	SuccessRate     float64 `json:"success_rate"`
	NotRun          string  `json:"not_run,omitempty"`
}

// stormBackend answers 200, or 503 to every other request while shedding.
type stormBackend struct {
	addr     string
	shedding atomic.Bool
	requests atomic.Int64
}

func (b *stormBackend) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path == "/health" {
		return
	}
	n := b.requests.Add(1)
	if b.shedding.Load() && n%2 == 0 {
		w.WriteHeader(http.StatusServiceUnavailable)
		return
	}
	_, _ = io.WriteString(w, "hello from a backend\n")
}

const stormMatch = "lb_retry_match `{rp.status_code} == 503`"

// stormConfigs are the proxies of the scenario: a name and its handler
// directive over the backends.
var stormConfigs = []struct{ name, handler string }{
	{"lbpool_budget", "lbpool %s {\n\t\thealth_uri /health\n\t\tlb_retries 2\n\t\t" + stormMatch + "\n\t}"},
	{"lbpool_no_budget", "lbpool %s {\n\t\thealth_uri /health\n\t\tlb_retries 2\n\t\tretry_budget off\n\t\t" + stormMatch + "\n\t}"},
	{"rp_lb_retries_2", "reverse_proxy %s {\n\t\tlb_policy least_conn\n\t\thealth_uri /health\n\t\tlb_retries 2\n\t\t" + stormMatch + "\n\t}"},
	{"haproxy", ""},
}

// haproxyHead is the start of the HAProxy configurations: the global
// section and the defaults every one shares, which a configuration may
// extend.
const haproxyHead = `global
	maxconn 4096
defaults
	mode http
	timeout connect 3s
	timeout client 30s
	timeout server 30s
`

// haproxyStormConfig retries a 503 on another server, up to 3 times.
func haproxyStormConfig(port int, backends []string) string {
	var servers strings.Builder
	for i, b := range backends {
		fmt.Fprintf(&servers, "\tserver b%d %s check inter 20s\n", i+1, b)
	}
	return haproxyHead + fmt.Sprintf(`	retries 3
	retry-on 503
	option redispatch 1
frontend fe
	bind 127.0.0.1:%d
	default_backend be
backend be
	balance leastconn
	option httpchk GET /health
%s`, port, servers.String())
}

// stormCaddyfile is the Caddyfile of a Caddy proxy in the scenario.
func stormCaddyfile(adminPort, sitePort int, handler string, backends []string) string {
	return fmt.Sprintf("{\n\tadmin 127.0.0.1:%d\n\tauto_https off\n\tpersist_config off\n\tgrace_period 1s\n}\n\n:%d {\n\tbind 127.0.0.1\n\t%s\n}\n",
		adminPort, sitePort, fmt.Sprintf(handler, strings.Join(backends, " ")))
}

// runRetryStorm runs the scenario for every proxy once and prints a table.
func (h *harness) runRetryStorm(ctx context.Context) ([]stormRecord, error) {
	var bs []*stormBackend
	var addrs []string
	for range numBackends {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		b := &stormBackend{addr: l.Addr().String()}
		srv := &http.Server{Handler: b}
		go func() { _ = srv.Serve(l) }()
		defer srv.Close()
		bs, addrs = append(bs, b), append(addrs, b.addr)
	}
	window := 2 * h.opts.WorkloadDuration
	fmt.Fprintf(h.opts.stdout, "%s: %d clients for %v, the backends answering 503 to every other request from half-way\n",
		scRetryStorm, h.opts.QualityConns, window)
	var out []stormRecord
	for _, c := range stormConfigs {
		for _, b := range bs {
			b.shedding.Store(false)
		}
		fmt.Fprintf(h.opts.stdout, "  %s: %s ...", scRetryStorm, c.name)
		p, site, err := h.startStormProxy(ctx, c.name, c.handler, addrs)
		if err != nil {
			return nil, err
		}
		if p == nil {
			rec := stormRecord{Config: c.name, NotRun: site}
			fmt.Fprintf(h.opts.stdout, " not run: %s\n", site)
			out = append(out, rec)
			continue
		}
		rec := stormLoad(ctx, "http://"+site+"/", h.opts.QualityConns, window, bs)
		h.procs.stop(p)
		rec.Config = c.name
		fmt.Fprintf(h.opts.stdout, " %.2f backend requests per client request, %.2f%% succeeded\n", rec.PerClient, rec.SuccessRate*100)
		out = append(out, rec)
	}
	return out, nil
}

// startStormProxy starts one proxy in front of the backends; a nil proc
// and a reason when it cannot run here.
func (h *harness) startStormProxy(ctx context.Context, name, handler string, backends []string) (*proc, string, error) {
	sitePort, err := freePort()
	if err != nil {
		return nil, "", err
	}
	site := fmt.Sprintf("127.0.0.1:%d", sitePort)
	spec := procSpec{name: name, cpus: h.lbCPUs, env: h.env, grace: 300 * time.Millisecond, logFile: filepath.Join(h.tmp, name+".log")}
	if handler == "" {
		bin, err := exec.LookPath("haproxy")
		if err != nil {
			return nil, "haproxy is not installed", nil
		}
		file := filepath.Join(h.tmp, "haproxy.cfg")
		if err := os.WriteFile(file, []byte(haproxyStormConfig(sitePort, backends)), 0o644); err != nil {
			return nil, "", err
		}
		spec.bin, spec.args = bin, []string{"-db", "-f", file}
	} else {
		adminPort, err := freePort()
		if err != nil {
			return nil, "", err
		}
		text := stormCaddyfile(adminPort, sitePort, handler, backends)
		file := filepath.Join(h.tmp, "Caddyfile")
		if err := os.WriteFile(file, []byte(text), 0o644); err != nil {
			return nil, "", err
		}
		_ = os.WriteFile(filepath.Join(h.out, "caddyfiles", scRetryStorm+"-"+name+".Caddyfile"), []byte(text), 0o644)
		spec.bin, spec.args = h.caddy, []string{"run", "--config", file, "--adapter", "caddyfile"}
	}
	p, err := h.procs.start(spec)
	if err != nil {
		return nil, "", err
	}
	if err := waitHTTP(ctx, p, "http://"+site+"/", 15*time.Second); err != nil {
		h.procs.stop(p)
		return nil, "", err
	}
	return p, site, nil
}

// stormLoad sends GETs from conns clients for window, turns the backends to
// shedding half-way, and measures the second half.
func stormLoad(ctx context.Context, url string, conns int, window time.Duration, bs []*stormBackend) stormRecord {
	client := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: conns}}
	defer client.CloseIdleConnections()
	var measuring atomic.Bool
	var sent, ok atomic.Int64
	end := time.Now().Add(window)
	var wg sync.WaitGroup
	for range conns {
		wg.Go(func() {
			for ctx.Err() == nil && time.Now().Before(end) {
				counted := measuring.Load()
				resp, err := client.Get(url)
				success := false
				if err == nil {
					_, _ = io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
					success = resp.StatusCode == http.StatusOK
				}
				if counted && measuring.Load() {
					sent.Add(1)
					if success {
						ok.Add(1)
					}
				}
			}
		})
	}
	backendTotal := func() int64 {
		var n int64
		for _, b := range bs {
			n += b.requests.Load()
		}
		return n
	}
	select {
	case <-time.After(window / 2):
	case <-ctx.Done():
	}
	for _, b := range bs {
		b.shedding.Store(true)
	}
	before := backendTotal()
	measuring.Store(true)
	wg.Wait()
	measuring.Store(false)
	rec := stormRecord{ClientRequests: sent.Load(), Succeeded: ok.Load(), BackendRequests: backendTotal() - before}
	if rec.ClientRequests > 0 {
		rec.PerClient = float64(rec.BackendRequests) / float64(rec.ClientRequests)
		rec.SuccessRate = float64(rec.Succeeded) / float64(rec.ClientRequests)
	}
	return rec
}
