package leastconn

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"
)

// Overload protection: max_conns caps the requests one backend holds at
// once, and a request that finds every usable backend full waits in the
// pool's FIFO queue (HAProxy's maxconn and queue). A slot that frees goes
// straight to the oldest waiter: the releasing request keeps the backend's
// active count as it is and hands the backend over on the waiter's channel,
// so no waiter polls and no herd wakes. The queue's lock is taken only
// while somebody waits: a release reads one atomic count first.

// Defaults of the queue, also documented in docs/configuration.md.
const (
	DefaultQueueSize    = 1024
	DefaultQueueTimeout = 10 * time.Second
)

var (
	errQueueFull    = errors.New("lbpool: every backend is full and the queue is full")
	errQueueTimeout = errors.New("lbpool: every backend is full and the wait in the queue timed out")
)

// queue is a pool's FIFO of requests waiting for a slot.
type queue struct {
	waiting atomic.Int64 // len of the list; read without the lock on every release

	mu   sync.Mutex
	head *waiter // oldest
	tail *waiter

	queued   atomic.Uint64 // requests that waited, ever
	timeouts atomic.Uint64 // requests that waited past queue_timeout
}

// waiter is one queued request. slot receives the backend whose slot was
// handed over (its active count already raised), or nil when a backend
// became usable and the waiter should pick again.
type waiter struct {
	slot       chan *Backend
	prev, next *waiter
	listed     bool // in the list; guarded by queue.mu
}

// push appends w, unless the queue already holds max waiters.
func (q *queue) push(w *waiter, max int) bool {
	q.mu.Lock()
	defer q.mu.Unlock()
	if int(q.waiting.Load()) >= max {
		return false
	}
	w.prev, w.next = q.tail, nil
	if q.tail != nil {
		q.tail.next = w
	} else {
		q.head = w
	}
	q.tail = w
	w.listed = true
	q.waiting.Add(1)
	return true
}

// unlinkLocked takes w out of the list.
func (q *queue) unlinkLocked(w *waiter) {
	if w.prev != nil {
		w.prev.next = w.next
	} else {
		q.head = w.next
	}
	if w.next != nil {
		w.next.prev = w.prev
	} else {
		q.tail = w.prev
	}
	w.prev, w.next, w.listed = nil, nil, false
	q.waiting.Add(-1)
}

// leave takes w out of the queue. When w was already handed a slot it
// returns that backend, which the caller must use or pass on.
func (q *queue) leave(w *waiter) *Backend {
	q.mu.Lock()
	listed := w.listed
	if listed {
		q.unlinkLocked(w)
	}
	q.mu.Unlock()
	if listed {
		return nil
	}
	return <-w.slot // sent under the lock that unlisted w: already there
}

// handOff gives b's slot (counted in b.active) to the oldest waiter; false
// when nobody waits.
func (q *queue) handOff(b *Backend) bool {
	q.mu.Lock()
	defer q.mu.Unlock()
	w := q.head
	if w == nil {
		return false
	}
	q.unlinkLocked(w)
	w.slot <- b // 1-buffered and sent once: never blocks
	return true
}

// wakeAll tells every waiter to pick again: a backend became usable (up,
// ready, back from ejection), so there may be room the releases will not
// announce.
func (q *queue) wakeAll() {
	if q.waiting.Load() == 0 {
		return
	}
	q.mu.Lock()
	defer q.mu.Unlock()
	for q.head != nil {
		w := q.head
		q.unlinkLocked(w)
		w.slot <- nil
	}
}

// take raises b's active count if b has room, for a backend with a cap.
func (b *Backend) take() bool {
	if b.flags.Load()&flagCapped == 0 {
		b.active.Add(1)
		return true
	}
	max := b.maxConns.Load()
	for {
		n := b.active.Load()
		if n >= max {
			return false
		}
		if b.active.CompareAndSwap(n, n+1) {
			return true
		}
	}
}

// full tells whether b holds as many requests as its cap allows (only
// asked of a backend with flagCapped).
func (b *Backend) full() bool { return b.active.Load() >= b.maxConns.Load() }

// setMaxConns sets b's cap; 0 lifts it.
func (b *Backend) setMaxConns(n int) {
	b.maxConns.Store(int64(n))
	if n > 0 {
		b.setFlag(flagCapped)
	} else {
		b.clearFlag(flagCapped)
	}
	b.pool.queue.wakeAll() // a raised or lifted cap makes room
}

// release ends a request's hold on b. With a cap and somebody queued, the
// slot goes to the oldest waiter instead of back to the count.
func (b *Backend) release() {
	if b.flags.Load()&flagCapped == 0 {
		b.active.Add(-1)
		return
	}
	q := &b.pool.queue
	if q.waiting.Load() > 0 && b.flags.Load()&flagsUnavailable == 0 && q.handOff(b) {
		return
	}
	b.active.Add(-1)
	// A request may have queued between the count read above and the
	// decrement, after its own pick saw b full: it raised the count of
	// waiters before picking again, so one of the two sees the other.
	for q.waiting.Load() > 0 && b.flags.Load()&flagsUnavailable == 0 && b.take() {
		if q.handOff(b) {
			return
		}
		b.active.Add(-1)
	}
}

// queueSettings are a pool's queue options, resolved.
type queueSettings struct {
	size    int
	timeout time.Duration
}

// wait queues the request until a backend of v has a slot for it, and
// returns that backend's index in v, already holding the slot. It returns
// an error when the queue is full or the wait timed out, and -1 with no
// error when the client went away.
func (l *lease) wait(ctx context.Context, v *view, tried *triedSet) (int, error) {
	return l.queueFor(ctx, v, tried, l.spec.queue.timeout, true)
}

// queueFor is wait with a timeout. A request that is not queued for a slot
// (queued false: it waits under try_duration for a backend to come back)
// is not counted as queued, and returns errTryWoken when woken by a status
// change or when the timeout passed, to try every backend again.
func (l *lease) queueFor(ctx context.Context, v *view, tried *triedSet, timeout time.Duration, queued bool) (int, error) {
	q := &l.pool.queue
	w := &waiter{slot: make(chan *Backend, 1)}
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	for {
		if !q.push(w, l.spec.queue.size) {
			return -1, errQueueFull
		}
		if queued {
			q.queued.Add(1)
		}
		// listed first, picked again second: a slot freed meanwhile is
		// either seen here or handed to us (see release)
		if i := l.pick(v, tried); i >= 0 {
			if b := q.leave(w); b != nil {
				b.release()
			}
			return i, nil
		}
		var b *Backend
		select {
		case b = <-w.slot:
		case <-ctx.Done():
			if b := q.leave(w); b != nil {
				b.release() // handed over as we left: pass it on
			}
			return -1, nil
		case <-timer.C:
			if b := q.leave(w); b != nil {
				if i := v.indexOf(b); i >= 0 {
					return i, nil // it came just in time
				}
				b.release()
			}
			if !queued {
				return -1, errTryWoken
			}
			q.timeouts.Add(1)
			return -1, errQueueTimeout
		}
		if b != nil {
			if i := v.indexOf(b); i >= 0 {
				return i, nil
			}
			b.release() // a member of a newer view: not ours to use
		}
		if i := l.pick(v, tried); i >= 0 {
			return i, nil
		}
		if !queued {
			return -1, errTryWoken
		}
		q.queued.Add(^uint64(0)) // queued again below: counted once
	}
}

// indexOf returns b's index in v, or -1.
func (v *view) indexOf(b *Backend) int {
	for i, x := range v.backends {
		if x == b {
			return i
		}
	}
	return -1
}

// provisionOverload resolves the queue and ejection options into spec.
func (h *Handler) provisionOverload(spec *poolSpec) error {
	spec.maxConns = h.MaxConns
	spec.queue = queueSettings{size: h.QueueSize, timeout: time.Duration(h.QueueTimeout)}
	setDefault(&spec.queue.size, DefaultQueueSize)
	setDefault(&spec.queue.timeout, DefaultQueueTimeout)
	if spec.queue.timeout < 0 {
		return fmt.Errorf("lbpool: queue_timeout must be positive")
	}
	o, err := h.outlierSpec()
	if err != nil {
		return err
	}
	spec.outlier = o
	return nil
}

// someFull tells whether a backend of v not in tried could take the
// request but for its cap: then the request queues rather than failing.
// Asked only when the pick found nothing.
func (v *view) someFull(tried *triedSet) bool {
	for i, b := range v.backends {
		f := b.flags.Load()
		if f&flagCapped != 0 && f&flagsUnavailable == 0 && !tried.has(i) {
			return true
		}
	}
	return false
}
