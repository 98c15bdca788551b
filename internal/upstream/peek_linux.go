package upstream

import (
	"unsafe"

	"golang.org/x/sys/unix"
)

// peekSocket asks for one byte without taking it and without waiting; nil
// means there was data or the peer closed. recvfrom(2) is called directly,
// as a raw system call (it cannot block): unix.Recvfrom also asks for the
// sender's address, which a connected socket does not need and which costs
// an allocation.
func peekSocket(fd int, buf []byte) error {
	_, _, errno := unix.RawSyscall6(unix.SYS_RECVFROM, uintptr(fd), uintptr(unsafe.Pointer(&buf[0])), uintptr(len(buf)),
		unix.MSG_PEEK|unix.MSG_DONTWAIT, 0, 0)
	if errno != 0 {
		return errno
	}
	return nil
}
