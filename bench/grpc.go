package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthgrpc "google.golang.org/grpc/health/grpc_health_v1"
	testgrpc "google.golang.org/grpc/interop/grpc_testing"
	testpb "google.golang.org/grpc/interop/grpc_testing"
)

// The gRPC workloads: three grpc-go backends speaking cleartext HTTP/2
// (h2c), and a grpc-go load generator speaking h2c to the load balancer.
//
//   - grpc_unary: 64 callers over 4 client connections, each calling
//     grpc.testing.TestService/UnaryCall with a 100-byte payload and a
//     100-byte answer in a closed loop; calls/s, p50/p99 per call, the load
//     balancer's CPU per call and each backend's share of the calls;
//   - grpc_one_conn: the same over ONE client connection, where a balancer
//     that picks per connection sends everything to one backend;
//   - grpc_stream: one server stream per caller (StreamingOutputCall), the
//     backend sending 1 KiB messages as fast as flow control lets it;
//     messages/s and CPU per message (the "req" of the tables is a message;
//     p50/p99 are the gaps between a stream's messages).
//
// The load balancers: lbpool (h2c:// backends, checked with gRPC health
// checks), reverse_proxy (h2c://, lb_policy least_conn), HAProxy (proto h2,
// balance leastconn) and nginx (grpc_pass, least_conn), each pinned to the
// load balancer's core as Caddy is; HAProxy and nginx when installed
// (Debian: apt-get install haproxy nginx). Only lbpool checks health
// actively; the backends answer no HTTP check, and the others' checks are
// off.

// The gRPC scenarios' names; -scenarios grpc stands for all three.
const (
	scGRPCUnary   = "grpc_unary"
	scGRPCOneConn = "grpc_one_conn"
	scGRPCStream  = "grpc_stream"
	scGRPC        = "grpc"
)

var grpcScenarios = []string{scGRPCUnary, scGRPCOneConn, scGRPCStream}

const (
	grpcUnaryBytes  = 100  // payload of each call and of its answer
	grpcStreamBytes = 1024 // payload of each streamed message
	grpcClientConns = 4    // client connections of grpc_unary and grpc_stream
)

// The peers: load balancers other than Caddy, run when installed.
const (
	peerHAProxy = "haproxy"
	peerNginx   = "nginx"
)

// grpcScenario is one of the gRPC workloads with the configurations it
// runs: lbpool and reverse_proxy if selected, HAProxy and nginx always
// (gateGRPC drops those that cannot run here, with the reason).
func grpcScenario(o options, name string, pick func(...string) []string) scenario {
	sc := scenario{Name: name, Conns: o.Conns, Slow: -1, GRPC: "unary", ClientConns: grpcClientConns,
		MessageBytes: grpcUnaryBytes, Configs: append(pick("lbpool", baseline), peerHAProxy, peerNginx)}
	switch name {
	case scGRPCOneConn:
		sc.ClientConns = 1
	case scGRPCStream:
		sc.GRPC, sc.MessageBytes = "stream", grpcStreamBytes
	}
	return sc
}

// gateGRPC takes out of the gRPC scenarios the configurations that cannot
// run here: HAProxy or nginx not installed, or an lbpool that refuses h2c
// backends (caddy adapt fails).
func (h *harness) gateGRPC(ctx context.Context, scs []scenario) {
	if !slices.ContainsFunc(scs, func(sc scenario) bool { return sc.GRPC != "" }) {
		return
	}
	reasons := map[string]string{}
	for _, peer := range []string{peerHAProxy, peerNginx} {
		if _, err := exec.LookPath(peer); err != nil {
			reasons[peer] = fmt.Sprintf("%s is not installed (Debian: apt-get install %s)", peer, peer)
		}
	}
	cfg, _ := configByName("lbpool")
	text := grpcCaddyfile(cfg, 2019, 8080, []string{"127.0.0.1:9001", "127.0.0.1:9002", "127.0.0.1:9003"})
	file := filepath.Join(h.tmp, "grpc-adapt.Caddyfile")
	if err := os.WriteFile(file, []byte(text), 0o644); err == nil {
		out, err := exec.CommandContext(ctx, h.caddy, "adapt", "--config", file, "--adapter", "caddyfile").CombinedOutput()
		if err != nil {
			reasons["lbpool"] = "its configuration does not adapt: " + adaptError(out)
		}
	}
	for i := range scs {
		sc := &scs[i]
		if sc.GRPC == "" {
			continue
		}
		var keep []string
		for _, c := range sc.Configs {
			if r, ok := reasons[c]; ok {
				if sc.NotRun == nil {
					sc.NotRun = map[string]string{}
				}
				sc.NotRun[c] = r
				continue
			}
			keep = append(keep, c)
		}
		sc.Configs = keep
	}
}

// adaptError is the message of caddy adapt's failure: the msg of its last
// JSON log line, without the temporary file's name, or else its output.
func adaptError(out []byte) string {
	text := strings.TrimSpace(string(out))
	var line struct {
		Msg string `json:"msg"`
	}
	if i := strings.LastIndexByte(text, '\n'); i >= 0 {
		text = text[i+1:]
	}
	if json.Unmarshal([]byte(text), &line) != nil || line.Msg == "" {
		return text
	}
	if i := strings.LastIndex(line.Msg, ", at "); i >= 0 {
		return line.Msg[:i]
	}
	return line.Msg
}

// grpcCaddyfile is a Caddy configuration of the gRPC scenarios: h2c for
// the clients (protocols h1 h2 h2c) and h2c:// backends.
func grpcCaddyfile(c lbConfig, adminPort, sitePort int, backends []string) string {
	urls := "h2c://" + strings.Join(backends, " h2c://")
	handler := fmt.Sprintf(`reverse_proxy %s {
		lb_policy least_conn
		transport http {
			dial_timeout 3s
			keepalive_idle_conns_per_host 1024
			compression off
		}
	}`, urls)
	if c.Name == "lbpool" {
		handler = fmt.Sprintf(`lbpool %s {
		name bench
		health_grpc
		health_interval 20s
		health_timeout 2s
		dial_timeout 3s
	}`, urls)
	}
	return fmt.Sprintf(`{
	admin 127.0.0.1:%d
	auto_https off
	persist_config off
	grace_period 1s
	servers {
		protocols h1 h2 h2c
	}
}

:%d {
	bind 127.0.0.1
	%s
}
`, adminPort, sitePort, handler)
}

// haproxyGRPCConfig is HAProxy in front of h2c backends: h2c clients
// (proto h2 on the bind), leastconn over the servers' active streams.
func haproxyGRPCConfig(port int, backends []string) string {
	var servers strings.Builder
	for i, b := range backends {
		fmt.Fprintf(&servers, "\tserver b%d %s proto h2\n", i+1, b)
	}
	return haproxyHead + fmt.Sprintf(`frontend fe
	bind 127.0.0.1:%d proto h2
	default_backend be
backend be
	balance leastconn
%s`, port, servers.String())
}

// nginxGRPCConfig is nginx in front of h2c backends, one process (no
// master, so its CPU time is one PID's), h2c clients (http2 on a plain
// listener), least_conn, connections to the backends kept alive (nginx
// sends one call per backend connection at a time), and no request limit
// on either side's connections.
func nginxGRPCConfig(dir string, port int, backends []string) string {
	var servers strings.Builder
	for _, b := range backends {
		fmt.Fprintf(&servers, "\t\tserver %s;\n", b)
	}
	return fmt.Sprintf(`daemon off;
master_process off;
worker_processes 1;
pid %[1]s/nginx.pid;
error_log %[1]s/nginx-error.log warn;
events {
	worker_connections 4096;
}
http {
	access_log off;
	client_body_temp_path %[1]s/client_body;
	proxy_temp_path %[1]s/proxy;
	fastcgi_temp_path %[1]s/fastcgi;
	uwsgi_temp_path %[1]s/uwsgi;
	scgi_temp_path %[1]s/scgi;
	keepalive_requests 1000000000;
	keepalive_timeout 300s;
	http2_max_concurrent_streams 256;
	upstream backends {
		least_conn;
%[3]s		keepalive 256;
		keepalive_requests 1000000000;
	}
	server {
		listen 127.0.0.1:%[2]d http2;
		location / {
			grpc_pass grpc://backends;
		}
	}
}
`, dir, port, servers.String())
}

// startGRPCBalancer starts one configuration of a gRPC scenario in front
// of the backends, pinned to the load balancer's core, and waits until a
// call through it succeeds. It returns the process and the site's
// host:port.
func (h *harness) startGRPCBalancer(ctx context.Context, sc scenario, cfg lbConfig, backends []string) (*proc, string, error) {
	sitePort, err := freePort()
	if err != nil {
		return nil, "", err
	}
	site := fmt.Sprintf("127.0.0.1:%d", sitePort)
	spec := procSpec{name: cfg.Name, cpus: h.lbCPUs, env: h.env, grace: 300 * time.Millisecond,
		logFile: filepath.Join(h.tmp, sc.Name+"-"+cfg.Name+".log")}
	var text, file string
	switch cfg.Name {
	case peerHAProxy:
		text, file = haproxyGRPCConfig(sitePort, backends), filepath.Join(h.tmp, "haproxy.cfg")
		spec.bin, spec.args = peerHAProxy, []string{"-db", "-f", file}
	case peerNginx:
		dir := filepath.Join(h.tmp, "nginx")
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return nil, "", err
		}
		text, file = nginxGRPCConfig(dir, sitePort, backends), filepath.Join(dir, "nginx.conf")
		spec.bin, spec.args = peerNginx, []string{"-p", dir, "-e", filepath.Join(dir, "nginx-error.log"), "-c", file}
	default:
		adminPort, err := freePort()
		if err != nil {
			return nil, "", err
		}
		text, file = grpcCaddyfile(cfg, adminPort, sitePort, backends), filepath.Join(h.tmp, "Caddyfile")
		spec.bin, spec.args = h.caddy, []string{"run", "--config", file, "--adapter", "caddyfile"}
	}
	if err := os.WriteFile(file, []byte(text), 0o644); err != nil {
		return nil, "", err
	}
	if key := sc.Name + "-" + cfg.Name; !h.saved[key] {
		h.saved[key] = true
		ext := map[string]string{peerHAProxy: ".cfg", peerNginx: ".conf"}[cfg.Name]
		if ext == "" {
			ext = ".Caddyfile"
		}
		if err := os.WriteFile(filepath.Join(h.out, "caddyfiles", key+ext), []byte(text), 0o644); err != nil {
			return nil, "", err
		}
	}
	p, err := h.procs.start(spec)
	if err != nil {
		return nil, "", err
	}
	if err := waitGRPC(ctx, p, site, 15*time.Second); err != nil {
		h.procs.stop(p)
		return nil, "", err
	}
	return p, site, nil
}

// waitGRPC calls UnaryCall through addr until one succeeds, p exits, or
// bound passes.
func waitGRPC(ctx context.Context, p *proc, addr string, bound time.Duration) error {
	cc, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return err
	}
	defer cc.Close()
	client := testgrpc.NewTestServiceClient(cc)
	deadline := time.Now().Add(bound)
	for {
		callCtx, cancel := context.WithTimeout(ctx, time.Second)
		_, err := client.UnaryCall(callCtx, &testpb.SimpleRequest{ResponseSize: 1})
		cancel()
		if err == nil {
			return nil
		}
		if p.exited() {
			return fmt.Errorf("%s exited before answering: %v%s", p.name, p.err, logTail(p.log))
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s did not answer a gRPC call within %v: %v%s", p.name, bound, err, logTail(p.log))
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// runGRPC runs one configuration of a gRPC scenario: the load balancer,
// the gRPC load generator (which warms up, then measures), and the load
// balancer stopped again.
func (h *harness) runGRPC(ctx context.Context, sc scenario, cfg lbConfig, backends backendSet) (runRecord, error) {
	rec := runRecord{Scenario: sc.Name, Config: cfg.Name}
	lb, site, err := h.startGRPCBalancer(ctx, sc, cfg, backends.addrs)
	if err != nil {
		return rec, err
	}
	defer h.procs.stop(lb)
	warmup, duration := h.opts.warmup(sc), h.opts.window(sc)
	args := []string{"-grpc-load", "-addr", site, "-mode", sc.GRPC, "-callers", strconv.Itoa(sc.Conns),
		"-conns", strconv.Itoa(sc.ClientConns), "-size", strconv.Itoa(sc.MessageBytes),
		"-warmup", warmup.String(), "-duration", duration.String(),
		"-lb-pid", strconv.Itoa(lb.pid()), "-backends", strings.Join(backends.counters, ","),
		"-backend-pids", strings.Join(backends.pids, ",")}
	var stdout strings.Builder
	load, err := h.procs.start(procSpec{name: "gRPC load generator", cpus: h.ldCPUs, env: os.Environ(),
		stdout: &stdout, logFile: filepath.Join(h.tmp, "grpc-load.log"), bin: h.opts.exe, args: args})
	if err != nil {
		return rec, err
	}
	if err := h.procs.wait(ctx, load, warmup+duration+30*time.Second); err != nil {
		return rec, err
	}
	if lb.exited() {
		return rec, fmt.Errorf("%s exited during the run: %v%s", lb.name, lb.err, logTail(lb.log))
	}
	if err := rec.fill(stdout.String()); err != nil {
		return rec, err
	}
	h.lbCoreFigures(&rec)
	return rec, nil
}

// startGRPCBackend starts one gRPC backend process (bench -grpc-backend)
// serving on addr, and returns it with the address of its /count.
func (h *harness) startGRPCBackend(sc scenario, name, addr string) (*proc, string, error) {
	port, err := freePort()
	if err != nil {
		return nil, "", err
	}
	counter := fmt.Sprintf("127.0.0.1:%d", port)
	p, err := h.procs.start(procSpec{name: "gRPC backend " + name, cpus: h.ldCPUs, env: os.Environ(),
		logFile: filepath.Join(h.tmp, sc.Name+"-"+name+".log"), bin: h.opts.exe,
		args: []string{"-grpc-backend", "-listen", addr, "-count-listen", counter}})
	return p, counter, err
}

// grpcBackend is the gRPC backend role's service: UnaryCall answers a
// payload of the asked size, StreamingOutputCall sends messages of the
// first response parameter's size until the caller goes. Both count what
// they answer (calls, messages), which /count on the -count-listen address
// reports as requests, as the HTTP backends' /count does, with the streams
// open at the moment as open_streams.
type grpcBackend struct {
	testgrpc.UnimplementedTestServiceServer
	served  atomic.Int64
	streams atomic.Int64
	body    []byte
}

// grpcCount is what a gRPC backend's /count answers.
type grpcCount struct {
	Requests    int64 `json:"requests"`
	OpenStreams int64 `json:"open_streams"`
}

// maxGRPCPayload bounds the payload a backend answers with.
const maxGRPCPayload = 64 << 10

func (b *grpcBackend) payload(size int32) ([]byte, error) {
	if size < 0 || int(size) > len(b.body) {
		return nil, fmt.Errorf("payload size %d out of 0..%d", size, len(b.body))
	}
	return b.body[:size], nil
}

func (b *grpcBackend) UnaryCall(_ context.Context, in *testpb.SimpleRequest) (*testpb.SimpleResponse, error) {
	body, err := b.payload(in.GetResponseSize())
	if err != nil {
		return nil, err
	}
	b.served.Add(1)
	return &testpb.SimpleResponse{Payload: &testpb.Payload{Body: body}}, nil
}

func (b *grpcBackend) StreamingOutputCall(in *testpb.StreamingOutputCallRequest, stream testgrpc.TestService_StreamingOutputCallServer) error {
	var size int32
	if p := in.GetResponseParameters(); len(p) > 0 {
		size = p[0].GetSize()
	}
	body, err := b.payload(size)
	if err != nil {
		return err
	}
	msg := &testpb.StreamingOutputCallResponse{Payload: &testpb.Payload{Body: body}}
	b.streams.Add(1)
	defer b.streams.Add(-1)
	for {
		if err := stream.Send(msg); err != nil {
			return err // the caller went
		}
		b.served.Add(1)
	}
}

// runGRPCBackend is the gRPC backend role: bench -grpc-backend -listen
// 127.0.0.1:PORT -count-listen 127.0.0.1:PORT. It serves until the harness
// stops it.
func runGRPCBackend(args []string) error {
	fs := flag.NewFlagSet("grpc-backend", flag.ContinueOnError)
	listen := fs.String("listen", "127.0.0.1:0", "address of the gRPC server (h2c)")
	countListen := fs.String("count-listen", "127.0.0.1:0", "address of /count and /health (HTTP/1.1)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if err := raiseFileLimit(); err != nil {
		return fmt.Errorf("grpc backend: %w", err)
	}
	b := &grpcBackend{body: make([]byte, maxGRPCPayload)}
	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		return fmt.Errorf("grpc backend: %w", err)
	}
	cl, err := net.Listen("tcp", *countListen)
	if err != nil {
		return fmt.Errorf("grpc backend: %w", err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/health", func(w http.ResponseWriter, _ *http.Request) { _, _ = io.WriteString(w, "ok") })
	mux.HandleFunc("/count", func(w http.ResponseWriter, _ *http.Request) {
		_ = json.NewEncoder(w).Encode(grpcCount{Requests: b.served.Load(), OpenStreams: b.streams.Load()})
	})
	go func() {
		fmt.Fprintln(os.Stderr, "bench: grpc backend counters:", http.Serve(cl, mux))
		os.Exit(1)
	}()
	srv := grpc.NewServer(grpc.MaxConcurrentStreams(1000))
	testgrpc.RegisterTestServiceServer(srv, b)
	healthgrpc.RegisterHealthServer(srv, health.NewServer()) // SERVING, for lbpool's health_grpc
	return srv.Serve(ln)
}

// grpcLoadSpec is the gRPC load role's command line.
type grpcLoadSpec struct {
	loadSpec        // addr, warmup, duration, lbPID, loadPIDs, backends
	mode     string // unary or stream
	callers  int
	clients  int // client connections; caller i uses connection i mod clients
	size     int // payload bytes of each call and answer, or of each message
}

// runGRPCLoad is the gRPC load role: bench -grpc-load -addr 127.0.0.1:PORT
// ... It prints a loadResult as JSON, as the HTTP load role does.
func runGRPCLoad(args []string) error {
	fs := flag.NewFlagSet("grpc-load", flag.ContinueOnError)
	var s grpcLoadSpec
	var backends, pids string
	fs.StringVar(&s.addr, "addr", "", "load balancer host:port (h2c)")
	fs.StringVar(&s.mode, "mode", "unary", "unary: closed-loop UnaryCall; stream: one StreamingOutputCall per caller")
	fs.IntVar(&s.callers, "callers", 64, "concurrent callers")
	fs.IntVar(&s.clients, "conns", grpcClientConns, "client connections the callers share")
	fs.IntVar(&s.size, "size", grpcUnaryBytes, "payload bytes of each call and answer, or of each streamed message")
	fs.DurationVar(&s.warmup, "warmup", 2*time.Second, "load before the measured window")
	fs.DurationVar(&s.duration, "duration", 8*time.Second, "measured window")
	fs.IntVar(&s.lbPID, "lb-pid", 0, "PID of the load balancer, for its CPU time")
	fs.StringVar(&backends, "backends", "", "comma-separated host:port of the backends' /count")
	fs.StringVar(&pids, "backend-pids", "", "comma-separated PIDs of the backends, for their CPU time")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if s.addr == "" || s.callers < 1 || s.clients < 1 || s.duration <= 0 || (s.mode != "unary" && s.mode != "stream") {
		return errors.New("grpc load: need -addr, -callers >= 1, -conns >= 1, -duration > 0 and -mode unary or stream")
	}
	s.sampled(pids, backends)
	res, err := generateGRPC(s)
	if err != nil {
		return err
	}
	return json.NewEncoder(os.Stdout).Encode(res)
}

// grpcCaller is one caller's figures.
type grpcCaller struct {
	hist   histogram
	done   int64 // calls or messages completed in the window
	errors int64
}

func generateGRPC(s grpcLoadSpec) (*loadResult, error) {
	clients := make([]testgrpc.TestServiceClient, s.clients)
	for i := range clients {
		cc, err := grpc.NewClient(s.addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			return nil, fmt.Errorf("grpc load: %w", err)
		}
		defer cc.Close()
		cc.Connect()
		clients[i] = testgrpc.NewTestServiceClient(cc)
	}
	start := time.Now().Add(s.warmup)
	end := start.Add(s.duration)
	// Cancelled once the window is sampled: a deadline would travel as
	// grpc-timeout and end the streams from the far side, as errors.
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	callers := make([]*grpcCaller, s.callers)
	var wg sync.WaitGroup
	for i := range callers {
		c := &grpcCaller{}
		callers[i] = c
		client := clients[i%len(clients)]
		if s.mode == "stream" {
			wg.Go(func() { c.stream(ctx, client, s.size, start, end) })
		} else {
			wg.Go(func() { c.unary(ctx, client, s.size, start, end) })
		}
	}

	time.Sleep(time.Until(start))
	before, err := takeSample(s.loadSpec)
	if err != nil {
		return nil, fmt.Errorf("grpc load: sampling at the start: %w", err)
	}
	time.Sleep(time.Until(end))
	after, err := takeSample(s.loadSpec)
	if err != nil {
		return nil, fmt.Errorf("grpc load: sampling at the end: %w", err)
	}
	var open []int64
	if s.mode == "stream" {
		if open, err = openStreams(s.backends); err != nil {
			return nil, fmt.Errorf("grpc load: %w", err)
		}
	}
	cancel()
	wg.Wait()

	res := &loadResult{OpenStreams: open}
	var all histogram
	for _, c := range callers {
		all.merge(&c.hist)
		res.Requests += c.done
		res.Errors += c.errors
	}
	res.window(before, after, &all)
	return res, nil
}

// openStreams reads each gRPC backend's open streams.
func openStreams(counters []string) ([]int64, error) {
	var out []int64
	for _, addr := range counters {
		resp, err := countClient.Get("http://" + addr + "/count")
		if err != nil {
			return nil, fmt.Errorf("backend counter %s: %w", addr, err)
		}
		var c grpcCount
		err = json.NewDecoder(resp.Body).Decode(&c)
		resp.Body.Close()
		if err != nil {
			return nil, fmt.Errorf("backend counter %s: %w", addr, err)
		}
		out = append(out, c.OpenStreams)
	}
	return out, nil
}

// unary calls in a closed loop until the window ends; a call counts if it
// ended inside the window.
func (c *grpcCaller) unary(ctx context.Context, client testgrpc.TestServiceClient, size int, start, end time.Time) {
	req := &testpb.SimpleRequest{ResponseSize: int32(size), Payload: &testpb.Payload{Body: make([]byte, size)}}
	for ctx.Err() == nil {
		began := time.Now()
		callCtx, cancel := context.WithTimeout(ctx, 10*time.Second)
		resp, err := client.UnaryCall(callCtx, req)
		cancel()
		now := time.Now()
		if now.Before(start) || !now.Before(end) {
			continue
		}
		if err != nil || len(resp.GetPayload().GetBody()) != size {
			c.errors++
			continue
		}
		c.done++
		c.hist.record(now.Sub(began))
	}
}

// stream holds one server stream open and reads its messages until the
// window ends, opening another if one breaks; the gap before each message
// is its latency.
func (c *grpcCaller) stream(ctx context.Context, client testgrpc.TestServiceClient, size int, start, end time.Time) {
	req := &testpb.StreamingOutputCallRequest{ResponseParameters: []*testpb.ResponseParameters{{Size: int32(size)}}}
	for ctx.Err() == nil {
		stream, err := client.StreamingOutputCall(ctx, req)
		if err != nil {
			if now := time.Now(); ctx.Err() == nil && !now.Before(start) && now.Before(end) {
				c.errors++
			}
			continue
		}
		last := time.Now()
		for {
			resp, err := stream.Recv()
			now := time.Now()
			if err != nil {
				if ctx.Err() == nil && !now.Before(start) && now.Before(end) {
					c.errors++
				}
				break
			}
			if !now.Before(start) && now.Before(end) && len(resp.GetPayload().GetBody()) == size {
				c.done++
				c.hist.record(now.Sub(last))
			}
			last = now
		}
	}
}

// unit is what the tables of a gRPC scenario count: calls, or messages.
func (sc scenario) unit() string {
	if sc.GRPC == "stream" {
		return "msg"
	}
	return "call"
}

// grpcHeading is the report's heading of a gRPC scenario.
func grpcHeading(sc scenario) string {
	what := fmt.Sprintf("UnaryCall with a %d-byte payload and a %d-byte answer, closed loop;\n"+
		"the bN columns are each backend's share of the calls", sc.MessageBytes, sc.MessageBytes)
	if sc.GRPC == "stream" {
		what = fmt.Sprintf("one StreamingOutputCall per caller, the backend sending %d-byte messages as flow control lets it;\n"+
			"msgs/s and µs per message; p50/p99 are the gaps between a stream's messages; the bN columns are each backend's share\n"+
			"of the messages, which follows how fast each stream runs; open streams is each backend's at the end of the window", sc.MessageBytes)
	}
	return fmt.Sprintf("== %s: %d grpc-go backends over h2c; %d callers sharing %d h2c client connection(s) (grpc-go);\n%s.\n"+
		"lbpool (h2c://, health_grpc), reverse_proxy (h2c://, lb_policy least_conn), HAProxy (proto h2, balance leastconn) and\n"+
		"nginx (grpc_pass, least_conn, one process), each on the load balancer's core",
		sc.Name, numBackends, sc.Conns, sc.ClientConns, what)
}
