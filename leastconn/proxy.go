package leastconn

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/http/httptrace"
	"net/textproto"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/lbpool/lbpool/internal/upstream"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"golang.org/x/net/http/httpguts"
)

// directOK tells whether a try may take the direct path
// (upstream.RoundTrip): a plain-HTTP backend and no upgrade.
func directOK(out *http.Request, b *Backend) bool {
	return b.addr.scheme == "http" && out.Header["Upgrade"] == nil && (out.Body == nil || directBodies)
}

// directBodies lets requests with bodies take the direct path; benchmarks
// turn it off to compare with net/http's Transport.
var directBodies = true

// ServeHTTP proxies the request to the least-loaded backend, trying others
// when one cannot be reached.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request, _ caddyhttp.Handler) error {
	st := h.track(r)
	defer st.done()
	st.trace = traceOf(r)
	if isGRPC(r) {
		var cancel context.CancelFunc
		if r, cancel = grpcDeadline(r, st); cancel != nil {
			defer cancel()
		}
	}
	if h.RequestBuffers != 0 {
		h.bufferRequest(r)
	}
	out := h.outgoing(r, st)
	if h.StreamTimeout > 0 || h.StreamCloseDelay > 0 {
		// a stream's limits end it through its request (streams.go)
		ctx, cancel := context.WithCancel(out.Context())
		defer cancel()
		out = out.WithContext(ctx)
		st.endStream = cancel
	}
	if h.Rewrite != nil {
		h.Rewrite.Rewrite(out, r.Context().Value(caddy.ReplacerCtxKey).(*caddy.Replacer))
	}
	v := h.lease.view.Load() // one view for every try: indices stay valid
	st.tried = newTriedSet(len(v.backends))
	tried := &st.tried
	if h.lease.kind == kindHash {
		tried.key, tried.keyed = h.lease.key.keyHash(r)
	}
	rr := &st.retry
	h.startRetries(rr, v, st.start)
	defer h.endRetries(rr)
	home := -1 // the backend the sticky cookie names, taken on the first try
	if h.sticky != nil {
		home = h.sticky.home(r, v)
	}
	var lastErr error
	again := false // the last try's stream was refused: the next one is no retry
	for try := 0; ; try++ {
		if try > 0 && !again && !h.next(r.Context(), rr) {
			break // no tries left, or the budget is spent
		}
		again = false
		i := home
		if try > 0 || i < 0 {
			i = h.lease.pick(v, tried)
		}
		if i < 0 && v.someFull(tried) {
			var err error
			queued := time.Now()
			i, err = h.lease.wait(r.Context(), v, tried)
			if st.trace != nil {
				st.trace.wait("queue", st.pool, queued)
			}
			if err != nil {
				return h.fail(w, r, http.StatusServiceUnavailable, err)
			}
			if i < 0 {
				return ended(w, st) // the client went away while queued
			}
		}
		if i < 0 && !rr.deadline.IsZero() {
			var err error
			waited := time.Now()
			i, err = h.await(r.Context(), rr, tried)
			if st.trace != nil {
				st.trace.wait("try_duration wait", st.pool, waited)
			}
			if err != nil {
				return h.fail(w, r, http.StatusServiceUnavailable, err)
			}
			if i < 0 && r.Context().Err() != nil {
				return ended(w, st) // the client went away while waiting
			}
		}
		if i < 0 {
			break
		}
		tried.add(i)
		b := v.backends[i]
		st.pick = h.lease.pickReason(b, try, i == home, tried)
		if try == 0 && tried.spilled {
			h.lease.pool.spills.Add(1)
		}
		if try > 0 {
			b.retries.Add(1)
		}
		restick := h.sticky != nil && i != home // a new session, or one moved
		if restick {
			h.sticky.setCookie(w, r, v, i)
		}
		err := h.proxyTo(w, r, out, b, st)
		if err == nil {
			return nil
		}
		if restick {
			h.sticky.dropCookie(w)
		}
		if r.Context().Err() != nil {
			return ended(w, st) // the client went away; not the backend's fault
		}
		var fail *tryError
		if !errors.As(err, &fail) {
			return err
		}
		lastErr = fail.err
		if fail.answered {
			continue // an answer lb_retry_match matched, read and discarded
		}
		if fail.refused {
			// not processed, and no failure: it may be picked again
			if ok, pause := st.refusedAgain(b); ok {
				if pause > 0 && !sleepFor(r.Context(), pause) {
					return ended(w, st) // the client went away
				}
				tried.remove(i)
				again = true
			} else {
				rr.free = true
			}
			continue
		}
		b.failures.Add(1)
		if o := h.spec.outlier; o != nil {
			o.fail(h, b, failReason(fail.err))
		}
		if fail.timeout {
			// slow, not unreachable: the active checks judge its health
			return h.fail(w, r, http.StatusGatewayTimeout, fmt.Errorf("lbpool: backend did not answer in time: %w", fail.err))
		}
		if !fail.connFault {
			b.passiveFailure(fail.err, v)
		}
		rr.free = !fail.reached || fail.connFault
		if fail.reached && !h.retryTransportError(r, out, st) {
			break
		}
	}
	if lastErr == nil {
		v.endHolds() // nothing else could take it: held backends may come back at once
		return h.fail(w, r, http.StatusServiceUnavailable, errNoBackend)
	}
	if c := h.logger.Check(zapcore.DebugLevel, "every try failed"); c != nil {
		c.Write(zap.String("pool", h.spec.name), zap.Error(lastErr))
	}
	return h.fail(w, r, http.StatusBadGateway, fmt.Errorf("lbpool: every try failed: %w", lastErr))
}

// tryError is a try that failed before the response began, so the client
// has been sent nothing yet.
type tryError struct {
	err       error
	reached   bool // the connection was made: the backend may have seen the request
	timeout   bool // no response headers in time
	connFault bool // a kept-alive connection broke: not held against the backend
	answered  bool // the backend answered, and lb_retry_match sent the request on
	refused   bool // an HTTP/2 backend refused the stream before processing it
}

// A try an HTTP/2 backend refused (upstream.IsRefused) was not processed:
// the backend is at its stream limit, or stopping. Each such try is two
// refusals, as the Transport sends a refused stream once more itself.
//
// A backend that answered other requests since it first refused this one
// is at a limit, not refusing everything, and the request may go to it
// again up to maxLimitedTries times: a burst of n streams on connections
// whose SETTINGS have not arrived yet (up to 100 streams each before
// them) takes about n / (the backend's stream limit) tries to place
// (TestGRPCBackendLimitingStreamsCostsNoCall). Past maxRefusals of them
// each waits a little first (limitedPause), so that a backend shedding
// load by refusing streams is not sent each one 128 times in a row. A
// backend that answered nothing in between is refusing everything:
// maxRefusals such tries, then another backend, as a retry.
const (
	maxRefusals     = 4
	maxLimitedTries = 64
)

// refusedAgain records that b refused the current try, and tells whether
// the request may be sent again without it counting as a retry, and after
// what pause.
func (st *proxyState) refusedAgain(b *Backend) (bool, time.Duration) {
	answered := b.requests.Load()
	progress := st.refusedBy == b && answered != st.refusedAt
	if st.refusedBy != b {
		st.refusedBy, st.refusedAt = b, answered
	}
	switch {
	case progress && st.limited < maxLimitedTries:
		st.limited++
		return true, limitedPause(st.limited)
	case !progress && st.refusals < maxRefusals:
		st.refusals++
		return true, 0
	}
	return false, 0
}

// limitedPause is the wait before the nth try of a request a backend at
// its stream limit refused: none for the first maxRefusals, then 1ms
// doubling up to 50ms, each jittered down by up to half (about 2.8s over
// all 64 at most).
func limitedPause(n int) time.Duration {
	if n <= maxRefusals {
		return 0
	}
	d := min(time.Millisecond<<min(n-maxRefusals-1, 6), 50*time.Millisecond)
	return d - rand.N(d/2+1)
}

// sleepFor waits d; false when ctx ended first.
func sleepFor(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

func (e *tryError) Error() string { return e.err.Error() }

// retryableAfterConnect: a try that failed after connecting is retried only
// for idempotent requests without a body, as the backend may have acted.
func retryableAfterConnect(r *http.Request, out *http.Request) bool {
	return upstream.Idempotent(r.Method) && out.Body == nil
}

// retryAfter is the Retry-After value for 503s, in seconds: the time
// until the next check of a backend that is down (and in no admin state),
// or the end of its flap hold if later, the soonest of them, as one
// passing check may bring it back; else (all drained, in maint, ejected or
// full) one health_interval. At least 1.
func (h *Handler) retryAfter() int {
	wait := h.spec.healthInterval
	now := time.Now().UnixNano()
	for _, b := range h.lease.view.Load().backends {
		if b.flags.Load()&flagsUnavailable != flagDown {
			continue
		}
		if at := b.nextCheck.Load(); at != 0 {
			// a held backend comes back at a check once its hold is over
			wait = min(wait, time.Duration(max(at, b.flap.until.Load())-now))
		}
	}
	return max(1, int((wait+time.Second/2)/time.Second)) // checks are jittered by 10%: rounded
}

func writeError(w http.ResponseWriter, status int, msg string, retryAfter int) {
	hdr := w.Header()
	hdr.Set("Content-Type", "text/plain; charset=utf-8")
	hdr.Set("X-Content-Type-Options", "nosniff")
	if retryAfter > 0 {
		hdr.Set("Retry-After", strconv.Itoa(retryAfter))
	}
	w.WriteHeader(status)
	_, _ = io.WriteString(w, msg+"\n")
}

// hopHeaders are connection-specific and never forwarded (RFC 9110 §7.6.1).
var hopHeaders = []string{
	"Connection", "Proxy-Connection", "Keep-Alive", "Proxy-Authenticate",
	"Proxy-Authorization", "Te", "Trailer", "Transfer-Encoding", "Upgrade",
}

func removeHopHeaders(h http.Header) {
	for _, f := range h["Connection"] {
		for _, name := range strings.Split(f, ",") {
			if name = strings.TrimSpace(name); name != "" {
				h.Del(name)
			}
		}
	}
	for _, name := range hopHeaders {
		h.Del(name)
	}
}

// outgoing prepares the request sent to backends; each try sets only the
// destination. It lives in the request's state (one allocation for both).
func (h *Handler) outgoing(r *http.Request, st *proxyState) *http.Request {
	// a shallow copy with its own URL and header map; header values are
	// shared with the incoming request and only ever replaced, never changed
	out := &st.out
	*out = *r
	st.outURL = *r.URL
	out.URL = &st.outURL
	out.Header = make(http.Header, len(r.Header)+4)
	for k, vv := range r.Header {
		out.Header[k] = vv
	}
	out.RequestURI = ""
	out.Close = false
	if r.ContentLength == 0 {
		out.Body = nil // no body (a chunked one has length -1)
	} else if r.Body != nil {
		// one reader for every try (see requestBody); the next try takes
		// it only when nothing of it was read
		st.body.Reset(r.Body)
		out.Body = &st.body
		if len(r.Trailer) > 0 {
			out.ContentLength = -1 // HTTP/1.1 carries trailers only chunked
		}
	}
	upgrade := upstream.UpgradeType(r.Header)
	trailers := httpguts.HeaderValuesContainsToken(r.Header["Te"], "trailers")
	removeHopHeaders(out.Header)
	if trailers {
		out.Header.Set("Te", "trailers")
	}
	if upgrade != "" {
		out.Header.Set("Connection", "Upgrade")
		out.Header.Set("Upgrade", upgrade)
	}
	if _, ok := out.Header["User-Agent"]; !ok {
		out.Header["User-Agent"] = emptyValue // keep Go's default agent out
	}
	setForwarded(r, out.Header, h.trusted != nil && h.trustedPeer(r))
	return out
}

// setForwarded sets X-Forwarded-For, -Proto and -Host. Incoming values are
// kept (and For appended to) only from proxies the server trusts, or the
// handler's trusted_proxies (trustedHere), as reverse_proxy does.
func setForwarded(r *http.Request, h http.Header, trustedHere bool) {
	trusted, _ := caddyhttp.GetVar(r.Context(), caddyhttp.TrustedProxyVarKey).(bool)
	trusted = trusted || trustedHere
	ip, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		ip = r.RemoteAddr
	}
	if prior := h["X-Forwarded-For"]; trusted && len(prior) > 0 {
		ip = strings.Join(prior, ", ") + ", " + ip
	}
	vals := make([]string, 3) // one allocation for the three headers
	vals[0] = ip
	h["X-Forwarded-For"] = vals[0:1:1]
	if !trusted || h.Get("X-Forwarded-Proto") == "" {
		vals[1] = "http"
		if r.TLS != nil {
			vals[1] = "https"
		}
		h["X-Forwarded-Proto"] = vals[1:2:2]
	}
	if !trusted || h.Get("X-Forwarded-Host") == "" {
		vals[2] = r.Host
		h["X-Forwarded-Host"] = vals[2:3:3]
	}
}

var emptyValue = []string{""}

// proxyTo sends one try to b and, if the backend answers, streams the
// response to the client. A *tryError means the client was sent nothing.
func (h *Handler) proxyTo(w http.ResponseWriter, r, out *http.Request, b *Backend, st *proxyState) (err error) {
	tunneled := false // a tunnel took b's slot and the response over (tunnel.go)
	defer func() {
		if !tunneled {
			b.release()
		}
	}()
	out.URL.Scheme = b.addr.urlScheme()
	out.URL.Host = b.addr.hostport
	out.Host = r.Host
	st.backend = b
	st.tries++
	if !st.grpcDeadline.IsZero() {
		// the backend gets the time left, not the client's whole timeout
		out.Header["Grpc-Timeout"] = []string{formatGRPCTimeout(time.Until(st.grpcDeadline))}
	}
	if h.headerUp != nil {
		h.requestHeadersForTry(r, out, b, st)
	} else {
		setBackendAuth(r, out, b)
	}

	replayed := false // the body goes through st.replay: see replayBody
	if out.Body != nil {
		replayed = h.replayBody(out, b, st)
	}

	var resp *http.Response
	if rt := st.trace; rt != nil {
		rt.startTry(out, b, st)
		defer func() { rt.endTry(err, resp) }()
	}
	start := time.Now()
	var done func(reuse bool) // set on the direct path: gives the connection back
	if h.spec.direct && directOK(out, b) && !replayed {
		resp, done, err = upstream.RoundTrip(w, &b.h1, h.spec.dialer, b.addr.network, b.addr.dial, out, h.spec.responseHeaderTimeout)
	} else {
		resp, err = h.roundTripTransport(w, out, b)
	}
	if err != nil {
		if out.Body != nil && st.body.ClientError() != nil {
			// the client's body broke off, or was refused (too large):
			// not the backend's fault, and not sent again
			return h.clientBodyFailed(w, r, st.body.ClientError())
		}
		var de upstream.DialError
		var rc upstream.ReusedConnError
		// a refused stream was not processed: like a connection that
		// could not be made, when its body can be sent again whole
		refused := upstream.IsRefused(err) && (!replayed || st.replay.Replayable())
		return &tryError{
			err:       err,
			refused:   refused,
			reached:   !errors.As(err, &de) && !refused,
			timeout:   upstream.IsTimeout(err) && !errors.As(err, &de), // a dial timeout is unreachable
			connFault: errors.As(err, &rc),
		}
	}
	st.latency = time.Since(start)
	st.status = resp.StatusCode
	if b.addr.scheme == "https" {
		b.sawProto(resp.ProtoMajor)
	}
	b.observe(start, st.latency, h.lease.leastTime)
	b.requests.Add(1)
	if rs := h.spec.reports; rs != nil {
		at := start.UnixNano() + int64(st.latency)
		b.takeLoadReport(rs, resp.Header, at)
		b.takeLoadReport(rs, resp.Trailer, at) // announced names: not passed on
	}
	if o := h.spec.outlier; o != nil {
		o.observe(h, b, resp.StatusCode, st.latency)
	}
	clean := false // the body was read to its end: the connection can be reused
	defer func() {
		if tunneled {
			return
		}
		if done == nil {
			resp.Body.Close()
			h.spec.transport.used()
			return
		}
		if clean {
			resp.Body.Close()
			done(true)
			return
		}
		// a body left unread is dropped with its connection: Body.Close
		// would drain it, and done hands the connection's reader back to
		// be reused
		done(false)
	}()

	if h.responseMatch != nil && h.retryAnswer(r, out, resp, st) {
		clean = discardAnswer(resp)
		return &tryError{err: fmt.Errorf("backend answered %d, matched by lb_retry_match", resp.StatusCode), reached: true, answered: true}
	}
	if h.headerDown != nil {
		h.applyHeaderDown(r, resp)
	}
	if h.ResponseBuffers != 0 && resp.StatusCode != http.StatusSwitchingProtocols {
		h.bufferResponse(resp)
	}
	if resp.StatusCode == http.StatusSwitchingProtocols {
		tunneled = h.tunnel(w, r, resp, b)
		return nil
	}
	hdr := w.Header()
	removeHopHeaders(resp.Header)
	copyHeader(hdr, resp.Header)
	announced := len(resp.Trailer)
	if announced > 0 {
		names := make([]string, 0, announced)
		for k := range resp.Trailer {
			names = append(names, k)
		}
		hdr.Add("Trailer", strings.Join(names, ", "))
	}
	w.WriteHeader(resp.StatusCode)

	var limit *atomic.Uint32 // which of stream_timeout and stream_close_delay ended the stream
	grpcStream := false
	if st.endStream != nil {
		var stream bool
		if stream, grpcStream = responseStream(resp); stream {
			end := st.endStream
			if grpcStream {
				cut := cutGRPC(resp, end)
				defer cut.stop()
				end = cut.ask
			}
			var stop func()
			stop, limit = h.limitStream(b, end)
			defer stop()
		}
	}
	if err := copyBody(w, resp, h.FlushInterval != 0 || flushesAtOnce(resp)); err != nil {
		if limit != nil && limit.Load() != 0 {
			// the response ends here, as a stream the backend ended would;
			// a gRPC client is told why in its trailers
			if grpcStream {
				endGRPCStream(hdr, limit.Load())
			}
			return nil
		}
		if st.trace != nil {
			st.trace.broke(err)
		}
		if errors.Is(err, errBackendRead) && r.Context().Err() == nil {
			b.failures.Add(1) // the backend broke off (not the client leaving)
			// what did arrive reaches the client before the abort, so it
			// sees the status and the partial body, as reverse_proxy's
			// clients do
			_ = http.NewResponseController(w).Flush()
		}
		// the status is out: the only way to tell the client is to abort
		panic(http.ErrAbortHandler)
	}
	clean = true
	if rs := h.spec.reports; rs != nil && len(resp.Trailer) > 0 {
		b.takeLoadReport(rs, resp.Trailer, time.Now().UnixNano())
	}
	if o := h.spec.outlier; o != nil && o.grpcStatuses != nil {
		o.observeGRPC(h, b, resp)
	}
	if len(resp.Trailer) == announced {
		for k, vv := range resp.Trailer {
			hdr[k] = vv
		}
	} else {
		for k, vv := range resp.Trailer {
			hdr[http.TrailerPrefix+k] = vv
		}
	}
	return nil
}

// replayBody sets out's body for a try to b and tells whether it reads
// through st.replay: to a backend that may speak HTTP/2, which may refuse
// the stream before processing it (and the Transport may send it again on
// its own, with GetBody), and to any backend once a try read some of it.
// Other tries send the client's body as it is.
func (h *Handler) replayBody(out *http.Request, b *Backend, st *proxyState) bool {
	if b.addr.scheme == "http" && st.body.Untouched() {
		out.Body, out.GetBody = &st.body, nil
		return false
	}
	if st.replay == nil {
		st.replay = new(upstream.Replay)
		st.replay.Reset(&st.body)
	}
	out.Body, out.GetBody = st.replay.Reader(), st.replay.GetBody
	return true
}

// clientBodyFailed answers a request whose body could not be read from the
// client: a Caddy error as it is (request_body's 413), otherwise 502, as
// reverse_proxy answers. A client that went away is answered nothing.
func (h *Handler) clientBodyFailed(w http.ResponseWriter, r *http.Request, err error) error {
	if r.Context().Err() != nil {
		return nil
	}
	var he caddyhttp.HandlerError
	if errors.As(err, &he) {
		return he
	}
	return h.fail(w, r, http.StatusBadGateway, fmt.Errorf("lbpool: reading the request body: %w", err))
}

// copyHeader adds src's values to dst; a key dst lacks takes src's slice as
// it is (src is the backend's response, read once and dropped).
func copyHeader(dst, src http.Header) {
	for k, vv := range src {
		if prior := dst[k]; len(prior) > 0 {
			dst[k] = append(prior, vv...)
		} else {
			dst[k] = vv
		}
	}
}

// setBackendAuth sends a backend's credentials to it when the client sent
// none; a retry on another backend does not carry them along.
func setBackendAuth(r, out *http.Request, b *Backend) {
	if _, own := r.Header["Authorization"]; own {
		return
	}
	if b.addr.user != nil {
		setBasicAuth(out.Header, b.addr.user)
	} else if _, set := out.Header["Authorization"]; set {
		delete(out.Header, "Authorization")
	}
}

func setBasicAuth(h http.Header, u interface {
	Username() string
	Password() (string, bool)
}) {
	p, _ := u.Password()
	h.Set("Authorization", "Basic "+base64.StdEncoding.EncodeToString([]byte(u.Username()+":"+p)))
}

// roundTripTransport sends out through net/http's Transport, forwarding
// informational responses (103 Early Hints) to the client as they come. An
// error on a connection the Transport reused (and did not retry, as the
// request could not be sent again) is the connection's, not the
// backend's: it comes back as a upstream.ReusedConnError.
func (h *Handler) roundTripTransport(w http.ResponseWriter, out *http.Request, b *Backend) (*http.Response, error) {
	var mu sync.Mutex
	returned, reused := false, false
	trace := &httptrace.ClientTrace{
		Got1xxResponse: func(code int, hdr textproto.MIMEHeader) error {
			mu.Lock()
			defer mu.Unlock()
			if !returned { // the Transport may call this from its own goroutine
				upstream.Forward1xx(w, code, http.Header(hdr))
			}
			return nil
		},
		GotConn: func(info httptrace.GotConnInfo) {
			mu.Lock()
			reused = info.Reused
			mu.Unlock()
		},
	}
	resp, err := h.spec.transport.to(b).RoundTrip(out.WithContext(httptrace.WithClientTrace(out.Context(), trace)))
	mu.Lock()
	returned = true
	onReused := reused
	mu.Unlock()
	if err != nil {
		if onReused {
			return nil, upstream.Reused(err)
		}
		return nil, err
	}
	if err := upstream.CheckResponse(out, resp); err != nil {
		resp.Body.Close() // a 101's closes the connection
		h.spec.transport.used()
		return nil, err
	}
	return resp, nil
}

// flushesAtOnce: server-sent events and bodies of unknown length reach the
// client as the backend writes them.
func flushesAtOnce(resp *http.Response) bool {
	return resp.ContentLength == -1 || isEventStream(resp)
}

// isEventStream: a response of server-sent events.
func isEventStream(resp *http.Response) bool {
	return strings.HasPrefix(resp.Header.Get("Content-Type"), "text/event-stream")
}

// responseStream tells whether a response is a stream for stream_timeout
// and stream_close_delay, server-sent events or gRPC, and which: one read
// of its Content-Type, made only when either option is set.
func responseStream(resp *http.Response) (stream, grpc bool) {
	ct := resp.Header.Get("Content-Type")
	if strings.HasPrefix(ct, "text/event-stream") {
		return true, false
	}
	grpc = isGRPCContentType(ct)
	return grpc, grpc
}

var errBackendRead = errors.New("reading the backend's response")

func copyBody(w http.ResponseWriter, resp *http.Response, flush bool) error {
	bp := upstream.GetBuffer()
	defer upstream.PutBuffer(bp)
	buf := *bp
	var rc *http.ResponseController
	if flush {
		rc = http.NewResponseController(w)
	}
	for {
		n, rerr := resp.Body.Read(buf)
		if n > 0 {
			if _, werr := w.Write(buf[:n]); werr != nil {
				return werr
			}
			if rc != nil {
				if err := rc.Flush(); err != nil && !errors.Is(err, http.ErrNotSupported) {
					return err
				}
			}
		}
		if rerr == io.EOF {
			return nil
		}
		if rerr != nil {
			return fmt.Errorf("%w: %v", errBackendRead, rerr)
		}
	}
}

// failReason names a proxy failure for the status-change log.
func failReason(err error) string {
	return "proxy error: " + errReason(err)
}
