package leastconn

import "math/rand/v2"

// The random policies: random takes any usable backend, random_choose n
// the least loaded (active requests for its weight) of n distinct backends
// drawn at random, the "power of n choices".

// pickRandom: a backend drawn at random; when it cannot take the request,
// the next usable one after it.
func pickRandom(bs []*Backend, lo, hi int, tried *triedSet) int {
	return takeFrom(bs, lo, hi, lo+rand.N(hi-lo), tried)
}

// pickRandomChoose draws n distinct backends and takes the least loaded
// usable one; when none drawn is usable, pickRandom's. With n at least
// the group's size it is least_conn's pick; groups over 64 backends draw
// with replacement (least_conn's sampled pick), where a repeat is rare.
func (l *lease) pickRandomChoose(bs []*Backend, lo, hi int, tried *triedSet) int {
	n := hi - lo
	switch {
	case l.choose >= n:
		return l.pickExact(bs, lo, hi, tried)
	case n > 64:
		if i := pickSampled(bs[lo:hi], lo, tried, l.choose); i >= 0 {
			return i
		}
		return pickRandom(bs, lo, hi, tried)
	}
	var drawn uint64 // offsets drawn so far
	best := -1
	var bestLoad, bestWeight, now int64
	for k := 0; k < l.choose; {
		j := rand.N(n)
		if drawn&(1<<j) != 0 {
			continue
		}
		drawn |= 1 << j
		k++
		if b := bs[lo+j]; usable(b, lo+j, tried) {
			load, w := b.active.Load()+1, b.effectiveWeight(&now)
			if best < 0 || load*bestWeight < bestLoad*w {
				best, bestLoad, bestWeight = lo+j, load, w
			}
		}
	}
	if best >= 0 && bs[best].take() {
		return best
	}
	return pickRandom(bs, lo, hi, tried)
}

// effectiveWeight is b's weight in effect for the picks (weightScale
// fixed point), slow start included.
func (b *Backend) effectiveWeight(now *int64) int64 {
	w := b.scaled.Load()
	if b.flags.Load()&flagRamp != 0 {
		w = b.rampedWeight(w, now)
	}
	return w
}
