package leastconn

import (
	"fmt"
	"path/filepath"
	"strings"

	"github.com/lbpool/lbpool/internal/upstream"
)

// Unix-socket backends are written as reverse_proxy writes them:
// unix//path/to/socket. They speak plain HTTP; their requests carry a
// stand-in host that names the socket (upstream.UnixHostport), never sent:
// proxied requests carry the client's Host, and checks and stats fetches
// send Host: localhost, as reverse_proxy's do.
const (
	unixPrefix       = "unix/"
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
		hostport:   upstream.UnixHostport(path),
		network:    "unix",
		dial:       path,
		key:        key,
		display:    key,
		raw:        raw,
		phHostport: path,
		phHost:     path,
	}, nil
}
