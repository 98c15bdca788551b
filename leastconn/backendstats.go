package leastconn

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"net/http"
	"sync"

	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// Backend stats (memory) come from stats_uri, fetched by a fixed pool of
// workers per pool reading a small queue. Checkers offer work without
// blocking; when the queue is full the fetch is skipped, so a slow backend
// never delays health checks, and never touches traffic.

const statsBodyLimit = 1 << 20

type statsFetcher struct {
	workers int
	queue   chan *Backend
	cancel  context.CancelFunc
	wg      sync.WaitGroup
}

func newStatsFetcher(workers int) *statsFetcher {
	ctx, cancel := context.WithCancel(context.Background())
	f := &statsFetcher{workers: workers, queue: make(chan *Backend, workers), cancel: cancel}
	f.wg.Add(workers)
	for range workers {
		go f.work(ctx)
	}
	return f
}

// offer queues a fetch for b; false when the queue is full.
func (f *statsFetcher) offer(b *Backend) bool {
	select {
	case f.queue <- b:
		return true
	default:
		return false
	}
}

// stop ends the workers and waits for them.
func (f *statsFetcher) stop() {
	f.cancel()
	f.wg.Wait()
}

func (f *statsFetcher) work(ctx context.Context) {
	defer f.wg.Done()
	for {
		select {
		case <-ctx.Done():
			return
		case b := <-f.queue:
			f.fetch(ctx, b)
		}
	}
}

// fetch asks one backend for its stats and keeps the figure if it is good.
func (f *statsFetcher) fetch(ctx context.Context, b *Backend) {
	s := b.pool.spec.Load()
	defer func() {
		if r := recover(); r != nil { // a second line of defence: log, keep working
			s.logger.Error("backend stats fetch panicked", zap.String("backend", b.URL()), zap.Any("error", r))
		}
	}()
	body, err := b.fetchStats(ctx, s)
	if rs := s.reports; err == nil && rs != nil && rs.fromStats {
		b.statsReport(rs, body)
	}
	var mem int64
	if err == nil {
		mem, err = parseStats(body)
	}
	if err != nil {
		if c := s.logger.Check(zapcore.DebugLevel, "backend stats fetch failed"); c != nil {
			c.Write(zap.String("pool", s.name), zap.String("backend", b.URL()), zap.Error(err))
		}
		return // keep the last good value
	}
	b.memoryBytes.Store(mem)
}

// fetchStats asks a backend for its stats, bounded in size and time.
func (b *Backend) fetchStats(ctx context.Context, s *poolSpec) ([]byte, error) {
	ctx, cancel := context.WithTimeout(ctx, s.healthTimeout)
	defer cancel()
	req, err := b.newRequest(ctx, s.statsURI)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Accept", "application/json, text/plain;q=0.9")
	resp, err := s.transport.to(b).RoundTrip(req)
	if err != nil {
		return nil, err
	}
	defer s.transport.used()
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("status %d", resp.StatusCode)
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, statsBodyLimit+1))
	if err != nil {
		return nil, err
	}
	if len(body) > statsBodyLimit {
		return nil, fmt.Errorf("stats body over %d bytes", statsBodyLimit)
	}
	return body, nil
}

var errNoMemory = errors.New("no memory figure in stats")

// parseStats reads a memory figure in bytes from JSON {"memory_usage": n}
// or from Prometheus text (process_resident_memory_bytes, else
// go_memstats_alloc_bytes).
func parseStats(body []byte) (mem int64, err error) {
	// the Prometheus text parser has panicked on some malformed input; a
	// backend's answer must never take the process down
	defer func() {
		if r := recover(); r != nil {
			mem, err = 0, fmt.Errorf("stats text: unreadable (%v)", r)
		}
	}()
	trimmed := bytes.TrimSpace(body)
	if len(trimmed) > 0 && trimmed[0] == '{' {
		var v struct {
			MemoryUsage *float64 `json:"memory_usage"`
		}
		if err := json.Unmarshal(trimmed, &v); err != nil {
			return 0, fmt.Errorf("stats JSON: %w", err)
		}
		if v.MemoryUsage == nil {
			return 0, errNoMemory
		}
		return bytesValue(*v.MemoryUsage)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	families, err := p.TextToMetricFamilies(bytes.NewReader(body))
	if err != nil {
		return 0, fmt.Errorf("stats text: %w", err)
	}
	for _, name := range []string{"process_resident_memory_bytes", "go_memstats_alloc_bytes"} {
		mf := families[name]
		if mf == nil || len(mf.GetMetric()) == 0 {
			continue
		}
		m := mf.GetMetric()[0]
		switch {
		case m.GetGauge() != nil:
			return bytesValue(m.GetGauge().GetValue())
		case m.GetUntyped() != nil:
			return bytesValue(m.GetUntyped().GetValue())
		case m.GetCounter() != nil:
			return bytesValue(m.GetCounter().GetValue())
		}
	}
	return 0, errNoMemory
}

func bytesValue(v float64) (int64, error) {
	if math.IsNaN(v) || v < 0 || v > math.MaxInt64/2 {
		return 0, fmt.Errorf("memory figure %v out of range", v)
	}
	return int64(v), nil
}
