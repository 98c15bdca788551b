package cli

import (
	"fmt"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"
)

// backend is the part of a GET /lbpool/stats object the command shows.
type backend struct {
	Pool              string  `json:"pool"`
	URL               string  `json:"url"`
	Leaving           bool    `json:"leaving"`
	Alive             bool    `json:"alive"`
	State             string  `json:"state"`
	Weight            int     `json:"weight"`
	ConfiguredWeight  int     `json:"configured_weight"`
	MemoryUsage       string  `json:"memory_usage"`
	MemoryBytes       *int64  `json:"memory_bytes"`
	ActiveConnections int64   `json:"active_connections"`
	RequestsTotal     uint64  `json:"requests_total"`
	FailuresTotal     uint64  `json:"failures_total"`
	LatencyEWMAMS     float64 `json:"latency_ewma_ms"`
	Backup            bool    `json:"backup"`
	Ejected           bool    `json:"ejected"`
	Held              bool    `json:"held"`
	LastCheck         *check  `json:"last_check"`
}

// check is a backend's last active health check.
type check struct {
	At         time.Time `json:"at"`
	DurationMS float64   `json:"duration_ms"`
	Status     int       `json:"status"`
	Error      string    `json:"error"`
}

// row is one line of the status table, and one object of `status --json`.
type row struct {
	Pool    string `json:"pool"`
	Backend string `json:"backend"`
	// State is the one word an operator reads first: MAINT, DRAIN, DOWN,
	// EJECTED, HELD, LEAVING or UP (see displayState).
	State  string `json:"state"`
	Weight int    `json:"weight"`
	Active int64  `json:"active"`
	// RequestsPerSecond is null when there was one sample only.
	RequestsPerSecond *float64 `json:"requests_per_second"`
	Failures          uint64   `json:"failures"`
	LatencyMS         float64  `json:"latency_ms"`
	Memory            string   `json:"memory"`
	MemoryBytes       *int64   `json:"memory_bytes"`
	LastCheck         *check   `json:"last_check"`
}

// sample is one read of the stats, kept to compute rates from the next.
type sample struct {
	at       time.Time
	requests map[string]uint64 // by pool and URL
}

func backendKey(b backend) string { return b.Pool + "\x00" + b.URL }

func newSample(at time.Time, bs []backend) sample {
	s := sample{at: at, requests: make(map[string]uint64, len(bs))}
	for _, b := range bs {
		s.requests[backendKey(b)] = b.RequestsTotal
	}
	return s
}

// rows turns a read of the stats into table rows, with rates against prev
// when prev holds a read.
func rows(bs []backend, now sample, prev *sample) []row {
	out := make([]row, 0, len(bs))
	for _, b := range bs {
		r := row{
			Pool: b.Pool, Backend: b.URL, State: displayState(b), Weight: b.Weight,
			Active: b.ActiveConnections, Failures: b.FailuresTotal, LatencyMS: b.LatencyEWMAMS,
			Memory: b.MemoryUsage, MemoryBytes: b.MemoryBytes, LastCheck: b.LastCheck,
		}
		if prev != nil {
			if before, ok := prev.requests[backendKey(b)]; ok && b.RequestsTotal >= before {
				if dt := now.at.Sub(prev.at).Seconds(); dt > 0 {
					rate := float64(b.RequestsTotal-before) / dt
					r.RequestsPerSecond = &rate
				}
			}
		}
		out = append(out, r)
	}
	return out
}

// displayState is the backend's state in one word, the admin state first,
// as HAProxy's stats show MAINT and DRAIN over UP and DOWN.
func displayState(b backend) string {
	switch {
	case b.State == "maint":
		return "MAINT"
	case b.State == "drain":
		return "DRAIN"
	case !b.Alive:
		return "DOWN"
	case b.Ejected:
		return "EJECTED"
	case b.Held:
		return "HELD"
	case b.Leaving:
		return "LEAVING"
	case b.Backup:
		return "UP backup"
	}
	return "UP"
}

var header = []string{"POOL", "BACKEND", "STATE", "WEIGHT", "ACTIVE", "REQ/S", "FAILURES", "LATENCY", "MEMORY", "LAST CHECK"}

// table lays rows out in aligned columns: the header line, then one line
// per row, none with a trailing space.
func table(rs []row, now time.Time) []string {
	cells := [][]string{header}
	for _, r := range rs {
		cells = append(cells, []string{
			r.Pool, r.Backend, r.State, strconv.Itoa(r.Weight), strconv.FormatInt(r.Active, 10),
			formatRate(r.RequestsPerSecond), strconv.FormatUint(r.Failures, 10),
			formatMS(r.LatencyMS), orDash(r.Memory), formatCheck(r.LastCheck, now),
		})
	}
	widths := make([]int, len(header))
	for _, line := range cells {
		for i, c := range line {
			widths[i] = max(widths[i], utf8.RuneCountInString(c))
		}
	}
	out := make([]string, len(cells))
	for n, line := range cells {
		var sb strings.Builder
		for i, c := range line {
			sb.WriteString(c)
			if i < len(line)-1 {
				sb.WriteString(strings.Repeat(" ", widths[i]-utf8.RuneCountInString(c)+2))
			}
		}
		out[n] = strings.TrimRight(sb.String(), " ")
	}
	return out
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func formatRate(r *float64) string {
	switch {
	case r == nil:
		return "-"
	case *r < 10:
		return strconv.FormatFloat(*r, 'f', 1, 64)
	}
	return strconv.FormatFloat(*r, 'f', 0, 64)
}

// formatMS writes a duration in milliseconds the way a reader compares
// them: 0.41ms, 12ms, 1.20s; "-" for none yet.
func formatMS(ms float64) string {
	switch {
	case ms <= 0:
		return "-"
	case ms < 10:
		return strconv.FormatFloat(ms, 'f', 2, 64) + "ms"
	case ms < 1000:
		return strconv.FormatFloat(ms, 'f', 0, 64) + "ms"
	}
	return strconv.FormatFloat(ms/1000, 'f', 2, 64) + "s"
}

// maxCheckError bounds the check error shown in the table; --json has it
// whole.
const maxCheckError = 40

// formatCheck is the last check in a few words: "200 in 1.30ms, 3s ago",
// or "failed 3s ago: <error>".
func formatCheck(c *check, now time.Time) string {
	if c == nil {
		return "-"
	}
	ago := now.Sub(c.At).Round(time.Second)
	if ago < 0 {
		ago = 0
	}
	if c.Error != "" {
		msg := c.Error
		if utf8.RuneCountInString(msg) > maxCheckError {
			msg = string([]rune(msg)[:maxCheckError-1]) + "…"
		}
		return fmt.Sprintf("failed %s ago: %s", ago, msg)
	}
	return fmt.Sprintf("%d in %s, %s ago", c.Status, formatMS(c.DurationMS), ago)
}
