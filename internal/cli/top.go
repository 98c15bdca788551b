package cli

import (
	"errors"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/term"
)

func topCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "top [--pool <name>]",
		Short: "Shows the status table refreshed every second, with keys to drain, maint and ready",
		Long: `
Shows the table of 'status', refreshed every second, in the whole terminal.
Keys: up/down or k/j select a backend; d drains it, m puts it in maintenance,
r makes it ready; q or Ctrl-C quits and gives the terminal back as it was.
`,
		Args: cobra.NoArgs,
	}
	cmd.Flags().String("pool", "", "Show this pool only")
	cmd.RunE = run(func(cmd *cobra.Command, _ []string) error {
		a, err := adminFor(cmd)
		if err != nil {
			return err
		}
		pool, _ := cmd.Flags().GetString("pool")
		return top(a, pool)
	})
	return cmd
}

// The terminal sequences top uses: the alternate screen (the shell's screen
// comes back on leaving it), the cursor, and drawing.
const (
	enterScreen = "\x1b[?1049h\x1b[?25l"
	leaveScreen = "\x1b[?25h\x1b[?1049l"
	home        = "\x1b[H"
	clearLine   = "\x1b[K"
	clearBelow  = "\x1b[J"
	reverse     = "\x1b[7m"
	plain       = "\x1b[0m"
)

// A key top acts on.
type key byte

const (
	keyQuit key = 'q'
	keyUp   key = 'k'
	keyDown key = 'j'
	keyDrn  key = 'd'
	keyMnt  key = 'm'
	keyRdy  key = 'r'
)

// topView is what top shows: the last read of the stats, the selected
// backend and the last message.
type topView struct {
	admin    *admin
	rows     []row
	prev     *sample
	selected string // key of the selected backend
	message  string
	readErr  error
}

// read is one read of the stats, from the reading goroutine.
type read struct {
	backends []backend
	at       time.Time
	err      error
}

func top(a *admin, pool string) error {
	in, out := int(os.Stdin.Fd()), int(os.Stdout.Fd())
	if !term.IsTerminal(in) || !term.IsTerminal(out) {
		return errors.New("top needs a terminal; use status to print the table once")
	}
	saved, err := term.MakeRaw(in)
	if err != nil {
		return fmt.Errorf("putting the terminal in raw mode: %v", err)
	}
	// whatever happens from here on, the terminal is given back as it was
	defer func() { _ = term.Restore(in, saved) }()
	fmt.Fprint(os.Stdout, enterScreen)
	defer fmt.Fprint(os.Stdout, leaveScreen)

	signals := make(chan os.Signal, 1)
	signal.Notify(signals, syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP)
	defer signal.Stop(signals)

	keys := make(chan key, 16)
	go readKeys(os.Stdin, keys)

	done := make(chan struct{})
	defer close(done)
	reads, refresh := make(chan read), make(chan struct{}, 1)
	go readStats(a, pool, reads, refresh, done)
	results := make(chan string, 4)

	v := &topView{admin: a, message: "reading " + a.addr + " …"}
	for {
		width, height, err := term.GetSize(out)
		if err != nil {
			width, height = 120, 40
		}
		fmt.Fprint(os.Stdout, v.screen(width, height))
		select {
		case <-signals:
			return nil
		case r := <-reads:
			v.update(r)
		case msg := <-results:
			v.message = msg
			select {
			case refresh <- struct{}{}:
			default:
			}
		case k, ok := <-keys:
			if !ok || k == keyQuit {
				return nil
			}
			if state, act := v.keyAction(k); act {
				r, ok := v.selectedRow()
				if !ok {
					continue
				}
				v.message = fmt.Sprintf("%s %s → %s …", r.Pool, r.Backend, state)
				go func() { results <- applyFromTop(a, r, state) }()
			}
		}
	}
}

// readKeys turns the terminal's bytes into keys: q and Ctrl-C quit, arrows
// and k/j move, d/m/r act. It ends with the input.
func readKeys(f *os.File, keys chan<- key) {
	defer close(keys)
	buf := make([]byte, 64)
	for {
		n, err := f.Read(buf)
		if err != nil {
			return
		}
		in := buf[:n]
		for len(in) > 0 {
			switch {
			case strings.HasPrefix(string(in), "\x1b[A"), strings.HasPrefix(string(in), "\x1bOA"):
				keys <- keyUp
				in = in[3:]
				continue
			case strings.HasPrefix(string(in), "\x1b[B"), strings.HasPrefix(string(in), "\x1bOB"):
				keys <- keyDown
				in = in[3:]
				continue
			}
			switch c := in[0]; c {
			case 3, 'q', 'Q': // Ctrl-C arrives as a byte in raw mode
				keys <- keyQuit
			case 'k', 'j', 'd', 'm', 'r':
				keys <- key(c)
			}
			in = in[1:]
		}
	}
}

// readStats reads the stats every second, or at once when asked on
// refresh, until done; one read at a time, so a slow admin endpoint slows
// the refresh and never the keys.
func readStats(a *admin, pool string, reads chan<- read, refresh <-chan struct{}, done <-chan struct{}) {
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for {
		bs, err := a.stats(pool)
		select {
		case reads <- read{backends: bs, at: time.Now(), err: err}:
		case <-done:
			return
		}
		select {
		case <-tick.C:
		case <-refresh:
		case <-done:
			return
		}
	}
}

func applyFromTop(a *admin, r row, state string) string {
	b, err := a.set(change{Pool: r.Pool, Backend: r.Backend, State: state})
	if err != nil {
		return err.Error()
	}
	return fmt.Sprintf("%s %s: %s", b.Pool, b.URL, displayState(b))
}

func (v *topView) update(r read) {
	v.readErr = r.err
	if r.err != nil {
		return
	}
	now := newSample(r.at, r.backends)
	v.rows = rows(r.backends, now, v.prev)
	v.prev = &now
	if _, ok := v.selectedRow(); !ok && len(v.rows) > 0 {
		v.selected = v.rows[0].Pool + "\x00" + v.rows[0].Backend
	}
	if v.message != "" && strings.HasPrefix(v.message, "reading ") {
		v.message = ""
	}
}

func (v *topView) selectedIndex() int {
	for i, r := range v.rows {
		if r.Pool+"\x00"+r.Backend == v.selected {
			return i
		}
	}
	return -1
}

func (v *topView) selectedRow() (row, bool) {
	if i := v.selectedIndex(); i >= 0 {
		return v.rows[i], true
	}
	return row{}, false
}

// keyAction moves the selection, or returns the admin state a key asks for.
func (v *topView) keyAction(k key) (state string, act bool) {
	i := v.selectedIndex()
	switch k {
	case keyUp, keyDown:
		if len(v.rows) == 0 {
			return "", false
		}
		if k == keyUp {
			i = max(i-1, 0)
		} else {
			i = min(i+1, len(v.rows)-1)
		}
		v.selected = v.rows[i].Pool + "\x00" + v.rows[i].Backend
		return "", false
	case keyDrn:
		return "drain", true
	case keyMnt:
		return "maint", true
	case keyRdy:
		return "ready", true
	}
	return "", false
}

// screen is the whole screen, drawn over the last one: a title, the
// table with the selected backend in reverse video, and the last message.
func (v *topView) screen(width, height int) string {
	var sb strings.Builder
	sb.WriteString(home)
	line := func(s string, highlight bool) {
		if height <= 0 {
			return
		}
		height--
		if r := []rune(s); len(r) > width {
			s = string(r[:width])
		}
		if highlight {
			s = reverse + s + plain
		}
		sb.WriteString(s + clearLine + "\r\n")
	}
	line(fmt.Sprintf("lbpool top  admin %s  %s   q quit  ↑↓ select  d drain  m maint  r ready",
		v.admin.addr, time.Now().Format("15:04:05")), false)
	line("", false)
	lines := table(v.rows, time.Now())
	line(lines[0], false)
	sel := v.selectedIndex()
	for i, l := range lines[1:] {
		line(l, i == sel)
	}
	line("", false)
	switch {
	case v.readErr != nil:
		line(v.readErr.Error(), false)
	case v.message != "":
		line(v.message, false)
	}
	sb.WriteString(clearBelow)
	return sb.String()
}
