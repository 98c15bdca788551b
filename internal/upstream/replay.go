package upstream

import (
	"errors"
	"io"
	"sync"

	"golang.org/x/net/http2"
)

// ReplayLimit is how much of a request body is kept for sending it again.
const ReplayLimit = 64 << 10

// ErrNotKept: a try needs the request body from its start, and more of it
// than was kept has been read.
var ErrNotKept = errors.New("lbpool: request body larger than what is kept to send it again")

// ErrRefusedAgain: the backend refused the request's stream a second time
// within one try (see Replay.GetBody).
var ErrRefusedAgain = errors.New("lbpool: the backend refused the stream again")

// Replay keeps the first ReplayLimit bytes of a request body as they are
// read, so that a request an HTTP/2 backend refused before processing it
// (REFUSED_STREAM, a stream past a GOAWAY's last stream) can be sent
// again, to it or another backend. Each try reads the body from its start
// through its own reader; a reader left behind by a refused try may still
// be blocked reading the client (net/http's Transport writes the body from
// a goroutine of its own), so reads of the client are one at a time and
// each one's bytes are kept for every reader.
type Replay struct {
	body *RequestBody

	mu      sync.Mutex
	cond    sync.Cond
	kept    []byte
	through int64 // bytes of the body read through r (all of them, or r cannot replay)
	over    bool  // more than ReplayLimit was read: no reader may start anew
	reading bool  // a reader is reading the client
	end     error // the client's body ended (io.EOF) or failed
	gets    int   // GetBody calls within the current try
}

// Reset makes r the replay of body, with nothing read.
func (r *Replay) Reset(body *RequestBody) {
	r.body = body
	r.cond.L = &r.mu
}

// Replayable tells whether a new reader would read the body whole: every
// byte taken from the client went through r and was kept.
func (r *Replay) Replayable() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.body != nil && r.whole()
}

// whole: no byte of the body was read past r or lost to another reader.
// A read in progress (only ever through r) has counted its bytes in the
// body and not yet in r. Called with r.mu held.
func (r *Replay) whole() bool {
	return !r.over && (r.reading || r.body.n.Load() == r.through)
}

// Reader starts a try: a reader of the body from its start.
func (r *Replay) Reader() io.ReadCloser {
	r.mu.Lock()
	r.gets = 0
	r.mu.Unlock()
	return &replayReader{r: r}
}

// GetBody is the request's GetBody: net/http's Transport may send a
// refused stream again on its own once per try, on a new connection to the
// same backend; a second refusal comes back as ErrRefusedAgain, for
// another backend to take the request.
func (r *Replay) GetBody() (io.ReadCloser, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.gets++
	switch {
	case r.gets > 1:
		return nil, ErrRefusedAgain
	case !r.whole():
		return nil, ErrNotKept
	}
	return &replayReader{r: r}, nil
}

type replayReader struct {
	r    *Replay
	pos  int
	live bool // past the kept bytes: reads the client directly
}

func (rr *replayReader) Read(p []byte) (int, error) {
	r := rr.r
	r.mu.Lock()
	defer r.mu.Unlock()
	for {
		switch {
		case rr.pos < len(r.kept) && !rr.live:
			n := copy(p, r.kept[rr.pos:])
			rr.pos += n
			return n, nil
		case r.over && !rr.live:
			return 0, ErrNotKept // the bytes past the kept ones went to another reader
		case r.end != nil:
			return 0, r.end
		case !r.reading:
			return rr.readClient(p)
		}
		r.cond.Wait()
	}
}

// readClient reads the client's body, with r.mu held on entry and return.
func (rr *replayReader) readClient(p []byte) (int, error) {
	r := rr.r
	r.reading = true
	r.mu.Unlock()
	n, err := r.body.Read(p)
	r.mu.Lock()
	r.reading = false
	r.through += int64(n)
	r.cond.Broadcast()
	if n > 0 && !rr.live {
		if len(r.kept)+n <= ReplayLimit {
			r.kept = append(r.kept, p[:n]...)
			rr.pos += n
		} else {
			r.over, rr.live = true, true
		}
	}
	if err != nil {
		r.end = err
	}
	return n, err
}

// Close leaves the client's body open, as RequestBody does.
func (*replayReader) Close() error { return nil }

// IsRefused tells whether err says the backend refused a request before
// processing it: its stream was refused (REFUSED_STREAM, also when the
// Transport's own new try was refused again), so that it may be sent again.
func IsRefused(err error) bool {
	var se http2.StreamError
	return errors.Is(err, ErrRefusedAgain) || errors.As(err, &se) && se.Code == http2.ErrCodeRefusedStream
}
