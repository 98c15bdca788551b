//go:build unix

package upstream

import (
	"errors"
	"net"
	"syscall"

	"golang.org/x/sys/unix"
)

// A connection taken from the idle pool is checked before it carries a
// request: a backend may have closed it, or written bytes no request asked
// for (a body on a HEAD response, bytes past Content-Length sent late).
// net/http's Transport learns both from a reader goroutine per idle
// connection; here one non-blocking MSG_PEEK asks the kernel instead, so an
// idle connection costs no goroutine and a reuse one system call.

// idlePeeker peeks at a connection's socket without blocking.
type idlePeeker struct {
	fd  int // -1: not a socket (a pipe in tests)
	buf [1]byte
}

func (p *idlePeeker) init(nc net.Conn) {
	p.fd = -1
	sc, ok := nc.(syscall.Conn)
	if !ok {
		return
	}
	raw, err := sc.SyscallConn()
	if err != nil {
		return
	}
	_ = raw.Control(func(fd uintptr) { p.fd = int(fd) })
}

// quiet reports whether the socket has nothing to read and is still open:
// would block is the one good answer; data, end of stream or an error all
// mean the connection must not carry another request. The descriptor is
// used directly, without the runtime's poller: the connection sits in no
// one's hands but the pool's, which closes it only after taking it out, so
// the descriptor is still this connection's.
func (p *idlePeeker) quiet() bool {
	if p.fd < 0 {
		return true
	}
	err := peekSocket(p.fd, p.buf[:])
	return errors.Is(err, unix.EAGAIN) || errors.Is(err, unix.EWOULDBLOCK)
}
