package leastconn

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net"
	"net/http"
	"slices"
	"strings"
	"time"
)

// reverse_proxy's `transport http` options beyond timeouts and TLS. The
// dialer's (local_address, dial_fallback_delay, keepalive_interval,
// resolvers) apply on both paths. The others shape net/http's Transport;
// a pool that sets any of them sends its plain-HTTP requests through the
// Transport too, instead of the direct path, so each option means the
// same on every request (the direct path keeps its fixed buffers, idle
// limits and header bound, and costs nothing more when they are unset).

// wireSettings are the transport options beyond the first four of
// transportSettings; comparable, so equal settings share a transport.
type wireSettings struct {
	fallbackDelay   time.Duration
	probeInterval   time.Duration // TCP keep-alive probes; 0: 30s
	localAddr       string
	resolvers       string // host:port list, comma-separated
	expectContinue  time.Duration
	readTimeout     time.Duration
	writeTimeout    time.Duration
	readBuffer      int
	writeBuffer     int
	maxHeader       int64
	keepAliveOff    bool
	idleTimeout     time.Duration
	maxIdle         int
	maxIdlePerHost  int
	maxConnsPerHost int
	noHTTP2         bool // versions 1.1 alone
}

// wireSettings checks the transport options and resolves them.
func (h *Handler) wireSettings() (wireSettings, error) {
	w := wireSettings{
		fallbackDelay:   time.Duration(h.DialFallbackDelay),
		localAddr:       h.LocalAddress,
		expectContinue:  time.Duration(h.ExpectContinueTimeout),
		readTimeout:     time.Duration(h.ReadTimeout),
		writeTimeout:    time.Duration(h.WriteTimeout),
		readBuffer:      h.ReadBufferSize,
		writeBuffer:     h.WriteBufferSize,
		maxHeader:       h.MaxResponseHeaderSize,
		maxConnsPerHost: h.MaxConnsPerHost,
	}
	if k := h.KeepAlive; k != nil {
		w.keepAliveOff = k.Enabled != nil && !*k.Enabled
		w.probeInterval = time.Duration(k.ProbeInterval)
		w.idleTimeout = time.Duration(k.IdleConnTimeout)
		w.maxIdle, w.maxIdlePerHost = k.MaxIdleConns, k.MaxIdleConnsPerHost
		if w.probeInterval < 0 || w.idleTimeout < 0 || w.maxIdle < 0 || w.maxIdlePerHost < 0 {
			return w, fmt.Errorf("lbpool: keep_alive: values must not be negative")
		}
	}
	switch {
	case w.fallbackDelay < 0, w.expectContinue < 0, w.readTimeout < 0, w.writeTimeout < 0:
		return w, fmt.Errorf("lbpool: transport durations must be positive")
	case w.readBuffer < 0, w.writeBuffer < 0, w.maxHeader < 0, w.maxConnsPerHost < 0:
		return w, fmt.Errorf("lbpool: transport sizes and counts must not be negative")
	case h.Compression != nil && *h.Compression:
		return w, fmt.Errorf("lbpool: compression: lbpool passes encodings through and never asks backends for compression; only false is accepted")
	}
	if w.localAddr != "" {
		if _, err := localAddr(w.localAddr); err != nil {
			return w, fmt.Errorf("lbpool: local_address: %w", err)
		}
	}
	if h.Resolver != nil {
		var servers []string
		for _, r := range h.Resolver.Addresses {
			addr, err := parseResolver(r)
			if err != nil {
				return w, fmt.Errorf("lbpool: resolver: %w", err)
			}
			servers = append(servers, addr)
		}
		w.resolvers = strings.Join(servers, ",")
	}
	for _, v := range h.Versions {
		if err := checkVersion(v); err != nil {
			return w, fmt.Errorf("lbpool: versions: %w", err)
		}
	}
	w.noHTTP2 = len(h.Versions) > 0 && !slices.Contains(h.Versions, "2")
	return w, nil
}

// direct tells whether plain-HTTP requests may take the direct path: none
// of the options only the Transport honours is set.
func (w wireSettings) direct() bool {
	return w.expectContinue == 0 && w.readTimeout == 0 && w.writeTimeout == 0 &&
		w.readBuffer == 0 && w.writeBuffer == 0 && w.maxHeader == 0 && !w.keepAliveOff &&
		w.idleTimeout == 0 && w.maxIdle == 0 && w.maxIdlePerHost == 0 && w.maxConnsPerHost == 0
}

// newDialer makes the dialer both paths connect to backends with.
func (ts transportSettings) newDialer() *net.Dialer {
	d := &net.Dialer{Timeout: ts.dialTimeout, KeepAlive: 30 * time.Second, FallbackDelay: ts.fallbackDelay}
	if ts.probeInterval > 0 {
		d.KeepAlive = ts.probeInterval
	}
	if ts.localAddr != "" {
		d.LocalAddr, _ = localAddr(ts.localAddr) // checked at provision
	}
	if ts.resolvers != "" {
		d.Resolver = resolverFor(strings.Split(ts.resolvers, ","), net.Dialer{Timeout: ts.dialTimeout})
	}
	return d
}

// tune applies the options that shape the Transport itself.
func (w wireSettings) tune(t *http.Transport) {
	if w.expectContinue > 0 {
		t.ExpectContinueTimeout = w.expectContinue
	}
	if w.readBuffer > 0 {
		t.ReadBufferSize = w.readBuffer
	}
	if w.writeBuffer > 0 {
		t.WriteBufferSize = w.writeBuffer
	}
	if w.maxHeader > 0 {
		t.MaxResponseHeaderBytes = w.maxHeader
	}
	t.DisableKeepAlives = w.keepAliveOff
	if w.idleTimeout > 0 {
		t.IdleConnTimeout = w.idleTimeout
	}
	if w.maxIdle > 0 {
		t.MaxIdleConns = w.maxIdle
	}
	if w.maxIdlePerHost > 0 {
		t.MaxIdleConnsPerHost = w.maxIdlePerHost
	}
	t.MaxConnsPerHost = w.maxConnsPerHost
	if w.noHTTP2 {
		t.ForceAttemptHTTP2 = false
		t.Protocols = new(http.Protocols)
		t.Protocols.SetHTTP1(true)
	}
}

// deadlineConn sets a deadline before each read and write, as
// reverse_proxy's read_timeout and write_timeout do.
type deadlineConn struct {
	net.Conn
	read, write time.Duration
}

func (c *deadlineConn) Read(p []byte) (int, error) {
	if c.read > 0 {
		if err := c.Conn.SetReadDeadline(time.Now().Add(c.read)); err != nil {
			return 0, err
		}
	}
	return c.Conn.Read(p)
}

func (c *deadlineConn) Write(p []byte) (int, error) {
	if c.write > 0 {
		if err := c.Conn.SetWriteDeadline(time.Now().Add(c.write)); err != nil {
			return 0, err
		}
	}
	return c.Conn.Write(p)
}

// resolverFor asks the given DNS servers (host:port), one at random per
// query.
func resolverFor(servers []string, dialer net.Dialer) *net.Resolver {
	return &net.Resolver{
		PreferGo: true,
		Dial: func(ctx context.Context, network, _ string) (net.Conn, error) {
			// network is udp, or tcp when an answer was truncated
			return dialer.DialContext(ctx, network, servers[rand.N(len(servers))])
		},
	}
}

// localAddr reads local_address: an IP, optionally with a port.
func localAddr(v string) (*net.TCPAddr, error) {
	host, port := v, 0
	if h, p, err := net.SplitHostPort(v); err == nil {
		n, err := atoi(p)
		if err != nil || n > 65535 {
			return nil, fmt.Errorf("%q: bad port", v)
		}
		host, port = h, n
	}
	ip := net.ParseIP(host)
	if ip == nil {
		return nil, fmt.Errorf("%q is not an IP address", v)
	}
	return &net.TCPAddr{IP: ip, Port: port}, nil
}

// checkVersion accepts the HTTP versions lbpool speaks to backends.
func checkVersion(v string) error {
	switch v {
	case "1.1", "2":
		return nil
	case "h2c", "3":
		return fmt.Errorf("%s to backends is not supported by lbpool; use reverse_proxy for those backends", v)
	}
	return fmt.Errorf("%q is not an HTTP version (1.1 or 2)", v)
}
