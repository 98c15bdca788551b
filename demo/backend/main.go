// Command backend is a tiny HTTP server to put behind lbpool in demos.
//
// Routes:
//
//	/                 "Hostname: <name>" and the request's Host and X-Forwarded-For
//	/health           200 OK, or 500 after POST /health/fail (POST /health/ok restores it)
//	/slow?ms=N        waits N milliseconds (at most 60 s), then answers like /
//	POST /delay?ms=N  makes every later / answer N milliseconds late (0: off),
//	                  to play a busy backend
//	/stats            {"memory_usage": <bytes>} for lbpool's stats_uri
//	/metrics          Prometheus text with process_resident_memory_bytes
//
// It uses the standard library only.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"log"
	"net/http"
	"os"
	"os/signal"
	"runtime"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"
)

// maxSlow bounds /slow so a typo cannot hold a connection for hours.
const maxSlow = 60 * time.Second

// server holds the backend's name and its switchable health.
type server struct {
	name      string
	unhealthy atomic.Bool
	delay     atomic.Int64 // nanoseconds every / waits
}

// routes returns the backend's HTTP handler.
func (s *server) routes() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		if !s.wait(r, time.Duration(s.delay.Load())) {
			return
		}
		s.hello(w, r)
	})
	mux.HandleFunc("POST /delay", func(w http.ResponseWriter, r *http.Request) {
		d, ok := parseMS(w, r)
		if !ok {
			return
		}
		s.delay.Store(int64(d))
		fmt.Fprintf(w, "every request now waits %v\n", d)
	})
	mux.HandleFunc("GET /health", s.health)
	mux.HandleFunc("POST /health/fail", func(w http.ResponseWriter, _ *http.Request) {
		s.unhealthy.Store(true)
		fmt.Fprintln(w, "health now fails")
	})
	mux.HandleFunc("POST /health/ok", func(w http.ResponseWriter, _ *http.Request) {
		s.unhealthy.Store(false)
		fmt.Fprintln(w, "health now OK")
	})
	mux.HandleFunc("GET /slow", s.slow)
	mux.HandleFunc("GET /stats", stats)
	mux.HandleFunc("GET /metrics", metrics)
	return mux
}

// hello names this backend, so a client sees which one the balancer picked.
func (s *server) hello(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	fmt.Fprintf(w, "Hostname: %s\n", s.name)
	fmt.Fprintf(w, "Host: %s X-Forwarded-For: %s\n", r.Host, r.Header.Get("X-Forwarded-For"))
}

// health answers the balancer's active health checks.
func (s *server) health(w http.ResponseWriter, _ *http.Request) {
	if s.unhealthy.Load() {
		http.Error(w, "FAIL", http.StatusInternalServerError)
		return
	}
	fmt.Fprint(w, "OK")
}

// slow waits before answering, to show least-connections at work.
func (s *server) slow(w http.ResponseWriter, r *http.Request) {
	d, ok := parseMS(w, r)
	if ok && s.wait(r, d) {
		s.hello(w, r)
	}
}

// parseMS reads ?ms=N as a duration of at most maxSlow.
func parseMS(w http.ResponseWriter, r *http.Request) (time.Duration, bool) {
	ms, err := strconv.Atoi(r.URL.Query().Get("ms"))
	if err != nil || ms < 0 {
		http.Error(w, "ms must be a non-negative integer", http.StatusBadRequest)
		return 0, false
	}
	return min(time.Duration(ms)*time.Millisecond, maxSlow), true
}

// wait sleeps for d, or until the client goes away (then it returns false).
func (s *server) wait(r *http.Request, d time.Duration) bool {
	if d <= 0 {
		return true
	}
	timer := time.NewTimer(d)
	defer timer.Stop()
	select {
	case <-timer.C:
		return true
	case <-r.Context().Done():
		return false
	}
}

// stats reports runtime.MemStats.Sys: all memory the Go runtime holds from
// the OS, the closest pure-Go figure to the process's footprint.
func stats(w http.ResponseWriter, _ *http.Request) {
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(map[string]uint64{"memory_usage": m.Sys})
}

// metrics writes Prometheus text: the resident set size from /proc when the
// system has it, else the Go heap in use.
func metrics(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
	if rss, ok := residentBytes(); ok {
		fmt.Fprintln(w, "# HELP process_resident_memory_bytes Resident memory size in bytes.")
		fmt.Fprintln(w, "# TYPE process_resident_memory_bytes gauge")
		fmt.Fprintf(w, "process_resident_memory_bytes %d\n", rss)
		return
	}
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	fmt.Fprintln(w, "# HELP go_memstats_alloc_bytes Number of bytes allocated and still in use.")
	fmt.Fprintln(w, "# TYPE go_memstats_alloc_bytes gauge")
	fmt.Fprintf(w, "go_memstats_alloc_bytes %d\n", m.HeapAlloc)
}

// residentBytes reads the resident page count, the second field of
// /proc/self/statm.
func residentBytes() (uint64, bool) {
	data, err := os.ReadFile("/proc/self/statm")
	if err != nil {
		return 0, false
	}
	fields := strings.Fields(string(data))
	if len(fields) < 2 {
		return 0, false
	}
	pages, err := strconv.ParseUint(fields[1], 10, 64)
	if err != nil {
		return 0, false
	}
	return pages * uint64(os.Getpagesize()), true
}

// defaultName is $APP_NAME, else the hostname.
func defaultName() string {
	if name := os.Getenv("APP_NAME"); name != "" {
		return name
	}
	name, _ := os.Hostname()
	return name
}

func main() {
	listen := flag.String("listen", ":80", "address to listen on")
	name := flag.String("name", defaultName(), "name to answer with (default $APP_NAME or the hostname)")
	flag.Parse()

	srv := &http.Server{
		Addr:              *listen,
		Handler:           (&server{name: *name}).routes(),
		ReadHeaderTimeout: 5 * time.Second,
		IdleTimeout:       2 * time.Minute,
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	drained := make(chan struct{})
	go func() {
		defer close(drained)
		<-ctx.Done()
		shutdown, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := srv.Shutdown(shutdown); err != nil {
			log.Printf("shutdown: %v", err)
		}
	}()

	log.Printf("backend %q listening on %s", *name, *listen)
	if err := srv.ListenAndServe(); !errors.Is(err, http.ErrServerClosed) {
		log.Fatal(err)
	}
	<-drained // ListenAndServe returns at once; let in-flight requests finish
}
