package upstream

import (
	"bufio"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// writeCountingConn counts the writes that reach a socket.
type writeCountingConn struct {
	net.Conn
	writes atomic.Int32
}

func (c *writeCountingConn) Write(p []byte) (int, error) {
	c.writes.Add(1)
	return c.Conn.Write(p)
}

// A small body of known length goes out with its head in one write, from
// the handling goroutine; a larger one, whose reads may take a while, after
// the head was sent alone, from a writer goroutine.
func TestSmallBodyGoesOutWithItsHeadInOneWrite(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer conn.Close()
				br := bufio.NewReader(conn)
				for {
					req, err := http.ReadRequest(br)
					if err != nil {
						return
					}
					_, _ = io.Copy(io.Discard, req.Body)
					_, _ = io.WriteString(conn, "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
				}
			}()
		}
	}()
	for _, tc := range []struct {
		name     string
		length   int
		oneWrite bool
	}{
		{"1 KiB", 1 << 10, true},
		{"half the buffer", bufferSize / 2, true},
		{"larger than the buffer", 3 * bufferSize, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			nc, err := net.Dial("tcp", ln.Addr().String())
			if err != nil {
				t.Fatal(err)
			}
			counted := &writeCountingConn{Conn: nc}
			c := newConn(counted)
			body := &RequestBody{rc: io.NopCloser(strings.NewReader(strings.Repeat("x", tc.length)))}
			out := &http.Request{Method: http.MethodPost, URL: &url.URL{Scheme: "http", Host: ln.Addr().String(), Path: "/"},
				Host: ln.Addr().String(), Header: http.Header{}, ContentLength: int64(tc.length), Body: body}
			if smallBody(out) != tc.oneWrite {
				t.Fatalf("smallBody: %v, want %v", smallBody(out), tc.oneWrite)
			}
			if tc.oneWrite {
				// as RoundTrip sends it: from the handling goroutine
				resp, err := writeAndRead(c, out, httptest.NewRecorder(), 5*time.Second)
				if err != nil {
					t.Fatal(err)
				}
				resp.Body.Close()
			} else {
				send := startSend(c, out, body, 5*time.Second)
				resp, err := readResponse(c, out, httptest.NewRecorder(), send)
				if err != nil {
					t.Fatal(err)
				}
				resp.Body.Close()
				if err := <-send.done; err != nil {
					t.Fatalf("writing the request: %v", err)
				}
				send.release()
			}
			writes := counted.writes.Load()
			if tc.oneWrite && writes != 1 || !tc.oneWrite && writes < 2 {
				t.Fatalf("the request went out in %d writes, want one: %v", writes, tc.oneWrite)
			}
		})
	}
}
