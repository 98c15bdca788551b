package upstream

import (
	"context"
	"errors"
	"math"
	"net"
	"net/http"
	"time"
)

// The direct path: requests to plain-HTTP backends are written and their
// responses read on the handling goroutine, over a backend's own pool of
// kept-alive connections. net/http's Transport hands every request to
// per-connection reader and writer goroutines; for the common small GET
// that handoff is most of a proxy's client-side cost. A request with a body
// takes one goroutine more, which writes it (see body.go). Upgrades and
// HTTPS backends go through the Transport (transport.go), which handles
// HTTP/2 and TLS.

// aLongTimeAgo is a deadline that has passed: setting it makes blocked reads
// and writes return at once.
var aLongTimeAgo = time.Unix(1, 0)

// RoundTrip sends out on one of p's connections (a new one dialed to
// network/addr when none is idle) and reads the response headers within
// headerTimeout; informational responses go to w as they come. The caller
// owns the returned connection: done(true) gives it back to p, and only
// once the body was read to its end.
//
// Errors: a DialError when no connection could be made (nothing reached
// the backend); a timeout (IsTimeout) when the head did not arrive in
// time; a ReusedConnError when a kept-alive connection broke under a
// request that may not be sent again (the connection's fault, not the
// backend's); the context's error when the client went away. A request on
// a kept-alive connection that broke is sent once more on a new one when
// it is idempotent and none of its body was taken from the client.
func RoundTrip(w http.ResponseWriter, p *Pool, dialer *net.Dialer, network, addr string, out *http.Request, headerTimeout time.Duration) (*http.Response, func(reuse bool), error) {
	ctx := out.Context()
	body, _ := out.Body.(*RequestBody)
	for attempt := 0; ; attempt++ {
		now := time.Now()
		var c *conn
		if attempt == 0 {
			c = p.get(now, Idempotent(out.Method) && body == nil)
		}
		reused := c != nil
		if c == nil {
			nc, err := dialer.DialContext(ctx, network, addr)
			if err != nil {
				return nil, nil, DialError{err}
			}
			c = newConn(nc)
		}
		var resp *http.Response
		var send *bodySend
		var err error
		stop := context.AfterFunc(ctx, func() { _ = c.SetDeadline(aLongTimeAgo) })
		switch {
		case body == nil:
			// the response-header timeout covers writing the request too;
			// a client that goes away unblocks the read at once
			_ = c.SetDeadline(now.Add(headerTimeout))
			resp, err = writeAndRead(c, out, w, 0)
		case smallBody(out):
			// the head waits for the body and both go in one write (see
			// headWithBody), so the backend has nothing to answer before
			// the whole body was read: this goroutine reads it, and the
			// timeout starts once it was sent
			_ = c.SetDeadline(time.Time{})
			resp, err = writeAndRead(c, out, w, headerTimeout)
		default:
			_ = c.SetDeadline(time.Time{})
			send = startSend(c, out, body, headerTimeout)
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
					p.put(c, time.Now())
				case send == nil:
					c.close()
				case keep && send.finished():
					p.put(c, time.Now())
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
		if !reused || IsTimeout(err) {
			return nil, nil, err
		}
		// a connection that sat idle in the pool broke: closed by the
		// backend meanwhile, or holding late bytes of an earlier response.
		// That is the connection's fault, not the backend's. An idempotent
		// request goes once more on a new connection, as net/http's
		// Transport does; others may have been acted on and are not resent
		if Idempotent(out.Method) && resend {
			if body != nil {
				body.resume()
			}
			continue
		}
		return nil, nil, ReusedConnError{err}
	}
}

// ReusedConnError is a failure on a connection that was kept alive from an
// earlier request: it does not count against the backend's health.
type ReusedConnError struct{ err error }

// Reused marks err as a failure on a kept-alive connection.
func Reused(err error) error { return ReusedConnError{err} }

func (e ReusedConnError) Error() string { return e.err.Error() }
func (e ReusedConnError) Unwrap() error { return e.err }

// DialError marks a failure to connect: nothing reached the backend, so any
// request may be retried elsewhere.
type DialError struct{ err error }

func (e DialError) Error() string { return e.err.Error() }
func (e DialError) Unwrap() error { return e.err }

// IsTimeout tells whether err is a deadline that passed.
func IsTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// writeAndRead writes out, without a body or with a small one (smallBody),
// and reads its response head; a headerTimeout, for a request with a body,
// is set once it was written.
func writeAndRead(c *conn, out *http.Request, w http.ResponseWriter, headerTimeout time.Duration) (*http.Response, error) {
	bw := c.writer()
	var err error
	if headerTimeout > 0 {
		err = out.Write(headWithBody{bw})
	} else {
		err = out.Write(bw)
	}
	if err == nil {
		err = bw.Flush()
	}
	putWriter(bw)
	if err != nil {
		return nil, err
	}
	if headerTimeout > 0 {
		_ = c.SetReadDeadline(time.Now().Add(headerTimeout))
	}
	return readResponse(c, out, w, nil)
}

// readResponse reads the final response's headers, passing informational
// ones on; send, when the request has a body, learns of them. A read that
// hit the deadline makes the error a timeout, whatever the parser made of
// the bytes before it.
func readResponse(c *conn, out *http.Request, w http.ResponseWriter, send *bodySend) (*http.Response, error) {
	c.limit = maxResponseHeaderBytes
	c.timedOut = nil
	defer func() { c.limit = math.MaxInt64 }() // the body is bounded by the caller
	for range 5 {
		var resp *http.Response
		err := awaitHead(c.br)
		if err == nil {
			resp, err = readLeanHead(c.br, out)
		}
		if resp == nil && err == nil {
			resp, err = http.ReadResponse(c.br, out)
		}
		if err != nil {
			if c.timedOut != nil {
				return nil, c.timedOut
			}
			return nil, err
		}
		if err := CheckResponse(out, resp); err != nil {
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
		Forward1xx(w, resp.StatusCode, resp.Header)
	}
	return nil, errors.New("too many informational responses")
}

// errBadStatus: a status line whose code is not one HTTP defines
// (RFC 9110 §15: 100-599). net/http's server would panic writing it.
var errBadStatus = errors.New("backend answered with a status code outside 100-599")

// CheckResponse refuses a response no client may be given: a status code
// HTTP does not define, or a 101 Switching Protocols to a protocol the
// request did not ask for (see CheckSwitch). Nothing of it reaches the
// client.
func CheckResponse(out *http.Request, resp *http.Response) error {
	if resp.StatusCode < 100 || resp.StatusCode > 599 {
		return errBadStatus
	}
	if resp.StatusCode == http.StatusSwitchingProtocols {
		return CheckSwitch(out.Header, resp.Header)
	}
	return nil
}

// Forward1xx passes an informational response (other than 100 Continue,
// which the server sends itself when the body is read) to the client.
func Forward1xx(w http.ResponseWriter, code int, hdr http.Header) {
	if code == http.StatusContinue {
		return
	}
	dst := w.Header()
	for k, vv := range hdr {
		dst[k] = vv
	}
	w.WriteHeader(code)
	for k := range hdr { // they belonged to the informational response only
		delete(dst, k)
	}
}

// Idempotent methods may be sent again when a try broke off: repeating them
// has no further effect (RFC 9110 §9.2.2; PUT and DELETE too, but lbpool
// stays with the methods that also change nothing at all).
func Idempotent(method string) bool {
	switch method {
	case http.MethodGet, http.MethodHead, http.MethodOptions, http.MethodTrace:
		return true
	}
	return false
}
