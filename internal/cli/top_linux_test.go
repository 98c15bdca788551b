package cli_test

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/lbpool/lbpool/internal/lbtest"
)

// openPTY opens a pseudo-terminal pair, the terminal a user's shell would
// give top: the test writes keys to and reads the screen from main; top
// runs on tty.
func openPTY(t *testing.T) (main, tty *os.File) {
	t.Helper()
	main, err := os.OpenFile("/dev/ptmx", os.O_RDWR|syscall.O_NOCTTY, 0)
	if err != nil {
		t.Skipf("no pseudo-terminals here: %v", err)
	}
	fd := int(main.Fd())
	if err := unix.IoctlSetPointerInt(fd, unix.TIOCSPTLCK, 0); err != nil {
		t.Fatalf("unlocking the pty: %v", err)
	}
	n, err := unix.IoctlGetInt(fd, unix.TIOCGPTN)
	if err != nil {
		t.Fatalf("pty number: %v", err)
	}
	tty, err = os.OpenFile(fmt.Sprintf("/dev/pts/%d", n), os.O_RDWR|syscall.O_NOCTTY, 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := unix.IoctlSetWinsize(int(tty.Fd()), unix.TIOCSWINSZ, &unix.Winsize{Row: 40, Col: 160}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tty.Close(); main.Close() })
	return main, tty
}

// screen collects what a program writes to its terminal.
type screen struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (s *screen) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.buf.Write(p)
}

func (s *screen) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.buf.String()
}

// terminalModes are the termios flags raw mode turns off and a shell needs.
func terminalModes(t *testing.T, tty *os.File) (lflag, iflag uint32) {
	t.Helper()
	tio, err := unix.IoctlGetTermios(int(tty.Fd()), unix.TCGETS)
	if err != nil {
		t.Fatal(err)
	}
	return tio.Lflag & (unix.ECHO | unix.ICANON | unix.ISIG), tio.Iflag & unix.ICRNL
}

// startTop runs `caddy lbpool top` on tty as a shell would (its own
// session, tty its controlling terminal) and collects its screen from main.
func startTop(t *testing.T, c *lbtest.Caddy, main, tty *os.File) (exited <-chan error, out *screen) {
	t.Helper()
	bin := buildCaddy(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	cmd := exec.CommandContext(ctx, bin, "lbpool", "top", addressOf(c).flag())
	cmd.Env = append(os.Environ(), "HOME="+t.TempDir(), "TERM=xterm")
	cmd.Stdin, cmd.Stdout, cmd.Stderr = tty, tty, tty
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true, Setctty: true}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	out = new(screen)
	go func() { _, _ = io.Copy(out, main) }()
	return done, out
}

func TestTopShowsThePoolDrainsOnItsKeyAndQuitsRestoringTheTerminal(t *testing.T) {
	c, up, down := threeBackends(t)
	main, tty := openPTY(t)
	lflag, iflag := terminalModes(t, tty)
	if lflag&unix.ECHO == 0 || lflag&unix.ICANON == 0 {
		t.Fatalf("a new pty should echo and read lines: lflag %#x", lflag)
	}

	exited, out := startTop(t, c, main, tty)

	lbtest.Eventually(t, 60*time.Second, "top shows every backend", func() bool {
		s := out.String()
		return strings.Contains(s, up[0].Addr()) && strings.Contains(s, up[1].Addr()) && strings.Contains(s, down)
	})
	// the first backend is selected; j selects the second, d drains it
	if _, err := main.WriteString("j"); err != nil {
		t.Fatal(err)
	}
	lbtest.Eventually(t, 30*time.Second, "the second backend selected", func() bool {
		return strings.Contains(out.String(), "\x1b[7mweb   http://"+up[1].Addr())
	})
	if _, err := main.WriteString("d"); err != nil {
		t.Fatal(err)
	}
	lbtest.Eventually(t, 30*time.Second, "the second backend drained", func() bool {
		return c.Backend(t, "web", "http://"+up[1].Addr()).State == "drain"
	})
	if s := c.Backend(t, "web", "http://"+up[0].Addr()).State; s != "ready" {
		t.Fatalf("the first backend is %s; only the selected one should change", s)
	}
	lbtest.Eventually(t, 30*time.Second, "top shows the drain", func() bool {
		return strings.Contains(out.String(), "DRAIN")
	})
	// m and r: maintenance, then back in rotation
	for _, step := range []struct{ key, state string }{{"m", "maint"}, {"r", "ready"}} {
		if _, err := main.WriteString(step.key); err != nil {
			t.Fatal(err)
		}
		lbtest.Eventually(t, 30*time.Second, "the second backend "+step.state, func() bool {
			return c.Backend(t, "web", "http://"+up[1].Addr()).State == step.state
		})
	}
	if _, err := main.WriteString("q"); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-exited:
		if err != nil {
			t.Fatalf("top exited with %v; output:\n%q", err, out.String())
		}
	case <-time.After(60 * time.Second):
		t.Fatalf("top did not quit on q; output:\n%q", out.String())
	}
	if l, i := terminalModes(t, tty); l != lflag || i != iflag {
		t.Errorf("terminal not restored: lflag %#x iflag %#x, were %#x %#x", l, i, lflag, iflag)
	}
	lbtest.Eventually(t, 30*time.Second, "the screen and cursor given back", func() bool {
		return strings.HasSuffix(out.String(), "\x1b[?25h\x1b[?1049l")
	})
}

func TestTopQuitsOnCtrlC(t *testing.T) {
	c, up, _ := threeBackends(t)
	main, tty := openPTY(t)
	lflag, _ := terminalModes(t, tty)
	exited, out := startTop(t, c, main, tty)
	lbtest.Eventually(t, 60*time.Second, "top shows the pool", func() bool {
		return strings.Contains(out.String(), up[0].Addr())
	})
	if _, err := main.Write([]byte{3}); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-exited:
		if err != nil {
			t.Fatalf("top exited with %v after Ctrl-C", err)
		}
	case <-time.After(60 * time.Second):
		t.Fatalf("top did not quit on Ctrl-C; output:\n%q", out.String())
	}
	if l, _ := terminalModes(t, tty); l != lflag {
		t.Errorf("terminal not restored after Ctrl-C: lflag %#x, was %#x", l, lflag)
	}
}
