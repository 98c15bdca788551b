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
