//go:build !unix

package upstream

import (
	"io"
	"net"
)

// isSocket is false where the tunnel cannot wait on a socket without a
// buffer: every connection is copied through pipeBuffered.
func isSocket(net.Conn) bool { return false }

func pipeSocket(dst io.Writer, src net.Conn) { pipeBuffered(dst, src) }
