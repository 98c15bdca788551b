package upstream

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"net/http"
	"reflect"
	"strings"
	"testing"
)

// leanHeads are response heads, with what follows them, of the shapes the
// lean reader takes and of those it leaves to http.ReadResponse.
var leanHeads = []struct {
	raw  string
	lean bool // taken by the lean reader
}{
	{"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n\r\nhello", true},
	{"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nx-custom-NAME:  spaced\t \r\nSet-Cookie: a=1\r\nSet-Cookie: b=2\r\n\r\nokNEXT", true},
	{"HTTP/1.1 404\r\nContent-Length: 0\r\n\r\n", true},
	{"HTTP/1.1 503 \r\nContent-Length: 1\r\nRetry-After: 1\r\n\r\nx", true},
	{"HTTP/1.1 200 OK\r\nContent-Length: 007\r\nX-Empty:\r\n\r\n1234567", true},
	{"HTTP/1.1 200 Ok \xe2\x9c\x93\r\nContent-Length: 1\r\nX-Obs: caf\xe9\r\n\r\nx", true},
	{"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nab", true}, // the body ends early
	{"HTTP/1.1 200 OK\r\nA: 1\r\nB: 2\r\nC: 3\r\nD: 4\r\nE: 5\r\nF: 6\r\nG: 7\r\nH: 8\r\nI: 9\r\nA: 10\r\nContent-Length: 1\r\n\r\nx", true},
	{"HTTP/1.1 200 OK\r\n\r\nuntil the end", false},
	{"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n", false},
	{"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok", false},
	{"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\nok", false},
	{"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nPragma: no-cache\r\n\r\nok", false},
	{"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTrailer: X\r\n\r\nok", false},
	{"HTTP/1.1 200 OK\r\nContent-Length: -2\r\n\r\nok", false},
	{"HTTP/1.1 200 OK\r\nContent-Length:\r\n\r\nok", false},
	{"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nBad Key: v\r\n\r\nok", false},
	{"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n folded\r\n\r\nok", false},
	{"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX: a\x00b\r\n\r\nok", false},
	{"HTTP/1.1 200 OK\nContent-Length: 2\n\nok", false},
	{"HTTP/1.1 204 No Content\r\nContent-Length: 2\r\n\r\nok", false},
	{"HTTP/1.1 304 Not Modified\r\nContent-Length: 2\r\n\r\n", false},
	{"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", false},
	{"HTTP/1.1 099 Odd\r\nContent-Length: 2\r\n\r\nok", false},
	{"HTTP/1.1 2000 OK\r\nContent-Length: 2\r\n\r\nok", false},
	{"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok", false},
	{"HTTP/1.1 200 OK\r\nContent-Len", false},
}

// Whatever the lean reader takes, it reads as http.ReadResponse does:
// status, header, length, body and the bytes left after it; what it does not
// take, it leaves unread.
func TestLeanHeadReadsAsReadResponse(t *testing.T) {
	for _, tc := range leanHeads {
		lean := compareLeanHead(t, []byte(tc.raw), "GET")
		if lean != tc.lean {
			t.Errorf("%q: taken by the lean reader: %v, want %v", tc.raw, lean, tc.lean)
		}
	}
	if compareLeanHead(t, []byte(leanHeads[0].raw), "HEAD") {
		t.Errorf("the answer to a HEAD taken by the lean reader")
	}
}

// compareLeanHead reads raw with readLeanHead and with http.ReadResponse
// and fails t where they differ; it tells whether the lean reader took it.
func compareLeanHead(t testing.TB, raw []byte, method string) bool {
	t.Helper()
	out, _ := http.NewRequest(method, "http://backend/", nil)
	lbr := bufio.NewReaderSize(bytes.NewReader(raw), 4096)
	resp, err := awaitAndReadLean(lbr, out)
	if resp == nil {
		if err == nil && lbr.Buffered() != len(raw) && len(raw) <= 4096 {
			t.Fatalf("%q: left to ReadResponse with %d of %d bytes unread", raw, lbr.Buffered(), len(raw))
		}
		return false
	}
	want, werr := http.ReadResponse(bufio.NewReaderSize(bytes.NewReader(raw), 4096), out)
	if werr != nil {
		t.Fatalf("%q: read lean, but http.ReadResponse fails: %v", raw, werr)
	}
	if resp.Status != want.Status || resp.StatusCode != want.StatusCode || resp.Proto != want.Proto ||
		resp.ProtoMajor != want.ProtoMajor || resp.ProtoMinor != want.ProtoMinor || resp.ContentLength != want.ContentLength ||
		resp.Close != want.Close || !reflect.DeepEqual(resp.Header, want.Header) || resp.Request != out {
		t.Fatalf("%q: read lean as %q %d %s %v len %d close %v, ReadResponse as %q %d %s %v len %d close %v", raw,
			resp.Status, resp.StatusCode, resp.Proto, resp.Header, resp.ContentLength, resp.Close,
			want.Status, want.StatusCode, want.Proto, want.Header, want.ContentLength, want.Close)
	}
	got, gerr := io.ReadAll(resp.Body)
	exp, eerr := io.ReadAll(want.Body)
	if !bytes.Equal(got, exp) || (gerr == nil) != (eerr == nil) || gerr != nil && !errors.Is(gerr, eerr) {
		t.Fatalf("%q: lean body %q (%v), ReadResponse's %q (%v)", raw, got, gerr, exp, eerr)
	}
	resp.Body.Close()
	if _, err := resp.Body.Read(make([]byte, 1)); resp.ContentLength > 0 && !errors.Is(err, http.ErrBodyReadAfterClose) {
		t.Fatalf("%q: a read after Close gave %v", raw, err)
	}
	return true
}

func FuzzLeanHeadReadsAsReadResponse(f *testing.F) {
	for _, tc := range leanHeads {
		f.Add([]byte(tc.raw), false)
	}
	f.Add([]byte(leanHeads[0].raw), true)
	f.Fuzz(func(t *testing.T, raw []byte, head bool) {
		method := "GET"
		if head {
			method = "HEAD"
		}
		compareLeanHead(t, raw, method)
	})
}

// A head that is not all in the buffer yet is left to http.ReadResponse,
// which reads the rest.
func TestLeanHeadLeavesAPartialHead(t *testing.T) {
	pr, pw := io.Pipe()
	go func() {
		pw.Write([]byte("HTTP/1.1 200 OK\r\nContent-Le"))
		pw.Write([]byte("ngth: 2\r\n\r\nok"))
		pw.Close()
	}()
	br := bufio.NewReader(pr)
	out, _ := http.NewRequest("GET", "http://backend/", nil)
	resp, err := awaitAndReadLean(br, out)
	if resp != nil || err != nil || br.Buffered() != len("HTTP/1.1 200 OK\r\nContent-Le") {
		t.Fatalf("a partial head: %v, %v, %d buffered", resp, err, br.Buffered())
	}
	if resp, err = http.ReadResponse(br, out); err != nil || resp.ContentLength != 2 {
		t.Fatalf("then ReadResponse: %v, %v", resp, err)
	}
	if _, err := awaitAndReadLean(bufio.NewReader(strings.NewReader("")), out); !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Fatalf("nothing at all: %v, want io.ErrUnexpectedEOF as ReadResponse", err)
	}
}

// go test -run '^$' -bench ReadHead -benchmem ./internal/upstream
func BenchmarkReadHead(b *testing.B) {
	raw := []byte("HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nDate: Thu, 03 Dec 2026 12:00:00 GMT\r\nContent-Length: 10\r\n\r\nbackend b1")
	out, _ := http.NewRequest("GET", "http://backend/", nil)
	for _, tc := range []struct {
		name string
		read func(*bufio.Reader, *http.Request) (*http.Response, error)
	}{{"lean", readLeanHead}, {"ReadResponse", http.ReadResponse}} {
		b.Run(tc.name, func(b *testing.B) {
			b.ReportAllocs()
			r := bytes.NewReader(raw)
			br := bufio.NewReaderSize(r, 4096)
			buf := make([]byte, 64)
			for b.Loop() {
				r.Reset(raw)
				br.Reset(r)
				resp, err := tc.read(br, out)
				if err != nil || resp == nil {
					b.Fatal(resp, err)
				}
				if n, _ := io.ReadFull(resp.Body, buf[:10]); n != 10 {
					b.Fatal(n)
				}
			}
		})
	}
}

// awaitAndReadLean reads a head as readResponse does before it falls back
// to http.ReadResponse.
func awaitAndReadLean(br *bufio.Reader, out *http.Request) (*http.Response, error) {
	if err := awaitHead(br); err != nil {
		return nil, err
	}
	return readLeanHead(br, out)
}
