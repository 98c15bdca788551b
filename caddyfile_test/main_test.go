package caddyfile_test

import (
	"os"
	"testing"

	"github.com/lbpool/lbpool/internal/grpcinterop"
	"github.com/lbpool/lbpool/internal/lbtest"
)

func TestMain(m *testing.M) {
	// a child process started to run one gRPC interop case runs it and exits
	grpcinterop.RunChildIfAsked()
	code := m.Run()
	lbtest.Stop()
	os.Exit(code)
}
