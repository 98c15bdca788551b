package main

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

// serve sends one request through the backend's real routes.
func serve(t *testing.T, s *server, req *http.Request) *httptest.ResponseRecorder {
	t.Helper()
	rec := httptest.NewRecorder()
	s.routes().ServeHTTP(rec, req)
	return rec
}

func TestRoutes(t *testing.T) {
	tests := []struct {
		name       string
		method     string
		target     string
		wantStatus int
		wantInBody string
		wantType   string
	}{
		{"root names the backend", "GET", "/", 200, "Hostname: app1\n", "text/plain"},
		{"any path names the backend", "GET", "/some/page", 200, "Hostname: app1\n", "text/plain"},
		{"root echoes forwarding headers", "GET", "/", 200, "X-Forwarded-For: 203.0.113.7", ""},
		{"health is OK by default", "GET", "/health", 200, "OK", ""},
		{"slow answers like root", "GET", "/slow?ms=5", 200, "Hostname: app1\n", ""},
		{"slow without ms is a bad request", "GET", "/slow", 400, "ms must be", ""},
		{"slow with negative ms is a bad request", "GET", "/slow?ms=-1", 400, "ms must be", ""},
		{"stats is JSON memory", "GET", "/stats", 200, `"memory_usage":`, "application/json"},
		{"metrics is Prometheus text", "GET", "/metrics", 200, "_bytes ", "text/plain; version=0.0.4"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			req := httptest.NewRequest(tt.method, tt.target, nil)
			req.Header.Set("X-Forwarded-For", "203.0.113.7")
			rec := serve(t, &server{name: "app1"}, req)
			if rec.Code != tt.wantStatus {
				t.Fatalf("%s %s: status %d, want %d (body %q)", tt.method, tt.target, rec.Code, tt.wantStatus, rec.Body)
			}
			if !strings.Contains(rec.Body.String(), tt.wantInBody) {
				t.Errorf("%s %s: body %q does not contain %q", tt.method, tt.target, rec.Body, tt.wantInBody)
			}
			if got := rec.Header().Get("Content-Type"); !strings.HasPrefix(got, tt.wantType) {
				t.Errorf("%s %s: Content-Type %q, want prefix %q", tt.method, tt.target, got, tt.wantType)
			}
		})
	}
}

func TestHealthFlipsAndBack(t *testing.T) {
	s := &server{name: "app1"}
	steps := []struct {
		method, target string
		wantHealth     int
	}{
		{"POST", "/health/fail", 500},
		{"POST", "/health/fail", 500},
		{"POST", "/health/ok", 200},
	}
	for _, step := range steps {
		if rec := serve(t, s, httptest.NewRequest(step.method, step.target, nil)); rec.Code != 200 {
			t.Fatalf("%s %s: status %d, want 200", step.method, step.target, rec.Code)
		}
		rec := serve(t, s, httptest.NewRequest("GET", "/health", nil))
		if rec.Code != step.wantHealth {
			t.Errorf("after %s %s: /health status %d, want %d", step.method, step.target, rec.Code, step.wantHealth)
		}
	}
}

func TestStatsReportsPositiveMemory(t *testing.T) {
	rec := serve(t, &server{}, httptest.NewRequest("GET", "/stats", nil))
	var body struct {
		MemoryUsage uint64 `json:"memory_usage"`
	}
	if err := json.Unmarshal(rec.Body.Bytes(), &body); err != nil {
		t.Fatalf("/stats body %q is not JSON: %v", rec.Body, err)
	}
	if body.MemoryUsage == 0 {
		t.Errorf("/stats memory_usage is 0, want the process's memory")
	}
}

func TestMetricsPrefersResidentMemory(t *testing.T) {
	rec := serve(t, &server{}, httptest.NewRequest("GET", "/metrics", nil))
	want := "go_memstats_alloc_bytes "
	if _, ok := residentBytes(); ok {
		want = "process_resident_memory_bytes "
	}
	if !strings.Contains(rec.Body.String(), want) {
		t.Errorf("/metrics body %q lacks %q", rec.Body, want)
	}
}

func TestSlowStopsWhenClientGoesAway(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	req := httptest.NewRequest("GET", "/slow?ms=60000", nil).WithContext(ctx)
	start := time.Now()
	rec := serve(t, &server{name: "app1"}, req)
	if took := time.Since(start); took > 5*time.Second {
		t.Fatalf("/slow took %v after the client went away", took)
	}
	if strings.Contains(rec.Body.String(), "Hostname:") {
		t.Errorf("/slow answered %q to a client that went away", rec.Body)
	}
}

func TestDefaultNamePrefersAppName(t *testing.T) {
	t.Setenv("APP_NAME", "app9")
	if got := defaultName(); got != "app9" {
		t.Errorf("defaultName() = %q with APP_NAME=app9", got)
	}
}

func TestDelaySlowsEveryRequestUntilTurnedOff(t *testing.T) {
	s := &server{name: "app2"}
	if rec := serve(t, s, httptest.NewRequest("POST", "/delay?ms=30", nil)); rec.Code != 200 {
		t.Fatalf("POST /delay: %d", rec.Code)
	}
	if time.Duration(s.delay.Load()) != 30*time.Millisecond {
		t.Fatalf("delay %v, want 30ms", time.Duration(s.delay.Load()))
	}
	// a request that gives up before the delay gets no answer
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if rec := serve(t, s, httptest.NewRequest("GET", "/", nil).WithContext(ctx)); rec.Body.Len() != 0 {
		t.Fatalf("a cancelled request was answered: %q", rec.Body)
	}
	serve(t, s, httptest.NewRequest("POST", "/delay?ms=0", nil))
	if rec := serve(t, s, httptest.NewRequest("GET", "/", nil)); !strings.Contains(rec.Body.String(), "app2") {
		t.Fatalf("after turning the delay off: %q", rec.Body)
	}
	if rec := serve(t, s, httptest.NewRequest("POST", "/delay?ms=x", nil)); rec.Code != 400 {
		t.Fatalf("bad ms: %d", rec.Code)
	}
}
