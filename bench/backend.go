package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync/atomic"
	"time"
)

// The backend role is a deliberately small HTTP/1.1 server: it shares a core
// with the load generator, so every microsecond it spends is one the load
// generator cannot. It speaks keep-alive HTTP/1.1 for requests without a body
// or with a Content-Length body (which it reads whole), which is all a proxy
// sends for a GET or a small POST.
//
//	/health   200 "ok", never delayed (so every configuration sees it up)
//	/count    200 and the number of other requests served, as JSON
//	/slow     200; from now on counted requests wait the -delay
//	/fast     200; from now on they do not wait
//	/ws       with Upgrade: websocket, 101 (RFC 6455's handshake); then the
//	          connection is held, read until the peer closes it
//	anything  200 "backend <name>", after the -delay while slow, counted
//
// A backend with a -delay starts slow, unless -fast is given. /slow and /fast
// let the harness turn a backend slow and fast again during a run.
//
// With -cert and -key it also serves the same paths over TLS: on -tls-listen
// the same HTTP/1.1 server (ALPN offers http/1.1 only), on -h2-listen
// net/http's server for HTTP/2 (see h2Handler). All listeners share the
// counters, which /count on the plain listener reports.

// bodyLength is the length of every answer to counted requests; the respond
// configuration answers with as many bytes.
const bodyLength = len("backend b1")

// backend is one backend process's state.
type backend struct {
	name   string
	delay  time.Duration // while slow
	slow   atomic.Bool
	served atomic.Int64 // counted requests answered

	hello, health answer // built once
}

// answer is a response body and the complete HTTP/1.1 response carrying it.
type answer struct {
	body []byte
	full []byte
}

func newAnswer(body string) answer {
	return answer{body: []byte(body), full: response(200, body)}
}

func newBackend(name string, delay time.Duration, fast bool) *backend {
	body := "backend " + name
	b := &backend{
		name:   name,
		delay:  delay,
		hello:  newAnswer(body),
		health: newAnswer("ok"),
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
	case 505:
		return "HTTP Version Not Supported"
	}
	return "Status"
}

// runBackend is the backend role: bench -backend -listen 127.0.0.1:PORT
// -name b1 [-delay 50ms [-fast]] [-cert F -key F [-tls-listen A] [-h2-listen A]]
// [-extra N -extra-ip 127.0.0.2 -extra-file F]. It serves until the harness stops it.
func runBackend(args []string) error {
	fs := flag.NewFlagSet("backend", flag.ContinueOnError)
	listen := fs.String("listen", "127.0.0.1:0", "address to listen on")
	name := fs.String("name", "b1", "name in the answers")
	delay := fs.Duration("delay", 0, "wait this long before answering a counted request while slow")
	fast := fs.Bool("fast", false, "start fast: wait the -delay only after a request to /slow")
	tlsListen := fs.String("tls-listen", "", "also serve HTTP/1.1 over TLS on this address")
	h2Listen := fs.String("h2-listen", "", "also serve HTTP/2 over TLS on this address")
	certFile := fs.String("cert", "", "certificate (PEM) for the TLS listeners")
	keyFile := fs.String("key", "", "its private key (PEM)")
	extra := fs.Int("extra", 0, "also serve on this many more listeners on -extra-ip, ports chosen by the system")
	extraIP := fs.String("extra-ip", "127.0.0.1", "the loopback address of the -extra listeners (one of its own per process: ports the system chooses for\n"+
		"one process's listeners may then not collide with another's, nor with a -listen port chosen before)")
	extraFile := fs.String("extra-file", "", "with -extra: write their host:port here, one a line, once all listen")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if err := raiseFileLimit(); err != nil {
		return fmt.Errorf("backend %s: %w", *name, err)
	}
	b := newBackend(*name, *delay, *fast)
	ctx := context.Background()
	if *tlsListen != "" || *h2Listen != "" {
		cert, err := tls.LoadX509KeyPair(*certFile, *keyFile)
		if err != nil {
			return fmt.Errorf("backend %s: %w", *name, err)
		}
		errs := make(chan error, 2)
		if *tlsListen != "" {
			ln, err := net.Listen("tcp", *tlsListen)
			if err != nil {
				return fmt.Errorf("backend %s: %w", *name, err)
			}
			cfg := &tls.Config{Certificates: []tls.Certificate{cert}, NextProtos: []string{"http/1.1"}}
			go func() { errs <- b.serve(ctx, tls.NewListener(ln, cfg)) }()
		}
		if *h2Listen != "" {
			ln, err := net.Listen("tcp", *h2Listen)
			if err != nil {
				return fmt.Errorf("backend %s: %w", *name, err)
			}
			srv := &http.Server{Handler: b.h2Handler(),
				TLSConfig: &tls.Config{Certificates: []tls.Certificate{cert}, NextProtos: []string{"h2"}}}
			go func() { errs <- fmt.Errorf("backend %s: %w", *name, srv.ServeTLS(ln, "", "")) }()
		}
		go func() {
			err := <-errs
			fmt.Fprintln(os.Stderr, "bench:", err)
			os.Exit(1)
		}()
	}
	if err := b.serveExtra(ctx, *extraIP, *extra, *extraFile); err != nil {
		return fmt.Errorf("backend %s: %w", *name, err)
	}
	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		return fmt.Errorf("backend %s: %w", *name, err)
	}
	return b.serve(ctx, ln)
}

// serveExtra listens on n more ports of ip, serves them all with b's
// counters, and writes their addresses to file (written whole under a
// temporary name, then renamed, so a reader never sees half of it). The
// scaling scenarios make hundreds of backends this way, in three processes.
func (b *backend) serveExtra(ctx context.Context, ip string, n int, file string) error {
	if n <= 0 {
		return nil
	}
	var addrs strings.Builder
	for range n {
		ln, err := net.Listen("tcp", net.JoinHostPort(ip, "0"))
		if err != nil {
			return err
		}
		addrs.WriteString(ln.Addr().String() + "\n")
		go func() {
			if err := b.serve(ctx, ln); err != nil {
				fmt.Fprintln(os.Stderr, "bench:", err)
				os.Exit(1)
			}
		}()
	}
	if err := os.WriteFile(file+".tmp", []byte(addrs.String()), 0o644); err != nil {
		return err
	}
	return os.Rename(file+".tmp", file)
}

// h2Handler serves the backend's paths with net/http, for HTTP/2. It
// answers other versions 505, so a proxy that fell back to HTTP/1.1 shows as
// errors rather than as HTTP/2 figures.
func (b *backend) h2Handler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.ProtoMajor != 2 {
			w.WriteHeader(505)
			return
		}
		io.Copy(io.Discard, r.Body)
		w.Header().Set("Content-Type", "text/plain")
		w.Write(b.answer(internPath([]byte(r.URL.Path))).body)
	})
}

// answer does what a request to path asks and returns its answer.
func (b *backend) answer(path string) answer {
	switch path {
	case "/health":
		return b.health
	case "/count":
		return newAnswer(fmt.Sprintf(`{"name":%q,"requests":%d}`, b.name, b.served.Load()))
	case "/slow", "/fast":
		b.slow.Store(path == "/slow")
		return b.health
	}
	if b.slow.Load() {
		time.Sleep(b.delay)
	}
	b.served.Add(1)
	return b.hello
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
		req, err := readRequest(br)
		if err != nil {
			if errors.Is(err, errBadRequest) {
				c.Write(response(400, "bad request"))
			} else if errors.Is(err, errChunked) {
				c.Write(response(501, "chunked request bodies are not supported"))
			}
			return
		}
		if req.path == "/ws" && req.wsKey != "" {
			holdWebsocket(c, br, req.wsKey)
			return
		}
		if _, err := c.Write(b.answer(req.path).full); err != nil || !req.keepAlive {
			return
		}
	}
}

var errChunked = errors.New("chunked request body")

// requestHead is what the backend needs of a request.
type requestHead struct {
	path      string // without the query
	keepAlive bool   // the connection stays open
	wsKey     string // Sec-WebSocket-Key of a websocket upgrade, else ""
}

// readRequest reads one request's head and reads and discards its body.
func readRequest(br *bufio.Reader) (requestHead, error) {
	var none requestHead
	line, err := br.ReadSlice('\n')
	if err != nil {
		return none, err
	}
	// METHOD SP TARGET SP HTTP/1.x
	sp1 := bytes.IndexByte(line, ' ')
	if sp1 < 0 {
		return none, errBadRequest
	}
	rest := line[sp1+1:]
	sp2 := bytes.IndexByte(rest, ' ')
	if sp2 < 0 {
		return none, errBadRequest
	}
	target := rest[:sp2]
	req := requestHead{keepAlive: bytes.HasPrefix(rest[sp2+1:], []byte("HTTP/1.1"))}
	if q := bytes.IndexByte(target, '?'); q >= 0 {
		target = target[:q]
	}
	req.path = internPath(target)

	var length int64
	for {
		h, err := br.ReadSlice('\n')
		if err != nil {
			if errors.Is(err, bufio.ErrBufferFull) {
				return none, errBadRequest
			}
			return none, err
		}
		h = bytes.TrimRight(h, "\r\n")
		if len(h) == 0 {
			break
		}
		colon := bytes.IndexByte(h, ':')
		if colon < 0 {
			return none, errBadRequest
		}
		name, value := h[:colon], bytes.TrimSpace(h[colon+1:])
		switch {
		case bytes.EqualFold(name, []byte("Content-Length")):
			length, err = strconv.ParseInt(string(value), 10, 64)
			if err != nil || length < 0 {
				return none, errBadRequest
			}
		case bytes.EqualFold(name, []byte("Transfer-Encoding")):
			if !bytes.EqualFold(value, []byte("identity")) {
				return none, errChunked
			}
		case bytes.EqualFold(name, []byte("Connection")):
			if bytes.EqualFold(value, []byte("close")) {
				req.keepAlive = false
			} else if bytes.EqualFold(value, []byte("keep-alive")) {
				req.keepAlive = true
			}
		case bytes.EqualFold(name, []byte("Sec-WebSocket-Key")):
			req.wsKey = string(value)
		}
	}
	if length > 0 {
		if _, err := io.CopyN(io.Discard, br, length); err != nil {
			return none, err
		}
	}
	return req, nil
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
	case "/ws":
		return "/ws"
	}
	return "other"
}
