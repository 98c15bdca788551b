package demo_test

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/lbpool/lbpool/internal/docblocks"
)

// backendName is the part of a demo backend's answer that names it.
var backendName = regexp.MustCompile(`\bapp\d\b`)

// TestDocDemoCommandsAnswerAsShown replays every curl of README.md and
// docs/ that goes to the demo (the site on :3030, the backends on
// 9001-9003) against the demo as `./xcaddy.sh run` starts it, on free
// ports; what a console block shows after a command must be what it
// prints, but for which backend answered.
func TestDocDemoCommandsAnswerAsShown(t *testing.T) {
	caddyBin, backendBin := buildDemo(t)
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	ports := freePorts(t, 5)
	lbPort, adminPort, backendPorts := ports[0], ports[1], ports[2:]
	tmp := t.TempDir()
	config := filepath.Join(tmp, "Caddyfile")
	if err := os.WriteFile(config, []byte(demoCaddyfile(t, lbPort, adminPort, backendPorts, filepath.Join(tmp, "caddy.log"))), 0o600); err != nil {
		t.Fatal(err)
	}
	transport := &http.Transport{Proxy: nil}
	t.Cleanup(transport.CloseIdleConnections)
	client := &http.Client{Transport: transport}
	for i, port := range backendPorts {
		startBackend(t, ctx, client, backendBin, fmt.Sprintf("app%d", i+1), port, 0)
	}
	startProc(t, ctx, "caddy", caddyEnv(t), caddyBin, "run", "--config", config, "--adapter", "caddyfile")
	lbURL := fmt.Sprintf("http://127.0.0.1:%d/", lbPort)
	poll(t, startBound, "the balancer answers", func() (bool, string) {
		status, line, err := get(client, lbURL)
		return err == nil && status == http.StatusOK, fmt.Sprintf("status %d %q, err %v", status, line, err)
	})
	demoPorts := map[string]int{"3030": lbPort}
	for i, port := range backendPorts {
		demoPorts[strconv.Itoa(9001+i)] = port
	}

	pages, err := docblocks.Pages(root)
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, page := range pages {
		blocks, err := docblocks.Read(page)
		if err != nil {
			t.Fatal(err)
		}
		for _, b := range blocks {
			if b.Lang != "console" && b.Lang != "sh" {
				continue
			}
			for _, cmd := range b.Commands() {
				curls, err := docblocks.Curls(cmd.Text)
				if err != nil {
					t.Fatal(err)
				}
				var got []string
				demo := false
				for _, c := range curls {
					if c.Target() != docblocks.TargetDemo {
						continue
					}
					n++
					demo = true
					for range c.Repeat {
						lines, err := demoAnswer(client, c, demoPorts[c.URL.Port()])
						if err != nil {
							t.Errorf("%s: %s: %v", b.Where(cmd.Line+1), cmd.Text, err)
						}
						got = append(got, lines...)
					}
				}
				shown := cmd.Output
				if demo && len(shown) > 0 && !slices.Equal(anyBackend(got), anyBackend(shown)) {
					t.Errorf("%s: %s\nthe demo answers:\n%s\nthe page shows:\n%s", b.Where(cmd.Line+1), cmd.Text,
						strings.Join(got, "\n"), strings.Join(shown, "\n"))
				}
			}
		}
	}
	if n == 0 {
		t.Fatal("no curl to the demo on any page")
	}
	t.Logf("%d curls to the demo replayed", n)
}

// demoAnswer sends one curl to the demo on port and returns the lines it
// prints after its pipes; a status other than 2xx is an error.
func demoAnswer(client *http.Client, c docblocks.Curl, port int) ([]string, error) {
	u := *c.URL
	u.Host = fmt.Sprintf("127.0.0.1:%d", port)
	req, err := http.NewRequest(c.Method, u.String(), strings.NewReader(c.Body))
	if err != nil {
		return nil, err
	}
	resp, err := client.Do(req)
	if err != nil {
		return nil, err
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil || resp.StatusCode/100 != 2 {
		return nil, fmt.Errorf("status %d, %v: %s", resp.StatusCode, err, body)
	}
	lines := strings.Split(strings.TrimSuffix(string(body), "\n"), "\n")
	for _, p := range c.Pipe {
		if !slices.Equal(p, []string{"head", "-1"}) {
			return nil, fmt.Errorf("a pipe to %q, which the doc tests do not replay", p)
		}
		lines = lines[:1]
	}
	return lines, nil
}

// anyBackend writes every backend name as appN.
func anyBackend(lines []string) []string {
	out := make([]string, len(lines))
	for i, l := range lines {
		out[i] = backendName.ReplaceAllString(l, "appN")
	}
	return out
}
