// Package grpcinterop runs grpc-go's interop client cases
// (google.golang.org/grpc/interop) against an address, and serves grpc-go's
// interop test service, for end-to-end tests of a proxy in front of gRPC
// backends.
//
// The interop helpers end the process on failure (grpclog's Fatal), so each
// case runs in a child process: the test binary itself, started again with
// the case in its environment. A test package that runs cases calls
// RunChildIfAsked at the top of its TestMain; the child then runs the case
// and exits, 0 if it passed.
package grpcinterop

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthgrpc "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/interop"
	testgrpc "google.golang.org/grpc/interop/grpc_testing"
)

// Cases are the interop client cases that need no credentials and no
// particular backend behaviour, in the order of grpc's interop_test.sh.
var Cases = []string{
	"empty_unary",
	"large_unary",
	"client_streaming",
	"server_streaming",
	"ping_pong",
	"empty_stream",
	"timeout_on_sleeping_server",
	"cancel_after_begin",
	"cancel_after_first_response",
	"custom_metadata",
	"status_code_and_message",
	"special_status_message",
	"unimplemented_method",
	"unimplemented_service",
}

// TLS is how the client speaks TLS to the address: it trusts the CA in
// CAFile and expects the certificate of ServerName. A nil *TLS means
// cleartext HTTP/2 (h2c, prior knowledge).
type TLS struct {
	CAFile     string `json:"ca_file"`
	ServerName string `json:"server_name"`
}

// childEnv carries a child's case, as JSON.
const childEnv = "LBPOOL_GRPC_INTEROP_CASE"

// caseTimeout bounds one case's child process; every case takes well under
// a second on a quiet machine.
const caseTimeout = 30 * time.Second

type childCase struct {
	Case string `json:"case"`
	Addr string `json:"addr"`
	TLS  *TLS   `json:"tls,omitempty"`
}

// RunChildIfAsked runs the case in the environment and exits, if there is
// one; otherwise it returns at once. Call it first in TestMain.
func RunChildIfAsked() {
	spec, ok := os.LookupEnv(childEnv)
	if !ok {
		return
	}
	var c childCase
	if err := json.Unmarshal([]byte(spec), &c); err != nil {
		fmt.Fprintf(os.Stderr, "%s: %v\n", childEnv, err)
		os.Exit(2)
	}
	if err := runInProcess(c); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	os.Exit(0)
}

// RunCase runs one interop case against addr in a child process (the test
// binary, whose TestMain calls RunChildIfAsked) and returns an error with
// the child's output if the case failed. It is safe to call from parallel
// tests.
func RunCase(t testing.TB, addr, name string, tlsOpts *TLS) error {
	t.Helper()
	spec, err := json.Marshal(childCase{Case: name, Addr: addr, TLS: tlsOpts})
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), caseTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, os.Args[0])
	cmd.Env = append(os.Environ(), childEnv+"="+string(spec))
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err = cmd.Run()
	if ctx.Err() != nil {
		return fmt.Errorf("%s against %s: still running after %v\n%s", name, addr, caseTimeout, out.String())
	}
	if err != nil {
		return fmt.Errorf("%s against %s: %w\n%s", name, addr, err, strings.TrimSpace(out.String()))
	}
	return nil
}

// runInProcess runs a case in this process; a failing interop helper ends
// the process.
func runInProcess(c childCase) error {
	creds := insecure.NewCredentials()
	if c.TLS != nil {
		var err error
		if creds, err = credentials.NewClientTLSFromFile(c.TLS.CAFile, c.TLS.ServerName); err != nil {
			return err
		}
	}
	conn, err := grpc.NewClient(c.Addr, grpc.WithTransportCredentials(creds))
	if err != nil {
		return err
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), caseTimeout)
	defer cancel()
	tc := testgrpc.NewTestServiceClient(conn)
	switch c.Case {
	case "empty_unary":
		interop.DoEmptyUnaryCall(ctx, tc)
	case "large_unary":
		interop.DoLargeUnaryCall(ctx, tc)
	case "client_streaming":
		interop.DoClientStreaming(ctx, tc)
	case "server_streaming":
		interop.DoServerStreaming(ctx, tc)
	case "ping_pong":
		interop.DoPingPong(ctx, tc)
	case "empty_stream":
		interop.DoEmptyStream(ctx, tc)
	case "timeout_on_sleeping_server":
		interop.DoTimeoutOnSleepingServer(ctx, tc)
	case "cancel_after_begin":
		interop.DoCancelAfterBegin(ctx, tc)
	case "cancel_after_first_response":
		interop.DoCancelAfterFirstResponse(ctx, tc)
	case "custom_metadata":
		interop.DoCustomMetadata(ctx, tc)
	case "status_code_and_message":
		interop.DoStatusCodeAndMessage(ctx, tc)
	case "special_status_message":
		interop.DoSpecialStatusMessage(ctx, tc)
	case "unimplemented_method":
		interop.DoUnimplementedMethod(ctx, conn)
	case "unimplemented_service":
		interop.DoUnimplementedService(ctx, testgrpc.NewUnimplementedServiceClient(conn))
	default:
		return fmt.Errorf("unknown interop case %q", c.Case)
	}
	return nil
}

// StartServer serves grpc-go's interop test service and a health service
// (grpc.health.v1, SERVING) on 127.0.0.1 until the test ends: over TLS with cert if it is set, else cleartext HTTP/2 (h2c).
// It returns the listening address.
func StartServer(t testing.TB, cert *tls.Certificate, opts ...grpc.ServerOption) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	if cert != nil {
		opts = append(opts, grpc.Creds(credentials.NewServerTLSFromCert(cert)))
	}
	srv := grpc.NewServer(opts...)
	testgrpc.RegisterTestServiceServer(srv, interop.NewTestServer())
	healthgrpc.RegisterHealthServer(srv, health.NewServer()) // SERVING
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ln) }()
	t.Cleanup(func() {
		srv.Stop()
		if err := <-done; err != nil && !errors.Is(err, grpc.ErrServerStopped) {
			t.Errorf("interop server %s: %v", ln.Addr(), err)
		}
	})
	return ln.Addr().String()
}
