package caddyfile_test

import (
	"fmt"
	"testing"

	"github.com/lbpool/lbpool/internal/lbtest"
)

func TestIdleRotationVisitsEachBackendInTurn(t *testing.T) {
	c := lbtest.Start(t)
	a := lbtest.NewBackend(t, "a", nil)
	b := lbtest.NewBackend(t, "b", nil)
	d := lbtest.NewBackend(t, "c", nil)
	c.Load(t, fmt.Sprintf(`:%d {
	lbpool %s %s %s {
		health_uri /health
	}
}`, c.HTTPPort, a.Addr(), b.Addr(), d.Addr()))
	counts := map[string]int{}
	for i := 0; i < 30; i++ {
		status, body := c.Get(t, c.URL("/"))
		if status != 200 {
			t.Fatalf("status %d: %s", status, body)
		}
		counts[body]++
	}
	if counts["a"] != 10 || counts["b"] != 10 || counts["c"] != 10 {
		t.Fatalf("want 10/10/10, got %v", counts)
	}
	t.Log(c.Stats(t, ""))
}
