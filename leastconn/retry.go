package leastconn

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"
)

// Retries. A failed try is retried on a backend not yet tried, within three
// limits: the retries option (every other backend by default), lb_try_duration
// (which also waits for a backend to come back), and the pool's retry budget.
// The budget (Envoy's retry_budget, Linkerd's retry budget) lets a retry
// start only while the pool's retries in flight are fewer than
// max(min, percent × the pool's requests in flight), so a pool that fails
// as a whole is not sent a multiple of its load at the worst moment. The
// budget covers the retries that add work to backends: after an answer
// lb_retry_match matched, and after a try that reached a backend on a new
// connection; a try that reached none (no connection, or a kept-alive one
// the backend had closed) is retried outside it, as it cost nothing. The
// bookkeeping is two atomic counts on the pool, touched only by retries;
// the requests in flight are the backends' active counts plus the queue,
// summed when a retry asks.

// Defaults of the retry options, also documented in docs/retries-and-errors.md.
const (
	DefaultRetryBudgetPercent = 20
	DefaultRetryBudgetMin     = 3
	DefaultTryInterval        = 250 * time.Millisecond
)

// RetryBudget caps the retries a pool has in flight at once.
type RetryBudget struct {
	// Retries in flight may reach this percentage of the pool's requests
	// in flight. Default: 20.
	Percent *int `json:"percent,omitempty"`

	// Retries in flight allowed however few requests are in flight.
	// Default: 3.
	Min *int `json:"min,omitempty"`

	// No budget: retries are bounded only by retries and try_duration.
	Off bool `json:"off,omitempty"`
}

// budget is a RetryBudget resolved.
type budget struct {
	off     bool
	percent int64
	min     int64
}

var errTryWoken = errors.New("lbpool: woken to try again")

// retryRun is one request's retry state; it lives in the request's
// proxyState.
type retryRun struct {
	v        *view
	left     int       // retries left; -1: as many as try_duration allows
	deadline time.Time // zero without try_duration
	held     int64     // slots of the pool's retry budget held: the retries made
	reserved bool      // the slot was taken for a retry a matched answer asked for
	free     bool      // the last try reached no backend: its retry is outside the budget
}

// provisionRetries resolves the retry options.
func (h *Handler) provisionRetries(ctx caddy.Context) error {
	h.budget = budget{percent: DefaultRetryBudgetPercent, min: DefaultRetryBudgetMin}
	if rb := h.RetryBudget; rb != nil {
		h.budget.off = rb.Off
		if rb.Percent != nil {
			if *rb.Percent < 0 || *rb.Percent > 1000 {
				return fmt.Errorf("lbpool: retry_budget: percent must be from 0 to 1000")
			}
			h.budget.percent = int64(*rb.Percent)
		}
		if rb.Min != nil {
			if *rb.Min < 0 || *rb.Min > 1000000 {
				return fmt.Errorf("lbpool: retry_budget: min must be from 0 to 1000000")
			}
			h.budget.min = int64(*rb.Min)
		}
	}
	if h.TryDuration < 0 || h.TryInterval < 0 {
		return fmt.Errorf("lbpool: try_duration and try_interval must not be negative")
	}
	h.tryInterval = time.Duration(h.TryInterval)
	if h.tryInterval == 0 {
		h.tryInterval = DefaultTryInterval
	}
	h.retries = -1
	if h.Retries != nil {
		h.retries = *h.Retries
	}
	if h.RetryMatchRaw != nil {
		mods, err := ctx.LoadModule(h, "RetryMatchRaw")
		if err != nil {
			return fmt.Errorf("lbpool: retry_match: %w", err)
		}
		if err := h.retryMatch.FromInterface(mods); err != nil {
			return fmt.Errorf("lbpool: retry_match: %w", err)
		}
		for _, set := range h.retryMatch {
			if readsResponse(set) {
				h.responseMatch = append(h.responseMatch, set)
			}
		}
	}
	return nil
}

// startRetries sets up the request's retry state for view v.
func (h *Handler) startRetries(rr *retryRun, v *view, start time.Time) {
	rr.v = v
	rr.left = h.retriesIn(v)
	if h.TryDuration > 0 {
		rr.deadline = start.Add(time.Duration(h.TryDuration))
		if h.retries < 0 {
			rr.left = -1
		}
	}
}

// acquire takes a slot of the pool's retry budget; false when the budget
// is spent.
func (h *Handler) acquire(rr *retryRun) bool {
	p := h.lease.pool
	n := p.retrying.Add(1)
	if !h.budget.off && n > h.budgetLimit(rr.v) {
		p.retrying.Add(-1)
		p.budgetExhausted.Add(1)
		return false
	}
	p.retriesTotal.Add(1)
	rr.held++
	return true
}

// budgetLimit is how many retries the pool may have in flight now.
func (h *Handler) budgetLimit(v *view) int64 {
	inflight := h.lease.pool.queue.waiting.Load()
	for _, b := range v.backends {
		inflight += b.active.Load()
	}
	return max(h.budget.min, inflight*h.budget.percent/100)
}

// endRetries gives back the budget slots of a request that retried: each
// retry is in flight until the request it serves ends.
func (h *Handler) endRetries(rr *retryRun) {
	if rr.held > 0 {
		h.lease.pool.retrying.Add(-rr.held)
		rr.held = 0
	}
}

// next decides whether the request may try again: tries are left, the
// time is not up, and the budget has room (under try_duration a spent
// budget is waited for, a try_interval at a time).
func (h *Handler) next(ctx context.Context, rr *retryRun) bool {
	if rr.reserved {
		rr.reserved = false
		return true
	}
	if rr.left == 0 {
		return false
	}
	for {
		if !rr.deadline.IsZero() && !time.Now().Before(rr.deadline) {
			return false
		}
		if rr.free {
			rr.free = false
			h.lease.pool.retriesTotal.Add(1)
			if rr.left > 0 {
				rr.left--
			}
			return true
		}
		if h.acquire(rr) {
			if rr.left > 0 {
				rr.left--
			}
			return true
		}
		if rr.deadline.IsZero() || !h.pause(ctx, rr) {
			return false
		}
	}
}

// pause waits a try_interval, or until the deadline; false when the client
// went away.
func (h *Handler) pause(ctx context.Context, rr *retryRun) bool {
	return sleepFor(ctx, min(h.tryInterval, time.Until(rr.deadline)))
}

// await waits, under try_duration, for a backend to take the request when
// none could: it is woken by a status change as queued requests are, and
// tries every backend again after a try_interval at most. It returns -1
// with no error when the time is up or the client went away.
func (h *Handler) await(ctx context.Context, rr *retryRun, tried *triedSet) (int, error) {
	for !rr.deadline.IsZero() {
		left := time.Until(rr.deadline)
		if left <= 0 {
			return -1, nil
		}
		i, err := h.lease.queueFor(ctx, rr.v, tried, min(h.tryInterval, left), false)
		if err != errTryWoken {
			return i, err
		}
		*tried = newTriedSet(len(rr.v.backends)) // a new round: every backend again
		if i := h.lease.pick(rr.v, tried); i >= 0 {
			return i, nil
		}
	}
	return -1, nil
}

// retryAnswer decides, for an answer that matches lb_retry_match, whether
// it is discarded for a retry: a backend not yet tried can take it (or
// try_duration may wait for one), the request's body can be sent again,
// and the budget has room. Then the budget slot is taken for that retry.
func (h *Handler) retryAnswer(r, out *http.Request, resp *http.Response, st *proxyState) bool {
	if h.responseMatch == nil || !st.bodyResendable(out) {
		return false
	}
	rr := &st.retry
	if rr.left == 0 || (!rr.deadline.IsZero() && !time.Now().Before(rr.deadline)) {
		return false
	}
	if rr.deadline.IsZero() && !rr.v.someUntried(&st.tried) {
		return false
	}
	if !h.matchAnswer(r, resp) {
		return false
	}
	if !h.acquire(rr) {
		return false
	}
	if rr.left > 0 {
		rr.left--
	}
	rr.reserved = true
	return true
}

// matchAnswer evaluates the matcher sets that read the response, as
// reverse_proxy does, with {rp.status_code}, {rp.status_text} and
// {rp.header.*} set from resp.
func (h *Handler) matchAnswer(r *http.Request, resp *http.Response) bool {
	repl, ok := r.Context().Value(caddy.ReplacerCtxKey).(*caddy.Replacer)
	if !ok {
		return false
	}
	repl.DeleteByPrefix(rpHeaderPrefix)
	for k, vv := range resp.Header {
		repl.Set(rpHeaderPrefix+k, strings.Join(vv, ","))
	}
	repl.Set("http.reverse_proxy.status_code", resp.StatusCode)
	repl.Set("http.reverse_proxy.status_text", resp.Status)
	for _, set := range h.responseMatch {
		match, err := set.MatchWithError(r)
		if err != nil {
			h.logger.Error("matching the response for lb_retry_match", zap.Error(err))
			return false
		}
		if match {
			return true
		}
	}
	return false
}

// retryTransportError tells whether a try that failed after connecting is
// retried: without lb_retry_match, idempotent requests without a body;
// with it, requests any matcher set matches with {rp.is_transport_error}
// true, as reverse_proxy decides.
func (h *Handler) retryTransportError(r, out *http.Request, st *proxyState) bool {
	if h.retryMatch == nil {
		return retryableAfterConnect(r, out)
	}
	if !st.bodyResendable(out) {
		return false
	}
	repl, ok := r.Context().Value(caddy.ReplacerCtxKey).(*caddy.Replacer)
	if !ok {
		return false
	}
	repl.Set("http.reverse_proxy.is_transport_error", true)
	defer repl.Delete("http.reverse_proxy.is_transport_error")
	match, err := h.retryMatch.AnyMatchWithError(r)
	if err != nil {
		h.logger.Error("matching the request for lb_retry_match", zap.Error(err))
		return false
	}
	return match
}

// discardAnswer reads a matched answer's body away (a little of it: more
// and the connection is dropped instead); true when it was read to its end.
func discardAnswer(resp *http.Response) bool {
	n, err := io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	return err == nil && n < 64<<10
}

// bodyResendable: the request has no body, or none of it was read yet.
func (st *proxyState) bodyResendable(out *http.Request) bool {
	return out.Body == nil || st.body.Untouched() || st.replay != nil && st.replay.Replayable()
}

// someUntried tells whether a backend of v not in tried could take traffic.
func (v *view) someUntried(tried *triedSet) bool {
	for i, b := range v.backends {
		if !tried.has(i) && b.flags.Load()&flagsUnavailable == 0 {
			return true
		}
	}
	return false
}

const rpHeaderPrefix = "http.reverse_proxy.header."

// readsResponse tells whether a matcher set has an expression that reads
// the response ({rp.status_code}, {rp.header.*}, ...): only those sets are
// evaluated against answers, as reverse_proxy evaluates them.
func readsResponse(set caddyhttp.MatcherSet) bool {
	for _, m := range set {
		expr, ok := m.(*caddyhttp.MatchExpression)
		if !ok {
			continue
		}
		for _, name := range expr.Placeholders() {
			switch {
			case name == "", strings.HasPrefix(name, rpHeaderPrefix),
				name == "http.reverse_proxy.status_code", name == "http.reverse_proxy.status_text",
				name == "http.reverse_proxy.upstream.latency", name == "http.reverse_proxy.upstream.latency_ms":
				return true
			}
		}
	}
	return false
}
