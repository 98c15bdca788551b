//go:build !unix

package upstream

import "net"

// idlePeeker is a no-op where MSG_PEEK is not to be had: a reused
// connection that turns out to be broken is then caught by the retry on a
// fresh one (see RoundTrip).
type idlePeeker struct{}

func (*idlePeeker) init(net.Conn) {}

func (*idlePeeker) quiet() bool { return true }
