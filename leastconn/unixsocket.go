package leastconn

import (
	"encoding/hex"
	"fmt"
	"path/filepath"
	"strings"
)

// Unix-socket backends are written as reverse_proxy writes them:
// unix//path/to/socket. They speak plain HTTP. A request URL needs a
// host:port, so their requests carry a stand-in host that names the socket
// (its path in hex, under a reserved domain); lbpool's dialers turn it back
// into the path, and the Transport keeps each socket's connections apart.
// The stand-in is never sent: proxied requests carry the client's Host, and
// checks and stats fetches send Host: localhost, as reverse_proxy's do.
const (
	unixPrefix       = "unix/"
	unixHostSuffix   = ".unix.lbpool.invalid"
	unixRequestHost  = "localhost"
	unixSocketMaxLen = 4096
)

// parseUnixBackend parses unix//path/to/socket (s is raw, trimmed).
func parseUnixBackend(raw, s string) (backendAddr, error) {
	path := strings.TrimPrefix(s, unixPrefix)
	switch {
	case !strings.HasPrefix(path, "/"):
		return backendAddr{}, fmt.Errorf("lbpool: backend %q: a unix socket needs an absolute path (unix//path/to/socket)", redactRaw(raw))
	case len(path) > unixSocketMaxLen || strings.ContainsAny(path, "\x00\r\n"):
		return backendAddr{}, fmt.Errorf("lbpool: backend %q: bad unix socket path", redactRaw(raw))
	case strings.Contains(path, "@"):
		// it would read as credentials (user:password@) wherever it is shown
		return backendAddr{}, fmt.Errorf("lbpool: backend %q: a unix socket path cannot contain '@'", redactRaw(raw))
	}
	path = filepath.Clean(path)
	key := unixPrefix + path
	return backendAddr{
		scheme:     "http",
		hostport:   hex.EncodeToString([]byte(path)) + unixHostSuffix + ":80",
		network:    "unix",
		dial:       path,
		key:        key,
		display:    key,
		raw:        raw,
		phHostport: path,
		phHost:     path,
	}, nil
}

// unixSocketOf returns the socket path a stand-in host:port names.
func unixSocketOf(addr string) (string, bool) {
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
