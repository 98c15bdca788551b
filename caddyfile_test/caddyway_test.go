package caddyfile_test

// The request path the Caddy way: placeholders in Caddy's own access log,
// header_up/header_down, errors answered by handle_errors, HTTPS backends
// on a private CA or demanding a client certificate, unix-socket backends.

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/lbpool/lbpool/internal/lbtest"
	"github.com/lbpool/lbpool/leastconn"
)

// servedBy answers with the backend's own address in X-Served-By.
func servedBy(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("X-Served-By", r.Context().Value(http.LocalAddrContextKey).(net.Addr).String())
	_, _ = io.WriteString(w, "ok")
}

// closesEveryRequest reads a request and closes the connection without an
// answer: a backend that passes its checks but breaks every request.
func closesEveryRequest(w http.ResponseWriter, _ *http.Request) {
	if conn, _, err := http.NewResponseController(w).Hijack(); err == nil {
		conn.Close()
	}
}

// awaitAllUp waits until every backend of the pool was checked and is up.
func awaitAllUp(t *testing.T, c *lbtest.Caddy, pool string) {
	t.Helper()
	lbtest.Eventually(t, 5*time.Second, "every backend of "+pool+" checked and up", func() bool {
		for _, s := range c.Stats(t, pool) {
			if s.LastCheck == nil || !s.Alive {
				return false
			}
		}
		return true
	})
}

// accessEntry is the part of a Caddy access-log line the tests read.
type accessEntry struct {
	Status   int     `json:"status"`
	Duration float64 `json:"duration"` // seconds
	Size     int     `json:"size"`
	Read     int     `json:"bytes_read"`
	Request  struct {
		Method string `json:"method"`
		URI    string `json:"uri"`
	} `json:"request"`
	RespHeaders http.Header `json:"resp_headers"`

	Upstream   string   `json:"upstream"`
	Backend    string   `json:"lb_backend"`
	Pool       string   `json:"lb_pool"`
	Retries    *int     `json:"lb_retries"`
	StatusCode *int     `json:"lb_status"`
	LatencyMS  *float64 `json:"lb_latency_ms"`
	DurationMS *float64 `json:"lb_duration_ms"`
	raw        string
}

func readAccessLog(t *testing.T, path string) []accessEntry {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		return nil
	}
	defer f.Close()
	var out []accessEntry
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		var e accessEntry
		if err := json.Unmarshal(sc.Bytes(), &e); err != nil {
			t.Fatalf("access log line is not JSON: %v\n%s", err, sc.Text())
		}
		e.raw = sc.Text()
		out = append(out, e)
	}
	return out
}

func TestAccessLogNamesTheBackendOfEachRequestIncludingARetriedOne(t *testing.T) {
	c := lbtest.Start(t)
	flaky := lbtest.NewBackend(t, "flaky", closesEveryRequest)
	a := lbtest.NewBackend(t, "a", servedBy)
	b := lbtest.NewBackend(t, "b", servedBy)
	logFile := filepath.Join(t.TempDir(), "access.log")
	c.Load(t, fmt.Sprintf(`:%d {
	log {
		output file %s
		format json
	}
	log_append upstream {http.lbpool.backend.hostport}
	log_append lb_backend {http.lbpool.backend}
	log_append lb_pool {http.lbpool.pool}
	log_append lb_retries {http.lbpool.retries}
	log_append lb_status {http.lbpool.status_code}
	log_append lb_latency_ms {http.lbpool.latency_ms}
	log_append lb_duration_ms {http.lbpool.duration_ms}
	lbpool %s %s %s {
		name web
		health_uri /health
	}
}`, c.HTTPPort, logFile, flaky.Addr(), a.Addr(), b.Addr()))
	awaitAllUp(t, c, "web")

	// GETs take the direct path; sequential requests visit every backend
	// in turn, so the flaky one is tried and the request retried
	gets := 0
	for gets < 30 && flaky.Requests.Load() < 2 {
		if status, _ := c.Get(t, c.URL(fmt.Sprintf("/get/%d", gets))); status != 200 {
			t.Fatalf("GET %d: status %d", gets, status)
		}
		gets++
	}
	if flaky.Requests.Load() == 0 {
		t.Fatalf("%d GETs never tried the flaky backend", gets)
	}
	// bodies take net/http's Transport
	if status, body := c.Admin(t, http.MethodPost, "/lbpool/state",
		fmt.Sprintf(`{"pool":"web","backend":%q,"state":"maint"}`, flaky.Addr())); status != 200 {
		t.Fatalf("maint: %d %s", status, body)
	}
	for i := range 2 {
		resp, err := c.Client().Post(c.URL(fmt.Sprintf("/post/%d", i)), "text/plain", strings.NewReader("payload"))
		if err != nil {
			t.Fatal(err)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 {
			t.Fatalf("POST %d: status %d", i, resp.StatusCode)
		}
	}

	var entries []accessEntry
	lbtest.Eventually(t, 5*time.Second, "an access-log entry for every request", func() bool {
		entries = readAccessLog(t, logFile)
		return len(entries) == gets+2
	})
	retried, posts := 0, 0
	for _, e := range entries {
		served := e.RespHeaders.Get("X-Served-By")
		switch {
		case e.Status != 200 || served == "":
			t.Errorf("%s %s: status %d, served by %q", e.Request.Method, e.Request.URI, e.Status, served)
		case e.Upstream != served:
			t.Errorf("%s %s: the log names %q, but %q served it\n%s", e.Request.Method, e.Request.URI, e.Upstream, served, e.raw)
		case e.Backend != "http://"+served || e.Pool != "web":
			t.Errorf("%s: lb_backend %q, lb_pool %q", e.Request.URI, e.Backend, e.Pool)
		case e.StatusCode == nil || *e.StatusCode != 200 || e.Retries == nil:
			t.Errorf("%s: lb_status %v, lb_retries %v\n%s", e.Request.URI, e.StatusCode, e.Retries, e.raw)
		case e.LatencyMS == nil || e.DurationMS == nil || *e.LatencyMS <= 0 || *e.DurationMS < *e.LatencyMS:
			t.Errorf("%s: latency %v ms, duration %v ms\n%s", e.Request.URI, e.LatencyMS, e.DurationMS, e.raw)
		}
		if e.Retries != nil && *e.Retries == 1 {
			retried++
			t.Logf("a retried request's entry:\n%s", e.raw)
		}
		if e.Request.Method == http.MethodPost {
			posts++
		}
	}
	if retried == 0 || posts != 2 {
		t.Fatalf("%d retried entries, %d POSTs; want at least 1 and 2", retried, posts)
	}
}

func TestHeaderUpAndDownResolvePlaceholdersForEachTry(t *testing.T) {
	c := lbtest.Start(t)
	type seen struct {
		host   string
		header http.Header
	}
	flakySaw := make(chan seen, 32)
	goodSaw := make(chan seen, 32)
	flaky := lbtest.NewBackend(t, "flaky", func(w http.ResponseWriter, r *http.Request) {
		flakySaw <- seen{r.Host, r.Header.Clone()}
		closesEveryRequest(w, r)
	})
	good := lbtest.NewBackend(t, "good", func(w http.ResponseWriter, r *http.Request) {
		goodSaw <- seen{r.Host, r.Header.Clone()}
		w.Header().Set("X-Internal", "secret")
		w.Header().Set("X-Version", "v7")
		_, _ = io.WriteString(w, "good")
	})
	c.Load(t, c.Site(`
		header_up Host {http.lbpool.backend.hostport}
		header_up X-Lb-Backend {http.lbpool.backend}
		header_up X-Lb-Try {http.lbpool.retries}
		header_up +X-Added yes
		header_up -X-Secret
		header_up X-Tenant "^(.*)$" "t-$1"
		header_down X-Served-By {http.lbpool.backend.hostport}
		header_down -X-Internal
		header_down X-Version "^v(\d+)$" "version $1"
		header_down +X-Lb-Status {http.lbpool.status_code}`, flaky, good))
	awaitAllUp(t, c, "web")

	for i := 0; ; i++ {
		if i == 30 {
			t.Fatal("30 requests and none was retried from the flaky backend")
		}
		req, _ := http.NewRequest(http.MethodGet, c.URL("/h"), nil)
		req.Host = "shop.example"
		req.Header.Set("X-Tenant", "acme")
		req.Header.Set("X-Secret", "s3cr3t")
		resp, err := c.Client().Do(req)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || string(body) != "good" {
			t.Fatalf("request %d: %d %q", i, resp.StatusCode, body)
		}
		g := <-goodSaw
		if g.header.Get("X-Lb-Try") != "1" {
			continue // not retried: try again
		}
		f := <-flakySaw
		if f.host != flaky.Addr() || f.header.Get("X-Lb-Backend") != flaky.URL() || f.header.Get("X-Lb-Try") != "0" {
			t.Errorf("the first try saw Host %q, X-Lb-Backend %q, X-Lb-Try %q; want its own backend and 0",
				f.host, f.header.Get("X-Lb-Backend"), f.header.Get("X-Lb-Try"))
		}
		if g.host != good.Addr() || g.header.Get("X-Lb-Backend") != good.URL() {
			t.Errorf("the retry saw Host %q, X-Lb-Backend %q; want %s", g.host, g.header.Get("X-Lb-Backend"), good.Addr())
		}
		for _, try := range []seen{f, g} {
			h := try.header
			if h.Get("X-Tenant") != "t-acme" || len(h["X-Added"]) != 1 || h.Get("X-Secret") != "" {
				t.Errorf("a try saw X-Tenant %q, X-Added %q, X-Secret %q; want t-acme, [yes], none",
					h.Get("X-Tenant"), h["X-Added"], h.Get("X-Secret"))
			}
			if h.Get("X-Forwarded-Host") != "shop.example" {
				t.Errorf("X-Forwarded-Host %q: the forwarded headers must stay", h.Get("X-Forwarded-Host"))
			}
		}
		for name, want := range map[string]string{
			"X-Served-By": good.Addr(), "X-Internal": "", "X-Version": "version 7", "X-Lb-Status": "200",
		} {
			if got := resp.Header.Get(name); got != want {
				t.Errorf("client got %s %q, want %q", name, got, want)
			}
		}
		return
	}
}

func TestCredentialsOfABackendDoNotFollowARetry(t *testing.T) {
	c := lbtest.Start(t)
	auths := make(chan []string, 64)
	flaky := lbtest.NewBackend(t, "flaky", closesEveryRequest)
	good := lbtest.NewBackend(t, "good", func(w http.ResponseWriter, r *http.Request) {
		auths <- r.Header["Authorization"]
		_, _ = io.WriteString(w, "good")
	})
	c.Load(t, c.SiteAt("", "http://ops:hunter2@"+flaky.Addr(), good.Addr()))
	awaitAllUp(t, c, "web")
	for i := 0; flaky.Requests.Load() == 0; i++ {
		if i == 30 {
			t.Fatal("30 requests and none tried the flaky backend")
		}
		if status, _ := c.Get(t, c.URL("/")); status != 200 {
			t.Fatalf("status %d", status)
		}
		if got := <-auths; got != nil {
			t.Fatalf("the other backend got Authorization %q meant for the flaky one", got)
		}
	}
}

func TestHandleErrorsAnswers503502And504(t *testing.T) {
	c := lbtest.Start(t)
	down := lbtest.NewBackend(t, "down", nil)
	down.Health.Store(http.StatusServiceUnavailable)
	flaky := lbtest.NewBackend(t, "flaky", closesEveryRequest)
	slow := lbtest.NewBackend(t, "slow", func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-r.Context().Done():
		case <-time.After(10 * time.Second):
		}
	})
	c.Load(t, fmt.Sprintf(`:%d {
	handle_errors {
		header X-Handled-By handle_errors
		header X-Lb-Pool {http.lbpool.pool}
		respond "handled {err.status_code}: {err.message}" {err.status_code}
	}
	handle /down* {
		lbpool %s {
			name down
			health_uri /health
		}
	}
	handle /flaky* {
		lbpool %s {
			name flaky
			health_uri /health
		}
	}
	handle /slow* {
		lbpool %s {
			name slow
			health_uri /health
			response_header_timeout 200ms
		}
	}
}`, c.HTTPPort, down.Addr(), flaky.Addr(), slow.Addr()))
	lbtest.Eventually(t, 5*time.Second, "down is down, flaky and slow are up", func() bool {
		for _, s := range c.Stats(t, "") {
			if s.LastCheck == nil || s.Alive != (s.Pool != "down") {
				return false
			}
		}
		return true
	})
	for _, tc := range []struct {
		path       string
		status     int
		message    string
		retryAfter string
	}{
		{"/down", 503, "lbpool: no backend available", "1-2"}, // the seconds to the next check (health_down_interval, doubling)
		{"/flaky", 502, "lbpool: every try failed: ", ""},
		{"/slow", 504, "lbpool: backend did not answer in time", ""},
	} {
		resp, err := c.Client().Get(c.URL(tc.path))
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		want := fmt.Sprintf("handled %d: %s", tc.status, tc.message)
		if resp.StatusCode != tc.status || !strings.HasPrefix(string(body), want) || resp.Header.Get("X-Handled-By") != "handle_errors" {
			t.Errorf("%s: %d %q (X-Handled-By %q), want %d from handle_errors with %q",
				tc.path, resp.StatusCode, body, resp.Header.Get("X-Handled-By"), tc.status, want)
		}
		if pool := resp.Header.Get("X-Lb-Pool"); pool != strings.TrimPrefix(tc.path, "/") {
			t.Errorf("%s: {http.lbpool.pool} in handle_errors gave %q", tc.path, pool)
		}
		if got := resp.Header.Get("Retry-After"); got != tc.retryAfter && !(tc.retryAfter == "1-2" && (got == "1" || got == "2")) {
			t.Errorf("%s: Retry-After %q, want %q", tc.path, got, tc.retryAfter)
		}
	}
}

// tlsPoolSite is a site with one pool over an HTTPS backend, with extra
// options.
func tlsPoolSite(c *lbtest.Caddy, pool, addr, extra string) string {
	return fmt.Sprintf(`:%d {
	lbpool https://%s {
		name %s
		health_uri /health
		%s
	}
}`, c.HTTPPort, addr, pool, extra)
}

// awaitCheck waits for the pool's one backend to be checked, and returns
// whether it is up and the check's error.
func awaitCheck(t *testing.T, c *lbtest.Caddy, pool string) (alive bool, checkErr string) {
	t.Helper()
	var s []leastconn.BackendStats
	lbtest.Eventually(t, 5*time.Second, "a check of pool "+pool, func() bool {
		s = c.Stats(t, pool)
		return len(s) == 1 && s[0].LastCheck != nil
	})
	return s[0].Alive, s[0].LastCheck.Error
}

func TestHTTPSBackendOnAPrivateCAIsTrustedThroughTLSTrustPool(t *testing.T) {
	c := lbtest.Start(t)
	ca := newTestCA(t)
	_, _, serverCert := ca.issue(t, "backend", []string{"backend.test"}, false)
	addr := startTLSBackend(t, serverCert, nil, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/stats" {
			_, _ = io.WriteString(w, `{"memory_usage": 4096}`)
			return
		}
		_, _ = io.WriteString(w, "private")
	}))

	// without the CA: refused by the checks and by traffic
	c.Load(t, tlsPoolSite(c, "untrusted", addr, "tls_server_name backend.test"))
	if alive, err := awaitCheck(t, c, "untrusted"); alive || !strings.Contains(err, "certificate") {
		t.Fatalf("without the CA: alive %v, check error %q; want a refused certificate", alive, err)
	}
	if status, _ := c.Get(t, c.URL("/")); status == 200 {
		t.Fatal("served over TLS without trusting the backend's CA")
	}

	// with it: checks, stats fetches and traffic all go through
	c.Load(t, tlsPoolSite(c, "trusted", addr, fmt.Sprintf(`tls_trust_pool file %s
		tls_server_name backend.test
		stats_uri /stats`, ca.PEMFile)))
	if alive, err := awaitCheck(t, c, "trusted"); !alive {
		t.Fatalf("with tls_trust_pool: check error %q", err)
	}
	if status, body := c.Get(t, c.URL("/")); status != 200 || body != "private" {
		t.Fatalf("with tls_trust_pool: %d %q", status, body)
	}
	lbtest.Eventually(t, 5*time.Second, "memory fetched over TLS", func() bool {
		s := c.Stats(t, "trusted")[0]
		return s.MemoryBytes != nil && *s.MemoryBytes == 4096
	})

	// the certificate names backend.test: without tls_server_name the
	// address 127.0.0.1 is what it is checked against, and it fails
	c.Load(t, tlsPoolSite(c, "wrongname", addr, fmt.Sprintf(`tls_trust_pool file %s`, ca.PEMFile)))
	if alive, err := awaitCheck(t, c, "wrongname"); alive || !strings.Contains(err, "127.0.0.1") {
		t.Fatalf("without tls_server_name: alive %v, check error %q; want the name refused", alive, err)
	}
	c.Load(t, tlsPoolSite(c, "othername", addr, fmt.Sprintf("tls_trusted_ca_certs %s\n\t\ttls_server_name other.test", ca.PEMFile)))
	if alive, err := awaitCheck(t, c, "othername"); alive || !strings.Contains(err, "other.test") {
		t.Fatalf("tls_server_name other.test: alive %v, check error %q; want the name refused", alive, err)
	}
}

func TestHTTPSBackendDemandingAClientCertificateIsServedWithTLSClientAuth(t *testing.T) {
	c := lbtest.Start(t)
	ca := newTestCA(t)
	_, _, serverCert := ca.issue(t, "backend", []string{"backend.test"}, false)
	certFile, keyFile, _ := ca.issue(t, "lbpool-client", nil, true)
	var clientName atomic.Value
	addr := startTLSBackend(t, serverCert, ca.Pool, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		clientName.Store(r.TLS.PeerCertificates[0].Subject.CommonName)
		_, _ = io.WriteString(w, "mutual")
	}))
	// the older way to name the CA, as reverse_proxy still takes it
	trust := fmt.Sprintf("tls_trusted_ca_certs %s\n\t\ttls_server_name backend.test", ca.PEMFile)

	c.Load(t, tlsPoolSite(c, "anonymous", addr, trust))
	if alive, err := awaitCheck(t, c, "anonymous"); alive {
		t.Fatalf("a backend demanding a client certificate passed a check without one (error %q)", err)
	}
	c.Load(t, tlsPoolSite(c, "mutual", addr, trust+fmt.Sprintf("\n\t\ttls_client_auth %s %s\n\t\ttls_timeout 5s", certFile, keyFile)))
	if alive, err := awaitCheck(t, c, "mutual"); !alive {
		t.Fatalf("with tls_client_auth: check error %q", err)
	}
	if status, body := c.Get(t, c.URL("/")); status != 200 || body != "mutual" {
		t.Fatalf("with tls_client_auth: %d %q", status, body)
	}
	if got, _ := clientName.Load().(string); got != "lbpool-client" {
		t.Fatalf("the backend saw client certificate %q", got)
	}
}

func TestUnixSocketBackendServesTrafficChecksAndStats(t *testing.T) {
	c := lbtest.Start(t)
	sock := filepath.Join(t.TempDir(), "app.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	var checkHost, trafficHost atomic.Value
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/health":
			checkHost.Store(r.Host)
		case "/stats":
			_, _ = io.WriteString(w, `{"memory_usage": 2048}`)
		default:
			trafficHost.Store(r.Host)
			body, _ := io.ReadAll(r.Body)
			fmt.Fprintf(w, "unix %s %s", r.Method, body)
		}
	})}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { _ = srv.Close() })

	c.Load(t, fmt.Sprintf(`:%d {
	lbpool unix/%s {
		name sock
		health_uri /health
		health_interval 200ms
		stats_uri /stats
		header_down X-Up "{http.lbpool.backend.hostport}|{http.lbpool.backend.host}|{http.lbpool.backend.port}"
	}
}`, c.HTTPPort, sock))
	lbtest.Eventually(t, 5*time.Second, "the socket checked, up, with its memory", func() bool {
		s := c.Stats(t, "sock")
		return len(s) == 1 && s[0].Alive && s[0].URL == "unix/"+sock && s[0].MemoryBytes != nil && *s[0].MemoryBytes == 2048
	})
	if h, _ := checkHost.Load().(string); h != "localhost" {
		t.Errorf("checks sent Host %q, want localhost", h)
	}
	resp, err := c.Client().Get(c.URL("/direct"))
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || string(body) != "unix GET " {
		t.Fatalf("GET over the socket: %d %q", resp.StatusCode, body)
	}
	if got, want := resp.Header.Get("X-Up"), sock+"|"+sock+"|"; got != want {
		t.Errorf("placeholders hostport|host|port = %q, want %q", got, want)
	}
	if h, _ := trafficHost.Load().(string); h != fmt.Sprintf("127.0.0.1:%d", c.HTTPPort) {
		t.Errorf("the backend saw Host %q, want the client's", h)
	}
	resp, err = c.Client().Post(c.URL("/transport"), "text/plain", strings.NewReader("hello"))
	if err != nil {
		t.Fatal(err)
	}
	body, _ = io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || string(body) != "unix POST hello" {
		t.Fatalf("POST over the socket: %d %q", resp.StatusCode, body)
	}

	_ = srv.Close()
	lbtest.Eventually(t, 5*time.Second, "the closed socket's check to fail", func() bool {
		return !c.Stats(t, "sock")[0].Alive
	})
	if status, _ := c.Get(t, c.URL("/")); status != http.StatusServiceUnavailable {
		t.Fatalf("with the socket gone: status %d, want 503", status)
	}
}

func TestWebsocketAccessLogLineIsWrittenWhenItClosesWithItsDuration(t *testing.T) {
	c := lbtest.Start(t)
	b := echoWebsocket(t, "ws", nil)
	logFile := filepath.Join(t.TempDir(), "access.log")
	c.Load(t, fmt.Sprintf(`:%d {
	log {
		output file %s
		format json
	}
	lbpool %s {
		name web
	}
}`, c.HTTPPort, logFile, b.Addr()))
	wsLines := func() []accessEntry {
		var out []accessEntry
		for _, e := range readAccessLog(t, logFile) {
			if e.Request.URI == "/ws" {
				out = append(out, e)
			}
		}
		return out
	}
	conn, br := dialWebsocket(t, c)
	const held = 500 * time.Millisecond
	deadline := time.Now().Add(held)
	pings := 1 // dialWebsocket's
	for ; time.Now().Before(deadline); pings++ {
		if !echoes(conn, br) {
			t.Fatal("the websocket stopped echoing")
		}
		time.Sleep(50 * time.Millisecond)
	}
	if got := wsLines(); len(got) != 0 {
		t.Fatalf("the websocket's access log line was written while it was open: %s", got[0].raw)
	}
	conn.Close()
	lbtest.Eventually(t, 10*time.Second, "the websocket's access log line once it closed", func() bool { return len(wsLines()) > 0 })
	got := wsLines()
	if len(got) != 1 {
		t.Fatalf("%d access log lines for the websocket, want 1", len(got))
	}
	e := got[0]
	// the client sent "ping\n" once a loop; the greeting and each echo came back
	if e.Status != http.StatusSwitchingProtocols || e.Duration < held.Seconds() || e.Read < 5*pings || e.Size < 10*pings ||
		e.RespHeaders.Get("Upgrade") != "websocket" {
		t.Fatalf("the websocket's access log line: status %d, duration %.3fs, bytes_read %d, size %d after %d pings; want 101, at least %v, the bytes each way and the 101's headers:\n%s",
			e.Status, e.Duration, e.Read, e.Size, pings, held, e.raw)
	}
	t.Logf("the websocket's line: %s", e.raw)
}
