package caddyfile_test

// docs/monitoring holds a Grafana dashboard and Prometheus alert rules with
// promtool unit tests. These tests hold them to the metrics a running Caddy
// with lbpool exports, and run promtool's checks and tests on them.

import (
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/lbpool/lbpool/internal/lbtest"
)

var monitoring = filepath.Join(repoRoot, "docs", "monitoring")

// grafanaDashboard is the part of the dashboard JSON these tests read.
type grafanaDashboard struct {
	UID    string `json:"uid"`
	Panels []struct {
		ID         int    `json:"id"`
		Title      string `json:"title"`
		Datasource struct {
			UID string `json:"uid"`
		} `json:"datasource"`
		Targets []struct {
			Expr string `json:"expr"`
		} `json:"targets"`
	} `json:"panels"`
}

func readDashboard(t *testing.T) grafanaDashboard {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(monitoring, "grafana-dashboard.json"))
	if err != nil {
		t.Fatal(err)
	}
	var d grafanaDashboard
	if err := json.Unmarshal(data, &d); err != nil {
		t.Fatalf("grafana-dashboard.json: %v", err)
	}
	return d
}

// scrapeWithEveryLbpoolMetric loads a pool whose backends were asked,
// checked and retried, and returns Caddy's /metrics once every lbpool
// series has a sample.
func scrapeWithEveryLbpoolMetric(t *testing.T) string {
	t.Helper()
	c := lbtest.Start(t)
	b := lbtest.NewBackend(t, "a", nil)
	c.Load(t, c.Site("health_interval 100ms", b))
	for range 5 {
		c.Get(t, c.URL("/"))
	}
	var body string
	lbtest.Eventually(t, 10*time.Second, "a health check in the metrics", func() bool {
		_, data := c.Admin(t, http.MethodGet, "/metrics", "")
		body = string(data)
		return strings.Contains(body, "caddy_lbpool_health_check_duration_seconds_bucket{")
	})
	return body
}

// seriesNames are the metric names of a scrape's samples.
func seriesNames(scrape string) map[string]bool {
	names := map[string]bool{}
	for _, line := range strings.Split(scrape, "\n") {
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		name, _, _ := strings.Cut(line, "{")
		names[strings.Fields(name)[0]] = true
	}
	return names
}

func TestMonitoringQueriesOnlyMetricsCaddyExports(t *testing.T) {
	exported := seriesNames(scrapeWithEveryLbpoolMetric(t))
	queried := map[string][]string{} // metric → files
	for _, f := range []string{"grafana-dashboard.json", "alerts.yml", "alerts.test.yml"} {
		data, err := os.ReadFile(filepath.Join(monitoring, f))
		if err != nil {
			t.Fatal(err)
		}
		for _, name := range metricName.FindAllString(string(data), -1) {
			queried[name] = append(queried[name], f)
		}
	}
	if len(queried) < 10 {
		t.Fatalf("the dashboard and rules query %d lbpool metrics; the regexp must have missed some", len(queried))
	}
	for name, files := range queried {
		if !exported[name] {
			t.Errorf("%s query %s, which Caddy does not export", strings.Join(files, ", "), name)
		}
	}
}

func TestMonitoringDashboardPanelsUseTheDataSourceVariable(t *testing.T) {
	d := readDashboard(t)
	if d.UID == "" || len(d.Panels) < 8 {
		t.Fatalf("uid %q, %d panels", d.UID, len(d.Panels))
	}
	ids := map[int]bool{}
	for _, p := range d.Panels {
		if ids[p.ID] {
			t.Errorf("panel %q: id %d used twice", p.Title, p.ID)
		}
		ids[p.ID] = true
		if p.Datasource.UID != "${datasource}" || len(p.Targets) == 0 {
			t.Errorf("panel %q: data source %q, %d queries", p.Title, p.Datasource.UID, len(p.Targets))
		}
		for _, q := range p.Targets {
			if q.Expr == "" {
				t.Errorf("panel %q: a query without an expression", p.Title)
			}
		}
	}
}

var (
	alertRule = regexp.MustCompile(`(?m)^\s*- alert: (\S+)`)
	alertTest = regexp.MustCompile(`(?m)^\s*alertname: (\S+)`)
)

// Every alert has a unit test that expects it to fire, and one that
// expects it not to.
func TestMonitoringEveryAlertHasPromtoolTests(t *testing.T) {
	rules, err := os.ReadFile(filepath.Join(monitoring, "alerts.yml"))
	if err != nil {
		t.Fatal(err)
	}
	tests, err := os.ReadFile(filepath.Join(monitoring, "alerts.test.yml"))
	if err != nil {
		t.Fatal(err)
	}
	fires, silent := map[string]int{}, map[string]int{}
	// each alertname line is followed by its exp_alerts: [] or a list
	for _, m := range alertTest.FindAllSubmatchIndex(tests, -1) {
		name := string(tests[m[2]:m[3]])
		rest := strings.TrimSpace(string(tests[m[1]:]))
		if strings.HasPrefix(rest, "exp_alerts: []") {
			silent[name]++
		} else {
			fires[name]++
		}
	}
	alerts := alertRule.FindAllSubmatch(rules, -1)
	if len(alerts) < 5 {
		t.Fatalf("%d alerts in alerts.yml, want at least 5", len(alerts))
	}
	for _, a := range alerts {
		name := string(a[1])
		if fires[name] == 0 || silent[name] == 0 {
			t.Errorf("alert %s: %d tests where it fires and %d where it does not; want both", name, fires[name], silent[name])
		}
	}
}

// promtool is Prometheus's checker. Without it the promtool test is
// skipped, except in CI, where it fails (.ci/run installs it).
func promtool(t *testing.T) string {
	t.Helper()
	path, err := exec.LookPath("promtool")
	if err == nil {
		return path
	}
	const msg = "no promtool: install Prometheus's (Debian: apt-get install prometheus; .ci/run does it)"
	if ci := os.Getenv("CI"); ci != "" && ci != "false" && ci != "0" {
		t.Fatal(msg + " (CI is set, so this fails instead of skipping)")
	}
	t.Skip(msg)
	return ""
}

func runPromtool(t *testing.T, bin, stdin string, args ...string) {
	t.Helper()
	cmd := exec.Command(bin, args...)
	cmd.Dir = monitoring
	if stdin != "" {
		cmd.Stdin = strings.NewReader(stdin)
	}
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Errorf("promtool %s: %v\n%s", strings.Join(args, " "), err, out)
	}
}

func TestMonitoringPromtoolChecksAndTestsPass(t *testing.T) {
	bin := promtool(t)
	runPromtool(t, bin, "", "check", "rules", "alerts.yml")
	runPromtool(t, bin, "", "test", "rules", "alerts.test.yml")
	runPromtool(t, bin, scrapeWithEveryLbpoolMetric(t), "check", "metrics")

	// the dashboard's queries, with Grafana's variables given values, as
	// recording rules: promtool parses each
	var rules strings.Builder
	rules.WriteString("groups:\n  - name: dashboard\n    rules:\n")
	d := readDashboard(t)
	var exprs []string
	for _, p := range d.Panels {
		for _, q := range p.Targets {
			exprs = append(exprs, q.Expr)
		}
	}
	sort.Strings(exprs)
	vars := strings.NewReplacer("$__rate_interval", "1m", "$pool", ".*")
	for i, e := range exprs {
		expr, _ := json.Marshal(vars.Replace(e))
		fmt.Fprintf(&rules, "      - record: dashboard:query%d\n        expr: %s\n", i, expr)
	}
	file := filepath.Join(t.TempDir(), "dashboard-queries.yml")
	if err := os.WriteFile(file, []byte(rules.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	runPromtool(t, bin, "", "check", "rules", file)
}
