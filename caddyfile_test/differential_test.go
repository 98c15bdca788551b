package caddyfile_test

// Differential tests: one Caddy runs lbpool and Caddy's own reverse_proxy
// (net/http's Transport) side by side, each in front of its own copy of a
// raw-socket backend, and every response shape in the catalogue goes
// through both. What the client gets, what the next request on that
// backend gets, how often the backend saw the request and whether the
// backend was held to have failed must be the same, except where a shape
// lists a deliberate difference (docs/differences.md, "Where lbpool differs from
// reverse_proxy").

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptrace"
	"net/textproto"
	"reflect"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/lbpool/lbpool/internal/lbtest"
)

// responseShape is one way a backend answers.
type responseShape struct {
	name    string
	method  string // GET unless set
	body    string // a request body, sent with Content-Length
	chunked bool   // the body is sent chunked instead
	upgrade string // the protocol the request asks to switch to; "" for none
	// headerTimeout is both proxies' response_header_timeout; 5s unless set
	headerTimeout time.Duration
	// serve answers the request on the raw connection and says whether the
	// connection stays open for another request.
	serve func(conn net.Conn, req *http.Request) bool
	// lateBytes: serve writes bytes after its response, 200ms later; the
	// next request waits until they were sent.
	lateBytes bool
	// resent: the shape spoils a reused connection's response in a way
	// net/http's Transport does not resend, and lbpool does (once, on a
	// new connection, for an idempotent request): the backend sees
	// lbpool's request once more than reverse_proxy's.
	resent bool
	// differs says how and why lbpool deliberately answers otherwise; ""
	// when it must answer as reverse_proxy does. lbpool's client then gets
	// wantStatus, and the backend is held down or not as wantHeldDown says.
	differs      string
	wantStatus   int
	wantHeldDown bool
	// wantHits, when set, is how often the backend must have seen the
	// request through lbpool: a request with a body is never resent once
	// any of it went out.
	wantHits int64
	// lbpoolOnly: reverse_proxy panics on the shape (net/http logs the
	// panic, which fails every test here), so only lbpool gets it.
	lbpoolOnly bool
	// strayInSameWrite: the response leaves bytes on the connection in the
	// same write. net/http's Transport finds them with its idle reader,
	// which races with the next request taking the connection: when the
	// request wins, reverse_proxy's next answer is a 502. lbpool must get
	// its next request right either way.
	strayInSameWrite bool
}

// writeRaw is a serve func that writes s and says keepAlive.
func writeRaw(s string, keepAlive bool) func(net.Conn, *http.Request) bool {
	return func(conn net.Conn, _ *http.Request) bool {
		_, _ = io.WriteString(conn, s)
		return keepAlive
	}
}

var responseShapes = []responseShape{
	{name: "bytes past Content-Length in the same write", strayInSameWrite: true,
		serve: writeRaw("HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nABCDEFGHIJK", true)},
	{name: "bytes past Content-Length written later", lateBytes: true,
		serve: writeRaw("HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nABC", true)},
	{name: "body on a HEAD response", method: http.MethodHead, strayInSameWrite: true,
		serve: writeRaw("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello", true)},
	{name: "body on a 204", strayInSameWrite: true,
		serve: writeRaw("HTTP/1.1 204 No Content\r\n\r\nhello", true)},
	{name: "body on a 304", strayInSameWrite: true,
		serve: writeRaw("HTTP/1.1 304 Not Modified\r\nEtag: \"v1\"\r\n\r\nhello", true)},
	{name: "two equal Content-Lengths",
		serve: writeRaw("HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\nok", true)},
	{name: "two different Content-Lengths", resent: true,
		serve: writeRaw("HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nok!", true)},
	{name: "Content-Length with chunked",
		serve: writeRaw("HTTP/1.1 200 OK\r\nContent-Length: 100\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n", true)},
	{name: "chunked with trailers",
		serve: writeRaw("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X-Sum\r\n\r\n2\r\nok\r\n0\r\nX-Sum: 42\r\n\r\n", true)},
	{name: "malformed chunk",
		serve: writeRaw("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nok\r\n0\r\n\r\n", false)},
	{name: "bare LF line endings",
		serve: writeRaw("HTTP/1.1 200 OK\nContent-Length: 2\nX-Lf: yes\n\nok", true)},
	{name: "obsolete line folding",
		serve: writeRaw("HTTP/1.1 200 OK\r\nX-Folded: a\r\n b\r\nContent-Length: 2\r\n\r\nok", true)},
	{name: "header line without a colon", resent: true,
		serve: writeRaw("HTTP/1.1 200 OK\r\nNoColonHere\r\nContent-Length: 2\r\n\r\nok", true)},
	{name: "HTTP/1.0 without a length",
		serve: writeRaw("HTTP/1.0 200 OK\r\nX-Old: yes\r\n\r\nuntil the end", false)},
	{name: "Connection close then more bytes",
		serve: writeRaw("HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nokMORE BYTES", true)},
	{name: "close in the middle of the headers", resent: true,
		serve: writeRaw("HTTP/1.1 200 OK\r\nX-Partial: ye", false)},
	{name: "close in the middle of the body",
		serve: writeRaw("HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc", false)},
	{name: "early response before the request body was read", method: http.MethodPost,
		body:  strings.Repeat("b", 64<<10),
		serve: writeRaw("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nearly", true)},
	{name: "early response before a chunked request body was read", method: http.MethodPost,
		body: strings.Repeat("b", 64<<10), chunked: true,
		serve: writeRaw("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nearly", true)},
	{name: "1xx before the final response",
		serve: writeRaw("HTTP/1.1 103 Early Hints\r\nLink: </s.css>; rel=preload\r\n\r\n"+
			"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", true)},
	{name: "status line trickled in past response_header_timeout", headerTimeout: trickleTimeout,
		serve:      trickleHead("", "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"),
		differs:    "both answer 504 after response_header_timeout and send the request once; reverse_proxy counts the timeout against its upstream, lbpool leaves a slow backend's health to its checks",
		wantStatus: http.StatusGatewayTimeout, wantHeldDown: false, wantHits: 1},
	{name: "headers trickled in past response_header_timeout", headerTimeout: trickleTimeout,
		serve:      trickleHead("HTTP/1.1 200 OK\r\n", "X-Trickle: slow\r\nContent-Length: 2\r\n\r\nok"),
		differs:    "both answer 504 after response_header_timeout and send the request once; reverse_proxy counts the timeout against its upstream, lbpool leaves a slow backend's health to its checks",
		wantStatus: http.StatusGatewayTimeout, wantHeldDown: false, wantHits: 1},
	{name: "101 to another protocol than the one asked for", upgrade: "websocket",
		serve:      writeRaw("HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: evil\r\n\r\n", false),
		differs:    "neither tunnels; reverse_proxy answers an empty 200 and counts nothing, lbpool answers 502 and counts a failure, as net/http's ReverseProxy refuses the switch",
		wantStatus: http.StatusBadGateway, wantHeldDown: true, wantHits: 1},
	{name: "101 to a request that asked for no upgrade",
		serve:      writeRaw("HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n", false),
		differs:    "neither tunnels; reverse_proxy answers an empty 200 and counts nothing, lbpool answers 502 and counts a failure, as net/http's ReverseProxy refuses the switch (on a reused connection, once more on a new one first)",
		wantStatus: http.StatusBadGateway, wantHeldDown: true, wantHits: 2},
	{name: "status code 600",
		serve:      writeRaw("HTTP/1.1 600 Odd\r\nContent-Length: 2\r\n\r\nok", true),
		differs:    "lbpool answers 502 and counts a failure: HTTP defines 100-599 (RFC 9110 §15); reverse_proxy passes 600 on",
		wantStatus: http.StatusBadGateway, wantHeldDown: true},
	{name: "status code 099", lbpoolOnly: true,
		serve:      writeRaw("HTTP/1.1 099 Odd\r\nContent-Length: 2\r\n\r\nok", true),
		differs:    "lbpool answers 502 and counts a failure; reverse_proxy hands 99 to net/http, whose WriteHeader panics (the client's connection is dropped)",
		wantStatus: http.StatusBadGateway, wantHeldDown: true},
	{name: "header line without a colon, to a bodyless POST", method: http.MethodPost,
		serve:      writeRaw("HTTP/1.1 200 OK\r\nNoColonHere\r\nContent-Length: 2\r\n\r\nok", true),
		differs:    "both answer 502 and send the POST once; lbpool does not hold the backend down for a failure on a reused connection (the connection's fault first), reverse_proxy counts it",
		wantStatus: http.StatusBadGateway, wantHeldDown: false},
	{name: "POST body read, then closed without an answer", method: http.MethodPost, body: "pay 10",
		serve: func(conn net.Conn, req *http.Request) bool {
			_, _ = io.Copy(io.Discard, req.Body)
			return false
		},
		differs:    "both answer 502 and send the POST once; lbpool does not hold the backend down for a failure on a reused connection, reverse_proxy counts it",
		wantStatus: http.StatusBadGateway, wantHeldDown: false, wantHits: 1},
	{name: "closed in the middle of the request body", method: http.MethodPost, body: strings.Repeat("b", 64<<10),
		serve: func(conn net.Conn, req *http.Request) bool {
			_, _ = io.CopyN(io.Discard, req.Body, 1<<10)
			return false
		},
		differs:    "both answer 502 and send the POST once; lbpool does not hold the backend down for a failure on a reused connection, reverse_proxy counts it",
		wantStatus: http.StatusBadGateway, wantHeldDown: false, wantHits: 1},
}

// outcome is what one proxy made of one shape.
type outcome struct {
	Client   clientView
	Next     string // the next request on the same backend: status and body, after the backend is back if it was held down
	Hits     int64  // how often the backend received the shape's request
	HeldDown bool   // the proxy counted a failure against the backend
}

// clientView is what the client got.
type clientView struct {
	Status        int
	Informational []int
	Header        http.Header
	Body          string
	Trailer       http.Header
	Aborted       bool // no response, or the body broke off
}

// diffBackend is a raw backend that answers /health and /ok itself and
// every other path with the shape.
type diffBackend struct {
	*rawBackend
	hits, late atomic.Int64
	// onReused counts the shape's requests that came on a connection that
	// had carried an earlier request
	onReused atomic.Int64
	warm     sync.Map // net.Conn → true once it carried a request
}

func newDiffBackend(t *testing.T, s responseShape) *diffBackend {
	db := &diffBackend{}
	db.rawBackend = newRawBackend(t, func(conn net.Conn, req *http.Request) bool {
		if req.URL.Path == "/health" || strings.HasSuffix(req.URL.Path, "/ok") {
			db.warm.Store(conn, true)
			_, _ = io.WriteString(conn, healthyAnswer)
			return true
		}
		db.hits.Add(1)
		if _, ok := db.warm.Load(conn); ok {
			db.onReused.Add(1)
		}
		keep := s.serve(conn, req)
		if s.lateBytes {
			time.Sleep(200 * time.Millisecond)
			_, _ = io.WriteString(conn, "DEFGH")
			db.late.Add(1)
		}
		return keep
	})
	return db
}

// diffSite routes /lb/* to lbpool in front of lb and /rp/* to reverse_proxy
// in front of rp, both with response_header_timeout headerTimeout (5s when
// 0); reverse_proxy counts a failure against its upstream as lbpool does
// (passive health, one failure is enough).
func diffSite(c *lbtest.Caddy, headerTimeout time.Duration, lb, rp string) string {
	if headerTimeout == 0 {
		headerTimeout = 5 * time.Second
	}
	return fmt.Sprintf(`:%d {
	handle /lb/* {
		lbpool %s {
			name diff
			health_uri /health
			health_interval 1h
			response_header_timeout %[4]v
		}
	}
	handle /rp/* {
		reverse_proxy %[3]s {
			fail_duration 1m
			max_fails 1
			transport http {
				response_header_timeout %[4]v
			}
		}
	}
}`, c.HTTPPort, lb, rp, headerTimeout)
}

// diffClient sends each request on a connection of its own, so a response
// that breaks off cannot touch the next.
var diffClient = &http.Client{
	Timeout:   10 * time.Second,
	Transport: &http.Transport{DisableKeepAlives: true, DisableCompression: true},
}

func send(t *testing.T, method, url, body string) clientView {
	t.Helper()
	return sendShape(t, url, responseShape{method: method, body: body})
}

// sendShape sends the request of shape s (its method, body and upgrade) to
// url.
func sendShape(t *testing.T, url string, s responseShape) clientView {
	t.Helper()
	method, body := s.method, s.body
	if method == "" {
		method = http.MethodGet
	}
	var v clientView
	trace := &httptrace.ClientTrace{Got1xxResponse: func(code int, _ textproto.MIMEHeader) error {
		v.Informational = append(v.Informational, code)
		return nil
	}}
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
		if s.chunked {
			rd = io.MultiReader(rd) // a length net/http's client cannot see
		}
	}
	req, err := http.NewRequest(method, url, rd)
	if err != nil {
		t.Fatal(err)
	}
	if s.upgrade != "" {
		req.Header.Set("Connection", "Upgrade")
		req.Header.Set("Upgrade", s.upgrade)
	}
	req = req.WithContext(httptrace.WithClientTrace(req.Context(), trace))
	resp, err := diffClient.Do(req)
	if err != nil {
		v.Aborted = true
		return v
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	v.Status, v.Body, v.Aborted = resp.StatusCode, string(data), err != nil
	v.Header = resp.Header.Clone()
	for _, k := range []string{"Date", "Via", "Server"} {
		v.Header.Del(k) // each proxy's own
	}
	if len(resp.Trailer) > 0 {
		v.Trailer = resp.Trailer
	}
	return v
}

// upstreamFails reads reverse_proxy's failure count for addr.
func upstreamFails(t *testing.T, c *lbtest.Caddy, addr string) int {
	t.Helper()
	status, body := c.Admin(t, http.MethodGet, "/reverse_proxy/upstreams", "")
	if status != http.StatusOK {
		t.Fatalf("upstreams: %d %s", status, body)
	}
	var ups []struct {
		Address string `json:"address"`
		Fails   int    `json:"fails"`
	}
	if err := json.Unmarshal(body, &ups); err != nil {
		t.Fatal(err)
	}
	for _, u := range ups {
		if u.Address == addr {
			return u.Fails
		}
	}
	return 0
}

func TestDifferentialResponseShapes(t *testing.T) {
	c := lbtest.Start(t)
	for _, s := range responseShapes {
		t.Run(s.name, func(t *testing.T) {
			lb, rp := newDiffBackend(t, s), newDiffBackend(t, s)
			c.Load(t, diffSite(c, s.headerTimeout, lb.addr(), rp.addr()))
			lbtest.Eventually(t, 5*time.Second, "lbpool's first check", func() bool {
				return c.Backend(t, "diff", lb.url()).LastCheck != nil
			})
			run := func(prefix string, db *diffBackend, heldDown func() bool, backUp func()) outcome {
				// a kept-alive connection first, so the shape's request
				// goes on a reused one, as most requests do
				if v := send(t, http.MethodGet, c.URL(prefix+"/ok"), ""); v.Status != 200 {
					t.Fatalf("%s warm-up: %+v", prefix, v)
				}
				var o outcome
				o.Client = sendShape(t, c.URL(prefix+"/shape"), s)
				if s.lateBytes {
					lbtest.Eventually(t, 5*time.Second, "the late bytes sent", func() bool { return db.late.Load() == 1 })
				}
				o.HeldDown = heldDown()
				o.Hits = db.hits.Load()
				if o.HeldDown && backUp == nil {
					o.Next = "(held down)"
					return o
				}
				if o.HeldDown {
					backUp()
				}
				next := send(t, http.MethodGet, c.URL(prefix+"/ok"), "")
				o.Next = fmt.Sprintf("%d %s", next.Status, next.Body)
				return o
			}
			gotLB := run("/lb", lb, func() bool {
				return c.Backend(t, "diff", lb.url()).StatusChanges > 0
			}, func() {
				lbtest.Eventually(t, 5*time.Second, "lbpool's backend up again", func() bool {
					return c.Backend(t, "diff", lb.url()).Alive
				})
			})
			if gotLB.Next != "200 ok" {
				t.Errorf("lbpool: the next request on the backend got %q, want 200 ok", gotLB.Next)
			}
			if s.lbpoolOnly {
				t.Logf("lbpool: %s", describe(gotLB))
			} else {
				gotRP := run("/rp", rp, func() bool { return upstreamFails(t, c, rp.addr()) > 0 }, nil)
				compareWithReverseProxy(t, s, gotLB, gotRP)
			}
			if s.differs != "" && (gotLB.Client.Status != s.wantStatus || gotLB.HeldDown != s.wantHeldDown) {
				t.Errorf("lbpool should answer %d and hold the backend down %v: %s", s.wantStatus, s.wantHeldDown, describe(gotLB))
			}
			if s.wantHits != 0 && gotLB.Hits != s.wantHits {
				t.Errorf("the backend saw the request %d times through lbpool, want %d", gotLB.Hits, s.wantHits)
			}
		})
	}
}

// compareWithReverseProxy fails unless lbpool's outcome is reverse_proxy's,
// but for what each proxy writes of its own and the shape's listed
// difference.
func compareWithReverseProxy(t *testing.T, s responseShape, gotLB, gotRP outcome) {
	t.Helper()
	t.Logf("lbpool:        %s", describe(gotLB))
	t.Logf("reverse_proxy: %s", describe(gotRP))
	if s.differs != "" {
		t.Logf("deliberate difference: %s", s.differs)
		return
	}
	switch {
	case gotRP.Next == "(held down)" || gotRP.Next == "200 ok":
	case s.strayInSameWrite && strings.HasPrefix(gotRP.Next, "502"):
		t.Logf("reverse_proxy's next request took the connection before the Transport's idle reader found the stray bytes: %q", gotRP.Next)
	default:
		t.Errorf("reverse_proxy's next request got %q: the shape is not what this test expects", gotRP.Next)
	}
	gotRP.Next = gotLB.Next // compared above: lbpool's is 200 also where reverse_proxy's upstream is held down
	if s.resent {
		gotRP.Hits++
	}
	if proxyError(gotLB.Client.Status) && gotLB.Client.Status == gotRP.Client.Status {
		// each proxy writes its own error page
		gotLB.Client.Header, gotLB.Client.Body = nil, ""
		gotRP.Client.Header, gotRP.Client.Body = nil, ""
	} else if !strings.Contains(rawOf(s), "Content-Type") {
		// the backend sent none: a guess from the first bytes, which
		// reverse_proxy makes or not depending on when it flushes
		gotLB.Client.Header.Del("Content-Type")
		gotRP.Client.Header.Del("Content-Type")
	}
	compareOutcomes(t, gotLB, gotRP)
}

// rawOf is what the shape's backend writes for a GET.
func rawOf(s responseShape) string {
	a, b := net.Pipe()
	defer a.Close()
	done := make(chan string)
	go func() {
		data, _ := io.ReadAll(b)
		done <- string(data)
	}()
	req, _ := http.NewRequest(http.MethodGet, "http://backend/shape", nil)
	s.serve(a, req)
	a.Close()
	return <-done
}

func proxyError(status int) bool {
	return status == http.StatusBadGateway || status == http.StatusServiceUnavailable || status == http.StatusGatewayTimeout
}

func compareOutcomes(t *testing.T, lb, rp outcome) {
	t.Helper()
	if !reflect.DeepEqual(lb, rp) {
		t.Errorf("lbpool and reverse_proxy differ:\n  lbpool:        %s\n  reverse_proxy: %s", describe(lb), describe(rp))
	}
}

func describe(o outcome) string {
	keys := make([]string, 0, len(o.Client.Header))
	for k := range o.Client.Header {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var hdr strings.Builder
	for _, k := range keys {
		fmt.Fprintf(&hdr, "%s=%q ", k, o.Client.Header[k])
	}
	return fmt.Sprintf("status %d 1xx %v aborted %v body %q headers [%s] trailer %v; next %q; hits %d; held down %v",
		o.Client.Status, o.Client.Informational, o.Client.Aborted, o.Client.Body, strings.TrimSpace(hdr.String()),
		o.Client.Trailer, o.Next, o.Hits, o.HeldDown)
}

// requestShape is one way a client sends a request: raw bytes written to
// Caddy, in one write or, with expectContinue, headers first and the body
// once the interim 100 arrived.
type requestShape struct {
	name           string
	head           string // the request line and headers; the route prefix replaces {p}
	body           string
	responses      int // how many responses to read (pipelined requests)
	expectContinue bool
	// differs says how and why lbpool deliberately answers otherwise; the
	// final responses must still be the same.
	differs string
}

var requestShapes = []requestShape{
	{name: "POST with Content-Length", responses: 1,
		head: "POST {p}/echo HTTP/1.1\r\nHost: x\r\nContent-Length: 11\r\n\r\n", body: "hello world"},
	{name: "POST chunked with a trailer", responses: 1,
		head: "POST {p}/echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nTrailer: X-Sum\r\n\r\n",
		body: "5\r\nhello\r\n6\r\n world\r\n0\r\nX-Sum: 7\r\n\r\n"},
	{name: "Expect 100-continue", responses: 1, expectContinue: true,
		differs: "the client gets one 100 Continue, from Caddy's server as the body is first read; reverse_proxy also forwards the backend's, a second one after the body was sent",
		head:    "POST {p}/echo HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 11\r\n\r\n", body: "hello world"},
	{name: "HTTP/1.0 GET without Host", responses: 1,
		head: "GET {p}/echo HTTP/1.0\r\n\r\n"},
	{name: "HTTP/1.0 POST with a body", responses: 1,
		head: "POST {p}/echo HTTP/1.0\r\nContent-Length: 5\r\n\r\n", body: "hello"},
	{name: "pipelined GET, HEAD and POST", responses: 3,
		head: "GET {p}/echo?n=1 HTTP/1.1\r\nHost: x\r\n\r\n" +
			"HEAD {p}/echo?n=2 HTTP/1.1\r\nHost: x\r\n\r\n" +
			"POST {p}/echo?n=3 HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc"},
	{name: "empty body with Content-Length 0", responses: 1,
		head: "POST {p}/echo HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n"},
	{name: "Expect 100-continue refused with 417 before the body", responses: 1, expectContinue: true,
		differs: "both answer 417 without asking for the body (Caddy's server reads what is left of a body before it answers, so the client sends it after its wait); whether a 100 Continue comes first depends on when the proxy's first read of the body falls",
		head:    "POST {p}/refuse HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 11\r\n\r\n", body: "hello world"},
	{name: "Expect 100-continue with a chunked body", responses: 1, expectContinue: true,
		differs: "the client gets one 100 Continue, Caddy's; reverse_proxy also forwards the backend's",
		head:    "POST {p}/echo HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nTransfer-Encoding: chunked\r\n\r\n",
		body:    "5\r\nhello\r\n0\r\n\r\n"},
	{name: "4 MiB body with Content-Length", responses: 1,
		head: fmt.Sprintf("POST {p}/count HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n", 4<<20), body: strings.Repeat("m", 4<<20)},
	{name: "4 MiB body chunked", responses: 1,
		head: "POST {p}/count HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n",
		body: fmt.Sprintf("%x\r\n%s\r\n0\r\n\r\n", 4<<20, strings.Repeat("m", 4<<20))},
}

// echoHandler answers with what the backend was sent: method, query,
// protocol, length, transfer coding, body and trailer.
// /refuse answers 417 without reading the body; /count answers with how
// many bytes the body had.
func echoHandler(w http.ResponseWriter, r *http.Request) {
	switch r.URL.Path {
	case "/lb/refuse", "/rp/refuse":
		w.WriteHeader(http.StatusExpectationFailed)
		return
	case "/lb/count", "/rp/count":
		n, err := io.Copy(io.Discard, r.Body)
		fmt.Fprintf(w, "count=%d err=%v", n, err)
		return
	}
	body, err := io.ReadAll(r.Body)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	w.Header().Set("Content-Type", "text/plain")
	fmt.Fprintf(w, "%s ?%s %s length=%d te=%v expect=%q body=%q trailer=%v\n",
		r.Method, r.URL.RawQuery, r.Proto, r.ContentLength, r.TransferEncoding, r.Header.Get("Expect"), body, r.Trailer)
}

// rawExchange writes the shape to Caddy on a new connection and reads the
// responses, each as status, protocol, headers less each proxy's own, and
// body.
func rawExchange(t *testing.T, c *lbtest.Caddy, s requestShape, prefix string) []string {
	t.Helper()
	conn := dialCaddy(t, c)
	head := strings.ReplaceAll(s.head, "{p}", prefix)
	br := bufio.NewReader(conn)
	if s.expectContinue {
		if _, err := io.WriteString(conn, head); err != nil {
			t.Fatal(err)
		}
		// the body goes once the 100 Continue came, or after a second
		// without an answer, as curl sends it; a final answer instead is
		// read as the response below
		_ = conn.SetReadDeadline(time.Now().Add(time.Second))
		_, err := br.Peek(1)
		_ = conn.SetReadDeadline(time.Now().Add(30 * time.Second))
		var ne net.Error
		waited := errors.As(err, &ne) && ne.Timeout()
		if err != nil && !waited {
			t.Fatalf("%s: waiting for 100 Continue: %v", prefix, err)
		}
		if waited || peekedContinue(br) {
			if _, err := io.WriteString(conn, s.body); err != nil {
				t.Fatal(err)
			}
		}
	} else if _, err := io.WriteString(conn, head+s.body); err != nil {
		t.Fatal(err)
	}
	methods := methodsOf(head)
	var out []string
	for i := range s.responses {
		var interim []int
		resp, err := http.ReadResponse(br, &http.Request{Method: methods[i]})
		for err == nil && resp.StatusCode < 200 {
			interim = append(interim, resp.StatusCode)
			resp, err = http.ReadResponse(br, &http.Request{Method: methods[i]})
		}
		if err != nil {
			out = append(out, "no response: "+err.Error())
			break
		}
		body, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		for _, k := range []string{"Date", "Via", "Server"} {
			resp.Header.Del(k)
		}
		var hdr strings.Builder
		_ = resp.Header.Write(&hdr)
		out = append(out, fmt.Sprintf("%s %d close=%v interim=%v\n%s%q err=%v", resp.Proto, resp.StatusCode, resp.Close, interim, hdr.String(), body, err))
	}
	return out
}

// peekedContinue tells whether the response waiting in br is a 100 Continue.
func peekedContinue(br *bufio.Reader) bool {
	line, _ := br.Peek(len("HTTP/1.1 100"))
	return string(line) == "HTTP/1.1 100"
}

// withoutInterim drops the interim responses from rawExchange's lines.
func withoutInterim(lines []string) []string {
	out := make([]string, len(lines))
	for i, l := range lines {
		if a := strings.Index(l, " interim=["); a >= 0 {
			b := strings.Index(l[a:], "]")
			l = l[:a] + l[a+b+1:]
		}
		out[i] = l
	}
	return out
}

// methodsOf lists the methods of the requests in raw, in order.
func methodsOf(raw string) []string {
	var methods []string
	for _, line := range strings.Split(raw, "\r\n") {
		if i := strings.Index(line, " /"); i > 0 && strings.Contains(line, " HTTP/1.") {
			methods = append(methods, line[:i])
		}
	}
	return methods
}

func TestDifferentialRequestShapes(t *testing.T) {
	c := lbtest.Start(t)
	b := lbtest.NewBackend(t, "echo", echoHandler)
	c.Load(t, diffSite(c, 0, b.Addr(), b.Addr()))
	lbtest.Eventually(t, 5*time.Second, "lbpool's first check", func() bool {
		return c.Backend(t, "diff", b.URL()).LastCheck != nil
	})
	for _, s := range requestShapes {
		t.Run(s.name, func(t *testing.T) {
			gotLB, gotRP := rawExchange(t, c, s, "/lb"), rawExchange(t, c, s, "/rp")
			t.Logf("lbpool:\n%s", strings.Join(gotLB, "\n"))
			if len(gotLB) != s.responses || strings.HasPrefix(gotLB[len(gotLB)-1], "no response") {
				t.Errorf("lbpool answered %d of %d requests", len(gotLB), s.responses)
			}
			if s.differs != "" {
				t.Logf("deliberate difference: %s", s.differs)
				gotLB, gotRP = withoutInterim(gotLB), withoutInterim(gotRP)
			}
			if !reflect.DeepEqual(gotLB, gotRP) {
				t.Errorf("lbpool and reverse_proxy differ:\nlbpool:\n%s\nreverse_proxy:\n%s", strings.Join(gotLB, "\n"), strings.Join(gotRP, "\n"))
			}
		})
	}
}
