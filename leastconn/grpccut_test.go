package leastconn

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"net/http"
	"testing"
)

// grpcMessages frames messages of the sizes as a gRPC body does.
func grpcMessages(sizes ...int) []byte {
	var out []byte
	for _, n := range sizes {
		prefix := make([]byte, 5)
		binary.BigEndian.PutUint32(prefix[1:], uint32(n))
		out = append(out, prefix...)
		out = append(out, bytes.Repeat([]byte{'m'}, n)...)
	}
	return out
}

// chunks reads its data in pieces of the given sizes, in turn.
type chunks struct {
	data  []byte
	sizes []int
	reads int
}

func (c *chunks) Read(p []byte) (int, error) {
	if len(c.data) == 0 {
		return 0, io.EOF
	}
	n := min(c.sizes[c.reads%len(c.sizes)], len(p), len(c.data))
	c.reads++
	copy(p, c.data[:n])
	c.data = c.data[n:]
	return n, nil
}

func (c *chunks) Close() error { return nil }

func TestGRPCCutEndsBetweenTwoMessages(t *testing.T) {
	sizes := []int{0, 3, 100, 7, 2000, 1, 40}
	body := grpcMessages(sizes...)
	ends := map[int]bool{0: true} // the offsets where a message ends
	for i := range sizes {
		ends[len(grpcMessages(sizes[:i+1]...))] = true
	}
	for _, read := range [][]int{{1}, {2, 3}, {5}, {7, 13}, {64}, {4096}} {
		for askAfter := 0; askAfter < 12; askAfter++ {
			ended := 0
			resp := &http.Response{Body: &chunks{data: body, sizes: read}}
			cut := cutGRPC(resp, func() { ended++ })
			var got []byte
			buf := make([]byte, 4096)
			var err error
			for reads := 0; err == nil; reads++ {
				if reads == askAfter {
					cut.ask()
				}
				var n int
				n, err = resp.Body.Read(buf)
				got = append(got, buf[:n]...)
			}
			cut.stop()
			if !bytes.Equal(got, body[:len(got)]) || !ends[len(got)] {
				t.Fatalf("reads of %v, asked after %d: cut after %d bytes, not between two messages", read, askAfter, len(got))
			}
			if errors.Is(err, errGRPCCut) != (ended == 1) || ended > 1 {
				t.Fatalf("reads of %v, asked after %d: ended with %v, the call cancelled %d times", read, askAfter, err, ended)
			}
		}
	}
}

// What a stream limit costs a response: telling a stream by its
// Content-Type allocates nothing; a gRPC response read through its cut
// allocates the cut once, and nothing per read.
func TestStreamLimitsAllocateOnlyTheCut(t *testing.T) {
	resp := &http.Response{Header: http.Header{"Content-Type": {"application/grpc"}}}
	if n := testing.AllocsPerRun(1000, func() { responseStream(resp) }); n != 0 {
		t.Errorf("responseStream allocates %v times", n)
	}
	body := grpcMessages(100, 5000, 20, 70000)
	src := &chunks{sizes: []int{1000}}
	resp.Body = src
	cut := cutGRPC(resp, func() {})
	buf := make([]byte, 4096)
	if n := testing.AllocsPerRun(100, func() {
		src.data = body
		for {
			if _, err := cut.Read(buf); err != nil {
				break
			}
		}
	}); n != 0 {
		t.Errorf("reading a response through its cut allocates %v times", n)
	}
	if n := testing.AllocsPerRun(100, func() { cutGRPC(&http.Response{Body: src}, func() {}) }); n > 1 {
		t.Errorf("cutting a response allocates %v times, want 1", n)
	}
}
