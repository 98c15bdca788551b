package leastconn

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"runtime/debug"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/lbpool/lbpool/internal/upstream"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// Each backend has one checker goroutine, started with the backend's first
// reference in the registry and stopped with its last, so the number of
// checkers never depends on how many handlers or reloads there were. Each
// checker runs on its own jittered schedule, and its first check comes
// promptly (within firstCheckSpread) after the backend joins. The check
// after that comes at a random moment within one interval (see
// spreadCheckIn), so the checks of a large pool that joined at once are
// spread over the whole interval from the second round on, instead of
// arriving together every interval.

const (
	firstCheckSpread = 100 * time.Millisecond
	healthBodyLimit  = 64 << 10
)

// checkResult is the outcome of one active check.
type checkResult struct {
	at       time.Time
	duration time.Duration
	status   int    // 0 when no response
	reason   string // "" when the check passed
}

func (b *Backend) startChecker() {
	ctx, cancel := context.WithCancel(context.Background())
	b.stop = cancel
	b.done = make(chan struct{})
	go b.runChecks(ctx)
}

// stopChecker stops the checker and waits for it to return.
func (b *Backend) stopChecker() {
	b.stop()
	<-b.done
	b.h1.Prune(time.Now(), 0)
}

// checkNow asks the checker for a check at once, without waiting for it.
func (b *Backend) checkNow() {
	select {
	case b.kick <- struct{}{}:
	default: // one is already pending
	}
}

// recheckSoon asks for a check within firstCheckSpread, at a random moment
// so that many backends are not probed in the same instant.
func (b *Backend) recheckSoon() {
	select {
	case b.respec <- struct{}{}:
	default:
	}
}

// nextCheckIn spreads checks: each interval is stretched or shrunk by up to
// 10%, so backends drift apart instead of being probed in the same instant.
func nextCheckIn(interval time.Duration) time.Duration {
	return interval*9/10 + rand.N(interval/5+1)
}

// spreadCheckIn is the wait after a prompt check (a backend's first, or the
// first under a changed check) that found it up: anywhere within the
// interval, so that 3,000
// backends that joined together are checked about evenly over it rather
// than all within the 10% jitter of the same instant. The checks that
// follow keep that phase, with nextCheckIn's jitter.
func spreadCheckIn(interval time.Duration) time.Duration {
	return 1 + rand.N(interval)
}

func (b *Backend) runChecks(ctx context.Context) {
	defer close(b.done)
	defer func() {
		if err := recover(); err != nil {
			b.pool.spec.Load().logger.Error("health checker panicked",
				zap.String("backend", b.URL()), zap.Any("error", err), zap.ByteString("stack", debug.Stack()))
		}
	}()
	first := rand.N(firstCheckSpread)
	b.nextCheck.Store(time.Now().Add(first).UnixNano())
	timer := time.NewTimer(first)
	defer timer.Stop()
	var downWait time.Duration // see nextCheckWait
	prompt := true             // the coming check is a prompt one: spread the next
	for {
		select {
		case <-ctx.Done():
			return
		case <-timer.C:
		case <-b.kick:
		case <-b.respec:
			// the check changed: check under it soon, but spread out
			b.checkIn(timer, rand.N(firstCheckSpread))
			prompt = true
			continue
		}
		spec := b.pool.spec.Load()
		if b.flags.Load()&flagMaint == 0 {
			b.mu.Lock()
			epoch := b.passiveEpoch
			b.mu.Unlock()
			res := b.check(ctx, spec)
			if ctx.Err() != nil {
				return // stopped mid-check: not the backend's fault
			}
			observeCheck(spec.name, b, res.duration)
			b.record(spec, res, epoch)
			if spec.statsURI != "" && b.flags.Load()&flagDown == 0 {
				if f := b.pool.fetcher.Load(); f != nil && !f.offer(b) {
					if c := spec.logger.Check(zapcore.DebugLevel, "stats fetch skipped: queue full"); c != nil {
						c.Write(zap.String("pool", spec.name), zap.String("backend", b.URL()))
					}
				}
			}
		}
		b.h1.Prune(time.Now(), upstream.IdleTimeout)
		wait := nextCheckIn
		if prompt && b.flags.Load()&flagDown == 0 {
			// up: the next check is health_interval's; a down backend's
			// follow health_down_interval's quick schedule
			wait = spreadCheckIn
		}
		prompt = false
		b.checkIn(timer, b.untilHoldEnds(wait(b.nextCheckWait(spec, &downWait))))
	}
}

// checkIn sets the check timer to d, and notes when that is.
func (b *Backend) checkIn(timer *time.Timer, d time.Duration) {
	b.nextCheck.Store(time.Now().Add(d).UnixNano())
	timer.Reset(d)
}

// nextCheckWait is the wait before b's next check: health_interval while it is
// up; while it is down health_down_interval, doubled after each failed
// check that reached it (*downWait carries the doubling), up to
// health_interval. A refused connection does not double the wait: nothing
// listens yet, so a backend that restarts or starts late is back as soon as
// it answers.
func (b *Backend) nextCheckWait(s *poolSpec, downWait *time.Duration) time.Duration {
	if b.flags.Load()&(flagDown|flagMaint) != flagDown {
		*downWait = 0
		return s.healthInterval
	}
	if *downWait == 0 {
		*downWait = s.healthDownInterval
	}
	wait := min(*downWait, s.healthInterval)
	b.mu.Lock()
	refused := b.lastCheck.reason == "connection refused"
	b.mu.Unlock()
	if !refused && *downWait < s.healthInterval {
		*downWait *= 2
	}
	return wait
}

// check runs one active health check.
func (b *Backend) check(ctx context.Context, s *poolSpec) checkResult {
	start := time.Now()
	res := checkResult{at: start}
	ctx, cancel := context.WithTimeout(ctx, s.healthTimeout)
	defer cancel()
	if s.healthGRPC != nil {
		b.checkGRPC(ctx, s, &res)
		return res
	}
	req, err := b.checkRequest(ctx, s)
	if err != nil {
		res.reason = err.Error()
		return res
	}
	var resp *http.Response
	if s.healthFollow {
		resp, err = (&http.Client{Transport: s.transport.to(b)}).Do(req)
	} else {
		// the transport does not follow redirects: a 3xx is judged as it is
		resp, err = s.transport.to(b).RoundTrip(req)
	}
	if err != nil {
		res.duration = time.Since(start)
		res.reason = errReason(err)
		return res
	}
	defer s.transport.used()
	defer resp.Body.Close()
	res.status = resp.StatusCode
	var body []byte
	if s.healthBody != nil {
		body, err = io.ReadAll(io.LimitReader(resp.Body, healthBodyLimit))
	} else {
		_, err = io.Copy(io.Discard, io.LimitReader(resp.Body, healthBodyLimit))
	}
	res.duration = time.Since(start)
	switch {
	case err != nil:
		res.reason = "reading body: " + errReason(err)
	case !statusMatches(resp.StatusCode, s.healthStatus):
		res.reason = "status " + strconv.Itoa(resp.StatusCode)
	case s.healthBody != nil && !s.healthBody.Match(body):
		res.reason = "body did not match"
	}
	return res
}

// checkRequest makes the check's request: health_method, health_port,
// health_request_body and health_headers applied.
func (b *Backend) checkRequest(ctx context.Context, s *poolSpec) (*http.Request, error) {
	req, err := b.newRequest(ctx, s.healthURI)
	if err != nil {
		return nil, err
	}
	req.Method = s.healthMethod
	if s.healthPort != 0 && b.addr.network != "unix" {
		host, _, err := net.SplitHostPort(req.URL.Host)
		if err != nil {
			host = req.URL.Host
		}
		req.URL.Host = net.JoinHostPort(host, strconv.Itoa(s.healthPort))
	}
	if s.healthRequestBody != "" {
		body := s.healthRequestBody
		req.Body = io.NopCloser(strings.NewReader(body))
		req.GetBody = func() (io.ReadCloser, error) { return io.NopCloser(strings.NewReader(body)), nil }
		req.ContentLength = int64(len(body))
	}
	for k, vv := range s.healthHeaders {
		if http.CanonicalHeaderKey(k) == "Host" {
			req.Host = vv[0]
			continue
		}
		req.Header[http.CanonicalHeaderKey(k)] = vv
	}
	return req, nil
}

// statusMatches: want is a full code, a class digit (2 means 2xx), or 0
// for any 2xx or 3xx (HAProxy's rule: an app that redirects is up).
func statusMatches(got, want int) bool {
	if want == 0 {
		return got >= 200 && got < 400
	}
	if want < 10 {
		return got/100 == want
	}
	return got == want
}

// errReason names a network error in a few words.
func errReason(err error) string {
	var ne net.Error
	switch {
	case errors.Is(err, syscall.ECONNREFUSED):
		return "connection refused"
	case errors.Is(err, syscall.ECONNRESET):
		return "connection reset"
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		return "connection closed"
	case errors.Is(err, context.DeadlineExceeded), errors.As(err, &ne) && ne.Timeout():
		return "timeout"
	}
	return err.Error()
}

// record applies a check result: consecutive counters (an opposite result
// resets the other), and the up/down thresholds.
func (b *Backend) record(s *poolSpec, res checkResult, epoch uint64) {
	b.mu.Lock()
	b.lastCheck = res
	changed, up := false, false
	previous := ""     // the reason logged before, when a down backend fails for another
	first := b.joining // a new member's first check decides at once
	b.joining = false
	var hold holdEvent
	end := res.at.Add(res.duration)
	if res.reason == "" {
		if b.passiveEpoch != epoch {
			// the backend failed a request while this check ran: the pass
			// is older than the failure and does not count
			b.mu.Unlock()
			return
		}
		b.passes++
		b.fails = 0
		if b.flap.suspect != "" && s.flap != nil && b.flags.Load()&flagDown != 0 {
			hold = b.holdLocked(s.flap, end) // requests fail, checks pass: a flap
		}
		if b.flags.Load()&flagDown != 0 && (b.passes >= s.healthPasses || first) && !b.heldAt(s, res.at) {
			b.setUpLocked(s, end)
			if !first { // a new member's first check lets it in; it does not bring it back
				b.cameBack(end)
			}
			changed, up = true, true
		}
	} else {
		b.flap.suspect, b.flap.suspectView = "", nil // the checks agree: down, not flapping
		b.fails++
		b.passes = 0
		switch {
		case b.flags.Load()&flagDown == 0:
			if b.fails >= s.healthFails {
				b.setDownLocked(res.at.Add(res.duration), res.reason)
				changed = true
			}
		case res.reason != b.downReason:
			// still down, for another reason: an operator reading the
			// last warning must not be left with the old one
			previous, b.downReason = b.downReason, res.reason
		}
	}
	b.mu.Unlock()
	if up {
		b.pool.queue.wakeAll() // room for the queued, if any
	}
	b.logHold(s, hold)
	if changed {
		b.logChange(s, up, res.reason, res.duration)
	} else if previous != "" {
		b.logReasonChange(s, previous, res)
	} else if c := s.logger.Check(zapcore.DebugLevel, "health check"); c != nil {
		c.Write(zap.String("pool", s.name), zap.String("backend", b.URL()),
			zap.Bool("passed", res.reason == ""), zap.String("reason", res.reason),
			zap.Int("status_code", res.status), zap.Duration("check_duration", res.duration))
	}
}

// passiveFailure takes a backend that could not be reached out at once and
// asks for an active check; only passing checks bring it back. The check
// that finds the same cause (a refused connection) is no new reason. A
// failure soon after the checks brought it back holds it out if that check
// passes (flap.go); v is the view the request picked it from.
func (b *Backend) passiveFailure(err error, v *view) {
	s := b.pool.spec.Load()
	now := time.Now()
	reason := failReason(err)
	b.mu.Lock()
	b.passiveEpoch++
	b.passes = 0
	b.fails++
	changed := false
	if b.flags.Load()&flagDown == 0 {
		b.setDownLocked(now, errReason(err))
		changed = true
		if s.flap != nil {
			b.suspectLocked(s.flap, v, now, reason)
		}
	}
	b.mu.Unlock()
	if changed {
		b.logChange(s, false, reason, 0)
	}
	b.checkNow()
}

// setDownLocked marks the backend down; reason is what a check that fails
// for the same cause reports.
func (b *Backend) setDownLocked(now time.Time, reason string) {
	for {
		f := b.flags.Load()
		if b.flags.CompareAndSwap(f, (f|flagDown)&^flagRamp) {
			break
		}
	}
	b.changes++
	b.lastChange = now
	b.downSince = now
	b.upSince = time.Time{}
	b.downReason = reason
}

func (b *Backend) setUpLocked(s *poolSpec, now time.Time) {
	ramp := s.slowStart > 0
	if ramp {
		b.rampFrom.Store(now.UnixNano())
		b.rampLen.Store(int64(s.slowStart))
	}
	for {
		f := b.flags.Load()
		next := f &^ flagDown
		if ramp {
			next |= flagRamp
		}
		if b.flags.CompareAndSwap(f, next) {
			break
		}
	}
	if !b.downSince.IsZero() {
		b.downtime += now.Sub(b.downSince)
	}
	b.changes++
	b.lastChange = now
	b.downSince = time.Time{}
	b.upSince = now
	b.downReason = ""
}

// logChange writes the one log entry of a status change: warn for down,
// info for up.
func (b *Backend) logChange(s *poolSpec, up bool, reason string, took time.Duration) {
	status, level := "up", zapcore.InfoLevel
	if !up {
		status, level = "down", zapcore.WarnLevel
	}
	if reason == "" {
		reason = "check passed"
	}
	if c := s.logger.Check(level, "status change"); c != nil {
		c.Write(zap.String("pool", s.name), zap.String("backend", b.URL()),
			zap.String("status", status), zap.String("reason", reason),
			zap.Duration("check_duration", took))
	}
}

// logReasonChange writes the one log entry of a down backend that fails
// for another reason than the one logged before, at warn as its going down.
func (b *Backend) logReasonChange(s *poolSpec, previous string, res checkResult) {
	if c := s.logger.Check(zapcore.WarnLevel, "reason change"); c != nil {
		c.Write(zap.String("pool", s.name), zap.String("backend", b.URL()),
			zap.String("status", "down"), zap.String("reason", res.reason),
			zap.String("previous_reason", previous), zap.Duration("check_duration", res.duration))
	}
}

// healthKey is what a check depends on; a reload that changes it re-checks
// at once.
func (s *poolSpec) healthKey() string {
	var body string
	if s.healthBody != nil {
		body = s.healthBody.String()
	}
	var hdr bytes.Buffer
	_ = s.healthHeaders.Write(&hdr)
	// the transport too: checks go over it, and its TLS may have changed
	return fmt.Sprint(s.healthURI, s.healthInterval, s.healthTimeout, s.healthStatus, body,
		hdr.String(), s.healthPasses, s.healthFails, fmt.Sprintf("%p", s.transport),
		s.healthDownInterval, s.healthPort, s.healthMethod, s.healthRequestBody, s.healthFollow)
}
