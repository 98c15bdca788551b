package caddyfile_test

import (
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/lbpool/lbpool/internal/lbtest"
)

// getBody GETs / and returns the body, "" when the answer was not a 200.
func getBody(c *lbtest.Caddy) string {
	resp, err := c.Client().Get(c.URL("/"))
	if err != nil {
		return ""
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		return ""
	}
	return string(body)
}

func TestBackupServesOnlyWhenNoPrimaryCan(t *testing.T) {
	c := lbtest.Start(t)
	p1, p2 := lbtest.NewBackend(t, "p1", nil), lbtest.NewBackend(t, "p2", nil)
	backup := lbtest.NewBackend(t, "backup", nil)
	c.Load(t, site(c, "backup "+backup.Addr()+"\n\t\thealth_down_interval 200ms\n\t\theader_down X-Pick {http.lbpool.pick}", p1, p2, backup))
	waitAlive(t, c, p1, p2, backup)
	if s := c.Backend(t, "web", backup.URL()); !s.Backup {
		t.Errorf("stats of the backup backend: backup %v, want true", s.Backup)
	}

	if _, failed := c.Traffic(4, 400, "/", nil); failed > 0 {
		t.Fatalf("%d requests failed with both primaries up", failed)
	}
	if n := backup.Requests.Load(); n != 0 {
		t.Fatalf("the backup served %d requests while the primaries were up", n)
	}

	p1.Close()
	p2.Close()
	down := time.Now()
	var took time.Duration
	lbtest.Eventually(t, 5*time.Second, "the backup serving", func() bool {
		if getBody(c) == "backup" {
			took = time.Since(down)
			return true
		}
		return false
	})
	t.Logf("both primaries down: the backup served after %v", took.Round(time.Millisecond))
	if _, resp := getAs(t, c, "/"); resp.Header.Get("X-Pick") != "backup" {
		t.Errorf("{http.lbpool.pick} of a backup's answer: %q, want backup", resp.Header.Get("X-Pick"))
	}
	if took > time.Second {
		t.Errorf("the backup served %v after both primaries went down, want within 1s", took)
	}

	p1.Restart(t)
	lbtest.Eventually(t, 10*time.Second, "p1 serving again", func() bool { return getBody(c) == "p1" })
	var got []string
	for range 20 {
		got = append(got, getBody(c))
	}
	if strings.Contains(strings.Join(got, " "), "backup") {
		t.Errorf("with p1 back, answers came from %v; want p1 only", got)
	}
}
