//go:build unix

package leastconn

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

// idlePeeker peeks at a connection's socket without blocking. Its peek
// func is bound once, when the connection is made, so a check allocates
// nothing.
type idlePeeker struct {
	raw  syscall.RawConn
	peek func(fd uintptr) bool
	err  error
	buf  [1]byte
}

func (p *idlePeeker) init(nc net.Conn) {
	sc, ok := nc.(syscall.Conn)
	if !ok {
		return
	}
	raw, err := sc.SyscallConn()
	if err != nil {
		return
	}
	p.raw = raw
	p.peek = p.peekOnce
}

func (p *idlePeeker) peekOnce(fd uintptr) bool {
	_, _, p.err = unix.Recvfrom(int(fd), p.buf[:], unix.MSG_PEEK|unix.MSG_DONTWAIT)
	return true // never wait for the socket to become readable
}

// quiet reports whether the socket has nothing to read and is still open:
// would block is the one good answer; data, end of stream or an error all
// mean the connection must not carry another request.
func (p *idlePeeker) quiet() bool {
	if p.raw == nil {
		return true // not a socket (a pipe in tests): nothing to ask
	}
	if err := p.raw.Read(p.peek); err != nil {
		return false
	}
	return errors.Is(p.err, unix.EAGAIN) || errors.Is(p.err, unix.EWOULDBLOCK)
}
