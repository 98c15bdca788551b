package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"sync"
	"time"

	"golang.org/x/net/http2"
)

// The load role's HTTP/2 mode (-h2): what a few browser tabs send. It holds
// -h2-conns TLS connections to Caddy (ALPN h2, Caddy's certificate checked
// against the root of its internal CA, -ca), each carrying -h2-streams
// closed-loop streams at once. With -method MIX each stream alternates a
// small GET and a POST with a JSON body of -body bytes, half of the streams
// starting with each. Latency is measured as in HTTP/1.1 mode, from sending
// the request to the last byte of the response. It goes through
// golang.org/x/net/http2's client, which allocates per request; that cost
// lands on the load generator's core, not on Caddy's.

// h2Conn is one client connection, dialled again if it breaks.
type h2Conn struct {
	mu   sync.Mutex
	cc   *http2.ClientConn
	dial func() (*http2.ClientConn, error)
}

// get returns a connection that can take a new stream.
func (c *h2Conn) get() (*http2.ClientConn, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.cc != nil && c.cc.CanTakeNewRequest() {
		return c.cc, nil
	}
	if c.cc != nil {
		c.cc.Close()
	}
	var err error
	c.cc, err = c.dial()
	return c.cc, err
}

func (c *h2Conn) close() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.cc != nil {
		c.cc.Close()
	}
}

// h2Dialer returns how to open one client connection to s.addr.
func h2Dialer(s loadSpec) (func() (*http2.ClientConn, error), error) {
	pem, err := os.ReadFile(s.ca)
	if err != nil {
		return nil, fmt.Errorf("load: the CA to trust: %w", err)
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("load: no certificate in %s", s.ca)
	}
	host, _, err := net.SplitHostPort(s.addr)
	if err != nil {
		return nil, fmt.Errorf("load: %w", err)
	}
	cfg := &tls.Config{RootCAs: roots, ServerName: host, NextProtos: []string{"h2"}}
	tr := &http2.Transport{TLSClientConfig: cfg}
	return func() (*http2.ClientConn, error) {
		c, err := tls.DialWithDialer(&net.Dialer{Timeout: s.timeout}, "tcp", s.addr, cfg)
		if err != nil {
			return nil, err
		}
		if p := c.ConnectionState().NegotiatedProtocol; p != "h2" {
			c.Close()
			return nil, fmt.Errorf("%s negotiated %q, not h2", s.addr, p)
		}
		return tr.NewClientConn(c)
	}, nil
}

func generateH2(s loadSpec) (*loadResult, error) {
	if s.addr == "" || s.h2Conns < 1 || s.h2Streams < 1 || s.duration <= 0 || s.ca == "" {
		return nil, errors.New("load: -h2 needs -addr, -h2-conns and -h2-streams >= 1, -duration > 0 and -ca")
	}
	dial, err := h2Dialer(s)
	if err != nil {
		return nil, err
	}
	conns := make([]*h2Conn, s.h2Conns)
	for i := range conns {
		cc, err := dial()
		if err != nil {
			for _, c := range conns[:i] {
				c.close()
			}
			return nil, fmt.Errorf("load: connecting to %s: %w", s.addr, err)
		}
		conns[i] = &h2Conn{cc: cc, dial: dial}
	}
	start := time.Now().Add(s.warmup)
	end := start.Add(s.duration)
	var wg sync.WaitGroup
	var streams []*tally
	for i := range s.h2Conns * s.h2Streams {
		t := new(tally)
		streams = append(streams, t)
		wg.Go(func() { h2Stream(s, conns[i%len(conns)], i, start, end, t) })
	}
	return measure(s, start, end, func() []*tally {
		wg.Wait()
		for _, c := range conns {
			c.close()
		}
		return streams
	})
}

// h2Stream sends requests on conn, one at a time, until the window ends; n
// is the stream's number, which picks its first method with -method MIX.
func h2Stream(s loadSpec, conn *h2Conn, n int, start, end time.Time, t *tally) {
	url := "https://" + s.addr + s.path
	body := jsonBody(s.body)
	inWindow := func(at time.Time) bool { return !at.Before(start) && at.Before(end) }
	for i := n; ; i++ {
		begin := time.Now()
		if !begin.Before(end) {
			return
		}
		cc, err := conn.get()
		if err != nil {
			if inWindow(begin) {
				t.errors++
			}
			time.Sleep(10 * time.Millisecond)
			continue
		}
		post := s.method == "POST" || (s.method == "MIX" && i%2 == 1)
		status, err := h2RoundTrip(cc, url, post, body, s.timeout)
		done := time.Now()
		if !inWindow(done) {
			continue
		}
		if err != nil {
			t.errors++
			continue
		}
		t.requests++
		if status != 200 {
			t.errors++
		}
		t.hist.record(done.Sub(begin))
	}
}

// h2RoundTrip sends one request on cc and reads the whole response.
func h2RoundTrip(cc *http2.ClientConn, url string, post bool, body []byte, timeout time.Duration) (int, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	method, reqBody := "GET", io.Reader(nil)
	if post {
		method, reqBody = "POST", bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, url, reqBody)
	if err != nil {
		return 0, err
	}
	req.Header.Set("User-Agent", "lbpool-bench")
	if post {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := cc.RoundTrip(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	if _, err := io.Copy(io.Discard, resp.Body); err != nil {
		return 0, err
	}
	return resp.StatusCode, nil
}
