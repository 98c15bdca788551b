package grpcinterop

import (
	"net"
	"os"
	"strings"
	"testing"
)

func TestMain(m *testing.M) {
	RunChildIfAsked()
	os.Exit(m.Run())
}

// A case that fails ends its child process; the cases after it still run,
// in another child, and each result belongs to its own case.
func TestRunCasesGoesOnAfterAFailingCase(t *testing.T) {
	addr := StartServer(t, nil)
	results := RunCases(t, addr, []string{"empty_unary", "no_such_case", "large_unary"}, nil)
	if len(results) != 3 {
		t.Fatalf("results for %d cases, want 3: %v", len(results), results)
	}
	for _, name := range []string{"empty_unary", "large_unary"} {
		if err := results[name]; err != nil {
			t.Errorf("%s: %v", name, err)
		}
	}
	if err := results["no_such_case"]; err == nil || !strings.Contains(err.Error(), `unknown interop case "no_such_case"`) {
		t.Errorf("no_such_case: %v", err)
	}
}

// Against an address where nothing listens, a case fails with the interop
// helper's own message, which ended the child process.
func TestRunCaseFailsWithTheHelpersMessage(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	err = RunCase(t, addr, "empty_unary", nil)
	if err == nil || !strings.Contains(err.Error(), "empty_unary against "+addr) || !strings.Contains(err.Error(), "EmptyCall RPC failed") {
		t.Errorf("empty_unary where nothing listens: %v", err)
	}
}
