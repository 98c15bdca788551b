package leastconn

import (
	"math/rand/v2"
	"time"
)

// Selection is weighted least connections: the pick minimises
// (active+1)/weight over backends that are up and ready. In an idle pool
// ties rotate round-robin: the scan starts just after the backend picked
// last, so n backends are visited in turn, and a backend that is out does
// not double the share of its neighbour (as a counter that skips over it
// would). The chosen backend's active count is raised at once,
// before the request is sent, so concurrent picks see it.
//
// The pick takes no lock and allocates nothing: per backend it reads three
// atomics (flags, active count, and the weight scaled by the learned weight
// of load_reports) and, only while a slow start is running, the ramp start. A backend with a cap (max_conns, flagCapped) that is full
// is skipped, and its count is raised only while below the cap.

// weightScale is the fixed-point scale of effective weights, so slow start
// can scale a weight by a fraction with integer arithmetic.
const weightScale = 1000

// triedSet marks the backends (by index in the handler's list) already tried
// for one request. Pools of up to 64 backends need no allocation.
//
// It is also the rest of one request's pick state: the hash of its key
// under a hashing policy, and whether the last pick passed over the key's
// first choice.
type triedSet struct {
	small   uint64
	big     []uint64
	key     uint64 // the request's key hash (policy_hash.go)
	keyed   bool   // key is set: the request has a non-empty key
	spilled bool   // the last pick is not the key's first choice
}

func newTriedSet(n int) triedSet {
	if n <= 64 {
		return triedSet{}
	}
	return triedSet{big: make([]uint64, (n+63)/64)}
}

func (t *triedSet) has(i int) bool {
	if t.big == nil {
		return t.small&(1<<uint(i)) != 0
	}
	return t.big[i/64]&(1<<uint(i%64)) != 0
}

func (t *triedSet) add(i int) {
	if t.big == nil {
		t.small |= 1 << uint(i)
		return
	}
	t.big[i/64] |= 1 << uint(i%64)
}

// remove lets i be picked again.
func (t *triedSet) remove(i int) {
	if t.big == nil {
		t.small &^= 1 << uint(i)
		return
	}
	t.big[i/64] &^= 1 << uint(i%64)
}

// Pools of up to exactScanMax backends are scanned whole: the pick is exact.
// Larger pools sample sampleSize backends at random and take the best of
// them (Envoy's least-request "choices" in the weighted form), so the cost
// stays flat however large the pool grows; if none of the sampled backends
// can take traffic, the full scan decides.
const (
	exactScanMax = 64
	sampleSize   = 4
)

// view is the immutable member list a handler picks from. The request
// path reads it with one atomic load (lease.view) and keeps it for all of
// its tries, so indices (the tried set, the rotation) stay valid while
// discovery swaps in a new view. Backends are ordered by priority group;
// groups holds the end index of each group, lowest priority first. A pool
// without SRV priorities has one group.
type view struct {
	backends []*Backend
	groups   []int
	sticky   *stickyTable // cookie values of the backends; nil without sticky
}

// pick chooses a backend of v not in tried, raises its active count and
// returns its index in v, or -1 when no backend can take traffic. Only the
// first priority group with a backend that can take traffic is used.
func (l *lease) pick(v *view, tried *triedSet) int {
	if l.kind != kindLeastConn {
		return l.pickPolicy(v, tried)
	}
	return l.pickLeastConn(v, tried)
}

// pickPolicy is the pick of every policy but least_conn: the hashing ones
// fall back to their fallback policy for a request without a key.
func (l *lease) pickPolicy(v *view, tried *triedSet) int {
	kind := l.kind
	if kind == kindHash && !tried.keyed {
		kind = l.fallback
	}
	switch kind {
	case kindLeastConn:
		return l.pickLeastConn(v, tried)
	case kindLeastTime:
		return l.pickLeastTime(v, tried)
	}
	bs, lo := v.backends, 0
	for _, hi := range v.groups {
		if hi == lo {
			continue // an empty group (no members found yet)
		}
		i := -1
		switch kind {
		case kindHash:
			i, tried.spilled = l.pickHash(bs, lo, hi, tried, tried.key)
		case kindRoundRobin:
			i = l.pickRoundRobin(bs, lo, hi, tried)
		case kindWeightedRoundRobin:
			i = l.pickWeightedRoundRobin(bs, lo, hi, tried)
		case kindRandom:
			i = pickRandom(bs, lo, hi, tried)
		case kindRandomChoose:
			i = l.pickRandomChoose(bs, lo, hi, tried)
		case kindFirst:
			i = pickFirst(bs, lo, hi, tried)
		}
		if i >= 0 {
			return i
		}
		lo = hi
	}
	return -1
}

// pickLeastConn is least_conn's pick.
func (l *lease) pickLeastConn(v *view, tried *triedSet) int {
	lo := 0
	for _, hi := range v.groups {
		if hi-lo > exactScanMax {
			if i := pickSampled(v.backends[lo:hi], lo, tried, sampleSize); i >= 0 {
				return i
			}
		}
		if i := l.pickExact(v.backends, lo, hi, tried); i >= 0 {
			return i
		}
		lo = hi
	}
	return -1
}

// The three scans below (exact, tied, sampled) repeat the few lines that
// read a backend's flags, weight and load: a shared helper is not inlined
// (too costly for the compiler's budget), and the call costs more than the
// rest of a 3-backend pick.

// pickExact scans the backends bs[lo:hi]. When the pool is idle (nothing in flight,
// as with sequential requests) ties go round-robin: the scan starts just
// after the last pick, and the first of the tied wins. Under load, a tie is
// broken at random among the tied instead, so concurrent picks do not all
// write one shared rotation counter (on two cores that shared write costs
// more than the rest of the pick).
func (l *lease) pickExact(bs []*Backend, lo, hi int, tried *triedSet) int {
	start := l.scanStart(lo, hi)
	first, ties := -1, 0
	idle := true
	var bestLoad, bestWeight, now int64
	for i := lo; i < hi; i++ {
		j := start + i - lo
		if j >= hi {
			j -= hi - lo
		}
		b := bs[j]
		f := b.flags.Load()
		if f&flagsUnavailable != 0 || tried.has(j) || f&flagCapped != 0 && b.full() {
			continue
		}
		w := b.scaled.Load()
		if f&flagRamp != 0 {
			w = b.rampedWeight(w, &now)
		}
		load := b.active.Load() + 1
		if load != 1 {
			idle = false
		}
		// compare load/w with bestLoad/bestWeight without dividing
		switch lhs, rhs := load*bestWeight, bestLoad*w; {
		case first < 0 || lhs < rhs:
			first, ties = j, 1
			bestLoad, bestWeight = load, w
		case lhs == rhs:
			ties++
		}
	}
	if first < 0 {
		return -1
	}
	chosen := first
	switch {
	case idle:
		l.rotateAfter(first, lo, hi)
	case ties > 1:
		chosen = nthTied(bs, lo, hi, tried, start, rand.N(ties), bestLoad, bestWeight, first)
	}
	if !bs[chosen].take() {
		// filled up since the scan (max_conns): the next scan skips it
		return l.pickExact(bs, lo, hi, tried)
	}
	return chosen
}

// scanStart is where an exact scan of [lo, hi) starts: just after the last
// idle pick.
func (l *lease) scanStart(lo, hi int) int {
	start := int(l.next.Load()) // in [lo, hi) but for a view that changed
	if start < lo || start >= hi {
		start = lo
	}
	return start
}

// rotateAfter makes the next idle scan of [lo, hi) start after chosen.
func (l *lease) rotateAfter(chosen, lo, hi int) {
	next := chosen + 1
	if next == hi {
		next = lo
	}
	l.next.Store(uint64(next))
}

// nthTied finds the k-th backend (in scan order) whose load/weight equals
// load/weight; counts may have moved since the scan, so it falls back to def.
func nthTied(bs []*Backend, lo, hi int, tried *triedSet, start, k int, load, weight int64, def int) int {
	var now int64
	for i := lo; i < hi; i++ {
		j := start + i - lo
		if j >= hi {
			j -= hi - lo
		}
		b := bs[j]
		f := b.flags.Load()
		if f&flagsUnavailable != 0 || tried.has(j) || f&flagCapped != 0 && b.full() {
			continue
		}
		w := b.scaled.Load()
		if f&flagRamp != 0 {
			w = b.rampedWeight(w, &now)
		}
		if (b.active.Load()+1)*weight == load*w {
			if k == 0 {
				return j
			}
			k--
		}
	}
	return def
}

// pickSampled takes the best of draws backends drawn at random from bs,
// which starts at index lo of the view; it returns a view index. It is
// least_conn's pick in large pools (draws = sampleSize) and random_choose's.
func pickSampled(bs []*Backend, lo int, tried *triedSet, draws int) int {
	n := uint64(len(bs))
	best := -1
	var bestLoad, bestWeight, now int64
	var r uint64
	for k := range draws {
		if k%2 == 0 {
			r = rand.Uint64() // two draws of 32 bits each
		} else {
			r <<= 32
		}
		j := int((r >> 32) * n >> 32) // uniform in [0, n) without division
		b := bs[j]
		f := b.flags.Load()
		if f&flagsUnavailable != 0 || tried.has(lo+j) || f&flagCapped != 0 && b.full() {
			continue
		}
		w := b.scaled.Load()
		if f&flagRamp != 0 {
			w = b.rampedWeight(w, &now)
		}
		load := b.active.Load() + 1
		if best < 0 || load*bestWeight < bestLoad*w {
			best, bestLoad, bestWeight = j, load, w
		}
	}
	if best < 0 {
		return -1
	}
	if !bs[best].take() {
		return -1 // filled up since the scan: the full scan decides
	}
	return lo + best
}

// rampedWeight scales w during slow start: linearly from 10% of the weight
// when the backend came up to 100% when the window ends:
//
//	effective = weight × (0.1 + 0.9 × elapsed/window)
//
// Once the window has passed it clears the ramp flag, so later picks skip
// the clock read.
func (b *Backend) rampedWeight(w int64, now *int64) int64 {
	if *now == 0 {
		*now = time.Now().UnixNano()
	}
	window := b.rampLen.Load()
	elapsed := *now - b.rampFrom.Load()
	if window <= 0 || elapsed >= window {
		for {
			f := b.flags.Load()
			if f&flagRamp == 0 || b.flags.CompareAndSwap(f, f&^flagRamp) {
				return w
			}
		}
	}
	if elapsed < 0 {
		elapsed = 0
	}
	permille := 100 + 900*elapsed/window
	return w * permille / 1000
}

// rampPercent reports the slow-start share (10-100) for stats, or 0 when the
// backend is not ramping.
func (b *Backend) rampPercent(now time.Time) float64 {
	if b.flags.Load()&flagRamp == 0 {
		return 0
	}
	window := b.rampLen.Load()
	elapsed := now.UnixNano() - b.rampFrom.Load()
	if window <= 0 || elapsed >= window {
		return 0
	}
	return 10 + 90*float64(elapsed)/float64(window)
}
