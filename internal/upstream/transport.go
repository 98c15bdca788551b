package upstream

import (
	"context"
	"crypto/tls"
	"encoding/hex"
	"fmt"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/net/http2"

	"github.com/lbpool/lbpool/internal/resolve"
)

// Settings are what shapes a transport and the dialer of the direct path:
// reverse_proxy's `transport http` options, resolved. Comparable, so that
// pools with equal settings share one transport and its kept-alive
// connections, also across reloads. The dialer's options (LocalAddr,
// FallbackDelay, ProbeInterval, Resolvers) apply on both paths; the others
// shape net/http's Transport only, and a pool that sets any of them sends
// its plain-HTTP requests through the Transport too (see Direct).
type Settings struct {
	DialTimeout           time.Duration
	ResponseHeaderTimeout time.Duration
	TLS                   string        // the TLS settings as JSON; "" for none
	TLSTimeout            time.Duration // 0: the default

	FallbackDelay time.Duration
	ProbeInterval time.Duration // TCP keep-alive probes; 0: 30s
	LocalAddr     string
	Resolvers     string // host:port list, comma-separated

	ExpectContinue      time.Duration
	ReadTimeout         time.Duration
	WriteTimeout        time.Duration
	ReadBuffer          int
	WriteBuffer         int
	MaxHeader           int64
	KeepAliveOff        bool
	IdleConnTimeout     time.Duration
	MaxIdleConns        int
	MaxIdleConnsPerHost int
	MaxConnsPerHost     int
	NoHTTP2             bool // versions 1.1 alone
	H2C                 bool // versions h2c: plain-HTTP backends speak HTTP/2 with prior knowledge
}

// Direct tells whether plain-HTTP requests may take the direct path: none
// of the options only the Transport honours is set.
func (s Settings) Direct() bool {
	return s.ExpectContinue == 0 && s.ReadTimeout == 0 && s.WriteTimeout == 0 &&
		s.ReadBuffer == 0 && s.WriteBuffer == 0 && s.MaxHeader == 0 && !s.KeepAliveOff &&
		s.IdleConnTimeout == 0 && s.MaxIdleConns == 0 && s.MaxIdleConnsPerHost == 0 && s.MaxConnsPerHost == 0
}

// Dialer makes the dialer both paths connect to backends with.
func (s Settings) Dialer() *net.Dialer {
	d := &net.Dialer{Timeout: s.DialTimeout, KeepAlive: 30 * time.Second, FallbackDelay: s.FallbackDelay}
	if s.ProbeInterval > 0 {
		d.KeepAlive = s.ProbeInterval
	}
	if s.LocalAddr != "" {
		d.LocalAddr, _ = LocalAddr(s.LocalAddr) // checked when the settings were made
	}
	if s.Resolvers != "" {
		d.Resolver = resolve.NewResolver(strings.Split(s.Resolvers, ","), net.Dialer{Timeout: s.DialTimeout})
	}
	return d
}

// NewTransport builds a transport tuned for proxying: a large idle pool per
// backend (so many concurrent clients do not churn connections), a short
// dial timeout (so retries happen fast), HTTP/2 to TLS backends, and no
// transparent compression (encodings pass through unchanged).
func NewTransport(s Settings, tlsConfig *tls.Config) *http.Transport {
	dialer := s.Dialer()
	handshake := 10 * time.Second
	if s.TLSTimeout > 0 {
		handshake = s.TLSTimeout
	}
	t := &http.Transport{
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			if path, ok := UnixSocketOf(addr); ok {
				network, addr = "unix", path
			}
			c, err := dialer.DialContext(ctx, network, addr)
			if err != nil {
				return nil, DialError{err}
			}
			if s.ReadTimeout > 0 || s.WriteTimeout > 0 {
				c = &deadlineConn{Conn: c, read: s.ReadTimeout, write: s.WriteTimeout}
			}
			return c, nil
		},
		ForceAttemptHTTP2:      true,
		MaxIdleConns:           0, // no global cap; the per-host one bounds it
		MaxIdleConnsPerHost:    1024,
		IdleConnTimeout:        2 * time.Minute,
		TLSHandshakeTimeout:    handshake,
		ExpectContinueTimeout:  time.Second,
		ResponseHeaderTimeout:  s.ResponseHeaderTimeout,
		DisableCompression:     true,
		MaxResponseHeaderBytes: maxResponseHeaderBytes,
		TLSClientConfig:        tlsConfig.Clone(),
	}
	s.tune(t)
	return t
}

// NewH2CTransport builds the transport for h2c backends: HTTP/2 with prior
// knowledge over plain TCP, with NewTransport's dialer and timeouts. Its
// requests carry http:// URLs. A connection carries up to the backend's
// MAX_CONCURRENT_STREAMS streams; past that another connection opens
// (StrictMaxConcurrentRequests stays off), so no request waits for a
// stream to end.
func NewH2CTransport(s Settings) *http.Transport {
	t := NewTransport(s, nil)
	t.ForceAttemptHTTP2 = false
	t.TLSClientConfig = nil
	// golang.org/x/net/http2's client, the one net/http bundles, registered
	// as Caddy's reverse_proxy registers it: it encodes a request's headers
	// without the separate validation pass the bundled copy makes (5% of
	// the CPU of a small gRPC call). It keeps StrictMaxConcurrentStreams
	// off, so another connection opens at a backend's stream limit.
	// (It fails only on a transport set up for HTTP/2 already, and this
	// one is new; the bundled client would serve then.)
	_, _ = http2.ConfigureTransports(t)
	t.Protocols = new(http.Protocols)
	t.Protocols.SetUnencryptedHTTP2(true)
	return t
}

// tune applies the options that shape the Transport itself.
func (s Settings) tune(t *http.Transport) {
	if s.ExpectContinue > 0 {
		t.ExpectContinueTimeout = s.ExpectContinue
	}
	if s.ReadBuffer > 0 {
		t.ReadBufferSize = s.ReadBuffer
	}
	if s.WriteBuffer > 0 {
		t.WriteBufferSize = s.WriteBuffer
	}
	if s.MaxHeader > 0 {
		t.MaxResponseHeaderBytes = s.MaxHeader
	}
	t.DisableKeepAlives = s.KeepAliveOff
	if s.IdleConnTimeout > 0 {
		t.IdleConnTimeout = s.IdleConnTimeout
	}
	if s.MaxIdleConns > 0 {
		t.MaxIdleConns = s.MaxIdleConns
	}
	if s.MaxIdleConnsPerHost > 0 {
		t.MaxIdleConnsPerHost = s.MaxIdleConnsPerHost
	}
	t.MaxConnsPerHost = s.MaxConnsPerHost
	if s.NoHTTP2 {
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

// LocalAddr reads local_address: an IP, optionally with a port.
func LocalAddr(v string) (*net.TCPAddr, error) {
	host, port := v, 0
	if h, p, err := net.SplitHostPort(v); err == nil {
		n, err := strconv.Atoi(p)
		if err != nil || n < 0 || n > 65535 {
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

// Unix-socket backends speak plain HTTP. A request URL needs a host:port,
// so their requests carry a stand-in host that names the socket (its path
// in hex, under a reserved domain); the dialers here turn it back into the
// path, and the Transport keeps each socket's connections apart. The
// stand-in is never sent: the caller sets the request's Host.
const unixHostSuffix = ".unix.lbpool.invalid"

// UnixHostport is the stand-in host:port that names the socket at path.
func UnixHostport(path string) string {
	return hex.EncodeToString([]byte(path)) + unixHostSuffix + ":80"
}

// UnixSocketOf returns the socket path a stand-in host:port names.
func UnixSocketOf(addr string) (string, bool) {
	host, ok := strings.CutSuffix(addr, unixHostSuffix+":80")
	if !ok {
		return "", false
	}
	path, err := hex.DecodeString(host)
	if err != nil {
		return "", false
	}
	return string(path), true
}

// copyBufs are the buffers bodies and busy tunnels are copied through.
var copyBufs = sync.Pool{New: func() any { b := make([]byte, 32<<10); return &b }}

// GetBuffer takes a 32 KiB copy buffer; PutBuffer gives it back.
func GetBuffer() *[]byte { return copyBufs.Get().(*[]byte) }

// PutBuffer gives back a buffer GetBuffer took.
func PutBuffer(b *[]byte) { copyBufs.Put(b) }
