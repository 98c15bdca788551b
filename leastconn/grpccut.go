package leastconn

import (
	"encoding/binary"
	"errors"
	"io"
	"net/http"
	"sync/atomic"
	"time"
)

// A gRPC response that stream_timeout or stream_close_delay ends is cut
// between two messages, so that its client reads every message it got
// whole, then the status lbpool adds (endGRPCStream): a message cut in
// the middle would be INTERNAL to it. The response body is read through a
// grpcCut, which follows the messages' length prefixes; a limit that
// strikes between two messages cancels the backend's call at once, one
// that strikes in the middle of a message lets its rest through first,
// for up to grpcCutGrace.

// grpcCutGrace bounds the wait for the rest of a message a limit struck
// in the middle of; a backend that sends nothing more is cut there.
const grpcCutGrace = 2 * time.Second

// grpcCut's state bits.
const (
	cutMidMessage = 1 << iota // the bytes read so far end inside a message
	cutAsked                  // a limit ended the stream
	cutDone                   // the backend's call is cancelled: nothing more is read
)

// errGRPCCut ends the body's reads once it is cut.
var errGRPCCut = errors.New("gRPC response cut between two messages by a stream limit")

// cutGRPC reads resp's body through a grpcCut from now on; the cut's ask
// is the end for the stream limits, and end cancels the backend's call.
func cutGRPC(resp *http.Response, end func()) *grpcCut {
	c := &grpcCut{body: resp.Body, end: end}
	resp.Body = c
	return c
}

// grpcCut reads a gRPC response body and cuts it between two messages.
// ask is called once (limitStream).
type grpcCut struct {
	body  io.ReadCloser
	end   func() // cancels the backend's call
	state atomic.Uint32
	grace *time.Timer // set by ask in the middle of a message

	// the reader's own: the message the bytes read so far end in
	left   uint64  // bytes of its payload not read yet
	prefix [5]byte // its length prefix, while incomplete
	got    int     // bytes of prefix read
}

// ask is the limits' end: it cuts now between two messages, or at the end
// of this one.
func (c *grpcCut) ask() {
	for {
		s := c.state.Load()
		if s&(cutAsked|cutDone) != 0 {
			return
		}
		if s&cutMidMessage == 0 {
			if c.state.CompareAndSwap(s, s|cutAsked|cutDone) {
				c.end()
				return
			}
			continue
		}
		// set before the state says so: Read reads it once it sees cutAsked
		c.grace = time.AfterFunc(grpcCutGrace, c.cut)
		if c.state.CompareAndSwap(s, s|cutAsked) {
			return
		}
		c.grace.Stop()
	}
}

// cut cancels the backend's call, once.
func (c *grpcCut) cut() {
	for {
		s := c.state.Load()
		if s&cutDone != 0 {
			return
		}
		if c.state.CompareAndSwap(s, s|cutDone) {
			c.end()
			return
		}
	}
}

// stop lets go of the grace timer when the response is over.
func (c *grpcCut) stop() {
	if s := c.state.Load(); s&cutAsked != 0 && c.grace != nil {
		c.grace.Stop()
	}
}

// Read passes the body on up to the cut: bytes read after it are dropped,
// and those after the end of the message a limit struck in.
func (c *grpcCut) Read(p []byte) (int, error) {
	if c.state.Load()&cutDone != 0 {
		return 0, errGRPCCut
	}
	n, err := c.body.Read(p)
	whole := c.follow(p[:n]) // bytes up to the first message end, or -1
	for {
		s := c.state.Load()
		switch {
		case s&cutDone != 0:
			return 0, errGRPCCut // cut while reading: these bytes are past it
		case s&cutAsked != 0 && whole >= 0:
			if c.state.CompareAndSwap(s, s|cutDone) {
				c.grace.Stop()
				c.end()
				return whole, nil
			}
		default:
			next := s &^ cutMidMessage
			if c.left > 0 || c.got > 0 {
				next |= cutMidMessage
			}
			if c.state.CompareAndSwap(s, next) {
				return n, err
			}
		}
	}
}

// follow reads p's share of the messages' framing and returns how many of
// p's bytes lead up to the first end of a message in it, or -1 if none
// ends in it (or p is empty). What was read before p ended inside a message
// or between two.
func (c *grpcCut) follow(p []byte) (whole int) {
	whole = -1
	i := 0
	for i < len(p) {
		if c.left > 0 {
			n := uint64(len(p) - i)
			if n > c.left {
				n = c.left
			}
			c.left -= n
			i += int(n)
		} else {
			c.prefix[c.got] = p[i]
			c.got++
			i++
			if c.got < len(c.prefix) {
				continue
			}
			c.got = 0
			c.left = uint64(binary.BigEndian.Uint32(c.prefix[1:]))
		}
		if c.left == 0 && c.got == 0 && whole < 0 {
			whole = i
		}
	}
	return whole
}

// Close closes the body.
func (c *grpcCut) Close() error { return c.body.Close() }
