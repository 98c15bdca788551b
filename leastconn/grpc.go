package leastconn

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"

	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/protobuf/proto"
)

// gRPC (docs/grpc.md). Calls are requests like any other: each is picked on
// its own and counts as active until its stream ends. What is gRPC's own:
// lbpool's errors reach a gRPC client as gRPC statuses (trailers-only
// responses), the client's grpc-timeout bounds lbpool's wait and reaches
// the backend as the time left, the active checks may call
// grpc.health.v1.Health/Check, and final grpc-status values may count for
// ejection. A request that is not gRPC costs one method comparison.

// HealthGRPC makes the active health checks gRPC calls of
// grpc.health.v1.Health/Check; SERVING passes.
type HealthGRPC struct {
	// The service whose health is asked; "" asks for the server's.
	Service string `json:"service"`
}

// gRPC status codes lbpool answers with.
const (
	grpcDeadlineExceeded = 4
	grpcUnavailable      = 14
)

// grpcCodeNames are the status codes' names, by code.
var grpcCodeNames = [...]string{
	"OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND",
	"ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION",
	"ABORTED", "OUT_OF_RANGE", "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS",
	"UNAUTHENTICATED",
}

// grpcCodeName names a status code; an unknown one is its number.
func grpcCodeName(code int) string {
	if code >= 0 && code < len(grpcCodeNames) {
		return grpcCodeNames[code]
	}
	return strconv.Itoa(code)
}

// parseGRPCCode reads a status code by number (0-16) or name (either case).
func parseGRPCCode(v string) (int, error) {
	if n, err := strconv.Atoi(v); err == nil {
		if n < 0 || n >= len(grpcCodeNames) {
			return 0, fmt.Errorf("%d is not a gRPC status code (0-16)", n)
		}
		return n, nil
	}
	for i, name := range grpcCodeNames {
		if strings.EqualFold(v, name) {
			return i, nil
		}
	}
	return 0, fmt.Errorf("%q is not a gRPC status code or name (such as 14 or UNAVAILABLE)", v)
}

// isGRPC tells a gRPC call: a POST with Content-Type application/grpc or
// application/grpc+<format> (not gRPC-Web, which browsers speak).
func isGRPC(r *http.Request) bool {
	if r.Method != http.MethodPost {
		return false
	}
	ct := r.Header["Content-Type"]
	return len(ct) > 0 && isGRPCContentType(ct[0])
}

// isGRPCContentType: application/grpc or application/grpc+<format>.
func isGRPCContentType(ct string) bool {
	rest, ok := strings.CutPrefix(ct, "application/grpc")
	return ok && (rest == "" || rest[0] == '+' || rest[0] == ';')
}

// parseGRPCTimeout reads grpc-timeout: up to 8 digits and a unit.
func parseGRPCTimeout(v string) (time.Duration, bool) {
	if len(v) < 2 || len(v) > 9 {
		return 0, false
	}
	n, err := strconv.ParseInt(v[:len(v)-1], 10, 64)
	if err != nil || n < 0 {
		return 0, false
	}
	var unit time.Duration
	switch v[len(v)-1] {
	case 'H':
		unit = time.Hour
	case 'M':
		unit = time.Minute
	case 'S':
		unit = time.Second
	case 'm':
		unit = time.Millisecond
	case 'u':
		unit = time.Microsecond
	case 'n':
		unit = time.Nanosecond
	default:
		return 0, false
	}
	return time.Duration(n) * unit, true
}

// formatGRPCTimeout writes d as grpc-timeout, rounded down to the finest
// unit that fits in 8 digits: the backend never gets more time than is left.
func formatGRPCTimeout(d time.Duration) string {
	if d < time.Microsecond {
		return "1n" // spent: the backend gives up at once
	}
	const most = 1e8
	for _, u := range []struct {
		unit time.Duration
		sign string
	}{{time.Microsecond, "u"}, {time.Millisecond, "m"}, {time.Second, "S"}, {time.Minute, "M"}} {
		if n := d / u.unit; n < most {
			return strconv.FormatInt(int64(n), 10) + u.sign
		}
	}
	return strconv.FormatInt(min(int64(d/time.Hour), most-1), 10) + "H"
}

// grpcDeadline bounds a gRPC call by its grpc-timeout: the returned
// request carries the deadline, and st remembers it for each try's
// grpc-timeout. cancel is nil when the call has none.
func grpcDeadline(r *http.Request, st *proxyState) (*http.Request, context.CancelFunc) {
	d, ok := parseGRPCTimeout(r.Header.Get("Grpc-Timeout"))
	if !ok {
		return r, nil
	}
	st.grpcDeadline = st.start.Add(d)
	st.client = r.Context()
	ctx, cancel := context.WithDeadline(r.Context(), st.grpcDeadline)
	return r.WithContext(ctx), cancel
}

// ended answers a request whose context ended before a response began:
// nothing when the client went away, DEADLINE_EXCEEDED when its
// grpc-timeout ran out first.
func ended(w http.ResponseWriter, st *proxyState) error {
	if !st.grpcDeadline.IsZero() && st.client.Err() == nil {
		writeGRPCError(w, grpcDeadlineExceeded, "lbpool: grpc-timeout reached before the backend answered")
	}
	return nil
}

// writeGRPCError answers a gRPC call with a status and no message: a
// trailers-only response, one HEADERS frame with the stream's end.
func writeGRPCError(w http.ResponseWriter, code int, msg string) {
	hdr := w.Header()
	hdr.Del("Retry-After")
	hdr.Set("Content-Type", "application/grpc")
	hdr.Set("Grpc-Status", strconv.Itoa(code))
	hdr.Set("Grpc-Message", encodeGRPCMessage(msg))
	w.WriteHeader(http.StatusOK)
}

// endGRPCStream ends a gRPC response that stream_timeout or
// stream_close_delay cut (limit) with a status in its trailers, its
// headers being out: DEADLINE_EXCEEDED for stream_timeout, as Envoy's
// max_stream_duration, and UNAVAILABLE for a backend that left, which
// clients retry elsewhere.
func endGRPCStream(hdr http.Header, limit uint32) {
	code, msg := grpcDeadlineExceeded, "lbpool: the stream reached stream_timeout"
	if limit == limitLeft {
		code, msg = grpcUnavailable, "lbpool: the stream's backend left the pool (stream_close_delay)"
	}
	hdr[http.TrailerPrefix+"Grpc-Status"] = []string{strconv.Itoa(code)}
	hdr[http.TrailerPrefix+"Grpc-Message"] = []string{encodeGRPCMessage(msg)}
}

// encodeGRPCMessage percent-encodes what grpc-message cannot carry as is.
func encodeGRPCMessage(msg string) string {
	var b strings.Builder
	for i := 0; i < len(msg); i++ {
		c := msg[i]
		if c >= ' ' && c <= '~' && c != '%' {
			b.WriteByte(c)
		} else {
			fmt.Fprintf(&b, "%%%02X", c)
		}
	}
	return b.String()
}

// grpcFail is fail for a gRPC call: the status that stands for the HTTP
// one lbpool would have answered (504: DEADLINE_EXCEEDED, else
// UNAVAILABLE) and lbpool's short message.
func grpcFail(w http.ResponseWriter, status int, cause error) {
	code := grpcUnavailable
	if status == http.StatusGatewayTimeout {
		code = grpcDeadlineExceeded
	}
	msg := shortBodies[status]
	if errors.Is(cause, errQueueFull) || errors.Is(cause, errQueueTimeout) {
		msg = cause.Error()
	}
	writeGRPCError(w, code, msg)
}

// grpcStatusOf is a finished response's grpc-status, from its trailers or,
// for a trailers-only response, its headers; -1 without one.
func grpcStatusOf(resp *http.Response) int {
	v := resp.Trailer.Get("Grpc-Status")
	if v == "" {
		v = resp.Header.Get("Grpc-Status")
	}
	if v == "" {
		return -1
	}
	n, err := strconv.Atoi(v)
	if err != nil {
		return -1
	}
	return n
}

// observeGRPC counts a finished gRPC response whose grpc-status is one of
// unhealthy_grpc_status as a failure of b.
func (o *outlierSettings) observeGRPC(h *Handler, b *Backend, resp *http.Response) {
	code := grpcStatusOf(resp)
	for _, c := range o.grpcStatuses {
		if c == code {
			o.fail(h, b, "grpc-status: "+grpcCodeName(code))
			return
		}
	}
}

// grpcHealthPath is the method the gRPC health checks call.
const grpcHealthPath = "/grpc.health.v1.Health/Check"

// grpcHealthLimit bounds what a health check reads of the answer.
const grpcHealthLimit = 4 << 10

// checkGRPC runs one gRPC health check on b into res.
func (b *Backend) checkGRPC(ctx context.Context, s *poolSpec, res *checkResult) {
	req, err := b.checkRequest(ctx, s)
	if err != nil {
		res.reason = err.Error()
		return
	}
	msg, _ := proto.Marshal(&healthpb.HealthCheckRequest{Service: s.healthGRPC.Service})
	body := make([]byte, 5+len(msg)) // a gRPC message: uncompressed flag, length, bytes
	binary.BigEndian.PutUint32(body[1:5], uint32(len(msg)))
	copy(body[5:], msg)
	req.Method = http.MethodPost
	req.URL.Path, req.URL.RawQuery = grpcHealthPath, ""
	req.Body = io.NopCloser(strings.NewReader(string(body)))
	req.GetBody = func() (io.ReadCloser, error) { return io.NopCloser(strings.NewReader(string(body))), nil }
	req.ContentLength = int64(len(body))
	req.Header.Set("Content-Type", "application/grpc")
	req.Header.Set("Te", "trailers")
	req.Header.Set("Grpc-Timeout", formatGRPCTimeout(s.healthTimeout))
	resp, err := s.transport.to(b).RoundTrip(req)
	res.duration = time.Since(res.at)
	if err != nil {
		res.reason = errReason(err)
		return
	}
	defer s.transport.used()
	defer resp.Body.Close()
	res.status = resp.StatusCode
	answer, err := io.ReadAll(io.LimitReader(resp.Body, grpcHealthLimit))
	res.duration = time.Since(res.at)
	switch code := grpcStatusOf(resp); {
	case err != nil:
		res.reason = "reading the answer: " + errReason(err)
	case resp.StatusCode != http.StatusOK:
		res.reason = "status " + strconv.Itoa(resp.StatusCode)
	case code != 0:
		res.reason = grpcCodeName(code)
	default:
		res.reason = servingStatus(answer)
	}
}

// servingStatus reads a HealthCheckResponse message: "" when SERVING,
// else why not.
func servingStatus(answer []byte) string {
	if len(answer) < 5 || answer[0] != 0 || int(binary.BigEndian.Uint32(answer[1:5])) != len(answer)-5 {
		return "not one uncompressed HealthCheckResponse"
	}
	var hc healthpb.HealthCheckResponse
	if err := proto.Unmarshal(answer[5:], &hc); err != nil {
		return "bad HealthCheckResponse: " + err.Error()
	}
	if hc.Status != healthpb.HealthCheckResponse_SERVING {
		return hc.Status.String()
	}
	return ""
}
