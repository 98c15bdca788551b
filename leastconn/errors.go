package leastconn

import (
	"errors"
	"net/http"
	"strconv"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
)

// A request lbpool cannot proxy ends as a Caddy error: no backend up and
// ready (503, with Retry-After), every try failed (502), no response
// headers in time (504). When the server has handle_errors routes, the
// handler returns caddyhttp.Error(status, cause) and they answer, with
// {err.status_code} and {err.message} (the cause); Retry-After stays set.
// Without them lbpool answers itself, as it always has: the status, a
// short text body and Retry-After on a 503 (Caddy's own answer to a handler
// error would be the status and an empty body).

var errNoBackend = errors.New("lbpool: no backend available")

// shortBodies are the bodies lbpool answers with when no handle_errors
// route does; they never carry a backend's error.
var shortBodies = map[int]string{
	http.StatusServiceUnavailable: "lbpool: no backend available",
	http.StatusBadGateway:         "lbpool: bad gateway",
	http.StatusGatewayTimeout:     "lbpool: backend did not answer in time",
}

// fail answers a request lbpool could not proxy with status; cause says why.
func (h *Handler) fail(w http.ResponseWriter, r *http.Request, status int, cause error) error {
	retryAfter := 0
	if status == http.StatusServiceUnavailable {
		retryAfter = h.retryAfter()
	}
	if h.ProxyStatusName != "" {
		h.setProxyStatus(w, status, cause)
	}
	if isGRPC(r) {
		grpcFail(w, status, cause) // a gRPC client reads statuses, not pages
		return nil
	}
	if !hasErrorRoutes(r) {
		writeError(w, status, shortBodies[status], retryAfter)
		return nil
	}
	if retryAfter > 0 {
		w.Header().Set("Retry-After", strconv.Itoa(retryAfter))
	}
	return caddyhttp.Error(status, cause)
}

// hasErrorRoutes tells whether the request's server has handle_errors routes.
func hasErrorRoutes(r *http.Request) bool {
	srv, _ := r.Context().Value(caddyhttp.ServerCtxKey).(*caddyhttp.Server)
	return srv != nil && srv.Errors != nil && len(srv.Errors.Routes) > 0
}
