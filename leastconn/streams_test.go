package leastconn

import (
	"bytes"
	"io"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"go.uber.org/zap"
)

// readSizes is a tunnel side that records how much each read asks for.
type readSizes struct {
	src     io.Reader
	largest int
}

func (r *readSizes) Read(p []byte) (int, error) {
	r.largest = max(r.largest, len(p))
	return r.src.Read(p)
}
func (r *readSizes) Write(p []byte) (int, error) { return len(p), nil }
func (r *readSizes) Close() error                { return nil }

func TestStreamBufferSizeIsTheTunnelCopyBuffer(t *testing.T) {
	data := bytes.Repeat([]byte("0123456789"), 10000)
	for _, size := range []int{100, 4096, 64 << 10} {
		h := &Handler{StreamBufferSize: size}
		down := &readSizes{src: bytes.NewReader(data)}
		var toClient bytes.Buffer
		h.pipeDown(&toClient, down)
		up := &readSizes{src: bytes.NewReader(data)}
		var toBackend bytes.Buffer
		h.pipeUp(&toBackend, up, []byte("pending|"))
		if down.largest != size || up.largest != size {
			t.Errorf("stream_buffer_size %d: reads of up to %d and %d bytes", size, down.largest, up.largest)
		}
		if !bytes.Equal(toClient.Bytes(), data) || !bytes.Equal(toBackend.Bytes(), append([]byte("pending|"), data...)) {
			t.Errorf("stream_buffer_size %d: the bytes changed on the way", size)
		}
	}
}

// BenchmarkTrackStream is what stream_close_delay adds to opening and
// ending one tunnel, off and on.
func BenchmarkTrackStream(b *testing.B) {
	be := &Backend{}
	closeFn := func() {}
	for _, bc := range []struct {
		name  string
		delay caddy.Duration
	}{{"off", 0}, {"on", caddy.Duration(time.Second)}} {
		h := &Handler{StreamCloseDelay: bc.delay}
		b.Run(bc.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				h.trackStream(be, closeFn)()
			}
		})
	}
}

func TestStreamSetLeaveStayAndStreamsOpenedWhileLeaving(t *testing.T) {
	b := &Backend{}
	h := &Handler{StreamCloseDelay: caddy.Duration(20 * time.Millisecond)}
	var closed atomic.Int32
	closeFn := func() { closed.Add(1) }
	untrackFirst := h.trackStream(b, closeFn)
	(&Handler{}).trackStream(b, closeFn)() // no delay: not tracked

	b.streams.leave(zap.NewNop(), b.URL())
	b.streams.stay() // back in DNS before it left: nothing scheduled
	b.streams.mu.Lock()
	for s := range b.streams.open {
		if s.timer != nil {
			t.Error("a stream kept its scheduled end after the backend stayed")
		}
	}
	tracked := len(b.streams.open)
	b.streams.mu.Unlock()
	if tracked != 1 {
		t.Fatalf("%d streams tracked, want 1", tracked)
	}

	b.streams.leave(zap.NewNop(), b.URL())
	h.trackStream(b, closeFn) // opened while leaving: the same deadline
	deadline := time.Now().Add(5 * time.Second)
	for closed.Load() < 2 && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	if closed.Load() != 2 {
		t.Fatalf("%d of 2 streams ended after the backend left", closed.Load())
	}
	untrackFirst()
	b.streams.mu.Lock()
	defer b.streams.mu.Unlock()
	if len(b.streams.open) != 1 {
		t.Fatalf("%d streams tracked after one ended, want 1", len(b.streams.open))
	}
}
