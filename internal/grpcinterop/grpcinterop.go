// Package grpcinterop runs grpc-go's interop client cases
// (google.golang.org/grpc/interop) against an address, and serves grpc-go's
// interop test service, for end-to-end tests of a proxy in front of gRPC
// backends.
//
// The interop helpers end the process on failure (grpclog's Fatal), so the
// cases run in a child process: the test binary itself, started again with
// the cases in its environment. A test package that runs cases calls
// RunChildIfAsked at the top of its TestMain; the child then runs the cases
// in order, says which passed, and exits at the first that fails; the
// parent goes on with the rest in another child.
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

// childEnv carries a child's cases, as JSON.
const childEnv = "LBPOOL_GRPC_INTEROP_CASES"

// passedMark starts the line a child prints on its stdout after each case
// that passed.
const passedMark = "grpcinterop passed: "

// caseTimeout bounds each case of a child process; every case takes well
// under a second on a quiet machine.
const caseTimeout = 30 * time.Second

type childRun struct {
	Cases []string `json:"cases"`
	Addr  string   `json:"addr"`
	TLS   *TLS     `json:"tls,omitempty"`
}

// RunChildIfAsked runs the cases in the environment, in order, and exits,
// if there are some; otherwise it returns at once. Call it first in
// TestMain.
func RunChildIfAsked() {
	spec, ok := os.LookupEnv(childEnv)
	if !ok {
		return
	}
	var run childRun
	if err := json.Unmarshal([]byte(spec), &run); err != nil {
		fmt.Fprintf(os.Stderr, "%s: %v\n", childEnv, err)
		os.Exit(2)
	}
	for _, name := range run.Cases {
		if err := runInProcess(run.Addr, name, run.TLS); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		fmt.Println(passedMark + name)
	}
	os.Exit(0)
}

// RunCase runs one interop case against addr in a child process (the test
// binary, whose TestMain calls RunChildIfAsked) and returns an error with
// the child's output if the case failed. It is safe to call from parallel
// tests.
func RunCase(t testing.TB, addr, name string, tlsOpts *TLS) error {
	t.Helper()
	return RunCases(t, addr, []string{name}, tlsOpts)[name]
}

// RunCases runs interop cases against addr, in order, in as few child
// processes as it can: one runs them all until a case fails (the helper
// ends the process), then another goes on with the cases after it. It
// returns each case's result, nil if it passed.
func RunCases(t testing.TB, addr string, names []string, tlsOpts *TLS) map[string]error {
	t.Helper()
	results := make(map[string]error, len(names))
	for rest := names; len(rest) > 0; {
		passed, err := runChild(childRun{Cases: rest, Addr: addr, TLS: tlsOpts})
		for _, name := range passed {
			results[name] = nil
		}
		if len(passed) == len(rest) {
			break
		}
		failed := rest[len(passed)]
		if err == nil {
			err = errors.New("the child process ended without running it")
		}
		results[failed] = fmt.Errorf("%s against %s: %w", failed, addr, err)
		rest = rest[len(passed)+1:]
	}
	return results
}

// runChild starts the test binary on the cases and returns those that
// passed, in order; the error has the output of the child if it failed.
func runChild(run childRun) (passed []string, err error) {
	spec, err := json.Marshal(run)
	if err != nil {
		return nil, err
	}
	bound := time.Duration(len(run.Cases)) * caseTimeout
	ctx, cancel := context.WithTimeout(context.Background(), bound)
	defer cancel()
	cmd := exec.CommandContext(ctx, os.Args[0])
	cmd.Env = append(os.Environ(), childEnv+"="+string(spec))
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err = cmd.Run()
	for line := range strings.Lines(stdout.String()) {
		if name, ok := strings.CutPrefix(strings.TrimSpace(line), passedMark); ok {
			passed = append(passed, name)
		}
	}
	switch {
	case ctx.Err() != nil:
		return passed, fmt.Errorf("still running after %v\n%s", bound, strings.TrimSpace(stderr.String()))
	case err != nil:
		return passed, fmt.Errorf("%w\n%s", err, strings.TrimSpace(stderr.String()))
	}
	return passed, nil
}

// runInProcess runs a case in this process, on a connection of its own; a
// failing interop helper ends the process.
func runInProcess(addr, name string, tlsOpts *TLS) error {
	creds := insecure.NewCredentials()
	if tlsOpts != nil {
		var err error
		if creds, err = credentials.NewClientTLSFromFile(tlsOpts.CAFile, tlsOpts.ServerName); err != nil {
			return err
		}
	}
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(creds))
	if err != nil {
		return err
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), caseTimeout)
	defer cancel()
	tc := testgrpc.NewTestServiceClient(conn)
	switch name {
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
		return fmt.Errorf("unknown interop case %q", name)
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
