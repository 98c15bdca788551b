package leastconn

import (
	"context"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/lbpool/lbpool/internal/upstream"
)

// Placeholders of a proxied request, for access logs (log_append), header
// operations and handle_errors:
//
//	{http.lbpool.pool}              the pool's name
//	{http.lbpool.backend}           the backend's URL as stats show it (credentials redacted)
//	{http.lbpool.backend.hostport}  host:port; a unix socket's path
//	{http.lbpool.backend.host}      host; a unix socket's path
//	{http.lbpool.backend.port}      port; "" for a unix socket
//	{http.lbpool.status_code}       the backend's response status
//	{http.lbpool.latency_ms}        time to the backend's response headers
//	{http.lbpool.duration_ms}       time in lbpool, all tries and the body included
//	{http.lbpool.retries}           tries after the first
//	{http.lbpool.pick}              why the backend was chosen: the policy's name
//	                                (least_conn, round_robin, ...), hash, hash_spill
//	                                (past the key's first choice), sticky, retry or
//	                                backup (a backup backend)
//
// The backend ones name the try under way, and once a backend answered,
// the try that answered. Nothing is computed or copied until a placeholder
// is read: a request pays one small allocation and one provider on its
// replacer (caddy.Replacer.Map).
const placeholderPrefix = "http.lbpool."

// proxyState is what the placeholders of one request read.
type proxyState struct {
	pool    string
	backend *Backend // the current or answering try's backend; nil before the first
	tries   int
	// tries that backends refused before processing them (REFUSED_STREAM)
	// while answering nothing else, and while answering others (proxy.go)
	refusals, limited int
	refusedBy         *Backend      // the backend that refused the last try
	refusedAt         uint64        // its requests counter when it first refused
	pick              string        // why the current try's backend was chosen (pickReason)
	status            int           // 0 until a backend answered
	latency           time.Duration // of the answering try
	start             time.Time
	end               time.Time // zero while lbpool still handles the request

	base http.Header // the outgoing headers before header_up; only with header_up

	out    http.Request // the request sent to backends (see outgoing)
	outURL url.URL
	body   upstream.RequestBody // out's body, when there is one
	replay *upstream.Replay     // the body as tries to HTTP/2 backends read it; nil until one does

	// a gRPC call's deadline from its grpc-timeout (zero without one), and
	// the client's context, which that deadline does not end
	grpcDeadline time.Time
	client       context.Context

	endStream func() // ends the request's stream; nil without stream limits (streams.go)

	tried triedSet // the backends tried (see ServeHTTP)
	retry retryRun // the retries' state (retry.go)

	trace *requestTrace // nil unless Caddy's tracing handler traces the request
}

// track starts the request's state and offers it to the request's replacer.
func (h *Handler) track(r *http.Request) *proxyState {
	st := &proxyState{pool: h.spec.name, start: time.Now()}
	if repl, ok := r.Context().Value(caddy.ReplacerCtxKey).(*caddy.Replacer); ok {
		repl.Map(st.placeholder)
	}
	return st
}

// done marks the end of lbpool's part of the request.
func (st *proxyState) done() { st.end = time.Now() }

// placeholder is the replacer's provider for http.lbpool.*.
func (st *proxyState) placeholder(key string) (any, bool) {
	name, ok := strings.CutPrefix(key, placeholderPrefix)
	if !ok {
		return nil, false
	}
	switch name {
	case "pool":
		return st.pool, true
	case "retries":
		return max(st.tries-1, 0), true
	case "pick":
		if st.pick == "" {
			return nil, false
		}
		return st.pick, true
	case "duration_ms":
		end := st.end
		if end.IsZero() {
			end = time.Now()
		}
		return millis(end.Sub(st.start)), true
	}
	if st.backend == nil {
		return nil, false
	}
	a := &st.backend.addr
	switch name {
	case "backend":
		return a.display, true
	case "backend.hostport":
		return a.phHostport, true
	case "backend.host":
		return a.phHost, true
	case "backend.port":
		return a.phPort, true
	}
	if st.status == 0 {
		return nil, false
	}
	switch name {
	case "status_code":
		return st.status, true
	case "latency_ms":
		return millis(st.latency), true
	}
	return nil, false
}

// millis is a duration in milliseconds with decimals, as reverse_proxy
// gives its *_ms placeholders.
func millis(d time.Duration) float64 { return d.Seconds() * 1e3 }
