package upstream

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptrace"
	"sync"
	"time"

	"golang.org/x/net/http/httpguts"
)

// A 101 Switching Protocols response (a websocket, say) turns the client's
// connection and the backend's into one byte stream each way, and most such
// tunnels sit idle most of their lives. An idle tunnel holds no copy
// buffer: on a plain socket each direction waits for the socket to be
// readable and only then takes a pooled buffer, for one read and one write
// (see pipeSocket); other connections (TLS) read into a small buffer of
// their own and take a large one while data keeps coming.

// tunnelSmallBuffer is what a direction holds while it waits on a
// connection that is not a plain socket.
const tunnelSmallBuffer = 1 << 10

// CheckSwitch refuses a 101 to a protocol other than the one the request
// asked for, or to a request that asked for none, as net/http's
// ReverseProxy does: a backend must not turn the client's connection into
// something the client did not ask for.
func CheckSwitch(asked, answered http.Header) error {
	want, got := UpgradeType(asked), UpgradeType(answered)
	if want == "" || !equalFoldASCII(want, got) {
		return fmt.Errorf("backend tried to switch protocol %q when %q was requested", got, want)
	}
	return nil
}

// UpgradeType is the protocol a request asks to switch to, or a 101
// response switches to; "" for none.
func UpgradeType(h http.Header) string {
	if !httpguts.HeaderValuesContainsToken(h["Connection"], "Upgrade") {
		return ""
	}
	return h.Get("Upgrade")
}

// equalFoldASCII compares protocol tokens as HTTP does: ASCII letters
// regardless of case, every other byte as it is.
func equalFoldASCII(a, b string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range len(a) {
		if lowerASCII(a[i]) != lowerASCII(b[i]) {
			return false
		}
	}
	return true
}

func lowerASCII(c byte) byte {
	if 'A' <= c && c <= 'Z' {
		return c + 'a' - 'A'
	}
	return c
}

// PipeFromBackend copies the backend's side of a tunnel to dst: first what
// the Transport read past the response head, then from the socket itself
// when the Transport said which one it is.
func PipeFromBackend(dst io.Writer, body io.ReadWriteCloser) {
	ub, ok := body.(*upgradedBody)
	if !ok || !isSocket(ub.conn) {
		Pipe(dst, body, nil)
		return
	}
	if err := ub.drain(dst); err != nil {
		return
	}
	Pipe(dst, ub.conn, nil)
}

// Pipe writes pending to dst and then copies src to dst until either
// fails; the error is not needed, as the tunnel ends either way.
func Pipe(dst io.Writer, src io.Reader, pending []byte) {
	if len(pending) > 0 {
		if _, err := dst.Write(pending); err != nil {
			return
		}
	}
	if c, ok := src.(net.Conn); ok && isSocket(c) {
		pipeSocket(dst, c)
		return
	}
	pipeBuffered(dst, src)
}

// pipeBuffered copies src to dst reading into a small buffer of its own;
// a read that fills it takes a pooled large one for the next reads, until a
// read leaves that one part empty too.
func pipeBuffered(dst io.Writer, src io.Reader) {
	small := make([]byte, tunnelSmallBuffer)
	buf := small
	var large *[]byte
	defer func() {
		if large != nil {
			PutBuffer(large)
		}
	}()
	for {
		n, rerr := src.Read(buf)
		if n > 0 {
			if _, err := dst.Write(buf[:n]); err != nil {
				return
			}
		}
		if rerr != nil {
			return
		}
		switch {
		case large == nil && n == len(buf):
			large = GetBuffer()
			buf = *large
		case large != nil && n < len(buf):
			PutBuffer(large)
			large, buf = nil, small
		}
	}
}

// upgradedBody is a 101 response's body together with the connection the
// Transport read it from, so the tunnel can wait on that socket itself.
type upgradedBody struct {
	io.ReadWriteCloser // the Transport's body: what it read past the head, then the connection
	conn               net.Conn
}

// drain writes to dst what the Transport read past the response head: its
// body returns that before it reads the connection, which, with a read
// deadline in the past, then fails at once.
func (u *upgradedBody) drain(dst io.Writer) error {
	if err := u.conn.SetReadDeadline(aLongTimeAgo); err != nil {
		return err
	}
	bp := GetBuffer()
	defer PutBuffer(bp)
	for {
		n, rerr := u.ReadWriteCloser.Read(*bp)
		if n > 0 {
			if _, err := dst.Write((*bp)[:n]); err != nil {
				return err
			}
		}
		if rerr != nil {
			if !IsTimeout(rerr) {
				return rerr
			}
			return u.conn.SetReadDeadline(time.Time{})
		}
	}
}

// RoundTripUpgrade sends an upgrade request through t, noting the
// connection it went on: when the backend switches protocols, the
// response's body carries that connection, so the tunnel can wait on the
// socket itself (PipeFromBackend).
func RoundTripUpgrade(t *http.Transport, req *http.Request) (*http.Response, error) {
	var mu sync.Mutex
	var conn net.Conn
	trace := &httptrace.ClientTrace{GotConn: func(info httptrace.GotConnInfo) {
		mu.Lock()
		conn = info.Conn
		mu.Unlock()
	}}
	resp, err := t.RoundTrip(req.WithContext(httptrace.WithClientTrace(req.Context(), trace)))
	if err != nil || resp.StatusCode != http.StatusSwitchingProtocols {
		return resp, err
	}
	resp.Request = req // not the copy carrying the trace: the tunnel holds resp for its lifetime
	mu.Lock()
	defer mu.Unlock()
	if body, ok := resp.Body.(io.ReadWriteCloser); ok && conn != nil {
		resp.Body = &upgradedBody{ReadWriteCloser: body, conn: conn}
	}
	return resp, nil
}

// PipeSized writes pending to dst, then copies src to dst through one
// buffer of size bytes (the wrappers keep io.CopyBuffer from bypassing
// it) until either fails.
func PipeSized(dst io.Writer, src io.Reader, pending []byte, size int) {
	if len(pending) > 0 {
		if _, err := dst.Write(pending); err != nil {
			return
		}
	}
	_, _ = io.CopyBuffer(struct{ io.Writer }{dst}, struct{ io.Reader }{src}, make([]byte, size))
}
