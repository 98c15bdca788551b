package leastconn

import (
	"sort"
	"time"

	"go.uber.org/zap"
)

// A static backend that a reload removes while requests or streams to it
// are open leaves the way a member gone from DNS does: it stays in its
// pool as leaving (the pick skips it, the stats and metrics show it with
// its active count) until they end, then goes. Listed again meanwhile, it
// is the same backend, with the same count. stream_close_delay
// (streams.go) decides whether its streams end on their own or after a
// delay.

// leaveOrStop is called when the last handler holding b let it go: with
// requests open and its pool staying, b starts leaving and true is
// returned; otherwise b is taken out of the pool at once. Called with r.mu
// held.
func (r *registry) leaveOrStop(p *Pool, b *Backend, poolStays bool) (leaving bool) {
	if !poolStays || b.active.Load() <= 0 {
		delete(p.backends, b.addr.key)
		return false
	}
	b.setFlag(flagLeaving)
	if p.leaving == nil {
		p.leaving = make(map[*Backend]time.Time)
	}
	p.leaving[b] = time.Now()
	if !p.draining {
		p.draining = true
		go r.drainStatic(p)
	}
	return true
}

// drainStatic looks at the pool's leaving static backends every drainPoll
// and lets go of those whose requests have ended; it returns when none is
// left.
func (r *registry) drainStatic(p *Pool) {
	for {
		time.Sleep(drainPoll)
		now := time.Now()
		var gone []*Backend
		r.mu.Lock()
		for b, since := range p.leaving {
			if now.Sub(since) < drainSettle || b.active.Load() > 0 {
				continue
			}
			delete(p.leaving, b)
			if p.backends[b.addr.key] == b {
				delete(p.backends, b.addr.key)
			}
			gone = append(gone, b)
		}
		done := len(p.leaving) == 0
		if done {
			p.draining = false
		}
		log := p.spec.Load().logger
		r.mu.Unlock()
		r.stopBackends(p, gone)
		for _, b := range gone {
			log.Info("backend left", zap.String("pool", p.name), zap.String("backend", b.URL()),
				zap.Uint64("requests", b.requests.Load()))
		}
		if done {
			return
		}
	}
}

// stays is called when a leaving static backend is listed again: it is
// the same backend, with its open requests counted. Called with r.mu held.
func (p *Pool) stays(b *Backend) {
	if _, ok := p.leaving[b]; ok {
		delete(p.leaving, b)
		p.spec.Load().logger.Info("backend listed again while leaving; it stays", zap.String("pool", p.name),
			zap.String("backend", b.URL()), zap.Int64("active", b.active.Load()))
	}
}

// leavingStatic appends the pool's leaving static backends to out, by
// key. Called with r.mu held.
func (p *Pool) leavingStatic(out []*Backend) []*Backend {
	if len(p.leaving) == 0 {
		return out
	}
	start := len(out)
	for b := range p.leaving {
		out = append(out, b)
	}
	added := out[start:]
	sort.Slice(added, func(i, j int) bool { return added[i].addr.key < added[j].addr.key })
	return out
}
