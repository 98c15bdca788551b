package leastconn

import (
	"math"
	"math/bits"
	"math/rand/v2"
	"sync/atomic"
	"time"
)

// The least_time policy (lb_policy least_time) picks the backend that
// minimises
//
//	cost = (active + 1) / effective weight × latency
//
// where latency is a peak-sensitive moving average of the backend's time to
// response headers (Finagle's and Linkerd's "peak EWMA"):
//
//   - a sample at or above the current estimate replaces it at once, so one
//     slow response is enough to move traffic away;
//   - a lower sample pulls the estimate toward it with a half-life of
//     latencyHalfLife/pullDownSpeed (4 ms) of elapsed time, not of
//     requests, so a fast backend's own brief peak is soon forgotten;
//   - while the backend has no request in flight the estimate decays toward
//     zero with a half-life of latencyHalfLife (64 ms), so a slow backend
//     that gets no traffic looks cheaper and cheaper until one request tries
//     it again; with a request in flight it does not decay (that request's
//     answer will tell), so a slow backend is probed one request at a time;
//   - an estimate older than latencyStale (512 ms), or none (a new,
//     discovered, recovered or long-idle backend), counts as the median of
//     the pool's fresh estimates while the backend is idle, and as more than
//     any estimate while it has a request in flight: it gets one request at
//     the pool's median cost, and more once it has answered, so it is
//     neither starved nor flooded.
//
// The pick reads no clock: elapsed time is measured on the pool's clock,
// which the responses of least_time handlers advance (Pool.clock, in
// milliseconds). A clock read per pick would cost more than the pick.
// Latencies are compared with three significant bits (steps of 12.5% to
// 25%), so backends of about the same speed tie, and ties and idle pools
// rotate as least_conn's do.

// Selection policies (the lb_policy option).
const (
	PolicyLeastConn = "least_conn"
	PolicyLeastTime = "least_time"
)

const (
	// latencyHalfLife is 2^halfLifeShift milliseconds: 64 ms, longer than a
	// slow response (so one is not forgotten while the next is in flight),
	// short enough that a fast backend's occasional peak fades quickly.
	halfLifeShift   = 6
	latencyHalfLife = 1 << halfLifeShift
	// pullDownSpeed: lower samples pull the estimate down with a half-life
	// of latencyHalfLife / pullDownSpeed (4 ms): short, since under load a
	// fast backend answers many times a millisecond and its own peaks (a
	// moment without a core) should not keep traffic away for long.
	pullDownSpeed = 16
	// latencyStale: an estimate not updated for this long (8 half-lives,
	// 512 ms) is replaced by the pool's median.
	latencyStale = 8 * latencyHalfLife
	// estimateBits of a peakEWMA word hold the estimate in microseconds
	// (at most 67 s); the bits above hold the millisecond it was updated.
	estimateBits = 26
	estimateMax  = 1<<estimateBits - 1
	// latencyDigits significant bits of a latency are compared.
	latencyDigits = 3
)

// epoch is the zero of the pool clocks.
var epoch = time.Now()

// observe records a try's time to response headers d, sent at start.
// With leastTime it also feeds the peak-EWMA least_time picks by.
func (b *Backend) observe(start time.Time, d time.Duration, leastTime bool) {
	b.latency.observe(d)
	b.responseTime.Observe(d.Seconds())
	if leastTime {
		now := int64(start.Sub(epoch)+d) / int64(time.Millisecond)
		b.peak.observe(d, now)
		b.pool.advanceClock(now)
	}
}

// advanceClock moves the pool's clock to now (milliseconds since epoch). It
// writes at most once a millisecond, so responses on several cores rarely
// contend for the line the picks read.
func (p *Pool) advanceClock(now int64) {
	if now > p.clock.Load() {
		p.clock.Store(now)
	}
}

// peakEWMA is one backend's latency estimate in one atomic word: the
// estimate in microseconds (low estimateBits) and the millisecond of the
// pool clock it was last updated at. Zero means no estimate.
type peakEWMA struct{ w atomic.Uint64 }

func packEstimate(us, now int64) uint64 {
	return uint64(now)<<estimateBits | uint64(us)
}

// decayLatency halves v every latencyHalfLife of dt milliseconds: a shift
// for the whole half-lives, a table for the rest.
func decayLatency(v, dt int64) int64 {
	k := dt >> halfLifeShift
	if k >= estimateBits {
		return 0
	}
	return (v >> k) * int64(decayFraction[dt&(latencyHalfLife-1)]) >> 16
}

// decayFraction[i] is 2^(-i/latencyHalfLife) in 16-bit fixed point.
var decayFraction = func() (t [latencyHalfLife]uint32) {
	for i := range t {
		t[i] = uint32(math.Round(65536 * math.Exp2(-float64(i)/latencyHalfLife)))
	}
	return t
}()

// observe takes a sample d measured at now: a sample at or above the
// estimate replaces it; a lower one pulls it down by the share of a
// pull-down half-life (latencyHalfLife/pullDownSpeed) that has passed since
// the last sample, so a fast backend's own brief peak (a pause, a moment of
// scheduling) is forgotten within milliseconds of its next fast answers.
// A slow backend sends no fast answers: its estimate falls only by its idle
// decay, or at once when it has turned fast.
func (e *peakEWMA) observe(d time.Duration, now int64) {
	us := min(max(int64(d/time.Microsecond), 1), estimateMax)
	for {
		old := e.w.Load()
		next := us
		if dt := now - int64(old>>estimateBits); old != 0 && dt < latencyStale {
			if est := int64(old & estimateMax); us < est {
				k := max(dt, 0) * pullDownSpeed
				next = decayLatency(est, k) + us - decayLatency(us, k)
			}
		}
		if e.w.CompareAndSwap(old, packEstimate(next, now)) {
			return
		}
	}
}

// at returns the estimate at now rounded to latencyDigits significant bits,
// or 0 when there is none or it is stale. The estimate decays only while the
// backend is quiet: a busy one (requests in flight) keeps it as its last
// response left it, since its next response will say more than the clock.
// So a slow backend gets one probe at a time: while the probe is out its
// cost is (1+1) × its slow estimate, and only once the probe is back and
// the estimate has decayed again below the others' cost is it tried anew.
func (e *peakEWMA) at(now int64, busy bool) int64 {
	x := e.w.Load()
	dt := max(now-int64(x>>estimateBits), 0) // a response may be newer than now
	if x == 0 || dt >= latencyStale {
		return 0
	}
	v := int64(x & estimateMax)
	if !busy {
		// decayLatency without its range check: dt is under latencyStale here
		v = (v >> (dt >> halfLifeShift)) * int64(decayFraction[dt&(latencyHalfLife-1)]) >> 16
	}
	v |= 1
	s := max(bits.Len64(uint64(v))-latencyDigits, 0)
	return v >> s << s
}

// unknownBusyLatency is what a backend without a fresh estimate counts as
// while it has a request in flight: more than any estimate, so it takes one
// request at a time until it has answered (a new backend is not flooded
// before anyone knows its speed), and among such backends the one with the
// fewest requests in flight wins. A power of two, so costs stay exact.
const unknownBusyLatency = 1 << estimateBits

// latencyOf is the latency a pick counts for b with load-1 requests in
// flight: its estimate; without a fresh one, the median of the fresh
// estimates in group (at most the first exactScanMax) while b is idle,
// unknownBusyLatency while it is busy. *median caches the median for one
// pick; it is -1 until computed. With no fresh estimate in the pool an idle
// backend counts as 1 µs, and the pick is least_conn's.
func latencyOf(b *Backend, load int64, group []*Backend, now int64, median *int64) int64 {
	if lat := b.peak.at(now, load != 1); lat != 0 {
		return lat
	}
	if load != 1 {
		return unknownBusyLatency
	}
	if *median < 0 {
		var buf [exactScanMax]int64
		n := 0
		for _, g := range group {
			if v := g.peak.at(now, g.active.Load() != 0); v != 0 {
				// insertion sort: this runs only while a backend has no estimate
				i := n
				for ; i > 0 && buf[i-1] > v; i-- {
					buf[i] = buf[i-1]
				}
				buf[i] = v
				if n++; n == len(buf) {
					break
				}
			}
		}
		*median = 0
		if n > 0 {
			*median = buf[n/2]
		}
	}
	return max(*median, 1)
}

// pickLeastTime is pick under least_time: the same priority groups, sampling
// and fallback, with cost = load × latency.
func (l *lease) pickLeastTime(v *view, tried *triedSet) int {
	now := l.pool.clock.Load()
	lo := 0
	for _, hi := range v.groups {
		if hi-lo > exactScanMax {
			if i := l.pickTimeSampled(v.backends[lo:hi], lo, tried, now); i >= 0 {
				return i
			}
		}
		if i := l.pickTimeExact(v.backends, lo, hi, tried, now); i >= 0 {
			return i
		}
		lo = hi
	}
	return -1
}

// The scans below repeat pickExact's, nthTied's and pickSampled's reading of
// a backend (see the note there) and add its latency. A cost load×latency
// has at most 23 significant bits and an effective weight at most 28
// (10000 × a learned weight of at most 16, in thousandths), so the float64
// cross products are exact and ties are found exactly.

// pickTimeExact is pickExact minimising load × latency / weight.
func (l *lease) pickTimeExact(bs []*Backend, lo, hi int, tried *triedSet, now int64) int {
	start := l.scanStart(lo, hi)
	first, ties := -1, 0
	idle := true
	median := int64(-1)
	var bestCost, bestWeight float64
	var wall int64
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
			w = b.rampedWeight(w, &wall)
		}
		load := b.active.Load() + 1
		if load != 1 {
			idle = false
		}
		cost, fw := float64(load*latencyOf(b, load, bs[lo:hi], now, &median)), float64(w)
		switch lhs, rhs := cost*bestWeight, bestCost*fw; {
		case first < 0 || lhs < rhs:
			first, ties = j, 1
			bestCost, bestWeight = cost, fw
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
		chosen = nthTiedTime(bs, lo, hi, tried, start, rand.N(ties), bestCost, bestWeight, first, now)
	}
	if !bs[chosen].take() {
		// filled up since the scan (max_conns): the next scan skips it
		return l.pickTimeExact(bs, lo, hi, tried, now)
	}
	return chosen
}

// nthTiedTime is nthTied for least_time costs.
func nthTiedTime(bs []*Backend, lo, hi int, tried *triedSet, start, k int, cost, weight float64, def int, now int64) int {
	var wall int64
	median := int64(-1)
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
			w = b.rampedWeight(w, &wall)
		}
		load := b.active.Load() + 1
		if float64(load*latencyOf(b, load, bs[lo:hi], now, &median))*weight == cost*float64(w) {
			if k == 0 {
				return j
			}
			k--
		}
	}
	return def
}

// pickTimeSampled is pickSampled minimising load × latency / weight.
func (l *lease) pickTimeSampled(bs []*Backend, lo int, tried *triedSet, now int64) int {
	n := uint64(len(bs))
	best := -1
	median := int64(-1)
	var bestCost, bestWeight float64
	var wall int64
	for range sampleSize / 2 {
		r := rand.Uint64()
		for _, half := range [2]uint64{r >> 32, r & 0xffffffff} {
			j := int(half * n >> 32)
			b := bs[j]
			f := b.flags.Load()
			if f&flagsUnavailable != 0 || tried.has(lo+j) || f&flagCapped != 0 && b.full() {
				continue
			}
			w := b.scaled.Load()
			if f&flagRamp != 0 {
				w = b.rampedWeight(w, &wall)
			}
			load := b.active.Load() + 1
			cost, fw := float64(load*latencyOf(b, load, bs, now, &median)), float64(w)
			if best < 0 || cost*bestWeight < bestCost*fw {
				best, bestCost, bestWeight = j, cost, fw
			}
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
