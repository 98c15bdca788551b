package leastconn

// The policies that follow an order: round_robin, weighted_round_robin and
// first. Each scans a priority group from a starting backend and takes the
// first usable one (up, ready, not ejected, not tried, not full), so a
// backend that is out passes its turn to the next.

// usable reports whether backend j of a view can take a new request.
func usable(b *Backend, j int, tried *triedSet) bool {
	f := b.flags.Load()
	return f&flagsUnavailable == 0 && !tried.has(j) && (f&flagCapped == 0 || !b.full())
}

// takeFrom scans bs[lo:hi] from start, wrapping, and takes the first usable
// backend; -1 when none is.
func takeFrom(bs []*Backend, lo, hi, start int, tried *triedSet) int {
	for i := lo; i < hi; i++ {
		j := start + i - lo
		if j >= hi {
			j -= hi - lo
		}
		if b := bs[j]; usable(b, j, tried) && b.take() {
			return j
		}
	}
	return -1
}

// pickRoundRobin: each request takes the next backend in turn.
func (l *lease) pickRoundRobin(bs []*Backend, lo, hi int, tried *triedSet) int {
	n := uint64(hi - lo)
	return takeFrom(bs, lo, hi, lo+int((l.rr.Add(1)-1)%n), tried)
}

// pickWeightedRoundRobin: each backend takes as many turns in a row of the
// rotation as its weight (reverse_proxy's weighted_round_robin, with
// lbpool's weights).
func (l *lease) pickWeightedRoundRobin(bs []*Backend, lo, hi int, tried *triedSet) int {
	var total int64
	for j := lo; j < hi; j++ {
		total += bs[j].weight.Load()
	}
	if total <= 0 {
		return -1
	}
	pos := int64((l.rr.Add(1) - 1) % uint64(total))
	start := lo
	for j := lo; j < hi; j++ {
		if pos -= bs[j].weight.Load(); pos < 0 {
			start = j
			break
		}
	}
	return takeFrom(bs, lo, hi, start, tried)
}

// pickFirst: the first usable backend in the order they are listed.
func pickFirst(bs []*Backend, lo, hi int, tried *triedSet) int {
	return takeFrom(bs, lo, hi, lo, tried)
}
