package cli

import (
	"os"
	"strings"
	"testing"
	"time"
)

// docs/cli.md shows a status table: its header and the widths of its
// columns must be the ones status prints.
func TestDocsShowTheTableStatusPrints(t *testing.T) {
	data, err := os.ReadFile("../../docs/cli.md")
	if err != nil {
		t.Fatal(err)
	}
	_, shown, ok := strings.Cut(string(data), "$ caddy lbpool status\n")
	if !ok {
		t.Fatal("docs/cli.md shows no `$ caddy lbpool status`")
	}
	lines := strings.Split(shown, "\n")
	var rs []row
	for _, l := range lines[1:] {
		if strings.HasPrefix(l, "```") {
			break
		}
		f := strings.Fields(l)
		rs = append(rs, row{Pool: f[0], Backend: f[1]})
	}
	if got := table(rs, time.Now())[0]; lines[0][:len("POOL  BACKEND")] != got[:len("POOL  BACKEND")] ||
		strings.Join(strings.Fields(lines[0]), " ") != strings.Join(strings.Fields(got), " ") {
		t.Errorf("docs/cli.md shows the header\n%s\nstatus prints\n%s", lines[0], got)
	}
}

func TestDisplayStateShowsTheAdminStateFirst(t *testing.T) {
	for _, tc := range []struct {
		b    backend
		want string
	}{
		{backend{State: "ready", Alive: true}, "UP"},
		{backend{State: "ready"}, "DOWN"},
		{backend{State: "drain"}, "DRAIN"},
		{backend{State: "maint", Alive: true}, "MAINT"},
		{backend{State: "ready", Alive: true, Ejected: true}, "EJECTED"},
		{backend{State: "ready", Alive: true, Held: true}, "HELD"},
		{backend{State: "ready", Alive: true, Leaving: true}, "LEAVING"},
		{backend{State: "ready", Alive: true, Backup: true}, "UP backup"},
	} {
		if got := displayState(tc.b); got != tc.want {
			t.Errorf("%+v: %s, want %s", tc.b, got, tc.want)
		}
	}
}

func TestFormats(t *testing.T) {
	now := time.Date(2026, 12, 3, 10, 0, 10, 0, time.UTC)
	rate := 2153.4
	for _, tc := range []struct{ got, want string }{
		{formatMS(0), "-"},
		{formatMS(0.412), "0.41ms"},
		{formatMS(12.4), "12ms"},
		{formatMS(1200), "1.20s"},
		{formatRate(nil), "-"},
		{formatRate(&rate), "2153"},
		{formatCheck(nil, now), "-"},
		{formatCheck(&check{At: now.Add(-3 * time.Second), DurationMS: 1.3, Status: 200}, now), "200 in 1.30ms, 3s ago"},
		{formatCheck(&check{At: now, Error: strings.Repeat("x", 50)}, now), "failed 0s ago: " + strings.Repeat("x", 39) + "…"},
	} {
		if tc.got != tc.want {
			t.Errorf("got %q, want %q", tc.got, tc.want)
		}
	}
}
