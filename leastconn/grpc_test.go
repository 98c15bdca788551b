package leastconn

import (
	"encoding/json"
	"net/http"
	"strings"
	"testing"
	"time"
)

func TestGRPCTimeoutParsesAndFormatsRoundingDown(t *testing.T) {
	for _, c := range []struct {
		in   string
		want time.Duration
		ok   bool
	}{
		{"1S", time.Second, true}, {"250m", 250 * time.Millisecond, true}, {"3H", 3 * time.Hour, true},
		{"99999999u", 99999999 * time.Microsecond, true}, {"5n", 5, true}, {"2M", 2 * time.Minute, true},
		{"", 0, false}, {"S", 0, false}, {"123456789S", 0, false}, {"1s", 0, false}, {"-1S", 0, false},
	} {
		got, ok := parseGRPCTimeout(c.in)
		if got != c.want || ok != c.ok {
			t.Errorf("parseGRPCTimeout(%q) = %v, %v; want %v, %v", c.in, got, ok, c.want, c.ok)
		}
	}
	for _, c := range []struct {
		in   time.Duration
		want string
	}{
		{0, "1n"}, {1500 * time.Microsecond, "1500u"}, {99 * time.Second, "99000000u"},
		{101 * time.Second, "101000m"}, {30 * time.Hour, "108000S"}, {1e8 * time.Second, "1666666M"},
	} {
		got := formatGRPCTimeout(c.in)
		if got != c.want {
			t.Errorf("formatGRPCTimeout(%v) = %q, want %q", c.in, got, c.want)
		}
		if back, ok := parseGRPCTimeout(got); !ok || back > c.in && c.in > 0 {
			t.Errorf("formatGRPCTimeout(%v) = %q reads back as %v: more than was left", c.in, got, back)
		}
	}
}

func TestIsGRPCTellsGRPCFromGRPCWebAndOthers(t *testing.T) {
	for ct, want := range map[string]bool{
		"application/grpc": true, "application/grpc+proto": true, "application/grpc;charset=utf-8": true,
		"application/grpc-web": false, "application/grpc-web+proto": false, "application/json": false, "": false,
	} {
		r, _ := http.NewRequest(http.MethodPost, "/svc/Method", nil)
		if ct != "" {
			r.Header.Set("Content-Type", ct)
		}
		if got := isGRPC(r); got != want {
			t.Errorf("isGRPC(Content-Type %q) = %v, want %v", ct, got, want)
		}
	}
	get, _ := http.NewRequest(http.MethodGet, "/", nil)
	get.Header.Set("Content-Type", "application/grpc")
	if isGRPC(get) {
		t.Error("a GET is no gRPC call")
	}
}

func TestResponseStreamsAreEventStreamsAndGRPC(t *testing.T) {
	for ct, want := range map[string][2]bool{
		"text/event-stream": {true, false}, "text/event-stream; charset=utf-8": {true, false},
		"application/grpc": {true, true}, "application/grpc+proto": {true, true},
		"application/grpc-web": {false, false}, "application/json": {false, false}, "": {false, false},
	} {
		resp := &http.Response{Header: http.Header{}}
		if ct != "" {
			resp.Header.Set("Content-Type", ct)
		}
		if stream, grpc := responseStream(resp); stream != want[0] || grpc != want[1] {
			t.Errorf("responseStream(Content-Type %q) = %v, %v, want %v, %v", ct, stream, grpc, want[0], want[1])
		}
	}
}

func TestGRPCCodesReadByNumberOrName(t *testing.T) {
	for in, want := range map[string]int{"14": 14, "UNAVAILABLE": 14, "unavailable": 14, "0": 0, "DEADLINE_EXCEEDED": 4} {
		if got, err := parseGRPCCode(in); err != nil || got != want {
			t.Errorf("parseGRPCCode(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, bad := range []string{"17", "-1", "UNAVAIL", ""} {
		if _, err := parseGRPCCode(bad); err == nil {
			t.Errorf("parseGRPCCode(%q) accepted", bad)
		}
	}
	if got := encodeGRPCMessage("50% off\n"); got != "50%25 off%0A" {
		t.Errorf("encodeGRPCMessage = %q", got)
	}
}

func TestHealthGRPCNeedsHTTP2Backends(t *testing.T) {
	for backends, wantErr := range map[string]bool{
		`[{"url":"h2c://a:50051"},{"url":"https://b:443"}]`: false,
		`[{"url":"a:50051"}]`:                               true,
	} {
		var h Handler
		if err := json.Unmarshal([]byte(`{"health_grpc":{},"backends":`+backends+`}`), &h); err != nil {
			t.Fatal(err)
		}
		_, err := h.poolSpec()
		if (err != nil) != wantErr || err != nil && !strings.Contains(err.Error(), "h2c://") {
			t.Errorf("health_grpc with backends %s: %v", backends, err)
		}
	}
	var h Handler
	if err := json.Unmarshal([]byte(`{"versions":["h2c","2"],"health_grpc":{},"backends":[{"url":"a:50051"}]}`), &h); err != nil {
		t.Fatal(err)
	}
	if s, err := h.poolSpec(); err != nil || s.backends[0].key != "h2c://a:50051" {
		t.Errorf("versions h2c: %v", err)
	}
}
