//go:build unix

package upstream

import (
	"errors"
	"io"
	"net"
	"syscall"

	"golang.org/x/sys/unix"
)

// isSocket tells whether c is a plain socket, whose every byte the kernel
// holds until it is read: waiting for it to be readable then means there
// is data. Wrappers (TLS, or ones that read ahead) may hold bytes of their
// own, so only the net package's own types qualify.
func isSocket(c net.Conn) bool {
	switch c.(type) {
	case *net.TCPConn, *net.UnixConn:
		return true
	}
	return false
}

// pipeSocket copies the socket src to dst. It waits in the runtime's
// poller holding no buffer; once src is readable it takes a pooled buffer,
// reads what is there, writes it and gives the buffer back. It ends at the
// end of the stream, on an error, or when either connection is closed.
func pipeSocket(dst io.Writer, src net.Conn) {
	sc, ok := src.(syscall.Conn)
	if !ok {
		pipeBuffered(dst, src)
		return
	}
	raw, err := sc.SyscallConn()
	if err != nil {
		pipeBuffered(dst, src)
		return
	}
	var bp *[]byte
	var n int
	var rerr error
	// called at once, then each time the poller finds the socket readable;
	// false waits again
	readable := func(fd uintptr) bool {
		bp = GetBuffer()
		for {
			n, rerr = unix.Read(int(fd), *bp)
			if !errors.Is(rerr, unix.EINTR) {
				break
			}
		}
		if errors.Is(rerr, unix.EAGAIN) {
			PutBuffer(bp)
			bp = nil
			return false
		}
		return true
	}
	for {
		err := raw.Read(readable)
		if err != nil || rerr != nil || n <= 0 { // n == 0: the peer closed
			if bp != nil {
				PutBuffer(bp)
			}
			return
		}
		_, werr := dst.Write((*bp)[:n])
		PutBuffer(bp)
		bp = nil
		if werr != nil {
			return
		}
	}
}
