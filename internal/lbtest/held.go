package lbtest

import (
	"context"
	"fmt"
	"net"
	"os"
	"sync"
	"syscall"
	"time"

	"github.com/caddyserver/caddy/v2"
)

// The HTTP port of the tests is one listening socket the test process
// holds for its whole life; every config's server on that port accepts
// from a duplicate of it, through the network type heldNetwork.
//
// Caddy gives each config its own TCP socket (SO_REUSEPORT) and closes the
// old one after a reload, and the kernel resets connections still queued
// on the old one, before any handler sees them. One socket shared by every
// config (as under systemd socket activation, "bind fd/3") resets nothing.
// And as each duplicate is closed by its server's shutdown, a load can wait
// until the previous config's servers accept no more connections: a request
// sent after Load returns reaches the new config.
const heldNetwork = "lbtest"

var held struct {
	mu   sync.Mutex
	ln   *net.TCPListener // never accepts; keeps the socket open
	addr string
	open map[*heldListener]struct{}
}

func init() {
	caddy.RegisterNetwork(heldNetwork, listenHeld)
}

// holdHTTPSocket opens the held socket and returns its port.
func holdHTTPSocket() (int, error) {
	ln, err := net.ListenTCP("tcp", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		return 0, err
	}
	held.mu.Lock()
	defer held.mu.Unlock()
	held.ln = ln
	held.addr = ln.Addr().String()
	held.open = make(map[*heldListener]struct{})
	return ln.Addr().(*net.TCPAddr).Port, nil
}

// listenHeld is Caddy's listener function for heldNetwork: a listener on a
// duplicate of the held socket.
func listenHeld(_ context.Context, _, host, port string, _ uint, _ net.ListenConfig) (any, error) {
	held.mu.Lock()
	defer held.mu.Unlock()
	if held.ln == nil || net.JoinHostPort(host, port) != held.addr {
		return nil, fmt.Errorf("lbtest: no held socket at %s", net.JoinHostPort(host, port))
	}
	raw, err := held.ln.SyscallConn()
	if err != nil {
		return nil, err
	}
	dup, derr := -1, error(nil)
	if err := raw.Control(func(fd uintptr) { dup, derr = dupCloseOnExec(int(fd)) }); err != nil {
		return nil, err
	}
	if derr != nil {
		return nil, derr
	}
	// the descriptor is non-blocking already, so this *os.File leaves its
	// mode alone (as net.FileListener calls Fd on it); FileListener makes
	// a duplicate of its own
	f := os.NewFile(uintptr(dup), "lbtest-held")
	ln, err := net.FileListener(f)
	f.Close()
	if err != nil {
		return nil, err
	}
	l := &heldListener{Listener: ln, closed: make(chan struct{})}
	held.open[l] = struct{}{}
	return l, nil
}

func dupCloseOnExec(fd int) (int, error) {
	nfd, _, errno := syscall.Syscall(syscall.SYS_FCNTL, uintptr(fd), syscall.F_DUPFD_CLOEXEC, 0)
	if errno != 0 {
		return -1, errno
	}
	return int(nfd), nil
}

// heldListener is one server's listener on the held socket.
type heldListener struct {
	net.Listener
	once   sync.Once
	closed chan struct{}
}

func (l *heldListener) Close() error {
	err := l.Listener.Close()
	l.once.Do(func() {
		held.mu.Lock()
		delete(held.open, l)
		held.mu.Unlock()
		close(l.closed)
	})
	return err
}

// heldListeners returns the listeners open on the held socket.
func heldListeners() []*heldListener {
	held.mu.Lock()
	defer held.mu.Unlock()
	out := make([]*heldListener, 0, len(held.open))
	for l := range held.open {
		out = append(out, l)
	}
	return out
}

// awaitClosed waits until every listener of ls is closed.
func awaitClosed(ls []*heldListener, timeout time.Duration) error {
	deadline := time.After(timeout)
	for _, l := range ls {
		select {
		case <-l.closed:
		case <-deadline:
			return fmt.Errorf("lbtest: the previous config still accepts on the held socket after %v", timeout)
		}
	}
	return nil
}
