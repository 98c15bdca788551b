package upstream

import (
	"bufio"
	"errors"
	"net"
	"sync"
	"time"
)

// A backend's kept-alive HTTP/1 connections for the direct path (see
// roundtrip.go): a stack of idle connections. A connection holds a reader
// only while it carries a request (from the pool's get to its put), and a
// writer only while a request is written: idle ones hold no buffer, so
// 3,000 backends' kept connections cost no 8 KiB each, and 2,000 requests
// waiting for their answers hold a reader each but no writer.

const (
	maxIdle = 1024 // idle connections kept per backend
	// IdleTimeout: idle connections older than this are closed.
	IdleTimeout = 2 * time.Minute
	// bufferSize: each connection in use holds a reader of this size, and
	// one that writes a request a writer; with 2000 requests in flight,
	// 16 KiB readers and writers made 64 MiB. Response headers longer than
	// it are read all the same, and bodies larger than it bypass it.
	bufferSize = 4 << 10
)

// maxResponseHeaderBytes bounds a backend's response headers, as
// net/http's Transport does by default.
const maxResponseHeaderBytes = 10 << 20

// ErrHeadersTooLarge: a backend's response headers over the bound.
var ErrHeadersTooLarge = errors.New("backend response headers over 10 MiB")

// conn is one kept-alive connection to a backend.
type conn struct {
	net.Conn
	br       *bufio.Reader // reads through Read, so that limit applies; nil while idle
	lastUsed time.Time
	limit    int64 // bytes Read may still return; bounds headers
	// timedOut is the first read since readResponse began that hit the
	// deadline: bufio hands the parser what arrived before it as a whole
	// line, so the parser's error would tell of a malformed line instead
	timedOut error
	peek     idlePeeker
}

// Read reads from the connection, at most limit bytes in all.
func (c *conn) Read(p []byte) (int, error) {
	if c.limit <= 0 {
		return 0, ErrHeadersTooLarge
	}
	if int64(len(p)) > c.limit {
		p = p[:c.limit]
	}
	n, err := c.Conn.Read(p)
	c.limit -= int64(n)
	if err != nil && c.timedOut == nil && IsTimeout(err) {
		c.timedOut = err
	}
	return n, err
}

// Pool is a backend's stack of idle connections; the most recently used
// is reused first, so a quiet pool lets the older ones age out.
type Pool struct {
	mu     sync.Mutex
	idle   []*conn
	closed bool // the backend left its pool: late returns are closed
}

// bufPool holds the readers and writers between their uses: a reader goes
// back when its connection does, a writer when the request is written.
var bufPool = struct{ r, w sync.Pool }{}

// get returns the most recently used idle connection that can carry a
// request, or nil; connections idle too long are closed on the way. A
// connection on which the backend wrote or closed while it sat idle is
// closed too: checking costs a system call (a few per cent of a small
// request's CPU), so it is made for every request that could not be sent
// again if the connection failed, and for the others only after the
// connection sat idle for peekAfter. Under load connections come back
// within microseconds and a broken one costs an idempotent request only a
// resend on a new connection (see RoundTrip).
func (p *Pool) get(now time.Time, idempotent bool) *conn {
	for {
		c := p.pop()
		if c == nil {
			return nil
		}
		idle := now.Sub(c.lastUsed)
		if idle < IdleTimeout && (idempotent && idle < peekAfter || c.peek.quiet()) {
			c.takeReader()
			return c
		}
		c.close()
	}
}

// peekAfter is how long a connection sits idle before an idempotent
// request checks it too.
const peekAfter = time.Millisecond

func (p *Pool) pop() *conn {
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

// put keeps c for reuse, or closes it when the pool is full. Its reader
// holds nothing unread (see RoundTrip) and goes back to bufPool.
func (p *Pool) put(c *conn, now time.Time) {
	c.releaseReader()
	c.lastUsed = now
	p.mu.Lock()
	if !p.closed && len(p.idle) < maxIdle {
		p.idle = append(p.idle, c)
		c = nil
	}
	p.mu.Unlock()
	if c != nil {
		c.close()
	}
}

// Prune closes connections idle for longer than idleFor. With 0 it closes
// them all, and the pool for good.
func (p *Pool) Prune(now time.Time, idleFor time.Duration) {
	p.mu.Lock()
	if idleFor == 0 {
		p.closed = true
	}
	var stale []*conn
	keep := p.idle[:0]
	for _, c := range p.idle {
		if idleFor > 0 && now.Sub(c.lastUsed) < idleFor {
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

func (c *conn) close() {
	_ = c.Conn.Close()
	c.releaseReader()
}

func newConn(nc net.Conn) *conn {
	c := &conn{Conn: nc}
	c.takeReader()
	c.peek.init(nc)
	return c
}

// takeReader gives c a reader from bufPool.
func (c *conn) takeReader() {
	br, _ := bufPool.r.Get().(*bufio.Reader)
	if br == nil {
		br = bufio.NewReaderSize(c, bufferSize)
	} else {
		br.Reset(c)
	}
	c.br = br
}

// releaseReader gives c's reader back to bufPool.
func (c *conn) releaseReader() {
	if c.br == nil {
		return
	}
	c.br.Reset(nil)
	bufPool.r.Put(c.br)
	c.br = nil
}

// writer is a writer from bufPool onto c, for one request; putWriter gives
// it back once the request is written.
func (c *conn) writer() *bufio.Writer {
	bw, _ := bufPool.w.Get().(*bufio.Writer)
	if bw == nil {
		return bufio.NewWriterSize(c.Conn, bufferSize)
	}
	bw.Reset(c.Conn)
	return bw
}

func putWriter(bw *bufio.Writer) {
	bw.Reset(nil)
	bufPool.w.Put(bw)
}

// Idle is how many connections wait in p to be reused.
func (p *Pool) Idle() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.idle)
}

// Buffered is how many bytes p's idle connections hold read but not yet
// used: a connection kept with bytes of an earlier answer would hand them
// to the next request as its response.
func (p *Pool) Buffered() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	n := 0
	for _, c := range p.idle {
		if c.br != nil { // an idle connection gives its reader back
			n += c.br.Buffered()
		}
	}
	return n
}
