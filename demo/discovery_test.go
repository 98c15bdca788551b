package demo_test

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/lbpool/lbpool/internal/lbtest"
)

// TestDemoTopologyFindsItsBackendsThroughDNS is the local demo with its pool
// found through DNS: Caddyfile.example with the three static backends
// replaced by one `dynamic a` source, a DNS server in the test answering the
// name with 127.0.0.2-4, and the demo backend processes listening there on
// one port. A backend removed from DNS under load fails no request; added
// again, it serves again.
func TestDemoTopologyFindsItsBackendsThroughDNS(t *testing.T) {
	caddyBin, backendBin := buildDemo(t)
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)

	dns := lbtest.NewDNS(t)
	tmp := t.TempDir()
	ports := freePorts(t, 6)
	lbPort, adminPort, appPort := ports[0], ports[1], ports[2]
	logFile := filepath.Join(tmp, "caddy.log")
	src := demoCaddyfile(t, lbPort, adminPort, ports[3:], logFile)
	static := regexp.MustCompile(`(?m)^(\t*)lbpool 127\.0\.0\.1:\d+ 127\.0\.0\.1:\d+ 127\.0\.0\.1:\d+ \{$`)
	if len(static.FindAllString(src, -1)) != 1 {
		t.Fatalf("Caddyfile.example has no single lbpool line with three backends:\n%s", src)
	}
	src = static.ReplaceAllString(src, fmt.Sprintf("${1}lbpool {\n${1}\tdynamic a app.demo.test %d {\n"+
		"${1}\t\tresolvers %s\n${1}\t\trefresh 200ms\n${1}\t}", appPort, dns.Addr))
	config := filepath.Join(tmp, "Caddyfile")
	if err := os.WriteFile(config, []byte(src), 0o600); err != nil {
		t.Fatal(err)
	}
	lbURL := fmt.Sprintf("http://127.0.0.1:%d/", lbPort)
	adminURL := fmt.Sprintf("http://127.0.0.1:%d", adminPort)
	transport := &http.Transport{MaxIdleConnsPerHost: 2 * loadWorkers, Proxy: nil}
	t.Cleanup(transport.CloseIdleConnections)
	client := &http.Client{Transport: transport, Timeout: 5 * time.Second}

	names := []string{"app1", "app2", "app3"}
	ips := []string{"127.0.0.2", "127.0.0.3", "127.0.0.4"}
	urls := make([]string, len(ips))
	for i, name := range names {
		startBackendAt(t, ctx, client, backendBin, name, fmt.Sprintf("%s:%d", ips[i], appPort), 5*time.Second)
		urls[i] = fmt.Sprintf("http://%s:%d", ips[i], appPort)
	}
	dns.SetA("app.demo.test", ips...)
	caddy := startProc(t, ctx, "caddy", caddyEnv(t), caddyBin, "run", "--config", config, "--adapter", "caddyfile")
	t.Cleanup(func() {
		if t.Failed() {
			log, _ := os.ReadFile(logFile)
			t.Logf("caddy output:\n%s\nlog:\n%s", tail(caddy.out.String(), 16<<10), tail(string(log), 32<<10))
		}
	})
	members := func() []string {
		stats, err := poolStats(client, adminURL)
		if err != nil {
			return nil
		}
		var alive []string
		for _, s := range stats {
			if s.Alive {
				alive = append(alive, s.URL)
			}
		}
		slices.Sort(alive)
		return alive
	}
	took := poll(t, startBound, "three members found and up", func() (bool, string) {
		if done, err := caddy.exited(); done {
			t.Fatalf("caddy exited: %v", err)
		}
		got := members()
		return slices.Equal(got, urls), fmt.Sprintf("alive: %q", got)
	})
	t.Logf("three members up %v after start", took.Round(time.Millisecond))

	// Members join with the demo's slow_start 10s, each ramp starting at its
	// first check, so an idle pool does not rotate evenly yet: under load,
	// each of them serves.
	load := startLoad(client, lbURL)
	t.Cleanup(load.stop)
	poll(t, 10*time.Second, "load reaches every member", func() (bool, string) {
		return load.served("app1") > 50 && load.served("app2") > 50 && load.served("app3") > 50,
			fmt.Sprintf("app1 %d, app2 %d, app3 %d", load.served("app1"), load.served("app2"), load.served("app3"))
	})
	changed := time.Now()
	dns.SetA("app.demo.test", ips[:2]...)
	poll(t, 10*time.Second, "app3 gone from the pool", func() (bool, string) {
		got := members()
		return slices.Equal(got, urls[:2]), fmt.Sprintf("alive: %q", got)
	})
	t.Logf("app3 left %v after it left DNS", time.Since(changed).Round(time.Millisecond))
	served := load.served("app3")
	mark := load.ok.Load()
	poll(t, 10*time.Second, "more requests after app3 left", func() (bool, string) {
		return load.ok.Load() > mark+afterDown, ""
	})
	if got := load.served("app3"); got != served {
		t.Errorf("app3 served %d requests after it left the pool", got-served)
	}

	changed = time.Now()
	dns.SetA("app.demo.test", ips...)
	poll(t, 15*time.Second, "app3 serves again", func() (bool, string) {
		return load.served("app3") > served, ""
	})
	t.Logf("app3 served again %v after it was back in DNS", time.Since(changed).Round(time.Millisecond))
	load.stop()
	if failed := load.failed.Load(); failed != 0 {
		t.Errorf("%d of %d requests failed while app3 left and came back: %q", failed, load.sent.Load(), load.failures)
	}
	log, _ := os.ReadFile(logFile)
	for _, want := range []string{`"member joined"`, `"member gone from dns; draining"`, `"member left"`} {
		if !strings.Contains(string(log), want) {
			t.Errorf("the log has no %s line", want)
		}
	}
}
