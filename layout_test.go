package lbpool

import (
	"encoding/json"
	"errors"
	"io"
	"os/exec"
	"strings"
	"testing"
)

// The packages under internal/ know nothing of Caddy's handler: they are
// given addresses, settings and requests and give back responses, errors
// and address lists. Imports go one way, from leastconn and statsapi down
// into internal/, never back up. internal/lbtest is the exception by
// purpose: the test harness starts a real Caddy with both modules.
func TestInternalPackagesImportNeitherModule(t *testing.T) {
	out, err := exec.Command("go", "list", "-deps", "-json=ImportPath,Deps", "./internal/...").Output()
	if err != nil {
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			t.Fatalf("go list: %v\n%s", err, ee.Stderr)
		}
		t.Fatalf("go list: %v", err)
	}
	const module = "github.com/lbpool/lbpool/"
	forbidden := []string{module + "leastconn", module + "statsapi"}
	dec := json.NewDecoder(strings.NewReader(string(out)))
	checked := 0
	for {
		var p struct {
			ImportPath string
			Deps       []string
		}
		if err := dec.Decode(&p); err == io.EOF {
			break
		} else if err != nil {
			t.Fatal(err)
		}
		if !strings.HasPrefix(p.ImportPath, module+"internal/") || p.ImportPath == module+"internal/lbtest" {
			continue
		}
		checked++
		for _, d := range p.Deps {
			for _, f := range forbidden {
				if d == f || strings.HasPrefix(d, f+"/") {
					t.Errorf("%s imports %s", p.ImportPath, d)
				}
			}
		}
	}
	if checked < 3 {
		t.Fatalf("checked %d internal packages, want every one of them (at least 3)", checked)
	}
}
