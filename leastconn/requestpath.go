package leastconn

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"syscall"

	"github.com/caddyserver/caddy/v2"
	"github.com/lbpool/lbpool/internal/upstream"
)

// reverse_proxy's request-path options: rewrite (method and URI), request
// and response buffering, flush_interval, trusted_proxies and
// proxy_status_name. Each is one nil or zero check on a request when unset.

// privateRanges is what `trusted_proxies private_ranges` stands for.
var privateRanges = []string{
	"192.168.0.0/16", "172.16.0.0/12", "10.0.0.0/8", "127.0.0.1/8", "fd00::/8", "::1",
}

// parseTrusted reads a CIDR range or a single address.
func parseTrusted(v string) (netip.Prefix, error) {
	if pfx, err := netip.ParsePrefix(v); err == nil {
		return pfx.Masked(), nil
	}
	ip, err := netip.ParseAddr(v)
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("%q is neither an IP range (CIDR) nor an address", v)
	}
	return netip.PrefixFrom(ip, ip.BitLen()), nil
}

// provisionRequestPath checks the request-path options and prepares them.
func (h *Handler) provisionRequestPath(ctx caddy.Context) error {
	if h.Rewrite != nil {
		if err := h.Rewrite.Provision(ctx); err != nil {
			return fmt.Errorf("lbpool: rewrite: %w", err)
		}
	}
	for _, v := range h.TrustedProxies {
		pfx, err := parseTrusted(v)
		if err != nil {
			return fmt.Errorf("lbpool: trusted_proxies: %w", err)
		}
		h.trusted = append(h.trusted, pfx)
	}
	switch {
	case h.RequestBuffers < -1, h.ResponseBuffers < -1:
		return fmt.Errorf("lbpool: request_buffers and response_buffers: a size, or -1 for unlimited")
	case h.FlushInterval < -1:
		return fmt.Errorf("lbpool: flush_interval: a duration, or -1")
	case h.StreamTimeout < 0, h.StreamCloseDelay < 0, h.StreamBufferSize < 0:
		return fmt.Errorf("lbpool: stream_timeout, stream_close_delay and stream_buffer_size must not be negative")
	}
	return nil
}

// trustedPeer tells whether the client's address is one of trusted_proxies.
func (h *Handler) trustedPeer(r *http.Request) bool {
	ap, err := netip.ParseAddrPort(r.RemoteAddr)
	if err != nil {
		return false
	}
	ip := ap.Addr().Unmap()
	for _, pfx := range h.trusted {
		if pfx.Contains(ip) {
			return true
		}
	}
	return false
}

// bufferRequest reads up to request_buffers bytes of r's body (all of it
// with -1); a body that fits is sent with its length.
func (h *Handler) bufferRequest(r *http.Request) {
	if r.Body == nil || r.Body == http.NoBody || r.ContentLength == 0 {
		return
	}
	buf, rest, err := readAhead(r.Body, h.RequestBuffers)
	if err == io.EOF {
		r.Body.Close()
		r.Body = io.NopCloser(bytes.NewReader(buf))
		r.ContentLength = int64(len(buf))
		r.TransferEncoding = nil // it goes with its length, not chunked
		return
	}
	r.Body = struct {
		io.Reader
		io.Closer
	}{rest, r.Body}
}

// bufferResponse reads up to response_buffers bytes of resp's body before
// any of it is sent on.
func (h *Handler) bufferResponse(resp *http.Response) {
	_, rest, _ := readAhead(resp.Body, h.ResponseBuffers)
	resp.Body = struct {
		io.Reader
		io.Closer
	}{rest, resp.Body}
}

// readAhead reads up to limit bytes of rc (all with -1). err is io.EOF when
// rc ended within them; rest reads what was read and then the remainder,
// and ends with the read error, if any.
func readAhead(rc io.Reader, limit int64) (buf []byte, rest io.Reader, err error) {
	src := rc
	if limit >= 0 {
		src = io.LimitReader(rc, limit)
	}
	var b bytes.Buffer
	_, err = b.ReadFrom(src)
	buf = b.Bytes()
	switch {
	case err != nil:
		return buf, io.MultiReader(bytes.NewReader(buf), errorReader{err}), err
	case limit < 0 || int64(len(buf)) < limit:
		return buf, bytes.NewReader(buf), io.EOF
	}
	return buf, io.MultiReader(bytes.NewReader(buf), rc), nil
}

type errorReader struct{ err error }

func (e errorReader) Read([]byte) (int, error) { return 0, e.err }

// setProxyStatus adds RFC 9209's Proxy-Status to one of lbpool's own error
// answers, naming why it was given.
func (h *Handler) setProxyStatus(w http.ResponseWriter, status int, cause error) {
	w.Header().Set("Proxy-Status", h.ProxyStatusName+"; error="+proxyErrorType(status, cause))
}

// proxyErrorType is RFC 9209's name for what went wrong.
func proxyErrorType(status int, cause error) string {
	var (
		dnsErr  *net.DNSError
		de      upstream.DialError
		tlsErr  tls.RecordHeaderError
		certErr *tls.CertificateVerificationError
		alert   tls.AlertError
	)
	switch {
	case errors.Is(cause, errNoBackend):
		return "destination_unavailable"
	case errors.Is(cause, errQueueFull), errors.Is(cause, errQueueTimeout):
		return "connection_limit_reached"
	case errors.As(cause, &dnsErr):
		if dnsErr.IsTimeout {
			return "dns_timeout"
		}
		return "dns_error"
	case errors.As(cause, &certErr):
		return "tls_certificate_error"
	case errors.As(cause, &alert):
		return "tls_alert_received"
	case errors.As(cause, &tlsErr):
		return "tls_protocol_error"
	case errors.Is(cause, syscall.ECONNREFUSED):
		return "connection_refused"
	case errors.As(cause, &de) && (errors.Is(cause, context.DeadlineExceeded) || upstream.IsTimeout(cause)):
		return "connection_timeout"
	case status == http.StatusGatewayTimeout:
		return "http_response_timeout"
	case errors.Is(cause, syscall.ECONNRESET), errors.Is(cause, io.EOF), errors.Is(cause, io.ErrUnexpectedEOF):
		return "connection_terminated"
	case errors.Is(cause, upstream.ErrHeadersTooLarge):
		return "http_response_header_section_size"
	case status == http.StatusBadGateway:
		return "http_protocol_error"
	}
	return "proxy_internal_error"
}
