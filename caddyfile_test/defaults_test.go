package caddyfile_test

import (
	"bytes"
	"fmt"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/lbpool/lbpool/internal/lbtest"
	"github.com/lbpool/lbpool/leastconn"
)

// TestEveryDefaultWrittenOutLoadsAndServes: a user may write any option's
// documented default out. The golden Caddyfile that does so for every
// option with a default (adapted by TestCaddyfileAdapt) is loaded by a real
// Caddy, with real backends and a DNS server in place of its addresses,
// and serves from every backend.
func TestEveryDefaultWrittenOutLoadsAndServes(t *testing.T) {
	caddyfile, _ := readGolden(t, filepath.Join("testdata", "adapt", "defaults_written_out.caddyfiletest"))
	c := lbtest.Start(t)
	a := lbtest.NewBackend(t, "a", nil)
	b := lbtest.NewBackend(t, "b", nil)
	member := lbtest.NewBackend(t, "member", nil)
	_, memberPort, _ := net.SplitHostPort(member.Addr())
	dns := lbtest.NewDNS(t)
	dns.SetA("app.test", "127.0.0.1")
	replacements := []string{
		":8080 {", fmt.Sprintf(":%d {", c.HTTPPort),
		"127.0.0.1:9001", a.Addr(),
		"127.0.0.1:9002", b.Addr(),
		"9003", memberPort,
		"127.0.0.1:5353", dns.Addr,
	}
	for i := 0; i < len(replacements); i += 2 {
		if !strings.Contains(caddyfile, replacements[i]) {
			t.Fatalf("the golden Caddyfile no longer has %q to replace", replacements[i])
		}
	}
	c.Load(t, strings.NewReplacer(replacements...).Replace(caddyfile))

	// the name written out is the one the pool would have without it
	name := fmt.Sprintf("%s,%s,a app.test:%s", a.URL(), b.URL(), memberPort)
	lbtest.Eventually(t, 5*time.Second, "three backends up in the pool named by its default", func() bool {
		up := 0
		for _, s := range c.Stats(t, "") {
			if s.Pool == name && s.Alive && s.State == "ready" && s.Weight == 1 {
				up++
			}
		}
		return up == 3
	})
	served := map[string]int{}
	for range 30 {
		status, body := c.Get(t, c.URL("/"))
		if status != 200 {
			t.Fatalf("status %d %q", status, body)
		}
		served[body]++
	}
	for _, want := range []string{"a", "b", "member"} {
		if served[want] == 0 {
			t.Errorf("%s served none of 30 requests: %v", want, served)
		}
	}
}

// TestQueueSizeHasOneLimitInJSONAndTheCaddyfile: both take queue_size up
// to leastconn.MaxQueueSize and refuse one more: the Caddyfile at adapt
// time naming the line, JSON at load time naming the field. A refused load
// leaves the running config serving.
func TestQueueSizeHasOneLimitInJSONAndTheCaddyfile(t *testing.T) {
	c := lbtest.Start(t)
	a := lbtest.NewBackend(t, "a", nil)
	limit := leastconn.MaxQueueSize
	withQueue := func(n int) string { return site(c, fmt.Sprintf("max_conns 1\n\t\tqueue_size %d", n), a) }
	c.Load(t, withQueue(limit))

	err := c.TryLoad(withQueue(limit + 1))
	want := fmt.Sprintf(`queue_size: "%d" is not a positive whole number (at most %d), at Caddyfile:`, limit+1, limit)
	if err == nil || !strings.Contains(err.Error(), want) {
		t.Fatalf("Caddyfile with queue_size %d: %v, want an error containing %q", limit+1, err, want)
	}

	cfg, err := lbtest.Adapt(c.Globals() + withQueue(limit))
	if err != nil {
		t.Fatal(err)
	}
	field := func(n int) []byte { return fmt.Appendf(nil, `"queue_size":%d`, n) }
	over := bytes.Replace(cfg, field(limit), field(limit+1), 1)
	if bytes.Equal(over, cfg) {
		t.Fatalf("no %s in the adapted config:\n%s", field(limit), cfg)
	}
	err = c.LoadJSON(over)
	want = fmt.Sprintf("queue_size %d is more than %d", limit+1, limit)
	if err == nil || !strings.Contains(err.Error(), want) {
		t.Fatalf("JSON with queue_size %d: %v, want an error containing %q", limit+1, err, want)
	}

	if status, body := c.Get(t, c.URL("/")); status != 200 || body != "a" {
		t.Fatalf("after the refused loads: %d %q", status, body)
	}
}
