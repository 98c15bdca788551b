package caddyfile_test

// The answers the pages show (admin API, a site's error page, log lines,
// metrics) come from the Caddy these tests run, the examples' Caddy: pool
// web with three static backends and pool app with three members found
// through DNS. Values that change from run to run (times, durations,
// ports, the instance ID) are written as fixed example values; every field
// and every other value is what Caddy answered.

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/lbpool/lbpool/internal/docblocks"
	"github.com/lbpool/lbpool/internal/lbtest"
	"github.com/lbpool/lbpool/leastconn"
)

// exampleMemory is what the examples' backends report at stats_uri.
const exampleMemory = 8083720

// exampleRequests is how many requests pool web serves before an example
// runs: 10 to each backend.
const exampleRequests = 30

// examples is the examples' Caddy and its backends.
type examples struct {
	t       *testing.T
	c       *lbtest.Caddy
	web     []*lbtest.Backend
	members []*lbtest.Backend
	port    int // the members' port
	dns     *lbtest.DNS
}

func newExamples(t *testing.T) *examples {
	e := &examples{t: t, c: lbtest.Start(t)}
	// registered first, so it runs last: no pool is left asking a stopped
	// DNS server or checking closed backends
	t.Cleanup(func() { e.c.Load(t, "") })
	e.dns = lbtest.NewDNS(t)
	for i := range 3 {
		e.web = append(e.web, lbtest.NewBackend(t, fmt.Sprintf("app%d", i+1), reportsMemory(fmt.Sprintf("app%d", i+1))))
	}
	e.members, e.port = lbtest.NewBackendsOnLoopback(t, 3, reportsMemory)
	e.dns.SetA("app.internal", e.memberIPs(3)...)
	return e
}

// reportsMemory answers /stats with exampleMemory and anything else with name.
func reportsMemory(name string) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/stats" {
			fmt.Fprintf(w, `{"memory_usage": %d}`, exampleMemory)
			return
		}
		_, _ = io.WriteString(w, name)
	}
}

func (e *examples) memberIPs(n int) []string {
	var out []string
	for _, m := range e.members[:n] {
		out = append(out, m.IP())
	}
	return out
}

// site is the examples' site: pool app under /app/, pool web for the rest;
// options go to pool web, refresh to pool app's DNS source.
func (e *examples) site(refresh, options string) string {
	return fmt.Sprintf(`:%d {
	lbpool /app/* {
		name app
		health_uri /health
		state_sync off
		dynamic a app.internal %d {
			resolvers %s
			refresh %s
		}
	}
	lbpool %s %s %s {
		name web
		health_uri /health
		stats_uri /stats
		state_sync 1s
		%s
	}
}`, e.c.HTTPPort, e.port, e.dns.Addr, refresh, e.web[0].Addr(), e.web[1].Addr(), e.web[2].Addr(), options)
}

// fresh starts the examples' Caddy anew: no pool, nothing stored, then
// both pools checked, with memory known, and pool web having served
// exampleRequests requests.
func (e *examples) fresh() {
	t := e.t
	e.c.Load(t, "")
	if err := os.RemoveAll(filepath.Join(e.c.Storage, "lbpool")); err != nil {
		t.Fatal(err)
	}
	e.c.Load(t, e.site("30s", ""))
	lbtest.Eventually(t, 10*time.Second, "both pools checked, memory known", func() bool {
		stats := e.c.Stats(t, "")
		if len(stats) != 6 {
			return false
		}
		for _, s := range stats {
			if !s.Alive || s.LastCheck == nil || (s.Pool == "web" && s.MemoryBytes == nil) {
				return false
			}
		}
		return true
	})
	for range exampleRequests {
		if status, body := e.c.Get(t, e.c.URL("/")); status != http.StatusOK {
			t.Fatalf("GET /: %d %s", status, body)
		}
	}
}

// fromDoc turns the backends a page names into the examples' backends.
func (e *examples) fromDoc(s string) string {
	var pairs []string
	for i, b := range e.web {
		pairs = append(pairs, fmt.Sprintf("127.0.0.1:%d", 9001+i), b.Addr(), fmt.Sprintf("app%d:80", i+1), b.Addr())
	}
	return strings.NewReplacer(pairs...).Replace(s)
}

// Example values of what changes from run to run, by JSON field. Times of
// one field in one example count up a second from the first.
var (
	exampleTimes = map[string]string{
		"at":                "2026-12-03T10:04:52Z",
		"last_change":       "2026-12-03T09:59:37Z",
		"state_changed_at":  "2026-12-03T10:05:01Z",
		"weight_changed_at": "2026-12-03T10:05:01Z",
		"ejected_since":     "2026-12-03T10:04:30Z",
		"last_lookup":       "2026-12-03T10:04:58Z",
		"last_sync":         "2026-12-03T10:04:59Z",
		"error_since":       "2026-12-03T10:04:40Z",
	}
	exampleValues = map[string]string{
		"duration_ms":     "1.3",
		"latency_ewma_ms": "0.412",
		"uptime":          `"00h:05m:23s"`,
		"uptime_seconds":  "323",
	}
	exampleInstance = "4f0c5b1e-8a7d-4c3e-9b2a-1d6e7f809a1b"
	exampleStorage  = "/srv/lbpool-shared"
	exampleMember   = "10.0.0.%d:8080"

	jsonField = regexp.MustCompile(`^(\s*)"([a-z_]+)": (.*?)(,?)$`)
	uuidText  = regexp.MustCompile(`[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}`)
)

// toDoc writes an answer as the pages show it: the examples' addresses as
// the pages name them, and example values for what changes from run to run.
func (e *examples) toDoc(lines []string) []string {
	var pairs []string
	for i, b := range e.web {
		pairs = append(pairs, b.Addr(), fmt.Sprintf("127.0.0.1:%d", 9001+i))
	}
	for i, m := range e.members {
		pairs = append(pairs, m.Addr(), fmt.Sprintf(exampleMember, i+2))
	}
	pairs = append(pairs, e.c.Storage, exampleStorage)
	addrs := strings.NewReplacer(pairs...)

	times := map[string][]string{} // field → its times, in order
	for _, l := range lines {
		if m := jsonField.FindStringSubmatch(l); m != nil && exampleTimes[m[2]] != "" && m[3] != "null" {
			times[m[2]] = append(times[m[2]], m[3])
		}
	}
	out := make([]string, len(lines))
	for i, l := range lines {
		l = uuidText.ReplaceAllString(addrs.Replace(l), exampleInstance)
		if m := jsonField.FindStringSubmatch(l); m != nil && m[3] != "null" {
			value := m[3]
			switch {
			case exampleTimes[m[2]] != "":
				value = exampleTime(m[2], m[3], times[m[2]])
			case exampleValues[m[2]] != "":
				value = exampleValues[m[2]]
			case m[2] == "port" && m[3] == fmt.Sprint(e.port):
				value = "8080"
			}
			l = m[1] + `"` + m[2] + `": ` + value + m[4]
		}
		out[i] = l
	}
	return out
}

// exampleTime is the example time of one of a field's times: the field's
// example time, a second later for each earlier time of the field.
func exampleTime(field, value string, all []string) string {
	distinct := slices.Compact(slices.Sorted(slices.Values(all)))
	base, _ := time.Parse(time.RFC3339, strings.Trim(exampleTimes[field], `"`))
	return `"` + base.Add(time.Duration(slices.Index(distinct, value))*time.Second).Format(time.RFC3339) + `"`
}

// answer runs one curl of a page against the admin endpoint and returns
// its status and output lines, after the command's pipes.
func (e *examples) answer(c docblocks.Curl) (int, []string) {
	status, body := e.c.Admin(e.t, c.Method, c.URL.RequestURI(), e.fromDoc(c.Body))
	lines := strings.Split(strings.TrimSuffix(string(body), "\n"), "\n")
	for _, p := range c.Pipe {
		switch {
		case p[0] == "jq":
			filter := "."
			if len(p) > 1 {
				filter = p[1]
			}
			out, err := docblocks.JQ(body, filter)
			if err != nil {
				e.t.Fatalf("%v on %s", err, body)
			}
			lines = strings.Split(strings.Join(out, "\n"), "\n")
		case p[0] == "head" && len(p) == 2 && p[1] == "-1":
			lines = lines[:1]
		default:
			e.t.Fatalf("a pipe to %q, which the doc tests do not replay", p)
		}
	}
	return status, lines
}

// adminCurls returns the curls of a command if every one goes to the admin
// endpoint.
func adminCurls(t *testing.T, cmd docblocks.Command) []docblocks.Curl {
	curls, err := docblocks.Curls(cmd.Text)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range curls {
		if c.Target() != docblocks.TargetAdmin {
			return nil
		}
	}
	return curls
}

// endpointTypes are the objects each admin route answers with.
var endpointTypes = map[string]reflect.Type{
	"/lbpool/stats":     reflect.TypeOf(leastconn.BackendStats{}),
	"/lbpool/state":     reflect.TypeOf(leastconn.BackendStats{}),
	"/lbpool/pools":     reflect.TypeOf(leastconn.PoolStats{}),
	"/lbpool/discovery": reflect.TypeOf(leastconn.DiscoveryStatus{}),
	"/lbpool/fleet":     reflect.TypeOf(leastconn.FleetStatus{}),
}

func TestDocAdminAPIExamplesAreWhatCaddyAnswers(t *testing.T) {
	e := newExamples(t)
	shown := 0
	for _, p := range pageBlocks(t) {
		blocks := p.blocks
		texts := map[int]string{}
		for _, b := range blocks {
			cmds := b.Commands()
			if b.Lang != "console" || !slices.ContainsFunc(cmds, func(c docblocks.Command) bool { return len(adminCurls(t, c)) > 0 }) {
				continue
			}
			e.fresh()
			// every answer first, so that the example times of one block count up
			var raw []string
			counts := make([]int, len(cmds))
			for i, cmd := range cmds {
				for _, c := range adminCurls(t, cmd) {
					status, lines := e.answer(c)
					if status/100 != 2 && len(cmd.Output) == 0 {
						t.Errorf("%s: %s answered %d", b.Where(cmd.Line+1), c.URL.Path, status)
					}
					raw = append(raw, lines...)
					counts[i] += len(lines)
				}
			}
			answers := e.toDoc(raw)
			changed := false
			for i, cmd := range cmds {
				got := answers[:counts[i]]
				answers = answers[counts[i]:]
				if len(cmd.Output) == 0 {
					continue
				}
				shown++
				if !slices.Equal(got, cmd.Output) {
					if *update {
						cmds[i].Output, changed = got, true
						continue
					}
					t.Errorf("%s: %s\n%s\nCaddy answers:\n%s\nthe page shows:\n%s", b.Where(cmd.Line+1), cmd.Text,
						fieldDiff(got, cmd.Output), strings.Join(got, "\n"), strings.Join(cmd.Output, "\n"))
				}
			}
			if changed {
				texts[b.Line] = docblocks.Render(cmds)
			}
		}
		rewrite(t, p.path, blocks, texts)
	}
	t.Logf("%d answers of the admin API compared", shown)
	if shown == 0 {
		t.Fatal("no admin API answer shown on any page")
	}
}

// fieldDiff names the JSON fields one answer has and the other lacks.
func fieldDiff(got, shown []string) string {
	fields := func(lines []string) map[string]bool {
		out := map[string]bool{}
		for _, l := range lines {
			if m := jsonField.FindStringSubmatch(l); m != nil {
				out[m[2]] = true
			}
		}
		return out
	}
	g, s := fields(got), fields(shown)
	var missing, extra []string
	for f := range g {
		if !s[f] {
			missing = append(missing, f)
		}
	}
	for f := range s {
		if !g[f] {
			extra = append(extra, f)
		}
	}
	sort.Strings(missing)
	sort.Strings(extra)
	return fmt.Sprintf("fields the page lacks: %v; fields Caddy does not answer: %v", missing, extra)
}

func TestDocAdminAPICommandsWork(t *testing.T) {
	e := newExamples(t)
	e.fresh()
	n := 0
	for _, p := range pageBlocks(t) {
		for _, b := range p.blocks {
			if b.Lang != "sh" {
				continue
			}
			for _, cmd := range b.Commands() {
				for _, c := range adminCurls(t, cmd) {
					n++
					status, lines := e.answer(c)
					if status/100 != 2 {
						t.Errorf("%s: %s answered %d: %s", b.Where(cmd.Line+1), cmd.Text, status, strings.Join(lines, "\n"))
					}
					typ, ok := endpointTypes[c.URL.Path]
					if !ok {
						t.Errorf("%s: %s is no route of lbpool's", b.Where(cmd.Line+1), c.URL.Path)
						continue
					}
					fields := map[string]bool{}
					jsonFields(typ, "", fields)
					for _, p := range c.Pipe {
						for _, k := range docblocks.Keys(strings.Join(p[1:], " ")) {
							if p[0] == "jq" && !fields[k] {
								t.Errorf("%s: jq asks for %q, no field of %s", b.Where(cmd.Line+1), k, c.URL.Path)
							}
						}
					}
				}
			}
		}
	}
	t.Logf("%d admin API commands replayed", n)
}

func TestDocSiteExamplesAreWhatCaddyAnswers(t *testing.T) {
	c := lbtest.Start(t)
	n := 0
	for _, p := range pageBlocks(t) {
		blocks := p.blocks
		texts := map[int]string{}
		for i, b := range blocks {
			if b.Lang != "console" {
				continue
			}
			cmds := b.Commands()
			for j, cmd := range cmds {
				curls, _ := docblocks.Curls(cmd.Text)
				if len(curls) != 1 || curls[0].Target() != docblocks.TargetSite {
					continue
				}
				site := lastCaddyfileBefore(blocks, i)
				if site == "" {
					t.Errorf("%s: a curl to the site with no Caddyfile before it", b.Where(cmd.Line+1))
					continue
				}
				n++
				got := siteAnswer(t, c, site, curls[0], cmd.Output)
				if !slices.Equal(got, cmd.Output) {
					if *update {
						cmds[j].Output = got
						texts[b.Line] = docblocks.Render(cmds)
						continue
					}
					t.Errorf("%s: %s\nCaddy answers:\n%s\nthe page shows:\n%s", b.Where(cmd.Line+1), cmd.Text,
						strings.Join(got, "\n"), strings.Join(cmd.Output, "\n"))
				}
			}
		}
		rewrite(t, p.path, blocks, texts)
	}
	c.Load(t, "")
	if n == 0 {
		t.Fatal("no curl to a site on any page")
	}
}

func lastCaddyfileBefore(blocks []docBlock, i int) string {
	for j := i - 1; j >= 0; j-- {
		if blocks[j].Lang == "caddyfile" && blocks[j].Role == "" {
			return blocks[j].Text
		}
	}
	return ""
}

// siteAnswer loads a page's Caddyfile with its site on the test's port and
// its backends (named app1:80, app2:80, ...) on ports nothing listens on,
// waits until they are down, and answers the curl as curl prints it: with
// -i, the status line and the headers the page shows, "...", the body.
func siteAnswer(t *testing.T, c *lbtest.Caddy, site string, curl docblocks.Curl, shown []string) []string {
	site = strings.Replace(site, ":8080 {", fmt.Sprintf(":%d {", c.HTTPPort), 1)
	site = regexp.MustCompile(`\bapp\d+:80\b`).ReplaceAllStringFunc(site, func(string) string {
		return fmt.Sprintf("127.0.0.1:%d", lbtest.FreePort(t))
	})
	c.Load(t, site)
	lbtest.Eventually(t, 10*time.Second, "every backend down", func() bool {
		for _, s := range c.Stats(t, "") {
			if s.Alive {
				return false
			}
		}
		return true
	})
	req, err := http.NewRequest(curl.Method, c.URL(curl.URL.RequestURI()), nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := c.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	var out []string
	if curl.Include {
		out = append(out, resp.Proto+" "+resp.Status)
		for _, l := range shown[1:] {
			if l == "..." {
				break
			}
			name, _, _ := strings.Cut(l, ":")
			out = append(out, name+": "+resp.Header.Get(name))
		}
		out = append(out, "...")
	}
	return append(out, strings.Split(strings.TrimSuffix(string(body), "\n"), "\n")...)
}

func TestDocLogExamplesHaveTheFieldsCaddyLogs(t *testing.T) {
	e := newExamples(t)
	logged := e.logScenario()
	n := 0
	for _, b := range blocksOf(t, "json", "log") {
		for i, line := range strings.Split(strings.TrimSuffix(b.Text, "\n"), "\n") {
			n++
			var shown map[string]any
			if err := json.Unmarshal([]byte(line), &shown); err != nil {
				t.Errorf("%s: not a JSON log line: %v", b.Where(i+1), err)
				continue
			}
			if msg := matchLogLine(shown, logged); msg != "" {
				t.Errorf("%s: %s", b.Where(i+1), msg)
			}
		}
	}
	t.Logf("%d log lines compared with %d that Caddy logged", n, len(logged))
}

// logScenario makes Caddy log what the pages show: a backend down and up
// again, members leaving and joining, a failing and recovering DNS source,
// and an access-log entry of the Caddyfile that names the backend. It
// returns every line logged.
func (e *examples) logScenario() []map[string]any {
	t, c := e.t, e.c
	start := len(c.Logs())
	c.Load(t, e.site("100ms", "health_interval 200ms"))
	lbtest.Eventually(t, 10*time.Second, "both pools up", func() bool {
		stats := c.Stats(t, "")
		return len(stats) == 6 && !slices.ContainsFunc(stats, func(s leastconn.BackendStats) bool { return !s.Alive })
	})
	// only lines this scenario made count: earlier tests in the process
	// logged some of the same messages
	waitLog := func(what string, parts ...string) {
		lbtest.Eventually(t, 10*time.Second, what, func() bool {
			return slices.ContainsFunc(c.Logs()[start:], func(l string) bool {
				for _, p := range parts {
					if !strings.Contains(l, p) {
						return false
					}
				}
				return true
			})
		})
	}
	e.web[1].Close()
	for range 3 {
		c.Get(t, c.URL("/"))
	}
	waitLog("app2 down", `"status change"`, e.web[1].URL(), `"down"`)
	e.web[1].Restart(t)
	waitLog("app2 up", `"status change"`, e.web[1].URL(), `"up"`)

	e.dns.SetA("app.internal", e.memberIPs(2)...)
	waitLog("a member left", `"member left"`)
	e.dns.SetA("app.internal", e.memberIPs(3)...)
	waitLog("a member joined", `"member joined"`)
	waitLog("the member up", `"status change"`, e.members[2].URL(), `"up"`)
	e.dns.SetRcode("app.internal", dns.RcodeServerFailure)
	waitLog("a failing lookup", `"dns lookup failed`)
	e.dns.SetA("app.internal", e.memberIPs(3)...)
	waitLog("lookups working again", `"dns lookup works again"`)

	var out []map[string]any
	for _, l := range append(c.Logs()[start:], e.accessLogLine()) {
		var m map[string]any
		if json.Unmarshal([]byte(l), &m) == nil {
			out = append(out, m)
		}
	}
	return out
}

// accessLogLine loads the page's Caddyfile with log_append, on the
// examples' backends, and returns the access-log entry of one request.
func (e *examples) accessLogLine() string {
	t, c := e.t, e.c
	var sites []string
	for _, b := range blocksOf(t, "caddyfile", "") {
		if strings.Contains(b.Text, "log_append") {
			sites = append(sites, b.Text)
		}
	}
	if len(sites) != 1 {
		t.Fatalf("%d Caddyfiles with log_append on the pages, want the one the access-log example comes from", len(sites))
	}
	site := sites[0]
	logFile := filepath.Join(t.TempDir(), "access.log")
	site = regexp.MustCompile(`output file \S+`).ReplaceAllString(site, "output file "+logFile)
	site = strings.Replace(e.fromDoc(site), ":8080 {", fmt.Sprintf(":%d {", c.HTTPPort), 1)
	c.Load(t, site)
	if status, body := c.Get(t, c.URL("/")); status != http.StatusOK {
		t.Fatalf("GET /: %d %s", status, body)
	}
	var line string
	lbtest.Eventually(t, 10*time.Second, "the access log entry", func() bool {
		data, _ := os.ReadFile(logFile)
		line, _, _ = strings.Cut(string(data), "\n")
		return line != ""
	})
	c.Load(t, "")
	return line
}

// matchLogLine finds a logged line with the shown line's logger, message
// and level, and the same fields; it says what differs when none has them.
func matchLogLine(shown map[string]any, logged []map[string]any) string {
	var nearest map[string]any
	for _, l := range logged {
		if l["logger"] != shown["logger"] || l["msg"] != shown["msg"] || l["level"] != shown["level"] {
			continue
		}
		if reflect.DeepEqual(logFields(l, ""), logFields(shown, "")) {
			return ""
		}
		nearest = l
	}
	if nearest == nil {
		return fmt.Sprintf("Caddy logged no %v %q line of %v", shown["level"], shown["msg"], shown["logger"])
	}
	got, want := logFields(nearest, ""), logFields(shown, "")
	return fmt.Sprintf("Caddy logs the fields %v, the page shows %v", got, want)
}

// logFields lists a log line's fields, nested ones as a.b; the names in
// header maps are the request's, not the log's.
func logFields(m map[string]any, prefix string) []string {
	var out []string
	for k, v := range m {
		out = append(out, prefix+k)
		if sub, ok := v.(map[string]any); ok && k != "headers" && k != "resp_headers" {
			out = append(out, logFields(sub, prefix+k+".")...)
		}
	}
	sort.Strings(out)
	return out
}

// metricName finds the lbpool metrics the pages name.
var metricName = regexp.MustCompile(`caddy_lbpool_[a-z][a-z_]*[a-z]`)

func TestDocMetricsExamplesAreWhatCaddyExports(t *testing.T) {
	e := newExamples(t)
	e.fresh()
	_, body := e.c.Admin(t, http.MethodGet, "/metrics", "")
	labels := map[string]string{} // metric → its label names
	for _, line := range strings.Split(string(body), "\n") {
		if strings.HasPrefix(line, "caddy_lbpool_") {
			name, labelNames := metricLine(line)
			labels[name] = labelNames
		}
	}
	pages, err := docblocks.Pages(repoRoot)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range pages {
		data, _ := os.ReadFile(p)
		for _, name := range metricName.FindAllString(string(data), -1) {
			_, ok := labels[name]
			_, histogram := labels[name+"_bucket"] // a histogram named without its series' suffix
			if !ok && !histogram {
				t.Errorf("%s: Caddy exports no metric %s", p, name)
			}
		}
	}
	for _, b := range blocksOf(t, "text", "metrics") {
		for i, line := range strings.Split(strings.TrimSuffix(b.Text, "\n"), "\n") {
			name, labelNames := metricLine(line)
			if got, ok := labels[name]; ok && got != labelNames {
				t.Errorf("%s: %s has the labels %s, the page shows %s", b.Where(i+1), name, got, labelNames)
			}
		}
	}
}

// metricLine returns a sample's metric name and its label names.
func metricLine(line string) (name, labelNames string) {
	name, rest, _ := strings.Cut(line, "{")
	var names []string
	for _, pair := range regexp.MustCompile(`([a-z_]+)="`).FindAllStringSubmatch(rest, -1) {
		names = append(names, pair[1])
	}
	sort.Strings(names)
	return strings.Fields(name)[0], strings.Join(names, ",")
}
