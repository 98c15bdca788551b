package upstream

import (
	"bufio"
	"bytes"
	"io"
	"net/http"
	"net/textproto"
)

// The common response, read lean: an HTTP/1.1 head that is already whole in
// the connection's reader, with a Content-Length and none of what asks for
// more of net/http's care (no Transfer-Encoding, Connection, Trailer or
// Pragma header, a final status that may carry a body, a request that is
// not a HEAD). It is parsed in place, into one string for the whole head
// (the status and every value are slices of it), one header map and one
// object holding the response, its body and up to eight values: four
// allocations where http.ReadResponse makes ten. Anything else,
// including a head that is not yet all in the buffer, is left unread for
// http.ReadResponse, so the two paths never differ on what they accept.

// maxLeanHeaders is how many header lines the lean path takes; a response
// with more goes to http.ReadResponse.
const maxLeanHeaders = 32

// inlineValues is how many header values a leanResponse holds itself; a
// response with more takes one allocation more for them.
const inlineValues = 8

// leanResponse is a response read by readLeanHead, with its body and the
// slice that holds its header values, in one allocation.
type leanResponse struct {
	resp http.Response
	body lengthBody
	vals [inlineValues]string
}

// awaitHead waits for the first bytes of a response head; a read error
// then is the caller's, as http.ReadResponse would return it. It is a
// function of its own, with a small frame, because the handling goroutine
// spends a request's wait for its backend in it: the runtime halves a
// goroutine's stack at a collection only when less than a quarter of it
// is in use, so every byte of the frames under this wait decides whether
// each of thousands of waiting requests holds 16 KiB of stack or 32.
//
//go:noinline
func awaitHead(br *bufio.Reader) error {
	if _, err := br.Peek(1); err != nil {
		if err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		return err
	}
	return nil
}

// readLeanHead reads the response head buffered in br when it is of the
// common shape, and returns nil without reading anything when it is not.
// The head's first bytes are in br (awaitHead).
func readLeanHead(br *bufio.Reader, out *http.Request) (*http.Response, error) {
	if out.Method == http.MethodHead {
		return nil, nil
	}
	buf, _ := br.Peek(br.Buffered())
	end := bytes.Index(buf, []byte("\r\n\r\n"))
	if end < 0 || len(buf) < len("HTTP/1.1 200\r\n") || string(buf[:9]) != "HTTP/1.1 " {
		return nil, nil
	}
	head := buf[:end+2] // every line with its CRLF
	// status line: HTTP/1.1 SP 3DIGIT [SP reason] CRLF
	line := bytes.IndexByte(head, '\n')
	if head[line-1] != '\r' || line-1 < 12 || line-1 > 12 && head[12] != ' ' {
		return nil, nil
	}
	code := 0
	for _, d := range head[9:12] {
		if d < '0' || d > '9' {
			return nil, nil
		}
		code = code*10 + int(d-'0')
	}
	if code < 200 || code > 599 || code == http.StatusNoContent || code == http.StatusNotModified {
		return nil, nil
	}
	for _, c := range head[9 : line-1] {
		if !validValueByte(c) {
			return nil, nil
		}
	}

	// the header lines: check them all before anything is allocated
	var keys [maxLeanHeaders][]byte
	var vals [maxLeanHeaders][2]int // each value's span in head
	n, length := 0, int64(-1)
	for at := line + 1; at < len(head); {
		eol := at + bytes.IndexByte(head[at:], '\n')
		if eol <= at || head[eol-1] != '\r' || n == maxLeanHeaders {
			return nil, nil
		}
		colon := bytes.IndexByte(head[at:eol], ':')
		if colon <= 0 {
			return nil, nil
		}
		key := head[at : at+colon]
		for _, c := range key {
			if !tokenByte(c) {
				return nil, nil // a space before the colon, or worse
			}
		}
		from, to := at+colon+1, eol-1
		for from < to && (head[from] == ' ' || head[from] == '\t') {
			from++
		}
		for to > from && (head[to-1] == ' ' || head[to-1] == '\t') {
			to--
		}
		for _, c := range head[from:to] {
			if !validValueByte(c) {
				return nil, nil
			}
		}
		switch {
		case asciiEqualFold(key, "Content-Length"):
			if length >= 0 {
				return nil, nil // twice
			}
			if length = parseLength(head[from:to]); length < 0 {
				return nil, nil
			}
		case asciiEqualFold(key, "Transfer-Encoding"), asciiEqualFold(key, "Connection"),
			asciiEqualFold(key, "Trailer"), asciiEqualFold(key, "Pragma"):
			return nil, nil
		}
		keys[n], vals[n] = key, [2]int{from, to}
		n++
		at = eol + 1
	}
	if length < 0 {
		return nil, nil
	}

	s := string(head)
	lr := &leanResponse{}
	values := lr.vals[:]
	if n > inlineValues {
		values = make([]string, n)
	}
	hdr := make(http.Header, n)
	for i := range n {
		k := canonicalKey(keys[i])
		values[i] = s[vals[i][0]:vals[i][1]]
		if prev, ok := hdr[k]; ok {
			hdr[k] = append(prev, values[i])
		} else {
			hdr[k] = values[i : i+1 : i+1]
		}
	}
	if _, err := br.Discard(end + 4); err != nil {
		return nil, err // cannot happen: the bytes are buffered
	}
	lr.body = lengthBody{br: br, left: length}
	lr.resp = http.Response{
		Status:        s[9 : line-1],
		StatusCode:    code,
		Proto:         "HTTP/1.1",
		ProtoMajor:    1,
		ProtoMinor:    1,
		Header:        hdr,
		ContentLength: length,
		Request:       out,
		Body:          &lr.body,
	}
	if length == 0 {
		lr.resp.Body = http.NoBody
	}
	return &lr.resp, nil
}

// lengthBody is a body of a known length read from the connection's reader.
// Like net/http's, a body that ends early is io.ErrUnexpectedEOF, and one
// read after Close is http.ErrBodyReadAfterClose; unlike net/http's, Close
// does not drain what is left (the caller keeps the connection only when it
// read the body to its end).
type lengthBody struct {
	br     *bufio.Reader
	left   int64
	closed bool
}

func (b *lengthBody) Read(p []byte) (int, error) {
	if b.closed {
		return 0, http.ErrBodyReadAfterClose
	}
	if b.left == 0 {
		return 0, io.EOF
	}
	if int64(len(p)) > b.left {
		p = p[:b.left]
	}
	n, err := b.br.Read(p)
	b.left -= int64(n)
	switch {
	case err == io.EOF && b.left > 0:
		err = io.ErrUnexpectedEOF
	case err == nil && b.left == 0:
		err = io.EOF
	}
	return n, err
}

func (b *lengthBody) Close() error {
	b.closed = true
	return nil
}

// parseLength reads a Content-Length value: digits only, as net/http
// accepts it, or -1.
func parseLength(v []byte) int64 {
	if len(v) == 0 || len(v) > 18 {
		return -1
	}
	var n int64
	for _, d := range v {
		if d < '0' || d > '9' {
			return -1
		}
		n = n*10 + int64(d-'0')
	}
	return n
}

// tokenByte tells whether c may be in a header name (RFC 9110's tchar).
func tokenByte(c byte) bool {
	switch {
	case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9':
		return true
	}
	return c < 0x80 && bytes.IndexByte([]byte("!#$%&'*+-.^_`|~"), c) >= 0
}

// validValueByte tells whether c may be in a header value or a reason
// phrase as net/http reads them: no control byte but the tab.
func validValueByte(c byte) bool {
	return c >= 0x20 && c != 0x7f || c == '\t'
}

func asciiEqualFold(b []byte, s string) bool {
	if len(b) != len(s) {
		return false
	}
	for i := range b {
		c := b[i]
		if c >= 'A' && c <= 'Z' {
			c += 'a' - 'A'
		}
		d := s[i]
		if d >= 'A' && d <= 'Z' {
			d += 'a' - 'A'
		}
		if c != d {
			return false
		}
	}
	return true
}

// commonKeys are header names responses often carry, in canonical form, so
// that reading them allocates nothing.
var commonKeys = func() map[string]string {
	m := map[string]string{}
	for _, k := range []string{"Accept-Ranges", "Access-Control-Allow-Origin", "Age", "Cache-Control",
		"Content-Disposition", "Content-Encoding", "Content-Language", "Content-Length", "Content-Security-Policy",
		"Content-Type", "Date", "Etag", "Expires", "Keep-Alive", "Last-Modified", "Link", "Location", "Server",
		"Set-Cookie", "Strict-Transport-Security", "Vary", "Via", "X-Content-Type-Options", "X-Frame-Options",
		"X-Powered-By", "X-Request-Id"} {
		m[k] = k
	}
	return m
}()

// canonicalKey is textproto.CanonicalMIMEHeaderKey of a name of token
// bytes, without allocating for a common one.
func canonicalKey(key []byte) string {
	var buf [64]byte
	if len(key) > len(buf) {
		return textproto.CanonicalMIMEHeaderKey(string(key))
	}
	upper := true
	for i, c := range key {
		if upper && c >= 'a' && c <= 'z' {
			c -= 'a' - 'A'
		} else if !upper && c >= 'A' && c <= 'Z' {
			c += 'a' - 'A'
		}
		buf[i] = c
		upper = c == '-'
	}
	if k, ok := commonKeys[string(buf[:len(key)])]; ok {
		return k
	}
	return string(buf[:len(key)])
}
