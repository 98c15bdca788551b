package upstream

import (
	"bufio"
	"errors"
	"io"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/net/http/httpguts"
)

// Request bodies on the direct path. A small body of known length goes out
// with its head in one write from the handling goroutine (smallBody): the
// backend has nothing to answer before all of it was read. Any other
// request goes out on a goroutine of its own while the handling goroutine
// reads the response, so a backend that answers before it read the whole
// body (413, 417, a redirect) is heard at once. Either way a client that
// sends its body slowly is not held to the response-header timeout: as
// with net/http's Transport, that timeout starts once the body was sent. The body streams through the connection's
// write buffer, with the client's framing: Content-Length when known,
// chunked otherwise, trailers included.
//
// Expect: 100-continue is forwarded, and the body waits for the backend's
// 100 Continue (or expectContinueTimeout, after which it is sent anyway):
// reading it is what makes Caddy's server send the client its own 100
// Continue, so a backend that refuses (417, 401) is answered without the
// client sending the body. The backend's 100 is not passed on; the
// client gets one, Caddy's.

// expectContinueTimeout is how long a body waits for the backend's 100
// Continue, as net/http's Transport is set up in newTransport.
const expectContinueTimeout = time.Second

// writeGrace bounds the wait for the last bytes of a body to be written
// once the backend answered: a backend that read the whole body does not
// block them, and a connection whose request did not go out whole is not
// kept.
const writeGrace = 50 * time.Millisecond

// errBodyHalted: the body is no longer sent (the try ended, or the backend
// refused an Expect: 100-continue request before it was asked for).
var errBodyHalted = errors.New("lbpool: request body no longer sent")

// RequestBody is the client's body as every try reads it. It stays open
// across tries (net/http's Transport closes a body when a try fails), and
// it tells what happened to it: how much was taken from the client, whether
// to its end, and whether reading the client failed (the client's fault,
// not the backend's). A try that read nothing may hand it to the next one.
type RequestBody struct {
	rc      io.ReadCloser
	state   atomic.Int32 // bodyIdle, bodyReading or bodyHalted
	n       atomic.Int64 // bytes read from the client
	eof     atomic.Bool
	readErr atomic.Pointer[error] // the client's, other than io.EOF
	// proceed, set for one direct try of an Expect: 100-continue request,
	// gates the first read: true to send the body, false to withhold it
	proceed chan bool
}

const (
	bodyIdle int32 = iota
	bodyReading
	bodyHalted
)

func (b *RequestBody) Read(p []byte) (int, error) {
	if ch := b.proceed; ch != nil {
		b.proceed = nil
		if !<-ch {
			return 0, errBodyHalted
		}
	}
	if !b.state.CompareAndSwap(bodyIdle, bodyReading) {
		return 0, errBodyHalted
	}
	n, err := b.rc.Read(p)
	b.n.Add(int64(n))
	if err == io.EOF {
		b.eof.Store(true)
	} else if err != nil {
		b.readErr.Store(&err)
	}
	b.state.Store(bodyIdle)
	return n, err
}

// Reset makes b the body of a new request, read from rc.
func (b *RequestBody) Reset(rc io.ReadCloser) { b.rc = rc }

// Close leaves the client's body open: the server closes it.
func (*RequestBody) Close() error { return nil }

// halt stops the body being read any further and reports whether none of it
// was taken from the client, so that another try may send it whole.
func (b *RequestBody) halt() bool {
	return b.state.CompareAndSwap(bodyIdle, bodyHalted) && b.n.Load() == 0
}

// Untouched tells whether none of the body was read from the client yet,
// so that another try may send it whole.
func (b *RequestBody) Untouched() bool { return b.n.Load() == 0 }

// ClientError is the error reading the client's body, or nil.
func (b *RequestBody) ClientError() error {
	if p := b.readErr.Load(); p != nil {
		return *p
	}
	return nil
}

// bodySend is one try's request with a body, written by its own goroutine.
// The connection is closed for good by whichever of the writer and the
// handling goroutine lets go of it last: a writer waiting on a slow client
// may outlive the try (it ends when that read returns; net/http's server
// waits for it too before it closes the body), and must not find the
// connection's buffers handed to another.
type bodySend struct {
	c       *conn
	out     *http.Request
	body    *RequestBody
	timeout time.Duration // the response-header timeout, from the body's end
	proceed chan bool     // Expect: 100-continue; nil otherwise
	expect  *time.Timer
	done    chan error // the writer's result
	refs    atomic.Int32

	mu     sync.Mutex
	headed bool // the response headers arrived: no read deadline any more
}

func expectsContinue(out *http.Request) bool {
	return httpguts.HeaderValuesContainsToken(out.Header["Expect"], "100-continue")
}

// startSend starts writing out, with its body, on c.
func startSend(c *conn, out *http.Request, body *RequestBody, timeout time.Duration) *bodySend {
	s := &bodySend{c: c, out: out, body: body, timeout: timeout, done: make(chan error, 1)}
	s.refs.Store(2)
	if expectsContinue(out) {
		s.proceed = make(chan bool, 1)
		body.proceed = s.proceed
		s.expect = time.AfterFunc(expectContinueTimeout, func() { s.goAhead(true) })
	}
	go s.write()
	return s
}

func (s *bodySend) write() {
	bw := s.c.writer()
	err := s.out.Write(bw)
	if err == nil {
		err = bw.Flush()
	}
	putWriter(bw)
	s.mu.Lock()
	if s.body.ClientError() != nil {
		// no answer is coming to a request the client broke off
		_ = s.c.SetReadDeadline(aLongTimeAgo)
	} else if !s.headed {
		_ = s.c.SetReadDeadline(time.Now().Add(s.timeout))
	}
	s.mu.Unlock()
	s.done <- err
	s.release()
}

// headWithBody writes through a connection's buffered writer without
// being one. Request.Write flushes the head of a request on its own before
// a body that is not in memory, so that the backend sees it at once; for a
// small body (smallBody) that is a second write to the backend for
// nothing, the body being a few reads away, and the head waits for the
// body instead: one write for both.
type headWithBody struct{ *bufio.Writer }

// smallBody: a body of known length that fits the connection's write
// buffer, without Expect: 100-continue. Its request goes out in one write
// from the handling goroutine (see RoundTrip), with no writer goroutine.
func smallBody(out *http.Request) bool {
	return out.ContentLength > 0 && out.ContentLength <= bufferSize && !expectsContinue(out)
}

// goAhead answers an Expect: 100-continue gate; the first answer counts.
func (s *bodySend) goAhead(send bool) {
	if s.proceed == nil {
		return
	}
	select {
	case s.proceed <- send:
	default:
	}
}

// interim is told each informational response: a 100 lets the body go.
func (s *bodySend) interim(code int) {
	if code == http.StatusContinue {
		s.goAhead(true)
	}
}

// headersIn marks the final response's headers read: a body still being
// sent no longer sets a read deadline (the response body has none).
func (s *bodySend) headersIn() {
	s.goAhead(false) // a refusal: the body is withheld, unless already sent
	s.mu.Lock()
	s.headed = true
	if s.body.ClientError() == nil {
		_ = s.c.SetReadDeadline(time.Time{})
	}
	s.mu.Unlock()
}

func (s *bodySend) release() {
	if s.refs.Add(-1) == 0 {
		s.c.close()
	}
}

// abandon ends the try without waiting for the writer: the connection is
// closed at once, which ends any write to the backend.
func (s *bodySend) abandon() {
	s.stopExpect()
	_ = s.c.Conn.Close()
	s.release()
}

// join closes the connection and waits for the writer, which must not be
// reading the client's body (see RequestBody.halt).
func (s *bodySend) join() {
	s.stopExpect()
	_ = s.c.Conn.Close()
	<-s.done
	s.body.proceed = nil
	s.release()
}

func (s *bodySend) stopExpect() {
	if s.expect != nil {
		s.expect.Stop()
	}
	s.goAhead(false)
}

// finished tells whether the request went out whole, waiting a moment for
// its last bytes: only then may the connection carry another.
func (s *bodySend) finished() bool {
	if !s.body.eof.Load() {
		return false // the backend answered before it was sent all of it
	}
	_ = s.c.SetWriteDeadline(time.Now().Add(writeGrace))
	if err := <-s.done; err != nil {
		return false
	}
	s.stopExpect()
	_ = s.c.SetWriteDeadline(time.Time{})
	return true
}

// resume lets a halted body be read again, by the next try.
func (b *RequestBody) resume() { b.state.Store(bodyIdle) }
