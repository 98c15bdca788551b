package leastconn

import (
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/lbpool/lbpool/internal/resolve"
	"github.com/lbpool/lbpool/internal/upstream"
)

// reverse_proxy's `transport http` options beyond timeouts and TLS, checked
// and resolved into the settings of internal/upstream. The dialer's
// (local_address, dial_fallback_delay, keepalive_interval, resolvers) apply
// on both paths. The others shape net/http's Transport; a pool that sets
// any of them sends its plain-HTTP requests through the Transport too,
// instead of the direct path, so each option means the same on every
// request (the direct path keeps its fixed buffers, idle limits and header
// bound, and costs nothing more when they are unset).

// wireSettings checks the transport options and resolves them; the
// timeouts and TLS are added by poolSpec.transportSettings.
func (h *Handler) wireSettings() (upstream.Settings, error) {
	w := upstream.Settings{
		FallbackDelay:   time.Duration(h.DialFallbackDelay),
		LocalAddr:       h.LocalAddress,
		ExpectContinue:  time.Duration(h.ExpectContinueTimeout),
		ReadTimeout:     time.Duration(h.ReadTimeout),
		WriteTimeout:    time.Duration(h.WriteTimeout),
		ReadBuffer:      h.ReadBufferSize,
		WriteBuffer:     h.WriteBufferSize,
		MaxHeader:       h.MaxResponseHeaderSize,
		MaxConnsPerHost: h.MaxConnsPerHost,
	}
	if k := h.KeepAlive; k != nil {
		w.KeepAliveOff = k.Enabled != nil && !*k.Enabled
		w.ProbeInterval = time.Duration(k.ProbeInterval)
		w.IdleConnTimeout = time.Duration(k.IdleConnTimeout)
		w.MaxIdleConns, w.MaxIdleConnsPerHost = k.MaxIdleConns, k.MaxIdleConnsPerHost
		if w.ProbeInterval < 0 || w.IdleConnTimeout < 0 || w.MaxIdleConns < 0 || w.MaxIdleConnsPerHost < 0 {
			return w, fmt.Errorf("lbpool: keep_alive: values must not be negative")
		}
	}
	switch {
	case w.FallbackDelay < 0, w.ExpectContinue < 0, w.ReadTimeout < 0, w.WriteTimeout < 0:
		return w, fmt.Errorf("lbpool: transport durations must be positive")
	case w.ReadBuffer < 0, w.WriteBuffer < 0, w.MaxHeader < 0, w.MaxConnsPerHost < 0:
		return w, fmt.Errorf("lbpool: transport sizes and counts must not be negative")
	case h.Compression != nil && *h.Compression:
		return w, fmt.Errorf("lbpool: compression: lbpool passes encodings through and never asks backends for compression; only false is accepted")
	}
	if w.LocalAddr != "" {
		if _, err := upstream.LocalAddr(w.LocalAddr); err != nil {
			return w, fmt.Errorf("lbpool: local_address: %w", err)
		}
	}
	if h.Resolver != nil {
		var servers []string
		for _, r := range h.Resolver.Addresses {
			addr, err := resolve.ParseServer(r)
			if err != nil {
				return w, fmt.Errorf("lbpool: resolver: %w", err)
			}
			servers = append(servers, addr)
		}
		w.Resolvers = strings.Join(servers, ",")
	}
	for _, v := range h.Versions {
		if err := checkVersion(v); err != nil {
			return w, fmt.Errorf("lbpool: versions: %w", err)
		}
	}
	w.NoHTTP2 = len(h.Versions) > 0 && !slices.Contains(h.Versions, "2")
	w.H2C = slices.Contains(h.Versions, "h2c")
	return w, nil
}

// checkVersion accepts the HTTP versions lbpool speaks to backends.
func checkVersion(v string) error {
	switch v {
	case "1.1", "2", "h2c":
		return nil
	case "3":
		return fmt.Errorf("HTTP/3 to backends is not supported by lbpool; use reverse_proxy for those backends")
	}
	return fmt.Errorf("%q is not an HTTP version (1.1, 2 or h2c)", v)
}
