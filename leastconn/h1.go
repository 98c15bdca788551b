package leastconn

import (
	"bufio"
	"context"
	"errors"
	"math"
	"net"
	"net/http"
	"sync"
	"time"
)

// The direct path: requests to plain-HTTP backends are written and their
// responses read on the handling goroutine, over a backend's own pool of
// kept-alive connections. net/http's Transport hands every request to
// per-connection reader and writer goroutines; for the common small GET
// that handoff is most of a proxy's client-side cost. A request with a body
// takes one goroutine more, which writes it (see h1body.go). Upgrades and
// HTTPS backends go through the Transport, which handles HTTP/2 and TLS.

const (
	h1MaxIdle     = 1024            // idle connections kept per backend
	h1IdleTimeout = 2 * time.Minute // idle connections older than this are closed
	// h1BufferSize: each connection in use holds a reader and a writer of
	// this size; with 2000 requests in flight, 16 KiB ones made 64 MiB.
	// Response headers longer than it are read all the same, and bodies
	// larger than it bypass it.
	h1BufferSize = 4 << 10
	h1BufferIdle = time.Second // idle connections older than this give their buffers back
)

// maxResponseHeaderBytes bounds a backend's response headers, as
// net/http's Transport does by default.
const maxResponseHeaderBytes = 10 << 20

var errHeadersTooLarge = errors.New("backend response headers over 10 MiB")

// h1Conn is one kept-alive connection to a backend.
type h1Conn struct {
	net.Conn
	br       *bufio.Reader // reads through Read, so that limit applies; nil once long idle
	bw       *bufio.Writer // nil once long idle
	lastUsed time.Time
	limit    int64 // bytes Read may still return; bounds headers
	// timedOut is the first read since readResponse began that hit the
	// deadline: bufio hands the parser what arrived before it as a whole
	// line, so the parser's error would tell of a malformed line instead
	timedOut error
	peek     idlePeeker
}

// Read reads from the connection, at most limit bytes in all.
func (c *h1Conn) Read(p []byte) (int, error) {
	if c.limit <= 0 {
		return 0, errHeadersTooLarge
	}
	if int64(len(p)) > c.limit {
		p = p[:c.limit]
	}
	n, err := c.Conn.Read(p)
	c.limit -= int64(n)
	if err != nil && c.timedOut == nil && isTimeout(err) {
		c.timedOut = err
	}
	return n, err
}

// h1Pool is a backend's stack of idle connections; the most recently used
// is reused first, so a quiet pool lets the older ones age out.
type h1Pool struct {
	mu     sync.Mutex
	idle   []*h1Conn
	closed bool // the backend left its pool: late returns are closed
}

// bufPool holds the readers and writers of connections in use: one idle
// for h1BufferIdle gives its own back (8 KiB) when its pool is pruned, and
// takes a pair again when it carries the next request. A busy connection
// keeps its pair, so the hot path takes none.
var bufPool = struct{ r, w sync.Pool }{}

// get returns the most recently used idle connection that can carry a
// request, or nil; connections idle too long are closed on the way. A
// connection on which the backend wrote or closed while it sat idle is
// closed too: checking costs a system call (a few per cent of a small
// request's CPU), so it is made for every request that could not be sent
// again if the connection failed, and for the others only after the
// connection sat idle for peekAfter. Under load connections come back
// within microseconds and a broken one costs an idempotent request only a
// resend on a new connection (see roundTripDirect).
func (p *h1Pool) get(now time.Time, idempotent bool) *h1Conn {
	for {
		c := p.pop()
		if c == nil {
			return nil
		}
		idle := now.Sub(c.lastUsed)
		if idle < h1IdleTimeout && (idempotent && idle < peekAfter || c.peek.quiet()) {
			if c.br == nil {
				c.takeBuffers()
			}
			return c
		}
		c.close()
	}
}

// peekAfter is how long a connection sits idle before an idempotent
// request checks it too.
const peekAfter = time.Millisecond

func (p *h1Pool) pop() *h1Conn {
	p.mu.Lock()
	defer p.mu.Unlock()
	n := len(p.idle)
	if n == 0 {
		return nil
	}
	c := p.idle[n-1]
	p.idle[n-1] = nil
	p.idle = p.idle[:n-1]
	return c
}

// put keeps c for reuse, or closes it when the pool is full.
func (p *h1Pool) put(c *h1Conn, now time.Time) {
	c.lastUsed = now
	p.mu.Lock()
	if !p.closed && len(p.idle) < h1MaxIdle {
		p.idle = append(p.idle, c)
		c = nil
	}
	p.mu.Unlock()
	if c != nil {
		c.close()
	}
}

// prune closes connections idle for longer than maxIdle, and takes the
// buffers of those idle for h1BufferIdle. With 0 it closes them all, and
// the pool for good.
func (p *h1Pool) prune(now time.Time, maxIdle time.Duration) {
	p.mu.Lock()
	if maxIdle == 0 {
		p.closed = true
	}
	var stale []*h1Conn
	keep := p.idle[:0]
	for _, c := range p.idle {
		if maxIdle > 0 && now.Sub(c.lastUsed) < maxIdle {
			if now.Sub(c.lastUsed) >= h1BufferIdle {
				c.releaseBuffers()
			}
			keep = append(keep, c)
		} else {
			stale = append(stale, c)
		}
	}
	clear(p.idle[len(keep):])
	p.idle = keep
	p.mu.Unlock()
	for _, c := range stale {
		c.close()
	}
}

func (c *h1Conn) close() {
	_ = c.Conn.Close()
	c.releaseBuffers()
}

func newH1Conn(nc net.Conn) *h1Conn {
	c := &h1Conn{Conn: nc}
	c.takeBuffers()
	c.peek.init(nc)
	return c
}

// takeBuffers gives c a reader and writer from bufPool.
func (c *h1Conn) takeBuffers() {
	br, _ := bufPool.r.Get().(*bufio.Reader)
	if br == nil {
		br = bufio.NewReaderSize(c, h1BufferSize)
	} else {
		br.Reset(c)
	}
	bw, _ := bufPool.w.Get().(*bufio.Writer)
	if bw == nil {
		bw = bufio.NewWriterSize(c.Conn, h1BufferSize)
	} else {
		bw.Reset(c.Conn)
	}
	c.br, c.bw = br, bw
}

// releaseBuffers gives c's reader and writer back to bufPool; the reader
// holds nothing unread (see roundTripDirect).
func (c *h1Conn) releaseBuffers() {
	if c.br == nil {
		return
	}
	c.br.Reset(nil)
	c.bw.Reset(nil)
	bufPool.r.Put(c.br)
	bufPool.w.Put(c.bw)
	c.br, c.bw = nil, nil
}

// directOK tells whether a try may take the direct path.
func directOK(out *http.Request, b *Backend) bool {
	return b.addr.scheme == "http" && out.Header["Upgrade"] == nil && (out.Body == nil || directBodies)
}

// directBodies lets requests with bodies take the direct path; benchmarks
// turn it off to compare with net/http's Transport.
var directBodies = true

// aLongTimeAgo is a deadline that has passed: setting it makes blocked reads
// and writes return at once.
var aLongTimeAgo = time.Unix(1, 0)

// roundTripDirect sends out to b on a pooled connection and reads the
// response headers. The caller owns the returned connection: it goes back
// to the pool (done(true)) only once the body was read to its end.
func (h *Handler) roundTripDirect(w http.ResponseWriter, out *http.Request, b *Backend) (*http.Response, func(reuse bool), error) {
	ctx := out.Context()
	s := h.spec
	body, _ := out.Body.(*requestBody)
	for attempt := 0; ; attempt++ {
		now := time.Now()
		var c *h1Conn
		if attempt == 0 {
			c = b.h1.get(now, idempotent(out.Method) && body == nil)
		}
		reused := c != nil
		if c == nil {
			nc, err := s.dialer.DialContext(ctx, b.addr.network, b.addr.dial)
			if err != nil {
				return nil, nil, dialError{err}
			}
			c = newH1Conn(nc)
		}
		var resp *http.Response
		var send *bodySend
		var err error
		stop := context.AfterFunc(ctx, func() { _ = c.SetDeadline(aLongTimeAgo) })
		if body == nil {
			// the response-header timeout covers writing the request too;
			// a client that goes away unblocks the read at once
			_ = c.SetDeadline(now.Add(s.responseHeaderTimeout))
			resp, err = writeAndRead(c, out, w)
		} else {
			_ = c.SetDeadline(time.Time{})
			send = startSend(c, out, body, s.responseHeaderTimeout)
			resp, err = readResponse(c, out, w, send)
		}
		if err == nil {
			if send == nil {
				_ = c.SetDeadline(time.Time{})
			}
			done := func(reuse bool) {
				// bytes left after the response (a body on a HEAD or a 204,
				// more than Content-Length said) would be read as the next
				// response: such a connection is not kept
				keep := stop() && reuse && !resp.Close && c.br.Buffered() == 0
				switch {
				case send == nil && keep:
					b.h1.put(c, time.Now())
				case send == nil:
					c.close()
				case keep && send.finished():
					b.h1.put(c, time.Now())
				default:
					send.abandon()
				}
			}
			return resp, done, nil
		}
		stop()
		// a body none of which was taken from the client may go on a new
		// connection; one partly sent never goes again
		resend := body == nil || body.halt()
		switch {
		case send == nil:
			c.close()
		case resend:
			send.join()
		default:
			send.abandon()
		}
		if ctx.Err() != nil {
			return nil, nil, ctx.Err()
		}
		if !reused || isTimeout(err) {
			return nil, nil, err
		}
		// a connection that sat idle in the pool broke: closed by the
		// backend meanwhile, or holding late bytes of an earlier response.
		// That is the connection's fault, not the backend's. An idempotent
		// request goes once more on a new connection, as net/http's
		// Transport does; others may have been acted on and are not resent
		if idempotent(out.Method) && resend {
			if body != nil {
				body.resume()
			}
			continue
		}
		return nil, nil, reusedConnError{err}
	}
}

// reusedConnError is a failure on a connection that was kept alive from an
// earlier request: it does not count against the backend's health.
type reusedConnError struct{ err error }

func (e reusedConnError) Error() string { return e.err.Error() }
func (e reusedConnError) Unwrap() error { return e.err }

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

func writeAndRead(c *h1Conn, out *http.Request, w http.ResponseWriter) (*http.Response, error) {
	if err := out.Write(c.bw); err != nil {
		return nil, err
	}
	if err := c.bw.Flush(); err != nil {
		return nil, err
	}
	return readResponse(c, out, w, nil)
}

// readResponse reads the final response's headers, passing informational
// ones on; send, when the request has a body, learns of them. A read that
// hit the deadline makes the error a timeout, whatever the parser made of
// the bytes before it.
func readResponse(c *h1Conn, out *http.Request, w http.ResponseWriter, send *bodySend) (*http.Response, error) {
	c.limit = maxResponseHeaderBytes
	c.timedOut = nil
	defer func() { c.limit = math.MaxInt64 }() // the body is bounded by the caller
	for range 5 {
		resp, err := http.ReadResponse(c.br, out)
		if err != nil {
			if c.timedOut != nil {
				return nil, c.timedOut
			}
			return nil, err
		}
		if err := checkResponse(out, resp); err != nil {
			return nil, err
		}
		if resp.StatusCode >= 200 || resp.StatusCode == http.StatusSwitchingProtocols {
			if send != nil {
				send.headersIn()
			}
			return resp, nil
		}
		if send != nil {
			send.interim(resp.StatusCode)
		}
		forward1xx(w, resp.StatusCode, resp.Header)
	}
	return nil, errors.New("too many informational responses")
}
