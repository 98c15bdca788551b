//go:build unix && !linux

package upstream

import "golang.org/x/sys/unix"

// peekSocket asks for one byte without taking it and without waiting; nil
// means there was data or the peer closed.
func peekSocket(fd int, buf []byte) error {
	_, _, err := unix.Recvfrom(fd, buf, unix.MSG_PEEK|unix.MSG_DONTWAIT)
	return err
}
