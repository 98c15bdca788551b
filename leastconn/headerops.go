package leastconn

import (
	"fmt"
	"net/http"
	"strings"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/headers"
	"golang.org/x/net/http/httpguts"
)

// header_up and header_down are reverse_proxy's: Caddy's own header
// operations (add +, delete -, set, replace by substring or regexp), with
// placeholders resolved for each try, so {http.lbpool.backend.hostport}
// names the backend of the try that sends the request. Hop-by-hop headers
// are dropped and X-Forwarded-* set before header_up runs, so header_up
// has the last word, as with reverse_proxy. Without them a request pays one
// nil check each way.

// provisionHeaders compiles the header operations.
func (h *Handler) provisionHeaders(ctx caddy.Context) error {
	if h.Headers == nil {
		return nil
	}
	if err := h.Headers.Provision(ctx); err != nil {
		return fmt.Errorf("lbpool: headers: %w", err)
	}
	if err := h.Headers.Validate(); err != nil {
		return fmt.Errorf("lbpool: headers: %w", err)
	}
	if h.Headers.Request != nil {
		h.headerUp = h.Headers.Request
	}
	if h.Headers.Response != nil && h.Headers.Response.HeaderOps != nil {
		h.headerDown = h.Headers.Response
	}
	return nil
}

// requestHeadersForTry gives out a fresh copy of the outgoing headers (each
// try starts from the same ones; header ops change values in place), the
// backend's credentials, then header_up's changes.
func (h *Handler) requestHeadersForTry(r, out *http.Request, b *Backend, st *proxyState) {
	if st.base == nil {
		st.base = out.Header
	}
	out.Header = make(http.Header, len(st.base)+2)
	for k, vv := range st.base {
		out.Header[k] = append([]string(nil), vv...)
	}
	setBackendAuth(r, out, b)
	h.headerUp.ApplyToRequest(out)
}

// applyHeaderDown changes the backend's response headers before they are
// copied to the client; `require` conditions are honoured.
func (h *Handler) applyHeaderDown(r *http.Request, resp *http.Response) {
	ops := h.headerDown
	if ops.Require != nil && !ops.Require.Match(resp.StatusCode, resp.Header) {
		return
	}
	repl, ok := r.Context().Value(caddy.ReplacerCtxKey).(*caddy.Replacer)
	if !ok {
		repl = caddy.NewReplacer()
	}
	ops.ApplyTo(resp.Header, repl)
}

// checkHeaderOp refuses a field name or value that could never be sent: a
// request carrying it would fail, and its backend be blamed.
func checkHeaderOp(field, value string, replacement *string) error {
	name := strings.TrimLeft(field, "+-?>")
	switch {
	case name == "":
		return fmt.Errorf("%q names no header field", field)
	case strings.HasPrefix(field, "-") && strings.Contains(name, "*"):
		// a wildcard delete
	case !strings.Contains(name, "{") && !httpguts.ValidHeaderFieldName(name):
		return fmt.Errorf("%q is not a valid header name", name)
	}
	if !httpguts.ValidHeaderFieldValue(value) || replacement != nil && !httpguts.ValidHeaderFieldValue(*replacement) {
		return fmt.Errorf("header %s: a value has characters a header cannot carry", name)
	}
	return nil
}

// parseHeaderOp reads one header_up or header_down line, with
// reverse_proxy's syntax: [+|-]<field> [<value|regexp> [<replacement>]].
func (h *Handler) parseHeaderOp(d *caddyfile.Dispenser) error {
	opt := d.Val()
	args := d.RemainingArgs()
	if len(args) < 1 || len(args) > 3 {
		return d.Errf("%s: want [+|-]<field> [<value|regexp> [<replacement>]], got %d arguments", opt, len(args))
	}
	if h.Headers == nil {
		h.Headers = new(headers.Handler)
	}
	var ops *headers.HeaderOps
	if opt == "header_up" {
		if h.Headers.Request == nil {
			h.Headers.Request = new(headers.HeaderOps)
		}
		ops = h.Headers.Request
	} else {
		if h.Headers.Response == nil {
			h.Headers.Response = &headers.RespHeaderOps{HeaderOps: new(headers.HeaderOps)}
		}
		ops = h.Headers.Response.HeaderOps
	}
	var value string
	var replacement *string
	if len(args) > 1 {
		value = args[1]
	}
	if len(args) > 2 {
		replacement = &args[2]
	}
	if err := checkHeaderOp(args[0], value, replacement); err != nil {
		return d.Errf("%s: %v", opt, err)
	}
	if err := headers.CaddyfileHeaderOp(ops, args[0], value, replacement); err != nil {
		return d.Errf("%s: %v", opt, err)
	}
	// a regexp is compiled when the config loads; find a bad one now
	if err := ops.Provision(caddy.Context{}); err != nil {
		return d.Errf("%s: %v", opt, err)
	}
	return nil
}
