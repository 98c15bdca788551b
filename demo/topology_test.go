package demo_test

// The tests in this file run the local demo as `./xcaddy.sh run` does: a
// Caddy with lbpool on Caddyfile.example in front of three demo backends,
// each a real process. Only the ports differ (free ones on 127.0.0.1), so the
// tests never collide with a demo that is already running.

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// Bounds of the topology test.
const (
	pollEvery   = 20 * time.Millisecond
	buildBound  = 5 * time.Minute
	startBound  = 15 * time.Second // a process answers after it starts
	maxLoadReqs = 20000            // the load generator stops after this many requests
	loadWorkers = 8
	afterDown   = 300 // successful requests the load must make after app2 is down
)

// demoBinaries is the Caddy with lbpool and the demo backend, built once per
// test binary into a temporary folder that TestMain removes.
var demoBinaries struct {
	once    sync.Once
	dir     string
	caddy   string
	backend string
	err     error
}

func TestMain(m *testing.M) {
	code := m.Run()
	if demoBinaries.dir != "" {
		os.RemoveAll(demoBinaries.dir)
	}
	os.Exit(code)
}

// buildDemo returns the paths of the built caddy and backend binaries. It
// skips the test under -short: building and running processes is slow.
func buildDemo(t *testing.T) (caddyBin, backendBin string) {
	t.Helper()
	if testing.Short() {
		t.Skip("builds and runs Caddy and the demo backends; skipped with -short")
	}
	demoBinaries.once.Do(func() {
		dir, err := os.MkdirTemp("", "lbpool-demo-")
		if err != nil {
			demoBinaries.err = err
			return
		}
		demoBinaries.dir = dir
		repo, err := filepath.Abs(root)
		if err != nil {
			demoBinaries.err = err
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), buildBound)
		defer cancel()
		for _, b := range []struct{ out, pkg string }{
			{filepath.Join(dir, "caddy"), "./cmd/caddy"},
			{filepath.Join(dir, "backend"), "./demo/backend"},
		} {
			cmd := exec.CommandContext(ctx, "go", "build", "-o", b.out, b.pkg)
			cmd.Dir = repo
			if out, err := cmd.CombinedOutput(); err != nil {
				demoBinaries.err = fmt.Errorf("go build -o %s %s: %v\n%s", filepath.Base(b.out), b.pkg, err, out)
				return
			}
		}
		demoBinaries.caddy = filepath.Join(dir, "caddy")
		demoBinaries.backend = filepath.Join(dir, "backend")
	})
	if demoBinaries.err != nil {
		t.Fatalf("building the demo binaries: %v", demoBinaries.err)
	}
	return demoBinaries.caddy, demoBinaries.backend
}

// caddyEnv is the environment for a Caddy process: its config and data
// folders (autosave.json, storage) in a temporary folder, not the user's.
func caddyEnv(t *testing.T) []string {
	home := t.TempDir()
	return append(os.Environ(),
		"HOME="+home,
		"XDG_CONFIG_HOME="+filepath.Join(home, "config"),
		"XDG_DATA_HOME="+filepath.Join(home, "data"),
	)
}

func TestShippedCaddyfilesAdaptAndValidate(t *testing.T) {
	caddyBin, _ := buildDemo(t)
	env := caddyEnv(t)
	// validate provisions every module, lbpool's included, but opens no
	// listener and sends no request, so the compose service names (app1:80)
	// in Caddyfile.docker need not resolve here.
	for _, file := range []string{"Caddyfile.example", "demo/Caddyfile.docker", "demo/Caddyfile.dns"} {
		t.Run(filepath.Base(file), func(t *testing.T) {
			path := filepath.Join(root, file)
			for _, sub := range []string{"adapt", "validate"} {
				ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
				cmd := exec.CommandContext(ctx, caddyBin, sub, "--config", path, "--adapter", "caddyfile")
				cmd.Env = env
				var stdout, stderr bytes.Buffer
				cmd.Stdout, cmd.Stderr = &stdout, &stderr
				err := cmd.Run()
				cancel()
				if err != nil {
					t.Errorf("caddy %s --config %s: %v\nstdout:\n%s\nstderr:\n%s", sub, file, err, stdout.String(), stderr.String())
					continue
				}
				if sub == "adapt" {
					var cfg any
					if err := json.Unmarshal(stdout.Bytes(), &cfg); err != nil {
						t.Errorf("caddy adapt --config %s: output is not JSON: %v", file, err)
					} else if !strings.Contains(stdout.String(), `"handler":"lbpool"`) {
						t.Errorf("caddy adapt --config %s: no lbpool handler in\n%s", file, stdout.String())
					}
				}
			}
		})
	}
}

// syncBuffer is a bytes.Buffer a process writes to while the test reads it.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// demoProc is one process the test started.
type demoProc struct {
	name string
	cmd  *exec.Cmd
	out  *syncBuffer // stdout and stderr
	done chan struct{}
	err  error // cmd.Wait's result, set before done is closed
}

// startProc starts bin; a cleanup kills exactly this process (by its PID)
// and waits for it. ctx, cancelled in a later cleanup, is the second net.
func startProc(t *testing.T, ctx context.Context, name string, env []string, bin string, args ...string) *demoProc {
	t.Helper()
	p := &demoProc{name: name, out: &syncBuffer{}, done: make(chan struct{})}
	p.cmd = exec.CommandContext(ctx, bin, args...)
	p.cmd.Env = env
	p.cmd.Stdout, p.cmd.Stderr = p.out, p.out
	p.cmd.WaitDelay = 5 * time.Second
	if err := p.cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	go func() {
		p.err = p.cmd.Wait()
		close(p.done)
	}()
	t.Cleanup(p.stop)
	return p
}

// stop kills the process (SIGKILL) and waits for it; stopping a stopped
// process does nothing.
func (p *demoProc) stop() {
	_ = p.cmd.Process.Kill()
	<-p.done
}

// exited reports whether the process has ended, and how.
func (p *demoProc) exited() (bool, error) {
	select {
	case <-p.done:
		return true, p.err
	default:
		return false, nil
	}
}

// freePorts returns n distinct free TCP ports on 127.0.0.1.
func freePorts(t *testing.T, n int) []int {
	t.Helper()
	var ports []int
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatalf("finding a free port: %v", err)
		}
		defer l.Close() // held until all are chosen, so they differ
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports
}

// poll calls cond every pollEvery until it reports true, and fails the test
// when bound passes first; cond's note says what it saw last.
func poll(t *testing.T, bound time.Duration, what string, cond func() (ok bool, note string)) time.Duration {
	t.Helper()
	start := time.Now()
	deadline := start.Add(bound)
	for {
		ok, note := cond()
		if ok {
			return time.Since(start)
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %v; last seen: %s", what, bound, note)
		}
		time.Sleep(pollEvery)
	}
}

// get fetches url and returns the status and the body's first line.
func get(client *http.Client, url string) (int, string, error) {
	resp, err := client.Get(url)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	if err != nil {
		return resp.StatusCode, "", err
	}
	first, _, _ := strings.Cut(string(body), "\n")
	return resp.StatusCode, first, nil
}

// servedBy is the backend name in a demo backend's first body line.
func servedBy(firstLine string) string {
	name, _ := strings.CutPrefix(firstLine, "Hostname: ")
	return name
}

// poolBackend is the part of a /lbpool/stats entry the test reads.
type poolBackend struct {
	Pool        string `json:"pool"`
	URL         string `json:"url"`
	Alive       bool   `json:"alive"`
	MemoryBytes *int64 `json:"memory_bytes"`
}

func poolStats(client *http.Client, adminURL string) ([]poolBackend, error) {
	resp, err := client.Get(adminURL + "/lbpool/stats?pool=web")
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("%s: %s", resp.Status, body)
	}
	var stats []poolBackend
	if err := json.Unmarshal(body, &stats); err != nil {
		return nil, fmt.Errorf("%v in %s", err, body)
	}
	return stats, nil
}

// backendAlive polls-friendly: whether the stats show url with alive == want.
func backendAlive(client *http.Client, adminURL, url string, want bool) (bool, string) {
	stats, err := poolStats(client, adminURL)
	if err != nil {
		return false, err.Error()
	}
	for _, s := range stats {
		if s.URL == url {
			return s.Alive == want, fmt.Sprintf("%s alive=%v", url, s.Alive)
		}
	}
	return false, fmt.Sprintf("no entry for %s in %+v", url, stats)
}

// statusChange is a "status change" entry of Caddy's JSON log.
type statusChange struct {
	Logger  string `json:"logger"`
	Msg     string `json:"msg"`
	Pool    string `json:"pool"`
	Backend string `json:"backend"`
	Status  string `json:"status"`
	Reason  string `json:"reason"`
}

// statusChanges reads the complete lines of the JSON log and returns its
// status-change entries.
func statusChanges(t *testing.T, logFile string) []statusChange {
	t.Helper()
	data, err := os.ReadFile(logFile)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("read the log: %v", err)
	}
	if i := bytes.LastIndexByte(data, '\n'); i >= 0 {
		data = data[:i+1] // a line still being written is read next time
	} else {
		data = nil
	}
	var out []statusChange
	scanner := bufio.NewScanner(bytes.NewReader(data))
	scanner.Buffer(nil, 1<<20)
	for scanner.Scan() {
		var e statusChange
		if json.Unmarshal(scanner.Bytes(), &e) == nil && e.Msg == "status change" {
			out = append(out, e)
		}
	}
	return out
}

// hasChange reports whether the log has a status change of backend to status.
func hasChange(t *testing.T, logFile, backend, status string) (bool, string) {
	changes := statusChanges(t, logFile)
	for _, c := range changes {
		if c.Backend == backend && c.Status == status {
			return true, ""
		}
	}
	return false, fmt.Sprintf("status changes so far: %+v", changes)
}

// tail is the end of s, at most n bytes.
func tail(s string, n int) string {
	if len(s) > n {
		return "...\n" + s[len(s)-n:]
	}
	return s
}

// demoCaddyfile is Caddyfile.example with the given ports for 3030 (the
// site), 2019 (admin) and 9001-9003 (the backends), and a global log option
// that writes JSON to logFile. Everything else, the pool's options included,
// is as shipped.
func demoCaddyfile(t *testing.T, lb, admin int, backends []int, logFile string) string {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(root, "Caddyfile.example"))
	if err != nil {
		t.Fatalf("read Caddyfile.example: %v", err)
	}
	src := string(data)
	pairs := []string{
		"localhost:2019", "localhost:" + strconv.Itoa(admin),
		"127.0.0.1:2019", "127.0.0.1:" + strconv.Itoa(admin),
		":3030", ":" + strconv.Itoa(lb),
	}
	for i, port := range backends {
		pairs = append(pairs, fmt.Sprintf("127.0.0.1:%d", 9001+i), fmt.Sprintf("127.0.0.1:%d", port))
	}
	for i := 0; i < len(pairs); i += 2 {
		if !strings.Contains(src, pairs[i]) {
			t.Fatalf("Caddyfile.example no longer mentions %q; update this test", pairs[i])
		}
	}
	src = strings.NewReplacer(pairs...).Replace(src)

	adminLine := regexp.MustCompile(`(?m)^([ \t]*)admin localhost:` + strconv.Itoa(admin) + `\b.*$`)
	if len(adminLine.FindAllStringIndex(src, -1)) != 1 {
		t.Fatalf("no single admin line in the global options of Caddyfile.example:\n%s", src)
	}
	// default_bind keeps the site on the loopback interface (the shipped
	// file listens on all of them); the log option gives the test the logs.
	// Both go just before the admin option.
	extra := "${1}default_bind 127.0.0.1" +
		"\n${1}log {" +
		"\n${1}\toutput file \"" + logFile + "\"" +
		"\n${1}\tformat json" +
		"\n${1}}\n"
	return adminLine.ReplaceAllString(src, extra+"${0}")
}

// loadGen sends GETs to the balancer from several goroutines until stopped
// or until maxLoadReqs requests were sent.
type loadGen struct {
	sent, ok, failed atomic.Int64
	stopCh           chan struct{}
	stopOnce         sync.Once
	wg               sync.WaitGroup

	mu       sync.Mutex
	byName   map[string]int
	failures []string // the first few
}

func startLoad(client *http.Client, url string) *loadGen {
	l := &loadGen{stopCh: make(chan struct{}), byName: map[string]int{}}
	for range loadWorkers {
		l.wg.Add(1)
		go func() {
			defer l.wg.Done()
			for {
				select {
				case <-l.stopCh:
					return
				default:
				}
				if l.sent.Add(1) > maxLoadReqs {
					l.sent.Add(-1)
					return
				}
				status, line, err := get(client, url)
				switch {
				case err != nil:
					l.fail(err.Error())
				case status != http.StatusOK:
					l.fail(fmt.Sprintf("status %d: %s", status, line))
				default:
					l.ok.Add(1)
					l.mu.Lock()
					l.byName[servedBy(line)]++
					l.mu.Unlock()
				}
			}
		}()
	}
	return l
}

func (l *loadGen) fail(what string) {
	l.failed.Add(1)
	l.mu.Lock()
	if len(l.failures) < 5 {
		l.failures = append(l.failures, what)
	}
	l.mu.Unlock()
}

func (l *loadGen) served(name string) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.byName[name]
}

// exhausted reports whether every worker gave up because the request bound
// was reached.
func (l *loadGen) exhausted() bool { return l.sent.Load() >= maxLoadReqs }

// stop ends the load and waits for the workers; safe to call twice.
func (l *loadGen) stop() {
	l.stopOnce.Do(func() { close(l.stopCh) })
	l.wg.Wait()
}

// startBackend starts the demo backend name on port and waits until it
// answers /health. When the port cannot be bound yet (the backend exits at
// once), it tries again until bindBound passes.
func startBackend(t *testing.T, ctx context.Context, client *http.Client, bin, name string, port int, bindBound time.Duration) *demoProc {
	t.Helper()
	return startBackendAt(t, ctx, client, bin, name, "127.0.0.1:"+strconv.Itoa(port), bindBound)
}

// startBackendAt is startBackend on any address.
func startBackendAt(t *testing.T, ctx context.Context, client *http.Client, bin, name, addr string, bindBound time.Duration) *demoProc {
	t.Helper()
	deadline := time.Now().Add(bindBound)
	for {
		p := startProc(t, ctx, name, os.Environ(), bin, "-listen", addr, "-name", name)
		var exitErr error
		ready := false
		poll(t, startBound, name+" answers /health", func() (bool, string) {
			if done, err := p.exited(); done {
				exitErr = fmt.Errorf("exited (%v): %s", err, p.out.String())
				return true, ""
			}
			status, _, err := get(client, "http://"+addr+"/health")
			ready = err == nil && status == http.StatusOK
			return ready, fmt.Sprintf("status %d, err %v", status, err)
		})
		if ready {
			return p
		}
		if time.Now().After(deadline) {
			t.Fatalf("start %s on %s: %v", name, addr, exitErr)
		}
		t.Logf("start %s on %s: %v; trying again", name, addr, exitErr)
		time.Sleep(50 * time.Millisecond)
	}
}

func TestDemoTopologySurvivesLosingABackend(t *testing.T) {
	caddyBin, backendBin := buildDemo(t)
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel) // runs after the processes' own cleanups: the second net

	tmp := t.TempDir()
	ports := freePorts(t, 5)
	lbPort, adminPort, backendPorts := ports[0], ports[1], ports[2:]
	logFile := filepath.Join(tmp, "caddy.log")
	config := filepath.Join(tmp, "Caddyfile")
	if err := os.WriteFile(config, []byte(demoCaddyfile(t, lbPort, adminPort, backendPorts, logFile)), 0o600); err != nil {
		t.Fatal(err)
	}
	lbURL := fmt.Sprintf("http://127.0.0.1:%d/", lbPort)
	adminURL := fmt.Sprintf("http://127.0.0.1:%d", adminPort)
	names := []string{"app1", "app2", "app3"}
	urls := make([]string, len(names))
	for i, port := range backendPorts {
		urls[i] = fmt.Sprintf("http://127.0.0.1:%d", port)
	}
	app2URL := urls[1]

	// No proxy from the environment, and enough idle connections that the
	// load does not churn them.
	transport := &http.Transport{MaxIdleConnsPerHost: 2 * loadWorkers, Proxy: nil}
	t.Cleanup(transport.CloseIdleConnections)
	client := &http.Client{Transport: transport, Timeout: 5 * time.Second}

	// On failure, show what the processes said. Registered before they
	// start, so it runs after their cleanups have stopped them (their output
	// is complete) and before the temporary folder is removed.
	procs := map[string]*demoProc{}
	t.Cleanup(func() {
		if !t.Failed() {
			return
		}
		for _, name := range append([]string{"caddy"}, names...) {
			if p := procs[name]; p != nil {
				t.Logf("%s stdout/stderr:\n%s", name, tail(p.out.String(), 32<<10))
			}
		}
		log, _ := os.ReadFile(logFile)
		t.Logf("caddy log file:\n%s", tail(string(log), 64<<10))
	})
	for i, name := range names {
		procs[name] = startBackend(t, ctx, client, backendBin, name, backendPorts[i], 0)
	}
	caddy := startProc(t, ctx, "caddy", caddyEnv(t), caddyBin, "run", "--config", config, "--adapter", "caddyfile")
	procs["caddy"] = caddy

	took := poll(t, startBound, "the balancer answers GET /", func() (bool, string) {
		if done, err := caddy.exited(); done {
			t.Fatalf("caddy exited: %v", err)
		}
		status, line, err := get(client, lbURL)
		return err == nil && status == http.StatusOK, fmt.Sprintf("status %d %q, err %v", status, line, err)
	})
	t.Logf("balancer up after %v", took.Round(time.Millisecond))

	// Rotation: an idle pool visits every backend in turn.
	var seen []string
	for range names {
		status, line, err := get(client, lbURL)
		if err != nil || status != http.StatusOK {
			t.Fatalf("GET /: status %d %q, err %v", status, line, err)
		}
		seen = append(seen, servedBy(line))
	}
	if sorted := slices.Sorted(slices.Values(seen)); !slices.Equal(sorted, names) {
		t.Errorf("3 sequential GETs were answered by %q, want app1, app2, app3 once each", seen)
	}

	// Memory: every backend's own figure, fetched from stats_uri /stats.
	took = poll(t, 15*time.Second, "memory_bytes for every backend", func() (bool, string) {
		stats, err := poolStats(client, adminURL)
		if err != nil {
			return false, err.Error()
		}
		var have []string
		for _, s := range stats {
			if s.MemoryBytes != nil && *s.MemoryBytes > 0 {
				have = append(have, s.URL)
			}
		}
		return slices.Equal(have, urls), fmt.Sprintf("memory known for %q of %q", have, urls)
	})
	t.Logf("memory_bytes known for all backends after %v more", took.Round(time.Millisecond))

	// Load, then chaos: lose app2 while the load runs.
	load := startLoad(client, lbURL)
	t.Cleanup(load.stop)
	poll(t, 10*time.Second, "load reaches app2", func() (bool, string) {
		return load.ok.Load() >= 200 && load.served("app2") > 0,
			fmt.Sprintf("%d ok, %d by app2, %d failed", load.ok.Load(), load.served("app2"), load.failed.Load())
	})
	killedAt := time.Now()
	procs["app2"].stop()
	poll(t, 10*time.Second, "stats show app2 down", func() (bool, string) {
		return backendAlive(client, adminURL, app2URL, false)
	})
	poll(t, 10*time.Second, "the log has app2's status change to down", func() (bool, string) {
		return hasChange(t, logFile, app2URL, "down")
	})
	t.Logf("app2 down in the stats and the log %v after the kill", time.Since(killedAt).Round(time.Millisecond))
	mark := load.ok.Load()
	poll(t, 10*time.Second, fmt.Sprintf("%d more successful requests after app2 went down", afterDown), func() (bool, string) {
		if load.ok.Load() >= mark+afterDown {
			return true, ""
		}
		if load.exhausted() {
			t.Fatalf("the load sent its %d requests before %d more succeeded after app2 went down", maxLoadReqs, afterDown)
		}
		return false, fmt.Sprintf("%d more", load.ok.Load()-mark)
	})
	load.stop()
	total, failed := load.sent.Load(), load.failed.Load()
	t.Logf("load: %d requests, %d failed; by backend: app1 %d, app2 %d, app3 %d",
		total, failed, load.served("app1"), load.served("app2"), load.served("app3"))
	if failed != 0 {
		t.Errorf("%d of %d requests failed while app2 was lost; first failures: %q", failed, total, load.failures)
	}

	// Recovery: app2 is back on the same port.
	restartedAt := time.Now()
	procs["app2"] = startBackend(t, ctx, client, backendBin, "app2", backendPorts[1], 5*time.Second)
	poll(t, 20*time.Second, "stats show app2 alive again", func() (bool, string) {
		return backendAlive(client, adminURL, app2URL, true)
	})
	poll(t, 10*time.Second, "the log has app2's status change to up", func() (bool, string) {
		return hasChange(t, logFile, app2URL, "up")
	})
	upAt := time.Now()
	t.Logf("app2 up in the stats and the log %v after its restart", upAt.Sub(restartedAt).Round(time.Millisecond))
	// The demo's slow_start 10s starts app2 at a tenth of its weight, and
	// sequential requests to an idle pool always find the full-weight
	// backends less loaded, so app2 gets them only once the ramp ends: allow
	// the 10s ramp plus 5s.
	took = poll(t, 15*time.Second, "a GET is answered by app2 again", func() (bool, string) {
		status, line, err := get(client, lbURL)
		if err != nil || status != http.StatusOK {
			t.Fatalf("GET / after app2's return: status %d %q, err %v", status, line, err)
		}
		return servedBy(line) == "app2", line
	})
	t.Logf("app2 answered again %v after it came up", took.Round(time.Millisecond))

	// Each change of state was logged once: app2 went down and came up, the
	// others never changed.
	var got []string
	for _, c := range statusChanges(t, logFile) {
		got = append(got, c.Backend+" "+c.Status)
		if c.Logger != "http.handlers.lbpool" || c.Pool != "web" {
			t.Errorf("status change %+v: want logger http.handlers.lbpool, pool web", c)
		}
	}
	if want := []string{app2URL + " down", app2URL + " up"}; !slices.Equal(got, want) {
		t.Errorf("status changes logged: %q, want %q", got, want)
	}
	// net/http recovers a handler panic and Caddy logs it: nothing else
	// would show one
	if log, err := os.ReadFile(logFile); err != nil || bytes.Contains(log, []byte("http: panic serving")) {
		t.Errorf("the log has a handler panic (or cannot be read: %v)", err)
	}
}
