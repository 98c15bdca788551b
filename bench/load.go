package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
)

// The load role is a closed-loop HTTP/1.1 load generator: each of -conns
// keep-alive connections sends a GET (or a POST with a JSON body of -body
// bytes), reads the whole response, and sends the next; with -sticky each
// connection keeps the cookie it is given and sends it back, as a browser
// would. It records every request's raw latency (from writing the request to
// the last byte of the response, with no correction for coordinated omission)
// and samples the load balancer's CPU time, the per-core busy time and the
// backends' counters at the start and the end of the measured window, so all
// of them cover exactly the same interval. It is lean on purpose (no
// allocation per request, no net/http) because it shares a core with the
// backends.

// loadResult is what the load role prints as JSON on stdout.
type loadResult struct {
	Requests int64   `json:"requests"` // completed in the measured window, any status
	Errors   int64   `json:"errors"`   // non-200 answers and broken connections
	Seconds  float64 `json:"seconds"`  // length of the measured window

	P50us  float64 `json:"p50_us"`
	P90us  float64 `json:"p90_us"`
	P99us  float64 `json:"p99_us"`
	P999us float64 `json:"p999_us"`
	MaxUs  float64 `json:"max_us"`
	MeanUs float64 `json:"mean_us"`

	LBCPUSeconds   float64   `json:"lb_cpu_seconds"`   // utime+stime of the LB process
	LBRSSKiB       int64     `json:"lb_rss_kib"`       // the LB's resident set at the end of the window
	LBPeakRSSKiB   int64     `json:"lb_peak_rss_kib"`  // its peak resident set (VmHWM) since it started
	LoadCPUSeconds float64   `json:"load_cpu_seconds"` // of the load generator and the backends
	CPUBusy        []float64 `json:"cpu_busy"`         // per core, the busy fraction of the window
	Backends       []int64   `json:"backend_requests"`
	// OpenStreams is each gRPC backend's open streams at the end of the
	// window (grpc_stream only).
	OpenStreams []int64 `json:"backend_open_streams,omitempty"`
	// Series is each backend's requests in each -series step of the
	// window, in order (only with -series).
	Series     [][]int64 `json:"backend_series,omitempty"`
	SeriesStep float64   `json:"series_step_s,omitempty"`
}

// loadSpec is the load role's command line.
type loadSpec struct {
	addr     string // host:port of the load balancer
	path     string
	method   string // GET or POST
	body     int    // bytes of JSON in each POST
	sticky   bool   // keep and send back cookies, per connection
	conns    int
	warmup   time.Duration
	duration time.Duration
	timeout  time.Duration // per request
	lbPID    int           // 0: no CPU sampling
	loadPIDs []int         // the backends; the load generator adds itself
	backends []string      // host:port of each backend's /count
	series   time.Duration // 0: no per-step counts
	flip     string        // host:port of a backend to turn slow and fast again
	flipAt   time.Duration // into the window
	flipFor  time.Duration
	// -h2: HTTP/2 over TLS, h2Conns connections of h2Streams streams,
	// trusting the CA in ca (h2load.go)
	h2        bool
	h2Conns   int
	h2Streams int
	ca        string
}

// runLoad is the load role: bench -load -addr 127.0.0.1:PORT ...
func runLoad(args []string) error {
	fs := flag.NewFlagSet("load", flag.ContinueOnError)
	var s loadSpec
	var backends string
	fs.StringVar(&s.addr, "addr", "", "load balancer host:port")
	fs.StringVar(&s.path, "path", "/", "request path")
	fs.StringVar(&s.method, "method", "GET", "GET, or POST with a JSON body of -body bytes, or (with -h2) MIX: both in turn")
	fs.IntVar(&s.body, "body", 1024, "bytes of the JSON body of each POST")
	fs.BoolVar(&s.sticky, "sticky", false, "keep the cookie each connection is given and send it back")
	fs.IntVar(&s.conns, "conns", 64, "keep-alive connections (concurrent clients)")
	fs.DurationVar(&s.warmup, "warmup", 2*time.Second, "load before the measured window")
	fs.DurationVar(&s.duration, "duration", 8*time.Second, "measured window")
	fs.DurationVar(&s.timeout, "timeout", 10*time.Second, "bound on one request")
	fs.IntVar(&s.lbPID, "lb-pid", 0, "PID of the load balancer, for its CPU time")
	fs.StringVar(&backends, "backends", "", "comma-separated backend host:port, for their request counters")
	pids := fs.String("backend-pids", "", "comma-separated PIDs of the backends, for their CPU time")
	fs.DurationVar(&s.series, "series", 0, "also count each backend's requests in steps of this length")
	fs.StringVar(&s.flip, "flip", "", "backend host:port to turn slow at -flip-at into the window and fast -flip-for later")
	fs.DurationVar(&s.flipAt, "flip-at", 0, "when in the measured window the -flip backend turns slow")
	fs.DurationVar(&s.flipFor, "flip-for", 0, "how long the -flip backend stays slow")
	fs.BoolVar(&s.h2, "h2", false, "HTTP/2 over TLS (the conns are -h2-conns connections of -h2-streams streams)")
	fs.IntVar(&s.h2Conns, "h2-conns", 8, "with -h2: TLS connections")
	fs.IntVar(&s.h2Streams, "h2-streams", 8, "with -h2: concurrent streams on each connection")
	fs.StringVar(&s.ca, "ca", "", "with -h2: PEM file of the CA whose certificate the load balancer serves")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if err := raiseFileLimit(); err != nil {
		return fmt.Errorf("load: %w", err)
	}
	s.sampled(*pids, backends)
	gen := generate
	if s.h2 {
		gen = generateH2
	}
	res, err := gen(s)
	if err != nil {
		return err
	}
	return json.NewEncoder(os.Stdout).Encode(res)
}

// sampled sets what the samples read besides the load balancer: the
// backends' CPU time (PIDs comma-separated) and this process's, and the
// backends' counters (host:port comma-separated).
func (s *loadSpec) sampled(pids, backends string) {
	for p := range strings.SplitSeq(pids, ",") {
		if n, err := strconv.Atoi(p); err == nil {
			s.loadPIDs = append(s.loadPIDs, n)
		}
	}
	s.loadPIDs = append(s.loadPIDs, os.Getpid())
	if backends != "" {
		s.backends = strings.Split(backends, ",")
	}
}

// sample is the state read at each end of the measured window.
type sample struct {
	lbTicks   int64
	lbRSS     int64 // KiB
	lbPeak    int64
	loadTicks int64
	cpus      []cpuTicks
	backends  []int64
	at        time.Time
}

func takeSample(s loadSpec) (sample, error) {
	var out sample
	var err error
	if s.lbPID > 0 {
		if out.lbTicks, err = processTicks(s.lbPID); err != nil {
			return out, err
		}
		if out.lbRSS, out.lbPeak, err = processMemory(s.lbPID); err != nil {
			return out, err
		}
	}
	for _, pid := range s.loadPIDs {
		n, err := processTicks(pid)
		if err != nil {
			return out, err
		}
		out.loadTicks += n
	}
	if out.cpus, err = readCPUTicks(); err != nil {
		return out, err
	}
	if out.backends, err = readCounters(s.backends); err != nil {
		return out, err
	}
	out.at = time.Now()
	return out, nil
}

func readCounters(addrs []string) ([]int64, error) {
	var out []int64
	for _, b := range addrs {
		n, err := readCounter(b)
		if err != nil {
			return nil, err
		}
		out = append(out, n)
	}
	return out, nil
}

// timeline runs the measured window up to end: it counts each backend's
// requests every -series step (from the counts at the start, first), and
// turns the -flip backend slow and fast again at its times. A count due at
// the same moment as a switch is taken first.
func timeline(s loadSpec, start, end time.Time, first []int64) ([][]int64, error) {
	type event struct {
		at   time.Time
		path string // "" counts
	}
	var events []event
	if s.series > 0 && len(s.backends) > 0 {
		for t := start.Add(s.series); !t.After(end); t = t.Add(s.series) {
			events = append(events, event{at: t})
		}
	}
	if s.flip != "" {
		events = append(events, event{start.Add(s.flipAt), "/slow"}, event{start.Add(s.flipAt + s.flipFor), "/fast"})
	}
	slices.SortStableFunc(events, func(a, b event) int {
		if c := a.at.Compare(b.at); c != 0 {
			return c
		}
		return strings.Compare(a.path, b.path)
	})
	var series [][]int64
	last := first
	for _, e := range events {
		time.Sleep(time.Until(e.at))
		if e.path != "" {
			if err := switchBackend(s.flip, e.path); err != nil {
				return nil, err
			}
			continue
		}
		now, err := readCounters(s.backends)
		if err != nil {
			return nil, err
		}
		step := make([]int64, len(now))
		for i := range now {
			step[i] = now[i] - last[i]
		}
		series, last = append(series, step), now
	}
	time.Sleep(time.Until(end))
	return series, nil
}

// tally is what one closed-loop client counted in the measured window.
type tally struct {
	hist     histogram
	requests int64
	errors   int64
}

// worker is one closed-loop client.
type worker struct {
	spec    loadSpec
	request []byte
	jar     *cookieJar // with -sticky
	start   time.Time  // of the measured window
	end     time.Time
	tally
}

func generate(s loadSpec) (*loadResult, error) {
	if s.addr == "" || s.conns < 1 || s.duration <= 0 || (s.method != "GET" && s.method != "POST") {
		return nil, errors.New("load: need -addr, -conns >= 1, -duration > 0 and -method GET or POST")
	}
	workers := make([]*worker, s.conns)
	conns := make([]net.Conn, s.conns)
	for i := range workers {
		c, err := net.DialTimeout("tcp", s.addr, s.timeout)
		if err != nil {
			for _, c := range conns[:i] {
				c.Close()
			}
			return nil, fmt.Errorf("load: connecting to %s: %w", s.addr, err)
		}
		conns[i] = c
	}
	start := time.Now().Add(s.warmup)
	end := start.Add(s.duration)
	var wg sync.WaitGroup
	for i := range workers {
		w := &worker{spec: s, request: buildRequest(s, nil), start: start, end: end}
		if s.sticky {
			w.jar = new(cookieJar)
		}
		workers[i] = w
		wg.Go(func() { w.run(conns[i]) })
	}

	return measure(s, start, end, func() []*tally {
		wg.Wait()
		var out []*tally
		for _, w := range workers {
			out = append(out, &w.tally)
		}
		return out
	})
}

// measure samples at both ends of the measured window from start to end,
// runs its timeline, then waits for the clients (wait) and sums what they
// counted.
func measure(s loadSpec, start, end time.Time, wait func() []*tally) (*loadResult, error) {
	time.Sleep(time.Until(start))
	before, err := takeSample(s)
	if err != nil {
		return nil, fmt.Errorf("load: sampling at the start: %w", err)
	}
	series, err := timeline(s, start, end, before.backends)
	if err != nil {
		return nil, fmt.Errorf("load: %w", err)
	}
	after, err := takeSample(s)
	if err != nil {
		return nil, fmt.Errorf("load: sampling at the end: %w", err)
	}
	tallies := wait()

	res := &loadResult{Series: series}
	if series != nil {
		res.SeriesStep = s.series.Seconds()
	}
	var all histogram
	for _, t := range tallies {
		all.merge(&t.hist)
		res.Requests += t.requests
		res.Errors += t.errors
	}
	res.window(before, after, &all)
	return res, nil
}

// window fills in the figures of the measured window between two samples,
// with the latencies of all its requests.
func (res *loadResult) window(before, after sample, all *histogram) {
	res.Seconds = after.at.Sub(before.at).Seconds()
	us := func(d time.Duration) float64 { return float64(d) / 1e3 }
	res.P50us, res.P90us, res.P99us = us(all.quantile(0.50)), us(all.quantile(0.90)), us(all.quantile(0.99))
	res.P999us, res.MaxUs, res.MeanUs = us(all.quantile(0.999)), us(all.max), us(all.mean())
	res.LBCPUSeconds = float64(after.lbTicks-before.lbTicks) / float64(clockTicks())
	res.LBRSSKiB, res.LBPeakRSSKiB = after.lbRSS, after.lbPeak
	res.LoadCPUSeconds = float64(after.loadTicks-before.loadTicks) / float64(clockTicks())
	res.CPUBusy = busyFractions(before.cpus, after.cpus)
	for i := range after.backends {
		res.Backends = append(res.Backends, after.backends[i]-before.backends[i])
	}
}

// run sends requests on c until the window ends. A broken connection or a
// non-200 answer is an error; the worker reconnects and goes on.
func (w *worker) run(c net.Conn) {
	br := bufio.NewReaderSize(c, 16<<10)
	var deadlineAt time.Time
	defer func() {
		if c != nil {
			c.Close()
		}
	}()
	for {
		begin := time.Now()
		if !begin.Before(w.end) {
			return
		}
		if c == nil {
			var err error
			if c, err = net.DialTimeout("tcp", w.spec.addr, w.spec.timeout); err != nil {
				w.countError(begin)
				time.Sleep(10 * time.Millisecond)
				continue
			}
			br.Reset(c)
			deadlineAt = time.Time{}
		}
		// Moving the deadline costs a timer update, so it moves once a
		// second and always lies between timeout and timeout+1s ahead.
		if begin.After(deadlineAt) {
			c.SetDeadline(begin.Add(w.spec.timeout + time.Second))
			deadlineAt = begin.Add(time.Second)
		}
		status, keepAlive, err := w.roundTrip(c, br)
		done := time.Now()
		if err != nil {
			w.countError(done)
			c.Close()
			c = nil
			continue
		}
		if !done.Before(w.start) && done.Before(w.end) {
			w.requests++
			if status != 200 {
				w.errors++
			}
			w.hist.record(done.Sub(begin))
		}
		if !keepAlive {
			c.Close()
			c = nil
		}
	}
}

func (w *worker) countError(at time.Time) {
	if !at.Before(w.start) && at.Before(w.end) {
		w.errors++
	}
}

func (w *worker) roundTrip(c net.Conn, br *bufio.Reader) (status int, keepAlive bool, err error) {
	if _, err := c.Write(w.request); err != nil {
		return 0, false, err
	}
	status, keepAlive, err = readResponse(br, w.jar)
	if w.jar != nil && w.jar.changed {
		w.jar.changed = false
		w.request = buildRequest(w.spec, w.jar.cookie)
	}
	return status, keepAlive, err
}

// buildRequest is the request every worker sends, with a cookie if it has
// one.
func buildRequest(s loadSpec, cookie []byte) []byte {
	req := fmt.Appendf(nil, "%s %s HTTP/1.1\r\nHost: %s\r\nUser-Agent: lbpool-bench\r\nAccept: */*\r\n", s.method, s.path, s.addr)
	if len(cookie) > 0 {
		req = fmt.Appendf(req, "Cookie: %s\r\n", cookie)
	}
	if s.method != "POST" {
		return append(req, "\r\n"...)
	}
	req = fmt.Appendf(req, "Content-Type: application/json\r\nContent-Length: %d\r\n\r\n", s.body)
	return append(req, jsonBody(s.body)...)
}

// jsonBody is a JSON object of exactly n bytes (at least 11).
func jsonBody(n int) []byte {
	return []byte(`{"data":"` + strings.Repeat("x", max(n-11, 0)) + `"}`)
}

// cookieJar is one connection's cookie: the name=value of the last
// Set-Cookie it was given.
type cookieJar struct {
	cookie  []byte
	changed bool // since the request was last built
}

func (j *cookieJar) set(header []byte) {
	v, _, _ := bytes.Cut(header, []byte(";"))
	v = bytes.TrimSpace(v)
	if !bytes.Equal(v, j.cookie) {
		j.cookie = append(j.cookie[:0], v...)
		j.changed = true
	}
}

var errBadResponse = errors.New("malformed response")

// readResponse reads one response and discards its body, with a
// Content-Length or chunked. It returns the status and whether the
// connection stays open; a Set-Cookie goes into jar, if not nil.
func readResponse(br *bufio.Reader, jar *cookieJar) (status int, keepAlive bool, err error) {
	line, err := br.ReadSlice('\n')
	if err != nil {
		return 0, false, err
	}
	// HTTP/1.1 200 OK
	if len(line) < 12 || !bytes.HasPrefix(line, []byte("HTTP/1.")) {
		return 0, false, errBadResponse
	}
	keepAlive = line[7] == '1'
	for _, d := range line[9:12] {
		if d < '0' || d > '9' {
			return 0, false, errBadResponse
		}
		status = status*10 + int(d-'0')
	}
	length, chunked := int64(-1), false
	for {
		h, err := br.ReadSlice('\n')
		if err != nil {
			return 0, false, err
		}
		h = bytes.TrimRight(h, "\r\n")
		if len(h) == 0 {
			break
		}
		colon := bytes.IndexByte(h, ':')
		if colon < 0 {
			return 0, false, errBadResponse
		}
		name, value := h[:colon], bytes.TrimSpace(h[colon+1:])
		switch {
		case bytes.EqualFold(name, []byte("Content-Length")):
			if length, err = parseInt(value); err != nil {
				return 0, false, err
			}
		case bytes.EqualFold(name, []byte("Transfer-Encoding")):
			chunked = bytes.EqualFold(value, []byte("chunked"))
		case bytes.EqualFold(name, []byte("Connection")):
			keepAlive = !bytes.EqualFold(value, []byte("close"))
		case jar != nil && bytes.EqualFold(name, []byte("Set-Cookie")):
			jar.set(value)
		}
	}
	switch {
	case chunked:
		err = discardChunked(br)
	case length >= 0:
		_, err = br.Discard(int(length))
	case status == 204 || status == 304:
	default: // the body runs to the end of the connection
		_, err = io.Copy(io.Discard, br)
		keepAlive = false
	}
	return status, keepAlive, err
}

func discardChunked(br *bufio.Reader) error {
	for {
		line, err := br.ReadSlice('\n')
		if err != nil {
			return err
		}
		line = bytes.TrimRight(line, "\r\n")
		if semi := bytes.IndexByte(line, ';'); semi >= 0 {
			line = line[:semi]
		}
		size, err := strconv.ParseInt(string(bytes.TrimSpace(line)), 16, 64)
		if err != nil || size < 0 {
			return errBadResponse
		}
		if size == 0 {
			for { // trailers, up to the empty line
				t, err := br.ReadSlice('\n')
				if err != nil {
					return err
				}
				if len(bytes.TrimRight(t, "\r\n")) == 0 {
					return nil
				}
			}
		}
		if _, err := br.Discard(int(size) + 2); err != nil {
			return err
		}
	}
}

// parseInt parses a non-negative decimal without allocating.
func parseInt(b []byte) (int64, error) {
	if len(b) == 0 || len(b) > 18 {
		return 0, errBadResponse
	}
	var n int64
	for _, d := range b {
		if d < '0' || d > '9' {
			return 0, errBadResponse
		}
		n = n*10 + int64(d-'0')
	}
	return n, nil
}

// countClient reads the backends' counters; it is used twice per run, off the
// request path.
var countClient = &http.Client{Timeout: 5 * time.Second}

// switchBackend turns a backend slow (path /slow) or fast (/fast).
func switchBackend(addr, path string) error {
	resp, err := countClient.Get("http://" + addr + path)
	if err != nil {
		return fmt.Errorf("backend %s%s: %w", addr, path, err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		return fmt.Errorf("backend %s%s: status %d", addr, path, resp.StatusCode)
	}
	return nil
}

func readCounter(addr string) (int64, error) {
	resp, err := countClient.Get("http://" + addr + "/count")
	if err != nil {
		return 0, fmt.Errorf("backend counter %s: %w", addr, err)
	}
	defer resp.Body.Close()
	var c struct {
		Requests int64 `json:"requests"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&c); err != nil {
		return 0, fmt.Errorf("backend counter %s: %w", addr, err)
	}
	return c.Requests, nil
}
