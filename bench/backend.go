package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"strconv"
	"sync/atomic"
	"time"
)

// The backend role is a deliberately small HTTP/1.1 server: it shares a core
// with the load generator, so every microsecond it spends is one the load
// generator cannot. It speaks keep-alive HTTP/1.1 for requests without a body
// or with a Content-Length body, which is all a proxy sends for a GET.
//
//	/health   200 "ok", never delayed (so every configuration sees it up)
//	/count    200 and the number of other requests served, as JSON
//	/slow     200; from now on counted requests wait the -delay
//	/fast     200; from now on they do not wait
//	anything  200 "backend <name>", after the -delay while slow, counted
//
// A backend with a -delay starts slow, unless -fast is given. /slow and /fast
// let the harness turn a backend slow and fast again during a run.

// bodyLength is the length of every answer to counted requests; the respond
// configuration answers with as many bytes.
const bodyLength = len("backend b1")

// backend is one backend process's state.
type backend struct {
	name   string
	delay  time.Duration // while slow
	slow   atomic.Bool
	served atomic.Int64 // counted requests answered

	hello, health []byte // complete responses, built once
}

func newBackend(name string, delay time.Duration, fast bool) *backend {
	body := "backend " + name
	b := &backend{
		name:   name,
		delay:  delay,
		hello:  response(200, body),
		health: response(200, "ok"),
	}
	b.slow.Store(delay > 0 && !fast)
	return b
}

// response builds a complete HTTP/1.1 response with a text body.
func response(status int, body string) []byte {
	return fmt.Appendf(nil, "HTTP/1.1 %d %s\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n\r\n%s",
		status, statusText(status), len(body), body)
}

func statusText(status int) string {
	switch status {
	case 200:
		return "OK"
	case 400:
		return "Bad Request"
	case 501:
		return "Not Implemented"
	}
	return "Status"
}

// runBackend is the backend role: bench -backend -listen 127.0.0.1:PORT
// -name b1 [-delay 50ms [-fast]]. It serves until the harness stops it.
func runBackend(args []string) error {
	fs := flag.NewFlagSet("backend", flag.ContinueOnError)
	listen := fs.String("listen", "127.0.0.1:0", "address to listen on")
	name := fs.String("name", "b1", "name in the answers")
	delay := fs.Duration("delay", 0, "wait this long before answering a counted request while slow")
	fast := fs.Bool("fast", false, "start fast: wait the -delay only after a request to /slow")
	if err := fs.Parse(args); err != nil {
		return err
	}
	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		return fmt.Errorf("backend %s: %w", *name, err)
	}
	return newBackend(*name, *delay, *fast).serve(context.Background(), ln)
}

// serve accepts connections until ctx ends or the listener fails.
func (b *backend) serve(ctx context.Context, ln net.Listener) error {
	go func() {
		<-ctx.Done()
		ln.Close()
	}()
	for {
		c, err := ln.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("backend %s: accept: %w", b.name, err)
		}
		go b.serveConn(c)
	}
}

var errBadRequest = errors.New("bad request")

// serveConn answers requests on one connection until the peer closes it, asks
// to close it, or sends something this server does not speak.
func (b *backend) serveConn(c net.Conn) {
	defer c.Close()
	br := bufio.NewReaderSize(c, 4096)
	for {
		path, keepAlive, err := readRequest(br)
		if err != nil {
			if errors.Is(err, errBadRequest) {
				c.Write(response(400, "bad request"))
			} else if errors.Is(err, errChunked) {
				c.Write(response(501, "chunked request bodies are not supported"))
			}
			return
		}
		var out []byte
		switch path {
		case "/health":
			out = b.health
		case "/count":
			out = response(200, fmt.Sprintf(`{"name":%q,"requests":%d}`, b.name, b.served.Load()))
		case "/slow", "/fast":
			b.slow.Store(path == "/slow")
			out = b.health
		default:
			if b.slow.Load() {
				time.Sleep(b.delay)
			}
			b.served.Add(1)
			out = b.hello
		}
		if _, err := c.Write(out); err != nil || !keepAlive {
			return
		}
	}
}

var errChunked = errors.New("chunked request body")

// readRequest reads one request's head and discards its body. It returns the
// path without its query and whether the connection stays open.
func readRequest(br *bufio.Reader) (path string, keepAlive bool, err error) {
	line, err := br.ReadSlice('\n')
	if err != nil {
		return "", false, err
	}
	// METHOD SP TARGET SP HTTP/1.x
	sp1 := bytes.IndexByte(line, ' ')
	if sp1 < 0 {
		return "", false, errBadRequest
	}
	rest := line[sp1+1:]
	sp2 := bytes.IndexByte(rest, ' ')
	if sp2 < 0 {
		return "", false, errBadRequest
	}
	target := rest[:sp2]
	keepAlive = bytes.HasPrefix(rest[sp2+1:], []byte("HTTP/1.1"))
	if q := bytes.IndexByte(target, '?'); q >= 0 {
		target = target[:q]
	}
	path = internPath(target)

	var length int64
	for {
		h, err := br.ReadSlice('\n')
		if err != nil {
			if errors.Is(err, bufio.ErrBufferFull) {
				return "", false, errBadRequest
			}
			return "", false, err
		}
		h = bytes.TrimRight(h, "\r\n")
		if len(h) == 0 {
			break
		}
		colon := bytes.IndexByte(h, ':')
		if colon < 0 {
			return "", false, errBadRequest
		}
		name, value := h[:colon], bytes.TrimSpace(h[colon+1:])
		switch {
		case bytes.EqualFold(name, []byte("Content-Length")):
			length, err = strconv.ParseInt(string(value), 10, 64)
			if err != nil || length < 0 {
				return "", false, errBadRequest
			}
		case bytes.EqualFold(name, []byte("Transfer-Encoding")):
			if !bytes.EqualFold(value, []byte("identity")) {
				return "", false, errChunked
			}
		case bytes.EqualFold(name, []byte("Connection")):
			if bytes.EqualFold(value, []byte("close")) {
				keepAlive = false
			} else if bytes.EqualFold(value, []byte("keep-alive")) {
				keepAlive = true
			}
		}
	}
	if length > 0 {
		if _, err := io.CopyN(io.Discard, br, length); err != nil {
			return "", false, err
		}
	}
	return path, keepAlive, nil
}

// internPath returns the paths the backend routes on without allocating.
func internPath(p []byte) string {
	switch string(p) {
	case "/":
		return "/"
	case "/health":
		return "/health"
	case "/count":
		return "/count"
	case "/slow":
		return "/slow"
	case "/fast":
		return "/fast"
	}
	return "other"
}
