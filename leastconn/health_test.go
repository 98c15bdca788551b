package leastconn

import (
	"fmt"
	"net"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
)

// TestReasonChangeOfADownBackend: a down backend whose checks fail for
// another cause than the one logged says so once, at warn; the check after
// a refused request that finds the port refused brings no new reason.
func TestReasonChangeOfADownBackend(t *testing.T) {
	core, logs := observer.New(zapcore.InfoLevel)
	spec := &poolSpec{name: "web", healthPasses: 1, healthFails: 1, logger: zap.New(core)}
	p := &Pool{name: "web"}
	p.spec.Store(spec)
	b := newBackend(p, backendAddr{key: "http://app:80", display: "http://app:80", weight: 1})

	b.passiveFailure(&net.OpError{Op: "dial", Net: "tcp", Err: syscall.ECONNREFUSED}, nil)
	for _, reason := range []string{"connection refused", "connection refused", "status 302", "status 302", "timeout"} {
		b.record(spec, checkResult{at: time.Now(), reason: reason}, b.passiveEpoch)
	}

	var got []string
	for _, e := range logs.All() {
		f := e.ContextMap()
		previous, _ := f["previous_reason"].(string)
		got = append(got, fmt.Sprintf("%s %s: %s (was %q)", e.Level, e.Message, f["reason"], previous))
	}
	want := []string{
		`warn status change: proxy error: connection refused (was "")`,
		`warn reason change: status 302 (was "connection refused")`,
		`warn reason change: timeout (was "status 302")`,
	}
	if !slices.Equal(got, want) {
		t.Fatalf("logged:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}
