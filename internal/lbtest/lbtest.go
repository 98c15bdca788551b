// Package lbtest runs a real Caddy with lbpool in the test process and real
// HTTP backends on 127.0.0.1, for end-to-end tests.
package lbtest

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	_ "github.com/caddyserver/caddy/v2/caddyconfig/caddyfile" // the caddyfile adapter
	_ "github.com/caddyserver/caddy/v2/modules/standard"

	_ "github.com/lbpool/lbpool"
	"github.com/lbpool/lbpool/leastconn"
)

// Test ports come from below the kernel's ephemeral range (32768-60999 by
// default), where no outgoing connection takes a port on its own: a port
// the test picked, closed and binds again later (a second site, a backend
// restarted) cannot have become some connection's source port meanwhile.
const (
	testPortLow  = 20000
	testPortHigh = 32768
)

// listenLocal listens on a free test port of 127.0.0.1.
func listenLocal() (net.Listener, error) {
	for range 500 {
		port := newTestPort()
		if l, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", port)); err == nil {
			return l, nil
		}
	}
	return net.Listen("tcp", "127.0.0.1:0")
}

// handedOut are the test ports this process has used: a port is never
// handed out twice, so a new backend never gets an earlier test's address
// (lbpool keeps a backend's counters across reloads by its address).
var handedOut struct {
	sync.Mutex
	ports map[int]bool
}

// newTestPort draws a test port this process has not used yet.
func newTestPort() int {
	handedOut.Lock()
	defer handedOut.Unlock()
	if handedOut.ports == nil || len(handedOut.ports) > (testPortHigh-testPortLow)*3/4 {
		handedOut.ports = make(map[int]bool) // nearly all used: start over
	}
	for {
		port := testPortLow + rand.IntN(testPortHigh-testPortLow)
		if !handedOut.ports[port] {
			handedOut.ports[port] = true
			return port
		}
	}
}

// FreePort returns a test port that was free on every address a moment
// ago (Caddy binds ":port" to all of them).
func FreePort(t testing.TB) int {
	t.Helper()
	for range 500 {
		port := newTestPort()
		if l, err := net.Listen("tcp", fmt.Sprintf(":%d", port)); err == nil {
			l.Close()
			return port
		}
	}
	t.Fatal("lbtest: no free test port")
	return 0
}

// Caddy is the in-process Caddy of a test binary. Caddy is process-wide, so
// tests that use it must not run in parallel.
type Caddy struct {
	AdminPort int
	HTTPPort  int
	LogFile   string
	// Storage is the folder of Caddy's storage, where lbpool keeps run-time
	// changes; each test starts with none stored.
	Storage string
	client  *http.Client
}

var (
	instance     *Caddy
	instanceOnce sync.Once
)

// Start returns the process's Caddy, stopping nothing; Load a config to use
// it. Call Stop from TestMain. The test fails if a handler panics while it
// runs: net/http recovers such a panic and Caddy logs it, and nothing else
// would show it.
func Start(t testing.TB) *Caddy {
	instanceOnce.Do(func() {
		dir, err := os.MkdirTemp("", "lbtest")
		if err != nil {
			t.Fatal(err)
		}
		port, err := holdHTTPSocket()
		if err != nil {
			t.Fatal(err)
		}
		instance = &Caddy{
			AdminPort: FreePort(t),
			HTTPPort:  port,
			LogFile:   dir + "/caddy.log",
			Storage:   dir + "/storage",
			client:    &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: 256}},
		}
	})
	// a drain stored by an earlier test must not reach a backend that
	// happens to get the same port
	_ = os.RemoveAll(filepath.Join(instance.Storage, "lbpool"))
	logged := instance.logSize()
	t.Cleanup(func() {
		if p := instance.logLines(logged, panicLogged); len(p) > 0 {
			t.Errorf("%d handler panics during the test; the first:\n%s", len(p), p[0])
		}
	})
	return instance
}

// Stop stops Caddy if it runs.
func Stop() {
	if instance != nil {
		_ = caddy.Stop()
	}
}

// Globals is the global options block every test config starts with.
func (c *Caddy) Globals() string {
	return fmt.Sprintf(`{
	admin localhost:%d
	http_port %d
	auto_https off
	storage file_system %s
	log {
		output file %s
		format json
		level DEBUG
	}
}
`, c.AdminPort, c.HTTPPort, c.Storage, c.LogFile)
}

// Adapt turns a Caddyfile into JSON.
func Adapt(caddyfile string) ([]byte, error) {
	cfg, _, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte(caddyfile), map[string]any{"filename": "Caddyfile"})
	return cfg, err
}

// Load adapts site (a Caddyfile without global options) and loads it, as a
// reload if a config runs already.
func (c *Caddy) Load(t testing.TB, site string) {
	t.Helper()
	if err := c.TryLoad(site); err != nil {
		t.Fatalf("loading config: %v\n%s", err, site)
	}
}

// TryLoad is Load that returns the error.
func (c *Caddy) TryLoad(site string) error {
	return c.LoadCaddyfile(c.Globals() + site)
}

// LoadCaddyfile adapts a whole Caddyfile, global options included, and
// loads it. Servers that listen on HTTPPort get the socket the test process
// holds (see holdHTTPSocket); once the load is done, the previous config's
// servers accept no more connections on it.
func (c *Caddy) LoadCaddyfile(caddyfile string) error {
	cfg, err := Adapt(caddyfile)
	if err != nil {
		return err
	}
	return c.LoadJSON(cfg)
}

// LoadHandler loads a config whose site on the HTTP port sends every
// request to one handler, given as its JSON (a "handler" field and the
// module's own fields), so that a handler written in JSON is provisioned
// as Caddy provisions it.
func (c *Caddy) LoadHandler(handler json.RawMessage) error {
	cfg, err := Adapt(c.Globals() + fmt.Sprintf(":%d {\n\trespond 200\n}\n", c.HTTPPort))
	if err != nil {
		return err
	}
	var doc map[string]any
	if err := json.Unmarshal(cfg, &doc); err != nil {
		return err
	}
	for _, srv := range httpServers(doc) {
		srv.(map[string]any)["routes"] = []any{map[string]any{"handle": []any{handler}}}
	}
	if cfg, err = json.Marshal(doc); err != nil {
		return err
	}
	return c.LoadJSON(cfg)
}

// LoadJSON loads a JSON config as LoadCaddyfile does.
func (c *Caddy) LoadJSON(cfg []byte) error {
	cfg, err := c.onHeldSocket(cfg)
	if err != nil {
		return err
	}
	previous := heldListeners()
	err = caddy.Load(cfg, true)
	// a load replaces the admin server: connections kept alive to the old
	// one are closing, and a POST sent on one would not be retried
	c.CloseIdleConnections()
	if err != nil {
		return err
	}
	return awaitClosed(previous, 10*time.Second)
}

// onHeldSocket rewrites the listen address ":<HTTPPort>" of the config's
// HTTP servers to the held socket.
func (c *Caddy) onHeldSocket(cfg []byte) ([]byte, error) {
	var doc map[string]any
	if err := json.Unmarshal(cfg, &doc); err != nil {
		return nil, err
	}
	port := fmt.Sprintf(":%d", c.HTTPPort)
	for _, srv := range httpServers(doc) {
		listen, _ := srv.(map[string]any)["listen"].([]any)
		for i, addr := range listen {
			if addr == port {
				listen[i] = heldNetwork + "/" + held.addr
			}
		}
	}
	return json.Marshal(doc)
}

// httpServers returns the HTTP servers of a config decoded into maps.
func httpServers(doc map[string]any) map[string]any {
	apps, _ := doc["apps"].(map[string]any)
	httpApp, _ := apps["http"].(map[string]any)
	servers, _ := httpApp["servers"].(map[string]any)
	return servers
}

// URL is the address of a path on the site listening on the HTTP port.
func (c *Caddy) URL(path string) string {
	return fmt.Sprintf("http://127.0.0.1:%d%s", c.HTTPPort, path)
}

// Get fetches a URL and returns status and body.
func (c *Caddy) Get(t testing.TB, url string) (int, string) {
	t.Helper()
	resp, err := c.client.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body)
}

// CloseIdleConnections closes the kept-alive connections of the load client
// and of the admin client, and so their goroutines and those serving them.
func (c *Caddy) CloseIdleConnections() {
	c.client.CloseIdleConnections()
	adminClient.CloseIdleConnections()
}

// Client is an HTTP client with a large keep-alive pool, for load.
func (c *Caddy) Client() *http.Client { return c.client }

// Admin calls the admin endpoint and returns status and body. Every config
// load replaces Caddy's admin server and closes the old one, its socket and
// its kept-alive connections, after the load has returned; a request caught
// on its way out gets no answer at all and is sent again (up to twice, 50ms
// apart). Every admin request the tests send can be sent twice: reads, and
// state changes that set an absolute state.
func (c *Caddy) Admin(t testing.TB, method, path string, body string) (int, []byte) {
	t.Helper()
	var err error
	for try := range 3 {
		if try > 0 {
			time.Sleep(50 * time.Millisecond)
		}
		req, rerr := http.NewRequest(method, fmt.Sprintf("http://localhost:%d%s", c.AdminPort, path), strings.NewReader(body))
		if rerr != nil {
			t.Fatal(rerr)
		}
		if body != "" {
			req.Header.Set("Content-Type", "application/json")
		}
		var resp *http.Response
		if resp, err = adminClient.Do(req); err != nil {
			continue
		}
		data, rerr := io.ReadAll(resp.Body)
		resp.Body.Close()
		if rerr != nil {
			t.Fatalf("%s %s: reading the answer: %v", method, path, rerr)
		}
		return resp.StatusCode, data
	}
	t.Fatalf("%s %s: %v", method, path, err)
	return 0, nil
}

// adminClient talks to the admin endpoint on connections of its own, apart
// from the load the tests send.
var adminClient = &http.Client{Timeout: 10 * time.Second}

// Stats reads /lbpool/stats for a pool ("" for all).
func (c *Caddy) Stats(t testing.TB, pool string) []leastconn.BackendStats {
	t.Helper()
	path := "/lbpool/stats"
	if pool != "" {
		path += "?pool=" + pool
	}
	status, body := c.Admin(t, http.MethodGet, path, "")
	if status != http.StatusOK {
		t.Fatalf("GET %s: %d %s", path, status, body)
	}
	var out []leastconn.BackendStats
	if err := json.Unmarshal(body, &out); err != nil {
		t.Fatalf("stats JSON: %v\n%s", err, body)
	}
	return out
}

// Backend returns the stats of one backend by URL.
func (c *Caddy) Backend(t testing.TB, pool, url string) leastconn.BackendStats {
	t.Helper()
	for _, s := range c.Stats(t, pool) {
		if s.URL == url {
			return s
		}
	}
	t.Fatalf("backend %s not in pool %s", url, pool)
	return leastconn.BackendStats{}
}

// Logs returns the lines of Caddy's log that contain all of the substrings.
func (c *Caddy) Logs(substrings ...string) []string {
	return c.logLines(0, substrings...)
}

// logLines returns the lines of Caddy's log after its first offset bytes
// that contain all of the substrings.
func (c *Caddy) logLines(offset int64, substrings ...string) []string {
	f, err := os.Open(c.LogFile)
	if err != nil {
		return nil
	}
	defer f.Close()
	data, _ := io.ReadAll(io.NewSectionReader(f, offset, 1<<40))
	var out []string
lines:
	for _, line := range bytes.Split(data, []byte("\n")) {
		for _, s := range substrings {
			if !bytes.Contains(line, []byte(s)) {
				continue lines
			}
		}
		out = append(out, string(line))
	}
	return out
}

// logSize is how many bytes Caddy has logged so far.
func (c *Caddy) logSize() int64 {
	fi, err := os.Stat(c.LogFile)
	if err != nil {
		return 0
	}
	return fi.Size()
}

// panicLogged starts net/http's message for a handler panic it recovered.
const panicLogged = "http: panic serving"

// EventuallyOr is Eventually that runs explain before failing.
func EventuallyOr(t testing.TB, timeout time.Duration, what string, cond func() bool, explain func()) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			explain()
			t.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// Eventually polls cond every 10ms until it holds or the timeout passes.
func Eventually(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// Backend is a real HTTP server on 127.0.0.1 that counts its requests.
type Backend struct {
	Name     string
	Server   *httptest.Server
	Requests atomic.Int64 // requests other than health checks
	// Health is the status /health answers; 0 means 200.
	Health     atomic.Int32
	HealthHits atomic.Int64

	mu          sync.Mutex
	addr        string
	handler     http.Handler
	healthFunc  http.HandlerFunc
	healthTimes []time.Time
}

// NewBackend starts a backend. Every path answers "<name>" unless handler is
// given; /health answers b.Health (200 by default) and is not counted in
// Requests.
func NewBackend(t testing.TB, name string, handler http.HandlerFunc) *Backend {
	t.Helper()
	l, err := listenLocal()
	if err != nil {
		t.Fatal(err)
	}
	return newBackendOn(t, name, l, handler)
}

// NewWatchedBackend is NewBackend whose server reports each change of a
// connection's state to state (net/http's ConnState), set before it serves.
func NewWatchedBackend(t testing.TB, name string, handler http.HandlerFunc, state func(net.Conn, http.ConnState)) *Backend {
	t.Helper()
	l, err := listenLocal()
	if err != nil {
		t.Fatal(err)
	}
	return newBackendOn(t, name, l, handler, state)
}

// newBackendOn is NewBackend on a listener of the caller's.
func newBackendOn(t testing.TB, name string, l net.Listener, handler http.HandlerFunc, state ...func(net.Conn, http.ConnState)) *Backend {
	t.Helper()
	b := &Backend{Name: name}
	b.handler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/health" {
			b.HealthHits.Add(1)
			b.mu.Lock()
			b.healthTimes = append(b.healthTimes, time.Now())
			hf := b.healthFunc
			b.mu.Unlock()
			if hf != nil {
				hf(w, r)
				return
			}
			status := int(b.Health.Load())
			if status == 0 {
				status = http.StatusOK
			}
			w.WriteHeader(status)
			return
		}
		b.Requests.Add(1)
		if handler != nil {
			handler(w, r)
			return
		}
		_, _ = io.WriteString(w, name)
	})
	b.Server = httptest.NewUnstartedServer(b.handler)
	b.Server.Listener.Close()
	b.Server.Listener = l
	if len(state) > 0 {
		b.Server.Config.ConnState = state[0]
	}
	b.Server.Start()
	b.addr = l.Addr().String()
	t.Cleanup(b.Close)
	return b
}

// SetHealth makes /health answer with f (nil: back to b.Health).
func (b *Backend) SetHealth(f http.HandlerFunc) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.healthFunc = f
}

// HealthTimes returns when each health check arrived.
func (b *Backend) HealthTimes() []time.Time {
	b.mu.Lock()
	defer b.mu.Unlock()
	return append([]time.Time(nil), b.healthTimes...)
}

// Addr is host:port.
func (b *Backend) Addr() string { return b.addr }

// URL is how stats show the backend.
func (b *Backend) URL() string { return "http://" + b.addr }

// Close stops the backend (and closes its open connections).
func (b *Backend) Close() {
	b.mu.Lock()
	s := b.Server
	b.Server = nil
	b.mu.Unlock()
	// not under b.mu: Close waits for handlers, and handlers take b.mu.
	// Stop accepting first, then drop the open connections.
	if s != nil {
		_ = s.Listener.Close()
		s.CloseClientConnections()
		s.Close()
	}
}

// Restart starts the backend again on the same address.
func (b *Backend) Restart(t testing.TB) {
	t.Helper()
	b.mu.Lock()
	defer b.mu.Unlock()
	var l net.Listener
	var err error
	for i := 0; i < 100; i++ {
		if l, err = net.Listen("tcp", b.addr); err == nil {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err != nil {
		t.Fatalf("restart %s: %v", b.Name, err)
	}
	s := httptest.NewUnstartedServer(b.handler)
	s.Listener.Close()
	s.Listener = l
	s.Start()
	b.Server = s
}

// Site is a site on the HTTP port with one lbpool named web over the
// backends, checked on /health, with extra options.
func (c *Caddy) Site(extra string, backends ...*Backend) string {
	addrs := make([]string, len(backends))
	for i, b := range backends {
		addrs[i] = b.Addr()
	}
	return c.SiteAt(extra, addrs...)
}

// SiteAt is Site for backends given by address.
func (c *Caddy) SiteAt(extra string, addrs ...string) string {
	return fmt.Sprintf(`:%d {
	lbpool %s {
		name web
		health_uri /health
		%s
	}
}`, c.HTTPPort, strings.Join(addrs, " "), extra)
}

// Traffic sends GETs to path from clients goroutines until max requests
// were sent or stop (if not nil) returns true, and returns how many were
// sent and how many did not get a full 200. Nothing is resent: send no
// Traffic while a config loads (see GetResending).
func (c *Caddy) Traffic(clients, max int, path string, stop func() bool) (sent, failed int64) {
	var nSent, nFailed atomic.Int64
	var wg sync.WaitGroup
	for range clients {
		wg.Go(func() {
			for (stop == nil || !stop()) && nSent.Add(1) <= int64(max) {
				if err := get200(c.client, c.URL(path)); err != nil {
					nFailed.Add(1)
				}
			}
		})
	}
	wg.Wait()
	return min(nSent.Load(), int64(max)), nFailed.Load()
}

// GetResending GETs url and reads the whole body; any answer that is not a
// full 200 is an error. A request that got no answer at all, on a
// connection Caddy closed unread, is sent again, 20ms apart, for up to
// resendFor; resent says how many times. A config reload stops the old HTTP
// server while the new one already serves, and net/http's Server closes a
// connection whose request it reads after Shutdown began without answering
// it, before any handler runs; it does the same with reverse_proxy or
// respond, and a burst of reloads can do it to one request several times.
// Every test fails on a handler panic (see Start), and the tests that
// resend check that the backends served exactly the 200s the clients got,
// so a request lbpool took and lost cannot hide in a resend.
func GetResending(client *http.Client, url string) (resent int, err error) {
	deadline := time.Now().Add(resendFor)
	for try := 0; ; try++ {
		if try > 0 {
			time.Sleep(20 * time.Millisecond)
		}
		err = get200(client, url)
		var lost noAnswer
		if !errors.As(err, &lost) {
			return try, err
		}
		if time.Now().After(deadline) {
			return try, fmt.Errorf("no answer for %v (%d tries): %v", resendFor, try+1, lost.error)
		}
	}
}

// noAnswer is the error of a request that got no response at all.
type noAnswer struct{ error }

// get200 GETs url and reads the whole body; any answer that is not a full
// 200 is an error, and no answer at all is a noAnswer.
func get200(client *http.Client, url string) error {
	resp, err := client.Get(url)
	if err != nil {
		return noAnswer{err}
	}
	_, rerr := io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	switch {
	case rerr != nil:
		return fmt.Errorf("status %d, body broken off: %v", resp.StatusCode, rerr)
	case resp.StatusCode != http.StatusOK:
		return fmt.Errorf("status %d", resp.StatusCode)
	}
	return nil
}

// resendFor bounds GetResending's resends of one request.
const resendFor = 3 * time.Second
