package leastconn

import "math/rand/v2"

// The random policies: random takes any usable backend, random_choose n
// the least loaded (active requests for its weight) of n drawn at random,
// the "power of n choices" (the draw is least_conn's sampled pick,
// select.go).

// pickRandom: a backend drawn at random; when it cannot take the request,
// the next usable one after it.
func pickRandom(bs []*Backend, lo, hi int, tried *triedSet) int {
	return takeFrom(bs, lo, hi, lo+rand.N(hi-lo), tried)
}

// pickRandomChoose draws n backends and takes the least loaded usable one;
// when none drawn is usable, a usable one from a random start.
func (h *Handler) pickRandomChoose(bs []*Backend, lo, hi int, tried *triedSet) int {
	if i := pickSampled(bs[lo:hi], lo, tried, h.choose); i >= 0 {
		return i
	}
	return pickRandom(bs, lo, hi, tried)
}
