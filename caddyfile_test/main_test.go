package caddyfile_test

import (
	"os"
	"testing"

	"github.com/lbpool/lbpool/internal/lbtest"
)

func TestMain(m *testing.M) {
	code := m.Run()
	lbtest.Stop()
	os.Exit(code)
}
