package main

import (
	"bytes"
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// stopGrace is how long a process has to exit after SIGTERM before SIGKILL.
const stopGrace = 3 * time.Second

// procs starts and stops the harness's child processes. It remembers every
// process it started, so it stops exactly those, by PID, on success, on
// errors and on Ctrl-C.
type procs struct {
	mu      sync.Mutex
	running map[int]*proc
}

// proc is one started process.
type proc struct {
	name  string
	cmd   *exec.Cmd
	done  chan struct{} // closed when it has exited
	err   error         // its exit status, once done is closed
	log   string        // the file its stderr goes to, if any
	grace time.Duration // between SIGTERM and SIGKILL
}

func newProcs() *procs { return &procs{running: map[int]*proc{}} }

// spec of a process to start: cpus is a taskset CPU list ("" for no pinning),
// stdout may be nil, logFile receives stderr ("" discards it), grace is how
// long it may take to exit after SIGTERM (default stopGrace).
type procSpec struct {
	name    string
	grace   time.Duration
	cpus    string
	env     []string
	stdout  io.Writer
	logFile string
	bin     string
	args    []string
}

func (ps *procs) start(s procSpec) (*proc, error) {
	bin, args := s.bin, s.args
	if s.cpus != "" {
		// taskset execs the program, so the PID is the program's own.
		bin, args = "taskset", append([]string{"-c", s.cpus, s.bin}, s.args...)
	}
	cmd := exec.Command(bin, args...)
	cmd.Env = s.env
	cmd.Stdout = s.stdout
	// Its own process group keeps a terminal's Ctrl-C away from the child,
	// so the harness stops it in order; Pdeathsig kills it if the harness
	// itself is killed.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if s.logFile != "" {
		f, err := os.Create(s.logFile)
		if err != nil {
			return nil, fmt.Errorf("starting %s: %w", s.name, err)
		}
		defer f.Close() // the child holds its own descriptor
		cmd.Stderr = f
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("starting %s: %w", s.name, err)
	}
	p := &proc{name: s.name, cmd: cmd, done: make(chan struct{}), log: s.logFile, grace: cmp.Or(s.grace, stopGrace)}
	ps.mu.Lock()
	ps.running[cmd.Process.Pid] = p
	ps.mu.Unlock()
	go func() {
		p.err = cmd.Wait()
		close(p.done)
	}()
	return p, nil
}

func (p *proc) pid() int { return p.cmd.Process.Pid }

func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// stop ends one process: SIGTERM, then SIGKILL after its grace.
func (ps *procs) stop(p *proc) {
	if !p.exited() {
		_ = p.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-p.done:
		case <-time.After(p.grace):
			_ = p.cmd.Process.Kill()
			<-p.done
		}
	}
	ps.mu.Lock()
	delete(ps.running, p.pid())
	ps.mu.Unlock()
}

// stopAll stops every process still running, in parallel.
func (ps *procs) stopAll() {
	ps.mu.Lock()
	list := make([]*proc, 0, len(ps.running))
	for _, p := range ps.running {
		list = append(list, p)
	}
	ps.mu.Unlock()
	var wg sync.WaitGroup
	for _, p := range list {
		wg.Go(func() { ps.stop(p) })
	}
	wg.Wait()
}

// wait waits for p to exit within bound, stopping it if it does not.
func (ps *procs) wait(ctx context.Context, p *proc, bound time.Duration) error {
	select {
	case <-p.done:
		ps.stop(p)
		if p.err != nil {
			return fmt.Errorf("%s: %w%s", p.name, p.err, logTail(p.log))
		}
		return nil
	case <-time.After(bound):
		ps.stop(p)
		return fmt.Errorf("%s did not finish within %v", p.name, bound)
	case <-ctx.Done():
		ps.stop(p)
		return ctx.Err()
	}
}

// logTail returns the end of a log file, for error messages.
func logTail(path string) string {
	if path == "" {
		return ""
	}
	b, err := os.ReadFile(path)
	if err != nil || len(b) == 0 {
		return ""
	}
	if len(b) > 2000 {
		b = b[len(b)-2000:]
	}
	return "\n--- " + filepath.Base(path) + " ---\n" + string(b)
}

// freePort returns a TCP port on 127.0.0.1 that was free a moment ago.
func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// pinning decides which cores the load balancer and the rest use. It pins
// only with taskset and at least two usable cores, unless told otherwise.
func pinning(want bool, lbCPUs, loadCPUs string) (lb, load, note string) {
	if !want {
		return "", "", "not pinned (-pin=false)"
	}
	if _, err := exec.LookPath("taskset"); err != nil {
		return "", "", "not pinned: taskset not found (Debian: apt-get install util-linux)"
	}
	allowed := allowedCPUs()
	if lbCPUs == "" && loadCPUs == "" {
		if len(allowed) < 2 {
			return "", "", "not pinned: fewer than 2 usable cores"
		}
		lbCPUs, loadCPUs = strconv.Itoa(allowed[0]), strconv.Itoa(allowed[1])
	}
	return lbCPUs, loadCPUs, fmt.Sprintf("load balancer on core %s; backends, load generator and harness on core %s", lbCPUs, loadCPUs)
}

// allowedCPUs lists the cores this process may run on (Cpus_allowed_list).
func allowedCPUs() []int {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return nil
	}
	for line := range strings.Lines(string(b)) {
		list, ok := strings.CutPrefix(line, "Cpus_allowed_list:")
		if !ok {
			continue
		}
		var cpus []int
		for part := range strings.SplitSeq(strings.TrimSpace(list), ",") {
			lo, hi, isRange := strings.Cut(part, "-")
			a, err := strconv.Atoi(lo)
			if err != nil {
				continue
			}
			b := a
			if isRange {
				if b, err = strconv.Atoi(hi); err != nil {
					continue
				}
			}
			for c := a; c <= b; c++ {
				cpus = append(cpus, c)
			}
		}
		return cpus
	}
	return nil
}

// pinSelf moves every thread of the harness onto cpus, so its own wake-ups
// stay off the load balancer's core.
func pinSelf(cpus string) error {
	if cpus == "" {
		return nil
	}
	out, err := exec.Command("taskset", "-a", "-p", "-c", cpus, strconv.Itoa(os.Getpid())).CombinedOutput()
	if err != nil {
		return fmt.Errorf("taskset -a -p -c %s: %v: %s", cpus, err, bytes.TrimSpace(out))
	}
	return nil
}

// moduleRoot is the folder of the lbpool module's go.mod.
func moduleRoot(ctx context.Context) (string, error) {
	out, err := exec.CommandContext(ctx, "go", "env", "GOMOD").Output()
	if err != nil {
		return "", fmt.Errorf("go env GOMOD: %w", err)
	}
	mod := strings.TrimSpace(string(out))
	if mod == "" || mod == os.DevNull {
		return "", errors.New("not inside the lbpool module: run from the repository")
	}
	return filepath.Dir(mod), nil
}

// buildCaddy builds ./cmd/caddy (Caddy with the standard modules and lbpool)
// into dir.
func buildCaddy(ctx context.Context, root, dir string) (string, error) {
	bin := filepath.Join(dir, "caddy")
	ctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "go", "build", "-o", bin, "./cmd/caddy")
	cmd.Dir = root
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build ./cmd/caddy: %w\n%s", err, out)
	}
	return bin, nil
}

// raiseFileLimit raises this process's soft limit on open files to its hard
// limit. Setting it explicitly also makes the processes started from here
// inherit it (Go otherwise restores the original soft limit in children).
func raiseFileLimit() error {
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		return fmt.Errorf("open-file limit: %w", err)
	}
	lim.Cur = lim.Max
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		return fmt.Errorf("raising the open-file limit to %d: %w", lim.Max, err)
	}
	return nil
}

// fileLimit is this process's soft limit on open files.
func fileLimit() uint64 {
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		return 0
	}
	return lim.Cur
}
