package caddyfile_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthgrpc "google.golang.org/grpc/health/grpc_health_v1"
	testpb "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/status"

	"github.com/lbpool/lbpool/internal/lbtest"
)

// gRPC backends behind lbpool, end to end: grpc-go servers on h2c, a
// grpc-go client speaking h2c to Caddy. The calls are the test's own
// (methods of a service the backends answer with grpc.UnknownServiceHandler),
// so each backend counts what it was sent and a stream stays open as long
// as the test wants; grpc_interop_test.go runs grpc-go's interop cases.

// grpcBackend is a grpc-go server on 127.0.0.1 over h2c.
type grpcBackend struct {
	addr    string
	srv     *grpc.Server
	health  *health.Server // nil: no health service
	calls   atomic.Int64   // unary calls answered
	release chan struct{}  // closed: open streams end, with OK
	once    sync.Once
	stopped atomic.Bool
	ticking atomic.Int32 // Ticks calls running

	mu       sync.Mutex
	canceled []time.Time     // when a call's context ended before the call did
	left     []time.Duration // Deadline calls: the time left when they began
}

// startGRPCBackend serves the test's service (and grpc.health.v1 unless
// noHealth) until the test ends.
func startGRPCBackend(t *testing.T, noHealth bool, opts ...grpc.ServerOption) *grpcBackend {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	return serveGRPCBackend(t, ln, noHealth, opts...)
}

// serveGRPCBackend is startGRPCBackend on a listener of the test's.
func serveGRPCBackend(t *testing.T, ln net.Listener, noHealth bool, opts ...grpc.ServerOption) *grpcBackend {
	t.Helper()
	b := &grpcBackend{addr: ln.Addr().String(), release: make(chan struct{})}
	b.srv = grpc.NewServer(append(opts, grpc.UnknownServiceHandler(b.handle))...)
	if !noHealth {
		b.health = health.NewServer()
		healthgrpc.RegisterHealthServer(b.srv, b.health)
	}
	go func() { _ = b.srv.Serve(ln) }()
	t.Cleanup(b.stop)
	return b
}

func (b *grpcBackend) stop() {
	b.stopped.Store(true)
	b.once.Do(func() { close(b.release) })
	b.srv.Stop()
}

func (b *grpcBackend) url() string { return "h2c://" + b.addr }

// handle answers /lbtest.Test/Unary at once, /lbtest.Test/Sleep after 3s,
// /lbtest.Test/Stream with one message, then holds the stream open until
// release, /lbtest.Test/Ticks with a message every 50ms until the call's
// context ends, and /lbtest.Test/BigTicks the same with 1 MiB messages
// back to back.
func (b *grpcBackend) handle(_ any, stream grpc.ServerStream) error {
	method, _ := grpc.MethodFromServerStream(stream)
	if err := stream.RecvMsg(new(testpb.Empty)); err != nil {
		return err
	}
	ctx := stream.Context()
	switch method {
	case "/lbtest.Test/Unary":
		b.calls.Add(1)
		return stream.SendMsg(new(testpb.Empty))
	case "/lbtest.Test/Sleep":
		select {
		case <-time.After(3 * time.Second):
			return stream.SendMsg(new(testpb.Empty))
		case <-ctx.Done():
			b.mu.Lock()
			b.canceled = append(b.canceled, time.Now())
			b.mu.Unlock()
			return ctx.Err()
		}
	case "/lbtest.Test/Deadline":
		if d, ok := ctx.Deadline(); ok {
			b.mu.Lock()
			b.left = append(b.left, time.Until(d))
			b.mu.Unlock()
		}
		return stream.SendMsg(new(testpb.Empty))
	case "/lbtest.Test/Fail":
		if err := stream.SendMsg(new(testpb.Empty)); err != nil {
			return err
		}
		return status.Error(codes.Unavailable, "failing after a message: the status goes in the trailers")
	case "/lbtest.Test/Echo":
		for { // every message back, until the client's end
			if err := stream.SendMsg(new(testpb.Empty)); err != nil {
				return err
			}
			if err := stream.RecvMsg(new(testpb.Empty)); err != nil {
				if errors.Is(err, io.EOF) {
					return nil
				}
				return err
			}
		}
	case "/lbtest.Test/Ticks", "/lbtest.Test/BigTicks":
		b.ticking.Add(1)
		defer b.ticking.Add(-1)
		var msg any = new(testpb.Empty)
		every := 50 * time.Millisecond
		if method == "/lbtest.Test/BigTicks" { // messages of many HTTP/2 frames
			msg, every = &testpb.Payload{Body: make([]byte, 1<<20)}, time.Millisecond
		}
		tick := time.NewTicker(every)
		defer tick.Stop()
		for { // a message every tick until the call's context ends
			err := stream.SendMsg(msg)
			if err == nil {
				select {
				case <-tick.C:
					continue
				case <-ctx.Done():
				}
			}
			select { // a send may fail just before the context ends
			case <-ctx.Done():
				b.mu.Lock()
				b.canceled = append(b.canceled, time.Now())
				b.mu.Unlock()
				return ctx.Err()
			case <-time.After(time.Second):
				return err
			}
		}
	case "/lbtest.Test/Stream":
		if err := stream.SendMsg(new(testpb.Empty)); err != nil {
			return err
		}
		select {
		case <-b.release:
			return nil
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	return status.Error(codes.Unimplemented, method)
}

// grpcSite loads lbpool (pool "grpc") in front of the backends, on Caddy's
// port with h2c for cleartext clients, and returns a client connection to
// it: one HTTP/2 connection.
func grpcSite(t *testing.T, c *lbtest.Caddy, extra string, backends ...string) *grpc.ClientConn {
	t.Helper()
	return grpcSiteWith(t, c, "", extra, backends...)
}

// grpcSiteWith is grpcSite with more server options.
func grpcSiteWith(t *testing.T, c *lbtest.Caddy, server, extra string, backends ...string) *grpc.ClientConn {
	t.Helper()
	globals := strings.TrimSuffix(c.Globals(), "}\n") + "\tservers {\n\t\tprotocols h1 h2 h2c\n\t\t" + server + "\n\t}\n}\n"
	site := fmt.Sprintf(`:%d {
	lbpool %s {
		name grpc
		health_grpc
		%s
	}
}
`, c.HTTPPort, strings.Join(backends, " "), extra)
	if err := c.LoadCaddyfile(globals + site); err != nil {
		t.Fatalf("loading config: %v\n%s", err, site)
	}
	conn, err := grpc.NewClient(fmt.Sprintf("127.0.0.1:%d", c.HTTPPort), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

// openServerStream starts a server-streaming call of the method, sends its
// one message and reads the first answer.
func openServerStream(t *testing.T, ctx context.Context, conn *grpc.ClientConn, method string) grpc.ClientStream {
	t.Helper()
	s, err := conn.NewStream(ctx, &grpc.StreamDesc{ServerStreams: true}, "/lbtest.Test/"+method)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.SendMsg(new(testpb.Empty)); err != nil {
		t.Fatal(err)
	}
	if err := s.CloseSend(); err != nil {
		t.Fatal(err)
	}
	if err := s.RecvMsg(new(testpb.Empty)); err != nil {
		t.Fatalf("%s: no first message: %v", method, err)
	}
	return s
}

func unary(ctx context.Context, conn *grpc.ClientConn, method string) error {
	return conn.Invoke(ctx, "/lbtest.Test/"+method, new(testpb.Empty), new(testpb.Empty))
}

// active is each backend's active requests in the stats, in order.
func active(t *testing.T, c *lbtest.Caddy, backends []*grpcBackend) []int64 {
	out := make([]int64, len(backends))
	for i, b := range backends {
		out[i] = c.Backend(t, "grpc", b.url()).ActiveConnections
	}
	return out
}

func TestGRPCCallsOnOneClientConnectionSpreadOverBackends(t *testing.T) {
	c := lbtest.Start(t)
	bs := []*grpcBackend{startGRPCBackend(t, false), startGRPCBackend(t, false), startGRPCBackend(t, false)}
	conn := grpcSite(t, c, "", bs[0].url(), bs[1].url(), bs[2].url())
	for i := range 300 {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		err := unary(ctx, conn, "Unary")
		cancel()
		if err != nil {
			t.Fatalf("call %d: %v", i, err)
		}
	}
	for i, b := range bs {
		n := b.calls.Load()
		t.Logf("backend %d: %d calls", i, n)
		if n < 90 || n > 110 {
			t.Errorf("backend %d got %d of 300 calls on one client connection, want 100±10", i, n)
		}
		if p := c.Backend(t, "grpc", b.url()).Protocol; p != "h2c" {
			t.Errorf("backend %d: protocol %q in the stats, want h2c", i, p)
		}
	}
}

func TestGRPCOpenStreamsAreActiveUntilEitherSideEndsThem(t *testing.T) {
	c := lbtest.Start(t)
	bs := []*grpcBackend{startGRPCBackend(t, false), startGRPCBackend(t, false), startGRPCBackend(t, false)}
	conn := grpcSite(t, c, "", bs[0].url(), bs[1].url(), bs[2].url())

	// open 60 streams, each with its first message read, and wait until
	// the stats show them
	open := func() (context.CancelFunc, []grpc.ClientStream) {
		ctx, cancel := context.WithCancel(context.Background())
		streams := make([]grpc.ClientStream, 60)
		for i := range streams {
			streams[i] = openServerStream(t, ctx, conn, "Stream")
		}
		return cancel, streams
	}
	balanced := func(t *testing.T, bs []*grpcBackend, total int64) {
		t.Helper()
		per := total / int64(len(bs))
		var got []int64
		lbtest.EventuallyOr(t, 5*time.Second, "the streams to show as active", func() bool {
			got = active(t, c, bs)
			var sum int64
			for _, n := range got {
				sum += n
			}
			return sum == total
		}, func() { t.Logf("active: %v", got) })
		for i, n := range got {
			if n < per-3 || n > per+3 {
				t.Errorf("backend %d has %d active streams, want %d±3 (all: %v)", i, n, per, got)
			}
		}
	}
	zeroWithin := func(t *testing.T, bs []*grpcBackend, what string) {
		t.Helper()
		start := time.Now()
		var got []int64
		lbtest.EventuallyOr(t, 5*time.Second, "no active stream "+what, func() bool {
			got = active(t, c, bs)
			return got[0] == 0 && got[1] == 0 && got[2] == 0
		}, func() { t.Logf("active: %v", got) })
		if took := time.Since(start); took > time.Second {
			t.Errorf("active streams reached 0 %v %s, want within 1s", took.Round(time.Millisecond), what)
		}
	}

	// lbpool's goroutines: its checkers and fleet sync, and one handler per
	// open stream, which must all end with their streams
	noneLeft := func(t *testing.T, base int) {
		t.Helper()
		lbtest.EventuallyOr(t, 5*time.Second, "no lbpool goroutine left by the streams", func() bool {
			return lbpoolGoroutines() <= base
		}, func() { t.Logf("%d lbpool goroutines, %d before", lbpoolGoroutines(), base); dumpGoroutines(t) })
	}
	t.Run("client cancels", func(t *testing.T) {
		base := lbpoolGoroutines()
		cancel, _ := open()
		balanced(t, bs, 60)
		cancel()
		zeroWithin(t, bs, "after the client cancelled")
		noneLeft(t, base)
	})
	t.Run("backend ends", func(t *testing.T) {
		base := lbpoolGoroutines()
		cancel, streams := open()
		defer cancel()
		balanced(t, bs, 60)
		for _, b := range bs {
			b.once.Do(func() { close(b.release) })
		}
		zeroWithin(t, bs, "after the backends ended the streams")
		for i, s := range streams {
			if err := s.RecvMsg(new(testpb.Empty)); !errors.Is(err, io.EOF) {
				t.Fatalf("stream %d ended with %v, want its end (io.EOF)", i, err)
			}
		}
		noneLeft(t, base)
	})
	t.Run("backend killed", func(t *testing.T) {
		fresh := []*grpcBackend{startGRPCBackend(t, false), startGRPCBackend(t, false), startGRPCBackend(t, false)}
		conn = grpcSite(t, c, "", fresh[0].url(), fresh[1].url(), fresh[2].url())
		cancel, _ := open()
		defer cancel()
		balanced(t, fresh, 60)
		fresh[1].srv.Stop()
		start := time.Now()
		lbtest.Eventually(t, 5*time.Second, "the killed backend's streams to end", func() bool {
			return c.Backend(t, "grpc", fresh[1].url()).ActiveConnections == 0
		})
		if took := time.Since(start); took > time.Second {
			t.Errorf("the killed backend's active streams reached 0 after %v, want within 1s", took.Round(time.Millisecond))
		}
		cancel()
		zeroWithin(t, fresh, "after the rest were cancelled")
	})
}

func TestGRPCNoBackendUpIsUnavailableWithLbpoolsMessage(t *testing.T) {
	c := lbtest.Start(t)
	nothing := fmt.Sprintf("h2c://127.0.0.1:%d", lbtest.FreePort(t))
	conn := grpcSite(t, c, "", nothing)
	lbtest.Eventually(t, 5*time.Second, "the backend to be down", func() bool {
		return !c.Backend(t, "grpc", nothing).Alive
	})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	start := time.Now()
	err := unary(ctx, conn, "Unary")
	took := time.Since(start)
	st := status.Convert(err)
	if st.Code() != codes.Unavailable || !strings.Contains(st.Message(), "lbpool: no backend available") {
		t.Fatalf("with no backend up the call ended with %v, want UNAVAILABLE with lbpool's message", err)
	}
	if took > time.Second {
		t.Errorf("UNAVAILABLE came after %v, want under 1s", took)
	}
}

func TestGRPCClientDeadlineIsDeadlineExceededAndCancelsTheBackend(t *testing.T) {
	c := lbtest.Start(t)
	b := startGRPCBackend(t, false)
	conn := grpcSite(t, c, "", b.url())
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	start := time.Now()
	err := unary(ctx, conn, "Sleep")
	if status.Code(err) != codes.DeadlineExceeded {
		t.Fatalf("a 300ms deadline against a backend sleeping 3s ended with %v, want DEADLINE_EXCEEDED", err)
	}
	if took := time.Since(start); took > time.Second {
		t.Errorf("DEADLINE_EXCEEDED after %v, want within 1s", took)
	}
	lbtest.Eventually(t, 2*time.Second, "the backend's context to be cancelled", func() bool {
		b.mu.Lock()
		defer b.mu.Unlock()
		return len(b.canceled) == 1
	})
	if at := b.canceled[0].Sub(start); at > time.Second {
		t.Errorf("the backend's context ended %v after the call began, want within 1s", at)
	}
	t.Logf("the backend's call was cancelled %v after the client's deadline", (b.canceled[0].Sub(start) - 300*time.Millisecond).Round(time.Millisecond))
}

func TestGRPCHealthChecksFollowTheHealthService(t *testing.T) {
	c := lbtest.Start(t)
	b := startGRPCBackend(t, false)
	bare := startGRPCBackend(t, true) // no health service
	grpcSite(t, c, "health_interval 100ms\n\t\thealth_down_interval 100ms\n\t\thealth_fails 2", b.url(), bare.url())

	lbtest.Eventually(t, 5*time.Second, "a backend without a health service to be down", func() bool {
		s := c.Backend(t, "grpc", bare.url())
		return !s.Alive && s.LastCheck != nil && s.LastCheck.Error == "UNIMPLEMENTED"
	})
	lbtest.Eventually(t, 5*time.Second, "the serving backend to be up", func() bool { return c.Backend(t, "grpc", b.url()).Alive })

	b.health.SetServingStatus("", healthgrpc.HealthCheckResponse_NOT_SERVING)
	start := time.Now()
	lbtest.Eventually(t, 5*time.Second, "NOT_SERVING to take the backend out", func() bool {
		s := c.Backend(t, "grpc", b.url())
		return !s.Alive && s.LastCheck != nil && s.LastCheck.Error == "NOT_SERVING"
	})
	t.Logf("NOT_SERVING took the backend out after %v (health_interval 100ms × health_fails 2)", time.Since(start).Round(time.Millisecond))

	b.health.SetServingStatus("", healthgrpc.HealthCheckResponse_SERVING)
	lbtest.Eventually(t, 5*time.Second, "SERVING to bring the backend back", func() bool { return c.Backend(t, "grpc", b.url()).Alive })
}

// callers makes unary calls from n goroutines until stop is closed and
// returns how many were made and the errors.
func callers(conn *grpc.ClientConn, n int, stop <-chan struct{}) func() (int64, []error) {
	var calls atomic.Int64
	var mu sync.Mutex
	var errs []error
	var wg sync.WaitGroup
	for range n {
		wg.Go(func() {
			for {
				select {
				case <-stop:
					return
				default:
				}
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				err := unary(ctx, conn, "Unary")
				cancel()
				calls.Add(1)
				if err != nil {
					mu.Lock()
					errs = append(errs, err)
					mu.Unlock()
				}
			}
		})
	}
	return func() (int64, []error) {
		wg.Wait()
		return calls.Load(), errs
	}
}

func TestGRPCBackendStoppingGracefullyCostsNoCall(t *testing.T) {
	c := lbtest.Start(t)
	bs := []*grpcBackend{startGRPCBackend(t, false), startGRPCBackend(t, false), startGRPCBackend(t, false)}
	conn := grpcSite(t, c, "", bs[0].url(), bs[1].url(), bs[2].url())
	stop := make(chan struct{})
	wait := callers(conn, 8, stop)
	// the bounds are generous: they are about which calls fail, not speed
	lbtest.Eventually(t, 30*time.Second, "calls on every backend", func() bool {
		return bs[0].calls.Load() > 50 && bs[1].calls.Load() > 50 && bs[2].calls.Load() > 50
	})
	bs[1].srv.GracefulStop()
	stoppedAt := bs[1].calls.Load()
	others := bs[0].calls.Load() + bs[2].calls.Load()
	lbtest.Eventually(t, 30*time.Second, "300 calls after the stop", func() bool {
		return bs[0].calls.Load()+bs[2].calls.Load() > others+300
	})
	close(stop)
	calls, errs := wait()
	t.Logf("%d calls by 8 callers, %d failed; backend 1 answered %d before it stopped", calls, len(errs), stoppedAt)
	for i, err := range errs {
		if i == 5 {
			break
		}
		t.Errorf("a call failed while a backend stopped gracefully: %v", err)
	}
}

// A backend's MAX_CONCURRENT_STREAMS reaches a new connection only with
// its SETTINGS; until then the client may open up to 100 streams on it,
// and the backend refuses those past its limit (REFUSED_STREAM). Such a
// stream was not processed and is sent again, so no call fails. "late
// settings": each connection's SETTINGS come 50ms after it opened, so
// every new connection takes every waiting stream and refuses all but 10
// of them: the worst case, every time.
func TestGRPCBackendLimitingStreamsCostsNoCall(t *testing.T) {
	const streams = 200 // Caddy's HTTP/2 server takes up to 250 at once
	for _, late := range []bool{false, true} {
		name := "settings at once"
		if late {
			name = "late settings"
		}
		t.Run(name, func(t *testing.T) {
			c := lbtest.Start(t)
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			l := &countingListener{Listener: ln}
			if late {
				l.delay = 50 * time.Millisecond
			}
			b := serveGRPCBackend(t, l, false, grpc.MaxConcurrentStreams(10))
			conn := grpcSite(t, c, "", b.url())
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			var wg sync.WaitGroup
			errs := make(chan error, streams)
			for range streams {
				wg.Go(func() {
					s, err := conn.NewStream(ctx, &grpc.StreamDesc{ServerStreams: true}, "/lbtest.Test/Stream")
					if err == nil {
						err = s.SendMsg(new(testpb.Empty))
					}
					if err == nil {
						err = s.RecvMsg(new(testpb.Empty))
					}
					errs <- err
				})
			}
			wg.Wait()
			close(errs)
			failed := 0
			for err := range errs {
				if err != nil {
					failed++
					if failed <= 3 {
						t.Errorf("a stream failed against a backend limited to 10 streams per connection: %v", err)
					}
				}
			}
			t.Logf("%d streams open at once on a backend with MaxConcurrentStreams(10): %d failed, over %d connections", streams, failed, l.accepts.Load())
			if n := c.Backend(t, "grpc", b.url()).ActiveConnections; n != int64(streams-failed) {
				t.Errorf("%d active streams, want the %d open ones", n, streams-failed)
			}
		})
	}
}

// countingListener counts the connections it accepts and, with delay set,
// delays the first write on each: an HTTP/2 server's SETTINGS arrive that
// much after the connection opened.
type countingListener struct {
	net.Listener
	delay   time.Duration
	accepts atomic.Int64
}

func (l *countingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	l.accepts.Add(1)
	if l.delay == 0 {
		return c, nil
	}
	return &lateConn{Conn: c, delay: l.delay}, nil
}

type lateConn struct {
	net.Conn
	delay time.Duration
	once  sync.Once
}

func (c *lateConn) Write(p []byte) (int, error) {
	c.once.Do(func() { time.Sleep(c.delay) })
	return c.Conn.Write(p)
}

// Caddy's server aborts a request body read that stalls for its
// read_idle_timeout (Caddyfile: `timeouts { read_body_idle }`, default
// 1m): a bidirectional stream whose client is silent that long is cut.
// Shortened here to 1s: with it the stream dies after 2s of silence; with
// -1 (docs/grpc.md says to set it for gRPC sites) it lives on.
func TestGRPCSilentClientStreamNeedsReadIdleTimeoutOff(t *testing.T) {
	c := lbtest.Start(t)
	b := startGRPCBackend(t, false)
	silent := func(t *testing.T, server string) error {
		conn := grpcSiteWith(t, c, server, "", b.url())
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		s, err := conn.NewStream(ctx, &grpc.StreamDesc{ServerStreams: true, ClientStreams: true}, "/lbtest.Test/Echo")
		if err != nil {
			return err
		}
		if err := s.SendMsg(new(testpb.Empty)); err != nil {
			return err
		}
		if err := s.RecvMsg(new(testpb.Empty)); err != nil {
			return err
		}
		time.Sleep(2 * time.Second) // the client is silent; so is the backend
		if err := s.SendMsg(new(testpb.Empty)); err != nil {
			return err
		}
		if err := s.RecvMsg(new(testpb.Empty)); err != nil {
			return err
		}
		if err := s.CloseSend(); err != nil {
			return err
		}
		if err := s.RecvMsg(new(testpb.Empty)); !errors.Is(err, io.EOF) {
			return fmt.Errorf("the stream's end: %v", err)
		}
		return nil
	}
	if err := silent(t, "timeouts {\n\t\t\tread_body_idle 1s\n\t\t}"); err == nil {
		t.Error("a stream silent for 2s survived read_body_idle 1s: docs/grpc.md's advice is out of date")
	} else {
		t.Logf("with read_body_idle 1s, 2s of silence: %v", err)
	}
	if err := silent(t, "timeouts {\n\t\t\tread_body_idle -1s\n\t\t}"); err != nil {
		t.Errorf("with read_body_idle -1s a silent stream broke: %v", err)
	}
}

// grpc-timeout bounds the wait in the queue, and the backend gets what is
// left: a call with 5s that waited 1s for a slot reaches the backend with
// at most 4s.
func TestGRPCTimeoutReachesTheBackendAsTheTimeLeft(t *testing.T) {
	c := lbtest.Start(t)
	b := startGRPCBackend(t, false)
	conn := grpcSite(t, c, "max_conns 1", b.url())
	hold, cancelHold := context.WithCancel(context.Background())
	defer cancelHold()
	s, err := conn.NewStream(hold, &grpc.StreamDesc{ServerStreams: true}, "/lbtest.Test/Stream")
	if err == nil {
		err = s.SendMsg(new(testpb.Empty))
	}
	if err == nil {
		err = s.RecvMsg(new(testpb.Empty)) // the one slot is taken
	}
	if err != nil {
		t.Fatal(err)
	}
	time.AfterFunc(time.Second, cancelHold)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := unary(ctx, conn, "Deadline"); err != nil {
		t.Fatal(err)
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if len(b.left) != 1 || b.left[0] > 4200*time.Millisecond || b.left[0] < time.Second {
		t.Fatalf("the backend got %v left of a 5s grpc-timeout after ~1s in the queue, want about 4s", b.left)
	}
	t.Logf("the backend got %v of the client's 5s", b.left[0].Round(time.Millisecond))
}

func TestGRPCUnhealthyStatusInTrailersEjects(t *testing.T) {
	c := lbtest.Start(t)
	bs := []*grpcBackend{startGRPCBackend(t, false), startGRPCBackend(t, false)}
	conn := grpcSite(t, c, "fail_duration 1m\n\t\tunhealthy_grpc_status UNAVAILABLE", bs[0].url(), bs[1].url())
	stream := func(method string) error {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		s, err := conn.NewStream(ctx, &grpc.StreamDesc{ServerStreams: true}, "/lbtest.Test/"+method)
		if err != nil {
			return err
		}
		if err := s.SendMsg(new(testpb.Empty)); err != nil {
			return err
		}
		for {
			if err := s.RecvMsg(new(testpb.Empty)); err != nil {
				return err
			}
		}
	}
	ejected := func() []string {
		var out []string
		for _, s := range c.Stats(t, "grpc") {
			if s.Ejected {
				out = append(out, s.EjectedReason)
			}
		}
		return out
	}
	if err := stream("NoSuchMethod"); status.Code(err) != codes.Unimplemented {
		t.Fatalf("an unknown method ended with %v", err)
	}
	if e := ejected(); len(e) > 0 {
		t.Fatalf("UNIMPLEMENTED ejected a backend: %v", e)
	}
	if err := stream("Fail"); status.Code(err) != codes.Unavailable {
		t.Fatalf("the failing call ended with %v, want UNAVAILABLE", err)
	}
	if e := ejected(); len(e) != 1 || e[0] != "grpc-status: UNAVAILABLE" {
		t.Fatalf("ejected after a call ending UNAVAILABLE in its trailers: %v, want one with reason grpc-status: UNAVAILABLE", e)
	}
}

// lbpool's own error to a gRPC call is one HEADERS frame that ends the
// stream (:status 200, content-type application/grpc, grpc-status 14),
// no DATA; a plain HTTP client on the same route still gets a 503.
func TestGRPCErrorIsOneHeadersFrameAndPlainClientsKeep503(t *testing.T) {
	c := lbtest.Start(t)
	grpcSite(t, c, "", fmt.Sprintf("h2c://127.0.0.1:%d", lbtest.FreePort(t)))
	lbtest.Eventually(t, 5*time.Second, "a 503 to a plain client", func() bool {
		status, _ := c.Get(t, c.URL("/"))
		return status == 503
	})

	nc, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", c.HTTPPort))
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	_ = nc.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(nc, http2.ClientPreface); err != nil {
		t.Fatal(err)
	}
	fr := http2.NewFramer(nc, nc)
	fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	if err := fr.WriteSettings(); err != nil {
		t.Fatal(err)
	}
	var block bytes.Buffer
	enc := hpack.NewEncoder(&block)
	for _, f := range [][2]string{
		{":method", "POST"}, {":scheme", "http"}, {":path", "/lbtest.Test/Unary"},
		{":authority", "127.0.0.1"}, {"content-type", "application/grpc"}, {"te", "trailers"},
	} {
		_ = enc.WriteField(hpack.HeaderField{Name: f[0], Value: f[1]})
	}
	if err := fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: block.Bytes(), EndHeaders: true}); err != nil {
		t.Fatal(err)
	}
	if err := fr.WriteData(1, true, make([]byte, 5)); err != nil { // one empty message
		t.Fatal(err)
	}
	var frames []string
	for {
		f, err := fr.ReadFrame()
		if err != nil {
			t.Fatalf("reading frames (so far %v): %v", frames, err)
		}
		if f.Header().StreamID != 1 {
			if s, ok := f.(*http2.SettingsFrame); ok && !s.IsAck() {
				_ = fr.WriteSettingsAck()
			}
			continue
		}
		switch f := f.(type) {
		case *http2.MetaHeadersFrame:
			got := map[string]string{}
			for _, hf := range f.Fields {
				got[hf.Name] = hf.Value
			}
			frames = append(frames, fmt.Sprintf("HEADERS end_stream=%v %v", f.StreamEnded(), got))
			if got[":status"] != "200" || got["content-type"] != "application/grpc" || got["grpc-status"] != "14" || !strings.Contains(got["grpc-message"], "lbpool") {
				t.Errorf("headers %v, want :status 200, content-type application/grpc, grpc-status 14 and lbpool's grpc-message", got)
			}
			if f.StreamEnded() {
				if len(frames) != 1 {
					t.Errorf("frames on the stream: %v, want one HEADERS frame ending it", frames)
				}
				return
			}
		case *http2.DataFrame:
			frames = append(frames, fmt.Sprintf("DATA %d bytes end_stream=%v", len(f.Data()), f.StreamEnded()))
			if f.StreamEnded() {
				t.Fatalf("frames on the stream: %v, want one HEADERS frame ending it", frames)
			}
		case *http2.RSTStreamFrame:
			t.Fatalf("the stream was reset (%v) after %v", f.ErrCode, frames)
		}
	}
}

// refusingBackend is an HTTP/2 server (h2c) that refuses every stream
// (RST_STREAM REFUSED_STREAM) but those for /health and /ok, which it
// answers 200.
type refusingBackend struct {
	addr    string
	refused atomic.Int64
	ok      atomic.Int64 // /ok answered
}

func startRefusingBackend(t *testing.T) *refusingBackend {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	rb := &refusingBackend{addr: ln.Addr().String()}
	var wg sync.WaitGroup
	var mu sync.Mutex
	var conns []net.Conn
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	wg.Go(func() {
		for {
			nc, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, nc)
			mu.Unlock()
			wg.Go(func() { rb.serve(nc) })
		}
	})
	return rb
}

func (rb *refusingBackend) serve(nc net.Conn) {
	defer nc.Close()
	preface := make([]byte, len(http2.ClientPreface))
	if _, err := io.ReadFull(nc, preface); err != nil || string(preface) != http2.ClientPreface {
		return
	}
	fr := http2.NewFramer(nc, nc)
	fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	if fr.WriteSettings() != nil {
		return
	}
	var block bytes.Buffer
	enc := hpack.NewEncoder(&block)
	for {
		f, err := fr.ReadFrame()
		if err != nil {
			return
		}
		switch f := f.(type) {
		case *http2.SettingsFrame:
			if !f.IsAck() {
				err = fr.WriteSettingsAck()
			}
		case *http2.PingFrame:
			if !f.IsAck() {
				err = fr.WritePing(true, f.Data)
			}
		case *http2.MetaHeadersFrame:
			if p := f.PseudoValue("path"); p == "/health" || p == "/ok" {
				if p == "/ok" {
					rb.ok.Add(1)
				}
				block.Reset()
				_ = enc.WriteField(hpack.HeaderField{Name: ":status", Value: "200"})
				err = fr.WriteHeaders(http2.HeadersFrameParam{StreamID: f.StreamID, BlockFragment: block.Bytes(), EndHeaders: true, EndStream: true})
				break
			}
			rb.refused.Add(1)
			err = fr.WriteRSTStream(f.StreamID, http2.ErrCodeRefusedStream)
		}
		if err != nil {
			return
		}
	}
}

// A backend that refuses every stream while answering nothing else is
// tried a few times (each try is two refusals: the Transport sends a
// refused stream once more itself), then another backend takes the
// request; alone, it costs a 502 at once, not an endless loop. (A backend
// at its stream limit, answering other requests meanwhile, is tried
// longer: see above. A request without a body is sent again by the
// Transport itself up to 6 more times, waiting 1s, 2s, 4s... in between,
// as under reverse_proxy: POSTs here.)
func TestH2BackendRefusingEveryStreamIsTriedAFewTimes(t *testing.T) {
	c := lbtest.Start(t)
	rb := startRefusingBackend(t)
	good := lbtest.NewBackend(t, "good", func(w http.ResponseWriter, _ *http.Request) { _, _ = io.WriteString(w, "good") })
	pool := func(backends ...string) {
		t.Helper()
		site := fmt.Sprintf(`:%d {
	lbpool %s {
		name refusing
		health_uri /health
		health_interval 1h
	}
}
`, c.HTTPPort, strings.Join(backends, " "))
		if err := c.LoadCaddyfile(c.Globals() + site); err != nil {
			t.Fatalf("loading config: %v\n%s", err, site)
		}
	}
	post := func() (int, string) {
		t.Helper()
		resp, err := c.Client().Post(c.URL("/x"), "text/plain", strings.NewReader("hello"))
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(body)
	}

	pool("h2c://" + rb.addr)
	status, _ := post()
	n := rb.refused.Swap(0)
	if status != http.StatusBadGateway || n < 2 || n > 2*(1+4) {
		t.Errorf("alone: %d after %d refusals, want 502 after at most 10 (1 + maxRefusals tries, two refusals each)", status, n)
	}
	t.Logf("alone: %d after %d refusals", status, n)

	pool("h2c://"+rb.addr, good.URL())
	for range 20 {
		if status, body := post(); status != http.StatusOK || body != "good" {
			t.Fatalf("with a working backend beside it: %d %q", status, body)
		}
	}
	n = rb.refused.Swap(0)
	if n > 20*2*(1+4) {
		t.Errorf("20 requests with a working backend beside it: %d refusals, want at most 200", n)
	}
	t.Logf("20 requests beside a working backend: %d refusals", n)

	// alone again, answering other requests all along: at its stream
	// limit as far as lbpool can tell once it answered another request
	// after it first refused this one, so tried up to 1 + 4 + 64 times,
	// the last 60 of them after a pause each (over 1.3s in all). The first
	// tries come microseconds apart: a request whose first five saw no
	// answer to another is refused as above; one of 5 is enough here.
	pool("h2c://" + rb.addr)
	var stop atomic.Bool
	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() {
			for !stop.Load() {
				if resp, err := c.Client().Get(c.URL("/ok")); err == nil {
					_, _ = io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
				}
			}
		})
	}
	t.Cleanup(func() { stop.Store(true); wg.Wait() })
	lbtest.Eventually(t, 10*time.Second, "answers to others", func() bool { return rb.ok.Load() >= 10 })
	for attempt := 1; ; attempt++ {
		start := time.Now()
		status, _ = post()
		took := time.Since(start)
		n = rb.refused.Swap(0)
		t.Logf("answering others meanwhile: %d after %d refusals in %v", status, n, took.Round(time.Millisecond))
		if status != http.StatusBadGateway || n > 2*(1+4+64) {
			t.Fatalf("answering others meanwhile: %d after %d refusals, want 502 after at most 138", status, n)
		}
		if n > 2*(1+4) {
			if took < 1300*time.Millisecond {
				t.Errorf("answering others meanwhile: %d refusals in %v: the tries past the fifth were not paced", n, took)
			}
			break
		}
		if attempt == 5 {
			t.Fatal("5 requests to a backend answering others meanwhile were each tried only 5 times")
		}
	}
}
