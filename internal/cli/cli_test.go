package cli_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/lbpool/lbpool/internal/lbtest"
)

func TestMain(m *testing.M) {
	code := m.Run()
	lbtest.Stop()
	if caddyBinary.dir != "" {
		_ = os.RemoveAll(caddyBinary.dir)
	}
	os.Exit(code)
}

// caddyBinary is ./cmd/caddy built once for the package's tests: the
// command runs as a user runs it, in a process of its own.
var caddyBinary struct {
	once sync.Once
	dir  string
	path string
	err  error
}

func buildCaddy(t *testing.T) string {
	t.Helper()
	if testing.Short() {
		t.Skip("builds cmd/caddy; skipped with -short")
	}
	caddyBinary.once.Do(func() {
		dir, err := os.MkdirTemp("", "lbpool-cli-")
		if err != nil {
			caddyBinary.err = err
			return
		}
		caddyBinary.dir = dir
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
		defer cancel()
		out := filepath.Join(dir, "caddy")
		cmd := exec.CommandContext(ctx, "go", "build", "-o", out, "./cmd/caddy")
		cmd.Dir = filepath.Join("..", "..")
		if data, err := cmd.CombinedOutput(); err != nil {
			caddyBinary.err = fmt.Errorf("go build ./cmd/caddy: %v\n%s", err, data)
			return
		}
		caddyBinary.path = out
	})
	if caddyBinary.err != nil {
		t.Fatal(caddyBinary.err)
	}
	return caddyBinary.path
}

// lbpoolCmd runs `caddy lbpool <args>` and returns its output and exit code.
func lbpoolCmd(t *testing.T, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	bin := buildCaddy(t)
	// generous: the command answers in a second, but on a loaded machine
	// starting a process can take many
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, append([]string{"lbpool"}, args...)...)
	cmd.Env = append(os.Environ(), "HOME="+t.TempDir())
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	err := cmd.Run()
	var exit *exec.ExitError
	switch {
	case errors.As(err, &exit):
		code = exit.ExitCode()
	case err != nil:
		t.Fatalf("caddy lbpool %s: %v", strings.Join(args, " "), err)
	}
	return out.String(), errOut.String(), code
}

// threeBackends loads a pool web of two live backends and one whose port
// is closed, and waits until the closed one is down.
func threeBackends(t *testing.T) (c *lbtest.Caddy, up []*lbtest.Backend, down string) {
	c = lbtest.Start(t)
	up = []*lbtest.Backend{lbtest.NewBackend(t, "a", nil), lbtest.NewBackend(t, "b", nil)}
	down = fmt.Sprintf("127.0.0.1:%d", lbtest.FreePort(t))
	c.Load(t, c.SiteAt("health_interval 200ms", up[0].Addr(), up[1].Addr(), down))
	lbtest.Eventually(t, 30*time.Second, "the closed backend down", func() bool {
		return !c.Backend(t, "web", "http://"+down).Alive
	})
	return c, up, down
}

// adminAddr is an admin address as --address takes it.
type adminAddr string

func (a adminAddr) flag() string { return "--address=" + string(a) }

func addressOf(c *lbtest.Caddy) adminAddr { return adminAddr(fmt.Sprintf("localhost:%d", c.AdminPort)) }

// stateOf is the STATE column of the backend's line in a status table.
func stateOf(t *testing.T, table, backend string) string {
	t.Helper()
	for _, line := range strings.Split(table, "\n") {
		f := strings.Fields(line)
		if len(f) > 2 && f[1] == "http://"+backend {
			return f[2]
		}
	}
	t.Fatalf("no line for %s in\n%s", backend, table)
	return ""
}

func TestStatusListsEveryBackendWithItsState(t *testing.T) {
	c, up, down := threeBackends(t)
	a := addressOf(c)
	if status, body := c.Admin(t, "POST", "/lbpool/state",
		fmt.Sprintf(`{"pool":"web","backend":%q,"state":"drain"}`, up[1].Addr())); status != 200 {
		t.Fatalf("drain: %d %s", status, body)
	}
	for range 20 {
		c.Get(t, c.URL("/"))
	}
	out, errOut, code := lbpoolCmd(t, "status", a.flag())
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	t.Logf("caddy lbpool status:\n%s", out)
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != 4 || !strings.HasPrefix(lines[0], "POOL  BACKEND") {
		t.Fatalf("want a header and three lines:\n%s", out)
	}
	for backend, want := range map[string]string{up[0].Addr(): "UP", up[1].Addr(): "DRAIN", down: "DOWN"} {
		if got := stateOf(t, out, backend); got != want {
			t.Errorf("%s: state %s, want %s", backend, got, want)
		}
	}
	// --json: the same rows, with the request counts of the stats
	out, errOut, code = lbpoolCmd(t, "status", "--json", "--interval=0", "--pool=web", a.flag())
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	var rows []struct {
		Backend   string          `json:"backend"`
		State     string          `json:"state"`
		Rate      *float64        `json:"requests_per_second"`
		LastCheck json.RawMessage `json:"last_check"`
	}
	if err := json.Unmarshal([]byte(out), &rows); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	if len(rows) != 3 || rows[0].State != "UP" || rows[1].State != "DRAIN" || rows[2].State != "DOWN" {
		t.Fatalf("rows: %+v", rows)
	}
	if rows[0].Rate != nil || string(rows[0].LastCheck) == "null" {
		t.Errorf("one read: want no rate and a last check, got %+v", rows[0])
	}
}

func TestStatusMeasuresRequestsPerSecond(t *testing.T) {
	c, _, _ := threeBackends(t)
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		c.Traffic(2, 1<<30, "/", func() bool {
			select {
			case <-stop:
				return true
			default:
				return false
			}
		})
	}()
	defer func() { close(stop); <-done }()
	out, errOut, code := lbpoolCmd(t, "status", "--json", "--interval=1s", addressOf(c).flag())
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	var rows []struct {
		Rate *float64 `json:"requests_per_second"`
	}
	if err := json.Unmarshal([]byte(out), &rows); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	if len(rows) != 3 || rows[0].Rate == nil || *rows[0].Rate <= 0 || rows[2].Rate == nil || *rows[2].Rate != 0 {
		t.Fatalf("want a rate over 0 on the live backend and 0 on the down one:\n%s", out)
	}
}

func TestDrainReadyAndWeightChangeWhatStatsShow(t *testing.T) {
	c, up, _ := threeBackends(t)
	a := addressOf(c)
	url := "http://" + up[0].Addr()
	steps := []struct {
		args        []string
		state       string
		weight      int
		printedWord string
	}{
		{[]string{"drain", up[0].Addr()}, "drain", 1, "DRAIN"},
		{[]string{"maint", url, "--pool=web"}, "maint", 1, "MAINT"},
		{[]string{"ready", up[0].Addr()}, "ready", 1, "UP"},
		{[]string{"weight", up[0].Addr(), "7"}, "ready", 7, "weight 7"},
		{[]string{"weight", up[0].Addr(), "configured"}, "ready", 1, "weight 1"},
	}
	for _, s := range steps {
		out, errOut, code := lbpoolCmd(t, append(s.args, a.flag())...)
		if code != 0 || !strings.Contains(out, s.printedWord) {
			t.Fatalf("%v: exit %d, out %q, err %q", s.args, code, out, errOut)
		}
		if b := c.Backend(t, "web", url); b.State != s.state || b.Weight != s.weight {
			t.Fatalf("%v: stats show state %s weight %d, want %s %d", s.args, b.State, b.Weight, s.state, s.weight)
		}
	}
}

// Every failure is one line on stderr that names the admin address and
// what failed, and exit code 1.
func TestErrorsAreOneLineNamingTheAdminAddress(t *testing.T) {
	c, up, _ := threeBackends(t)
	closed := adminAddr(fmt.Sprintf("127.0.0.1:%d", lbtest.FreePort(t)))
	cases := []struct {
		args []string
		addr adminAddr
		want string
	}{
		{[]string{"status"}, closed, "connection refused"},
		{[]string{"drain", up[0].Addr()}, closed, "connection refused"},
		{[]string{"drain", "127.0.0.1:1"}, addressOf(c), "no pool has a backend 127.0.0.1:1"},
		{[]string{"drain", up[0].Addr(), "--pool=nope"}, addressOf(c), "404"},
		{[]string{"status", "--pool=nope"}, addressOf(c), "unknown pool"},
	}
	for _, tc := range cases {
		out, errOut, code := lbpoolCmd(t, append(tc.args, tc.addr.flag())...)
		lines := strings.Split(strings.TrimSpace(errOut), "\n")
		if code != 1 || out != "" || len(lines) != 1 ||
			!strings.Contains(errOut, "admin "+string(tc.addr)+":") || !strings.Contains(errOut, tc.want) {
			t.Errorf("%v: exit %d, stdout %q, stderr %q; want exit 1 and one line naming %s and %q",
				tc.args, code, out, errOut, tc.addr, tc.want)
		}
	}
	// a bad weight is refused before any request
	if _, errOut, code := lbpoolCmd(t, "weight", up[0].Addr(), "0", addressOf(c).flag()); code != 1 || !strings.Contains(errOut, "1 to 10000") {
		t.Errorf("weight 0: exit %d, stderr %q", code, errOut)
	}
}

func TestHelpNamesTheSubcommands(t *testing.T) {
	bin := buildCaddy(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, bin, "help", "lbpool").CombinedOutput()
	if err != nil {
		t.Fatalf("caddy help lbpool: %v\n%s", err, out)
	}
	for _, sub := range []string{"status", "top", "drain", "maint", "ready", "weight", "--address"} {
		if !strings.Contains(string(out), sub) {
			t.Errorf("caddy help lbpool does not name %s:\n%s", sub, out)
		}
	}
}

// Without --address the admin address is found as `caddy reload` finds
// it: the admin address of the --config file, else CADDY_ADMIN.
func TestAdminAddressComesFromTheConfigElseCaddyAdmin(t *testing.T) {
	c, up, _ := threeBackends(t)
	config := filepath.Join(t.TempDir(), "Caddyfile")
	site := fmt.Sprintf("{\n\tadmin localhost:%d\n}\n:8080 {\n\trespond ok\n}\n", c.AdminPort)
	if err := os.WriteFile(config, []byte(site), 0o644); err != nil {
		t.Fatal(err)
	}
	out, errOut, code := lbpoolCmd(t, "status", "--interval=0", "--config="+config, "--adapter=caddyfile")
	if code != 0 || !strings.Contains(out, up[0].Addr()) {
		t.Errorf("--config: exit %d, out %q, err %q", code, out, errOut)
	}
	t.Setenv("CADDY_ADMIN", string(addressOf(c)))
	out, errOut, code = lbpoolCmd(t, "status", "--interval=0")
	if code != 0 || !strings.Contains(out, up[0].Addr()) {
		t.Errorf("CADDY_ADMIN: exit %d, out %q, err %q", code, out, errOut)
	}
}
