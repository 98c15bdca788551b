package caddyfile_test

import (
	"context"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	testpb "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/status"

	"github.com/lbpool/lbpool/internal/lbtest"
)

// gRPC responses are streams for stream_timeout and stream_close_delay, as
// event streams are: a limit ends the call with a gRPC status in its
// trailers (DEADLINE_EXCEEDED, UNAVAILABLE), the backend's call is
// cancelled, and the backend is not counted as failing.

// openTicks starts a server-streaming Ticks call and reads its first
// message; the call's context ends with the test, or 10s on.
func openTicks(t *testing.T, conn *grpc.ClientConn) grpc.ClientStream {
	t.Helper()
	return openTicksOf(t, conn, "Ticks")
}

// openTicksOf is openTicks of Ticks or BigTicks.
func openTicksOf(t *testing.T, conn *grpc.ClientConn, method string) grpc.ClientStream {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	return openServerStream(t, ctx, conn, method)
}

// tickEnd is how a Ticks call ended: when, and with what.
type tickEnd struct {
	at  time.Time
	err error
}

// tickEnds reads each stream to its end.
func tickEnds(streams []grpc.ClientStream) []tickEnd {
	ends := make([]tickEnd, len(streams))
	var wg sync.WaitGroup
	for i, s := range streams {
		wg.Go(func() {
			for {
				if err := s.RecvMsg(new(testpb.Empty)); err != nil {
					ends[i] = tickEnd{time.Now(), err}
					return
				}
			}
		})
	}
	wg.Wait()
	return ends
}

// canceledCalls is how many of b's calls saw their context end.
func (b *grpcBackend) canceledCalls() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return len(b.canceled)
}

// noLbpoolGoroutinesAbove waits for lbpool's goroutines to be back to base.
func noLbpoolGoroutinesAbove(t *testing.T, base int) {
	t.Helper()
	lbtest.EventuallyOr(t, 5*time.Second, "no lbpool goroutine left by the streams", func() bool {
		return lbpoolGoroutines() <= base
	}, func() { t.Logf("%d lbpool goroutines, %d before", lbpoolGoroutines(), base); dumpGoroutines(t) })
}

func TestStreamTimeoutEndsAGRPCStreamWithDeadlineExceeded(t *testing.T) {
	c := lbtest.Start(t)
	b := startGRPCBackend(t, false)
	conn := grpcSite(t, c, "stream_timeout 1s", b.url())
	base := lbpoolGoroutines()
	start := time.Now()
	end := tickEnds([]grpc.ClientStream{openTicks(t, conn)})[0]
	took := end.at.Sub(start)
	st := status.Convert(end.err)
	t.Logf("the stream ended %v after it began: %v", took.Round(time.Millisecond), end.err)
	if st.Code() != codes.DeadlineExceeded || !strings.Contains(st.Message(), "stream_timeout") {
		t.Fatalf("the stream ended with %v, want DEADLINE_EXCEEDED saying stream_timeout", end.err)
	}
	if took < time.Second || took > 3*time.Second {
		t.Fatalf("the stream ended %v after it began, want about 1s (stream_timeout 1s)", took)
	}
	lbtest.Eventually(t, 5*time.Second, "the backend to see its call cancelled", func() bool {
		return b.canceledCalls() == 1 && b.ticking.Load() == 0
	})
	lbtest.Eventually(t, 5*time.Second, "the stream's active count released", func() bool {
		return c.Backend(t, "grpc", b.url()).ActiveConnections == 0
	})
	if f := c.Backend(t, "grpc", b.url()).FailuresTotal; f != 0 {
		t.Fatalf("ending the stream counted %d failures against the backend", f)
	}
	noLbpoolGoroutinesAbove(t, base)
}

// A limit that strikes while the backend is in the middle of a message
// lets its rest through: the client reads whole messages, then the
// status, not INTERNAL for a message cut short.
func TestStreamTimeoutEndsAGRPCStreamBetweenTwoMessages(t *testing.T) {
	c := lbtest.Start(t)
	b := startGRPCBackend(t, false)
	conn := grpcSite(t, c, "stream_timeout 1s", b.url())
	for i := range 3 {
		end := tickEnds([]grpc.ClientStream{openTicksOf(t, conn, "BigTicks")})[0]
		if st := status.Convert(end.err); st.Code() != codes.DeadlineExceeded {
			t.Fatalf("stream %d of 1 MiB messages ended with %v, want DEADLINE_EXCEEDED", i+1, end.err)
		}
	}
	lbtest.Eventually(t, 5*time.Second, "the backend to see its calls cancelled", func() bool {
		return b.canceledCalls() == 3 && b.ticking.Load() == 0
	})
}

func TestStreamCloseDelayEndsGRPCStreamsToARemovedBackendWithUnavailable(t *testing.T) {
	c := lbtest.Start(t)
	const opts = "stream_close_delay 1s"
	a, b := startGRPCBackend(t, false), startGRPCBackend(t, false)
	conn := grpcSite(t, c, opts, b.url())
	lbtest.Eventually(t, 5*time.Second, "b up", func() bool { return c.Backend(t, "grpc", b.url()).Alive })
	base := lbpoolGoroutines()
	streams := []grpc.ClientStream{openTicks(t, conn), openTicks(t, conn)}

	start := time.Now()
	grpcSite(t, c, opts, a.url()) // b leaves the pool: its streams end 1s on
	loaded := time.Since(start)
	if s := poolStatsOf(t, c, "grpc", b.url()); len(s) != 1 || !s[0].Leaving || s[0].ActiveConnections != 2 {
		t.Fatalf("the removed backend in the stats: %+v, want leaving with 2 active", s)
	}
	ends := tickEnds(streams)
	for i, e := range ends {
		st := status.Convert(e.err)
		took := e.at.Sub(start)
		t.Logf("stream %d ended %v after the reload began (it took %v): %v", i+1, took.Round(time.Millisecond), loaded.Round(time.Millisecond), e.err)
		if st.Code() != codes.Unavailable || !strings.Contains(st.Message(), "stream_close_delay") {
			t.Fatalf("stream %d ended with %v, want UNAVAILABLE saying stream_close_delay", i+1, e.err)
		}
		// the closes are jittered over up to a quarter of the delay
		if took < time.Second || took > loaded+2*time.Second {
			t.Fatalf("stream %d ended %v after the reload began (it took %v), want 1s to 1.25s on", i+1, took, loaded)
		}
	}
	lbtest.Eventually(t, 5*time.Second, "the backend to see its calls cancelled", func() bool {
		return b.canceledCalls() == 2 && b.ticking.Load() == 0
	})
	lines := c.Logs("stream_close_delay", b.url())
	if len(lines) != 1 || !strings.Contains(lines[0], `"streams":2`) {
		t.Fatalf("want one log line saying 2 streams were closed, got %q", lines)
	}
	lbtest.Eventually(t, 10*time.Second, "the removed backend gone", func() bool { return len(poolStatsOf(t, c, "grpc", b.url())) == 0 })
	noLbpoolGoroutinesAbove(t, base)
}

func TestWithoutStreamLimitsAGRPCStreamToARemovedBackendRunsOn(t *testing.T) {
	c := lbtest.Start(t)
	a, b := startGRPCBackend(t, false), startGRPCBackend(t, false)
	conn := grpcSite(t, c, "", b.url())
	s := openTicks(t, conn)
	grpcSite(t, c, "", a.url()) // b leaves the pool
	if st := poolStatsOf(t, c, "grpc", b.url()); len(st) != 1 || !st[0].Leaving || st[0].ActiveConnections != 1 {
		t.Fatalf("the removed backend in the stats: %+v, want leaving with 1 active", st)
	}
	// 1.5s of messages after the reload: longer than the limits above
	for i := range 30 {
		if err := s.RecvMsg(new(testpb.Empty)); err != nil {
			t.Fatalf("message %d after the reload: %v", i+1, err)
		}
	}
	if n := b.canceledCalls(); n != 0 {
		t.Fatalf("the backend saw %d calls cancelled", n)
	}
}
