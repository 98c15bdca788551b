package leastconn

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
)

// bodyEcho answers with how the body arrived; /refuse answers 417 without
// reading it.
func bodyEcho(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path == "/refuse" {
		w.WriteHeader(http.StatusExpectationFailed)
		return
	}
	body, err := io.ReadAll(r.Body)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	fmt.Fprintf(w, "length=%d te=%v expect=%q body=%q trailer=%v", r.ContentLength, r.TransferEncoding,
		r.Header.Get("Expect"), body, r.Trailer)
}

// TestBodiesTakeTheDirectPath sends requests with bodies through Caddy's
// server to lbpool and checks what the backend got, and that the try went
// on the backend's own pool of connections (the Transport's are not
// lbpool's), which keeps the connection when the exchange ended whole.
func TestBodiesTakeTheDirectPath(t *testing.T) {
	backend := httptest.NewServer(http.HandlerFunc(bodyEcho))
	defer backend.Close()
	lb := &Handler{Name: "direct-bodies", HealthInterval: caddy.Duration(time.Hour)}
	lb.Backends = []BackendConfig{{URL: backend.Listener.Addr().String()}}
	ctx, err := caddy.ProvisionContext(&caddy.Config{})
	if err != nil {
		t.Fatal(err)
	}
	if err := lb.Provision(ctx); err != nil {
		t.Fatal(err)
	}
	defer lb.Cleanup()
	b := lb.lease.view.Load().backends[0]

	front := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		r = caddyhttp.PrepareRequest(r, caddy.NewReplacer(), w, new(caddyhttp.Server))
		_ = lb.ServeHTTP(w, r, caddyhttp.HandlerFunc(func(http.ResponseWriter, *http.Request) error { return nil }))
	}))
	defer front.Close()

	for _, tc := range []struct {
		name, head, body, want string
		kept                   bool // the connection goes back to the pool
	}{
		{"Content-Length", "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\n", "hello",
			`200 length=5 te=[] expect="" body="hello" trailer=map[]`, true},
		{"chunked with a trailer", "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nTrailer: X-Sum\r\n\r\n",
			"5\r\nhello\r\n0\r\nX-Sum: 5\r\n\r\n",
			`200 length=-1 te=[chunked] expect="" body="hello" trailer=map[X-Sum:[5]]`, true},
		{"empty chunked", "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n", "0\r\n\r\n",
			`200 length=-1 te=[chunked] expect="" body="" trailer=map[]`, true},
		{"Expect 100-continue", "POST / HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n", "hello",
			`200 length=5 te=[] expect="100-continue" body="hello" trailer=map[]`, true},
		{"Expect 100-continue refused", "POST /refuse HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n", "",
			`417 `, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b.h1.Prune(time.Now(), time.Nanosecond) // start from an empty pool
			conn, err := net.Dial("tcp", front.Listener.Addr().String())
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
			br := bufio.NewReader(conn)
			expect := strings.Contains(tc.head, "Expect")
			first := tc.head
			if !expect {
				first += tc.body
			}
			if _, err := io.WriteString(conn, first); err != nil {
				t.Fatal(err)
			}
			resp, err := http.ReadResponse(br, nil)
			if expect && err == nil && resp.StatusCode == http.StatusContinue {
				if tc.body == "" {
					t.Fatal("the client was asked for a body the backend refused")
				}
				_, _ = io.WriteString(conn, tc.body)
				resp, err = http.ReadResponse(br, nil)
			}
			if err != nil {
				t.Fatal(err)
			}
			got, _ := io.ReadAll(resp.Body)
			if s := fmt.Sprintf("%d %s", resp.StatusCode, got); s != tc.want {
				t.Fatalf("got %q, want %q", s, tc.want)
			}
			idle := b.h1.Idle()
			if kept := idle == 1; kept != tc.kept {
				t.Fatalf("%d idle connections after the exchange; kept should be %v", idle, tc.kept)
			}
		})
	}
}
