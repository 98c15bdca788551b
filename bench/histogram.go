package main

import (
	"math/bits"
	"time"
)

// subBits sets the histogram's precision: 2^subBits buckets per power of two,
// so a recorded latency is off by under 1/64 (1.6%) of its value.
const subBits = 6

// histogramBuckets covers latencies up to 2^57 ns, far beyond any bound the
// load generator allows.
const histogramBuckets = 52 << subBits

// histogram counts raw per-request latencies in log-linear buckets. Each load
// worker owns one, so recording is an index and an increment, with no lock
// and no allocation.
type histogram struct {
	counts [histogramBuckets]uint64
	total  uint64
	sum    time.Duration
	max    time.Duration
}

// bucketOf returns the bucket of a latency in nanoseconds: values below
// 2^subBits have a bucket each; above, the bucket keeps the top subBits+1
// significant bits.
func bucketOf(ns uint64) int {
	if ns < 1<<subBits {
		return int(ns)
	}
	n := bits.Len64(ns) - subBits // >= 1
	m := ns >> (n - 1)            // in [2^subBits, 2^(subBits+1))
	return n<<subBits + int(m-1<<subBits)
}

// bucketRange returns the smallest value of a bucket and its width.
func bucketRange(i int) (low, width uint64) {
	if i < 1<<subBits {
		return uint64(i), 1
	}
	n := i >> subBits
	m := uint64(i&(1<<subBits-1)) + 1<<subBits
	return m << (n - 1), 1 << (n - 1)
}

func (h *histogram) record(d time.Duration) {
	if d < 0 {
		d = 0
	}
	i := bucketOf(uint64(d))
	if i >= histogramBuckets {
		i = histogramBuckets - 1
	}
	h.counts[i]++
	h.total++
	h.sum += d
	if d > h.max {
		h.max = d
	}
}

func (h *histogram) merge(o *histogram) {
	for i, c := range o.counts {
		h.counts[i] += c
	}
	h.total += o.total
	h.sum += o.sum
	h.max = max(h.max, o.max)
}

// quantile returns the latency under which a fraction q of the requests
// finished: the middle of the bucket holding the rank, capped at the maximum.
func (h *histogram) quantile(q float64) time.Duration {
	if h.total == 0 {
		return 0
	}
	rank := uint64(q*float64(h.total) + 0.5)
	rank = min(max(rank, 1), h.total)
	var seen uint64
	for i, c := range h.counts {
		seen += c
		if seen >= rank {
			low, width := bucketRange(i)
			return min(time.Duration(low+width/2), h.max)
		}
	}
	return h.max
}

func (h *histogram) mean() time.Duration {
	if h.total == 0 {
		return 0
	}
	return h.sum / time.Duration(h.total)
}
