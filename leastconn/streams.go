package leastconn

import (
	"io"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

	"github.com/lbpool/lbpool/internal/upstream"
	"go.uber.org/zap"
)

// Long-lived streams (upgraded connections such as websockets, and
// server-sent event and gRPC responses) and reverse_proxy's
// stream_timeout, stream_close_delay and stream_buffer_size.
//
// A stream to a backend that stays in the pool outlives any reload. One to
// a backend that left it (a reload removed it, its pool was unloaded, or it
// is gone from DNS) ends stream_close_delay after the backend left, the
// delay of the handler that opened the stream, jittered; without a delay
// it runs until it ends. Only streams with a delay are tracked: each
// registers its close with its Backend, and the code that lets a backend
// go calls leave, which schedules the closes. A backend listed again, or a
// member back in DNS, before it went calls stay, which cancels them.

// streamSet is the tracked streams of one backend.
type streamSet struct {
	mu       sync.Mutex
	open     map[*stream]struct{}
	left     time.Time   // when the backend left its pool; zero while in it
	announce *time.Timer // logs the closes; set once the backend left
}

// stream is one tracked tunnel.
type stream struct {
	close func()
	delay time.Duration
	timer *time.Timer // set once the backend left
}

// noUntrack is what trackStream returns for a stream it does not track.
func noUntrack() {}

// trackStream registers an open tunnel to b with its close function when
// the handler has a stream_close_delay; the tunnel calls the returned
// func when it ends.
func (h *Handler) trackStream(b *Backend, closeFn func()) (untrack func()) {
	if h.StreamCloseDelay <= 0 {
		return noUntrack
	}
	s := &stream{close: closeFn, delay: time.Duration(h.StreamCloseDelay)}
	set := &b.streams
	set.mu.Lock()
	if set.open == nil {
		set.open = make(map[*stream]struct{})
	}
	set.open[s] = struct{}{}
	if !set.left.IsZero() {
		// opened while the backend was leaving: the same deadline
		s.timer = time.AfterFunc(time.Until(set.left.Add(s.delay))+closeJitter(s.delay), s.close)
	}
	set.mu.Unlock()
	return func() {
		set.mu.Lock()
		delete(set.open, s)
		if s.timer != nil {
			s.timer.Stop()
		}
		set.mu.Unlock()
	}
}

// leave is called when b leaves its pool: when the shortest delay of its
// tracked streams has passed, closeNow logs how many there are and each
// ends at its own delay, give or take closeJitter. Leaving again keeps the
// first deadline.
func (set *streamSet) leave(log *zap.Logger, backend string) {
	set.mu.Lock()
	defer set.mu.Unlock()
	if !set.left.IsZero() {
		return
	}
	set.left = time.Now()
	first := time.Duration(-1)
	for s := range set.open {
		if first < 0 || s.delay < first {
			first = s.delay
		}
	}
	if first >= 0 {
		set.announce = time.AfterFunc(first, func() { set.closeNow(log, backend, first) })
	}
}

// closeNow schedules the closes of the streams open when the first delay
// passed, and logs how many, once; streams opened since the backend left
// have theirs (trackStream).
func (set *streamSet) closeNow(log *zap.Logger, backend string, passed time.Duration) {
	set.mu.Lock()
	if set.left.IsZero() {
		set.mu.Unlock()
		return // it stayed
	}
	n := 0
	for s := range set.open {
		if s.timer == nil {
			s.timer = time.AfterFunc(s.delay-passed+closeJitter(s.delay), s.close)
		}
		n++
	}
	set.mu.Unlock()
	if n > 0 {
		log.Info("closing the streams of a backend that left (stream_close_delay)",
			zap.String("backend", backend), zap.Int("streams", n))
	}
}

// closeJitter spreads the closes of a backend's streams over up to a
// quarter of the delay after it, so their clients do not come back in one
// herd.
func closeJitter(delay time.Duration) time.Duration {
	if delay < 4 {
		return 0
	}
	return rand.N(delay / 4)
}

// stay is called when a member that was leaving is back in DNS before it
// left: its streams run on.
func (set *streamSet) stay() {
	set.mu.Lock()
	defer set.mu.Unlock()
	set.left = time.Time{}
	if set.announce != nil {
		set.announce.Stop()
		set.announce = nil
	}
	for s := range set.open {
		if s.timer != nil {
			s.timer.Stop()
			s.timer = nil
		}
	}
}

// Which limit ended a response stream (limitStream).
const (
	limitTimeout = 1 + iota // stream_timeout
	limitLeft               // stream_close_delay: the backend left
)

// limitStream puts a response stream (server-sent events, gRPC) under
// stream_timeout and stream_close_delay: either ends it by calling end.
// The returned func lifts the limits when the stream is over; limit holds
// the one that ended it (limitTimeout, limitLeft), or 0.
func (h *Handler) limitStream(b *Backend, end func()) (stop func(), limit *atomic.Uint32) {
	limit = new(atomic.Uint32)
	endBy := func(which uint32) func() {
		return func() {
			if limit.CompareAndSwap(0, which) {
				end()
			}
		}
	}
	var t *time.Timer
	if h.StreamTimeout > 0 {
		t = time.AfterFunc(time.Duration(h.StreamTimeout), endBy(limitTimeout))
	}
	untrack := h.trackStream(b, endBy(limitLeft))
	return func() {
		if t != nil {
			t.Stop()
		}
		untrack()
	}, limit
}

// pipeUp copies the client's side of a tunnel to the backend: through a
// buffer of stream_buffer_size when set, otherwise with lbpool's own
// buffers (none while the tunnel idles on a socket).
func (h *Handler) pipeUp(dst io.Writer, src io.Reader, pending []byte) {
	if h.StreamBufferSize > 0 {
		upstream.PipeSized(dst, src, pending, h.StreamBufferSize)
		return
	}
	upstream.Pipe(dst, src, pending)
}

// pipeDown copies the backend's side of a tunnel to the client, as pipeUp.
func (h *Handler) pipeDown(dst io.Writer, back io.ReadWriteCloser) {
	if h.StreamBufferSize > 0 {
		// the body returns what was read past the response head, then
		// reads the connection
		upstream.PipeSized(dst, back, nil, h.StreamBufferSize)
		return
	}
	upstream.PipeFromBackend(dst, back)
}
