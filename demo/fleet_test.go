package demo_test

// The tests in this file run several built Caddy processes that share one
// `storage file_system` folder, in front of the same backends, as instances
// behind DNS or a layer-4 balancer do: a run-time change made on one
// instance reaches the others through the storage, and survives a restart.

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

const (
	fleetSync  = 200 * time.Millisecond // state_sync of the instances
	fleetBound = 10 * time.Second       // generous: the measured times are logged
)

// fleetBackends are three backends in the test process that count the
// requests each instance sends them (by the X-LB header the instance adds;
// health checks carry none).
type fleetBackends struct {
	urls   []string
	mu     sync.Mutex
	served map[string]map[string]int // backend URL → instance → requests
}

func newFleetBackends(t *testing.T) *fleetBackends {
	fb := &fleetBackends{served: map[string]map[string]int{}}
	for i := range 3 {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		url := "http://" + l.Addr().String()
		name := fmt.Sprintf("app%d", i+1)
		fb.urls = append(fb.urls, url)
		fb.served[url] = map[string]int{}
		srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if lb := r.Header.Get("X-LB"); lb != "" {
				fb.mu.Lock()
				fb.served[url][lb]++
				fb.mu.Unlock()
			}
			fmt.Fprintf(w, "Hostname: %s\n", name)
		})}
		go srv.Serve(l)
		t.Cleanup(func() { srv.Close() })
	}
	return fb
}

// count is how many requests instance sent to backend url.
func (fb *fleetBackends) count(url, instance string) int {
	fb.mu.Lock()
	defer fb.mu.Unlock()
	return fb.served[url][instance]
}

// lbInstance is one Caddy process of the fleet.
type lbInstance struct {
	name   string
	lbURL  string
	admin  string
	config string
	env    []string
	proc   *demoProc
	client *http.Client
}

// fleetCaddyfile is an instance's config: the shared storage, the pool web
// over the three backends, a short state_sync, and a header naming it.
func fleetCaddyfile(name string, lbPort, adminPort int, storage string, backends []string) string {
	return fmt.Sprintf(`{
	admin 127.0.0.1:%d
	http_port %d
	auto_https off
	storage file_system %s
}

http://127.0.0.1:%d {
	lbpool %s {
		name web
		state_sync %v
		health_interval 1h
		header_up X-LB %s
	}
}
`, adminPort, lbPort, storage, lbPort, strings.Join(backends, " "), fleetSync, name)
}

// startFleet starts one instance per name, all sharing the storage folder.
func startFleet(t *testing.T, storage string, fb *fleetBackends, names ...string) []*lbInstance {
	t.Helper()
	caddyBin, _ := buildDemo(t)
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	transport := &http.Transport{Proxy: nil}
	t.Cleanup(transport.CloseIdleConnections)
	client := &http.Client{Transport: transport, Timeout: 5 * time.Second}
	var out []*lbInstance
	for _, name := range names {
		ports := freePorts(t, 2)
		in := &lbInstance{
			name:   name,
			lbURL:  fmt.Sprintf("http://127.0.0.1:%d/", ports[0]),
			admin:  fmt.Sprintf("http://127.0.0.1:%d", ports[1]),
			config: filepath.Join(t.TempDir(), "Caddyfile"),
			env:    caddyEnv(t),
			client: client,
		}
		if err := os.WriteFile(in.config, []byte(fleetCaddyfile(name, ports[0], ports[1], storage, fb.urls)), 0o600); err != nil {
			t.Fatal(err)
		}
		in.start(t, ctx, caddyBin)
		out = append(out, in)
	}
	t.Cleanup(func() {
		if t.Failed() {
			for _, in := range out {
				t.Logf("%s output:\n%s", in.name, tail(in.proc.out.String(), 16<<10))
			}
		}
	})
	return out
}

// start runs the instance and waits until its admin endpoint answers.
func (in *lbInstance) start(t *testing.T, ctx context.Context, caddyBin string) {
	t.Helper()
	in.proc = startProc(t, ctx, in.name, in.env, caddyBin, "run", "--config", in.config, "--adapter", "caddyfile")
	poll(t, startBound, in.name+" admin answers", func() (bool, string) {
		if done, err := in.proc.exited(); done {
			t.Fatalf("%s exited: %v\n%s", in.name, err, in.proc.out.String())
		}
		status, _, err := get(in.client, in.admin+"/lbpool/fleet")
		return status == http.StatusOK, fmt.Sprint(status, err)
	})
	// the admin endpoint answers once the config is provisioned, a moment
	// before the site listens: wait for that too, without sending a request
	// a backend would count
	poll(t, startBound, in.name+" site listens", func() (bool, string) {
		conn, err := net.DialTimeout("tcp", strings.TrimSuffix(strings.TrimPrefix(in.lbURL, "http://"), "/"), time.Second)
		if err != nil {
			return false, err.Error()
		}
		conn.Close()
		return true, ""
	})
}

// fleetBackend is the part of a stats entry these tests read.
type fleetBackend struct {
	URL              string     `json:"url"`
	State            string     `json:"state"`
	Weight           int        `json:"weight"`
	ConfiguredWeight int        `json:"configured_weight"`
	StateSource      string     `json:"state_source"`
	StateChangedAt   *time.Time `json:"state_changed_at"`
	StateChangedBy   string     `json:"state_changed_by"`
	WeightSource     string     `json:"weight_source"`
	Unsaved          bool       `json:"unsaved"`
}

type fleetStatus struct {
	Pool          string     `json:"pool"`
	StateSync     string     `json:"state_sync"`
	Instance      string     `json:"instance"`
	LastSync      *time.Time `json:"last_sync"`
	Error         string     `json:"error"`
	PendingWrites int        `json:"pending_writes"`
}

func (in *lbInstance) getJSON(path string, v any) error {
	resp, err := in.client.Get(in.admin + path)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return err
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s: %s", resp.Status, body)
	}
	return json.Unmarshal(body, v)
}

// backend returns url's stats on this instance.
func (in *lbInstance) backend(t *testing.T, url string) fleetBackend {
	t.Helper()
	var stats []fleetBackend
	if err := in.getJSON("/lbpool/stats?pool=web", &stats); err != nil {
		t.Fatalf("%s stats: %v", in.name, err)
	}
	for _, s := range stats {
		if s.URL == url {
			return s
		}
	}
	t.Fatalf("%s: no %s in %+v", in.name, url, stats)
	return fleetBackend{}
}

func (in *lbInstance) fleet(t *testing.T) fleetStatus {
	t.Helper()
	var fs []fleetStatus
	if err := in.getJSON("/lbpool/fleet", &fs); err != nil || len(fs) != 1 {
		t.Fatalf("%s fleet: %v %+v", in.name, err, fs)
	}
	return fs[0]
}

// change POSTs a change to /lbpool/state and returns the status, the body
// and how long the answer took.
func (in *lbInstance) change(t *testing.T, body string) (int, string, time.Duration) {
	t.Helper()
	start := time.Now()
	resp, err := in.client.Post(in.admin+"/lbpool/state", "application/json", strings.NewReader(body))
	if err != nil {
		t.Fatalf("%s POST /lbpool/state: %v", in.name, err)
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(data), time.Since(start)
}

func (in *lbInstance) mustChange(t *testing.T, body string) time.Time {
	t.Helper()
	status, resp, _ := in.change(t, body)
	if status != http.StatusOK {
		t.Fatalf("%s POST %s: %d %s", in.name, body, status, resp)
	}
	return time.Now()
}

// send makes n requests through the instance, one after another.
func (in *lbInstance) send(t *testing.T, n int) {
	t.Helper()
	for range n {
		status, _, err := get(in.client, in.lbURL)
		if err != nil || status != http.StatusOK {
			t.Fatalf("%s GET /: %d %v", in.name, status, err)
		}
	}
}

// follows polls until the instance shows url with the wanted state (or,
// with want == "", the wanted weight) and returns how long it took since
// from.
func (in *lbInstance) follows(t *testing.T, url, state string, weight int, from time.Time) time.Duration {
	t.Helper()
	poll(t, fleetBound, fmt.Sprintf("%s shows %s state %q weight %d", in.name, url, state, weight), func() (bool, string) {
		s := in.backend(t, url)
		return (state == "" || s.State == state) && (weight == 0 || s.Weight == weight), fmt.Sprintf("%+v", s)
	})
	return time.Since(from)
}

func TestFleetChangesOnOneInstanceReachTheOthers(t *testing.T) {
	fb := newFleetBackends(t)
	app1, app2, app3 := fb.urls[0], fb.urls[1], fb.urls[2]
	fleet := startFleet(t, t.TempDir(), fb, "a", "b", "c")
	a, b, c := fleet[0], fleet[1], fleet[2]

	// a drain on A reaches B and C with no reload; B sends app2 nothing more
	at := a.mustChange(t, fmt.Sprintf(`{"pool":"web","backend":%q,"state":"drain"}`, app2))
	for _, in := range []*lbInstance{b, c} {
		took := in.follows(t, app2, "drain", 0, at)
		t.Logf("drain A→%s: %v (state_sync %v)", in.name, took.Round(time.Millisecond), fleetSync)
	}
	s := b.backend(t, app2)
	if s.StateSource != "storage" || s.StateChangedBy != a.fleet(t).Instance || s.StateChangedAt == nil {
		t.Fatalf("B's app2 does not say it came from A through the storage: %+v", s)
	}
	if s := a.backend(t, app2); s.StateSource != "local" || s.Unsaved {
		t.Fatalf("A's app2 does not say it was set here and saved: %+v", s)
	}
	before := fb.count(app2, "b")
	b.send(t, 30)
	if got := fb.count(app2, "b") - before; got != 0 {
		t.Fatalf("B sent the drained app2 %d requests", got)
	}

	// a weight set on B shows on A and shapes A's traffic: sequential
	// requests all go to the heaviest backend (app2 is drained)
	at = b.mustChange(t, fmt.Sprintf(`{"pool":"web","backend":%q,"weight":5}`, app1))
	took := a.follows(t, app1, "", 5, at)
	t.Logf("weight B→A: %v", took.Round(time.Millisecond))
	if s := a.backend(t, app1); s.ConfiguredWeight != 1 || s.WeightSource != "storage" {
		t.Fatalf("A's app1 after a weight from B: %+v", s)
	}
	b1, b3 := fb.count(app1, "a"), fb.count(app3, "a")
	a.send(t, 20)
	if got1, got3 := fb.count(app1, "a")-b1, fb.count(app3, "a")-b3; got1 != 20 || got3 != 0 {
		t.Fatalf("A sent app1 (weight 5) %d and app3 (weight 1) %d of 20 sequential requests", got1, got3)
	}

	// concurrent changes to different backends on A and B both survive
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); a.change(t, fmt.Sprintf(`{"pool":"web","backend":%q,"state":"maint"}`, app3)) }()
	go func() { defer wg.Done(); b.change(t, fmt.Sprintf(`{"pool":"web","backend":%q,"weight":null}`, app1)) }()
	wg.Wait()
	at = time.Now()
	for _, in := range fleet {
		in.follows(t, app3, "maint", 0, at)
		in.follows(t, app1, "", 1, at)
		in.follows(t, app2, "drain", 0, at)
	}
	t.Logf("concurrent changes on A and B, on all three: %v", time.Since(at).Round(time.Millisecond))
}

func TestFleetRestartedInstanceStartsWithTheStoredDrain(t *testing.T) {
	fb := newFleetBackends(t)
	app2 := fb.urls[1]
	storage := t.TempDir()
	a := startFleet(t, storage, fb, "a")[0]
	a.mustChange(t, fmt.Sprintf(`{"pool":"web","backend":%q,"state":"drain"}`, app2))
	a.mustChange(t, fmt.Sprintf(`{"pool":"web","backend":%q,"weight":7}`, fb.urls[0]))

	a.proc.stop()
	before := fb.count(app2, "a")
	start := time.Now()
	a.start(t, context.Background(), demoBinaries.caddy)
	// the first requests: none may reach app2
	a.send(t, 10)
	if got := fb.count(app2, "a") - before; got != 0 {
		t.Fatalf("the restarted instance sent the stored-drained app2 %d requests", got)
	}
	s := a.backend(t, app2)
	if s.State != "drain" || s.StateSource != "storage" {
		t.Fatalf("after a restart app2 is %+v", s)
	}
	if w := a.backend(t, fb.urls[0]); w.Weight != 7 || w.ConfiguredWeight != 1 {
		t.Fatalf("after a restart app1's weight is %+v", w)
	}
	t.Logf("restart to drained and serving: %v", time.Since(start).Round(time.Millisecond))
}

func TestFleetStorageDownKeepsChangesHereAndRecovers(t *testing.T) {
	fb := newFleetBackends(t)
	app2 := fb.urls[1]
	storage := filepath.Join(t.TempDir(), "storage")
	fleet := startFleet(t, storage, fb, "a", "b")
	a, b := fleet[0], fleet[1]
	a.mustChange(t, fmt.Sprintf(`{"pool":"web","backend":%q,"state":"ready"}`, fb.urls[0]))

	// the folder becomes a file: every read and write fails (chmod would
	// not stop root)
	aside := storage + ".aside"
	if err := os.Rename(storage, aside); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(storage, []byte("not a folder"), 0o600); err != nil {
		t.Fatal(err)
	}
	restored := false
	restore := func() {
		if !restored {
			restored = true
			_ = os.Remove(storage)
			_ = os.Rename(aside, storage)
		}
	}
	t.Cleanup(restore)

	status, body, took := a.change(t, fmt.Sprintf(`{"pool":"web","backend":%q,"state":"drain"}`, app2))
	t.Logf("POST with the storage down answered in %v", took.Round(time.Millisecond))
	if status != http.StatusOK || took > 5*time.Second {
		t.Fatalf("with the storage down the change answered %d after %v: %s", status, took, body)
	}
	if s := a.backend(t, app2); s.State != "drain" || !s.Unsaved {
		t.Fatalf("with the storage down the change did not hold here, unsaved: %+v", s)
	}
	if f := a.fleet(t); f.Error == "" || f.PendingWrites != 1 {
		t.Fatalf("the fleet status does not show the storage error: %+v", f)
	}
	before := fb.count(app2, "a")
	a.send(t, 10)
	if got := fb.count(app2, "a") - before; got != 0 {
		t.Fatalf("A sent the drained app2 %d requests while the storage was down", got)
	}
	// logged once, not every sync
	poll(t, fleetBound, "a few failed syncs", func() (bool, string) {
		f := a.fleet(t)
		return f.Error != "" && strings.Count(a.proc.out.String(), "storage failing") == 1, a.proc.out.String()
	})
	time.Sleep(3 * fleetSync) // syncs that fail again must not log again
	if n := strings.Count(a.proc.out.String(), "storage failing"); n != 1 {
		t.Fatalf("the storage error was logged %d times", n)
	}

	restore()
	at := time.Now()
	poll(t, fleetBound, "A writes its change once the storage is back", func() (bool, string) {
		f := a.fleet(t)
		return f.Error == "" && f.PendingWrites == 0 && !a.backend(t, app2).Unsaved, fmt.Sprintf("%+v", f)
	})
	took = b.follows(t, app2, "drain", 0, at)
	t.Logf("storage back → B drained: %v", took.Round(time.Millisecond))
	if !strings.Contains(a.proc.out.String(), "storage works again") {
		t.Fatal("the recovery was not logged")
	}
}

// storedKey is where an instance keeps a field of a backend of pool web
// (the layout docs/fleet.md describes).
func storedKey(storage, backendURL, field string) string {
	hash := func(s string) string { sum := sha256.Sum256([]byte(s)); return hex.EncodeToString(sum[:8]) }
	return filepath.Join(storage, "lbpool", "state", hash("web"), hash(backendURL), field)
}

func TestFleetStoredGarbageIsLoggedAndIgnored(t *testing.T) {
	fb := newFleetBackends(t)
	storage := t.TempDir()
	garbage := map[string][]byte{
		storedKey(storage, fb.urls[0], "state"):  []byte(`{"pool":"web","state":"sideways","at":"2024-01-01T00:00:00Z","instance":"x"}`),
		storedKey(storage, fb.urls[1], "weight"): bytes.Repeat([]byte("9"), 1<<20),
		storedKey(storage, fb.urls[2], "state"):  []byte("\x00\xff{"),
	}
	for path, data := range garbage {
		if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	a := startFleet(t, storage, fb, "a")[0]
	poll(t, fleetBound, "each garbage value logged", func() (bool, string) {
		out := a.proc.out.String()
		return strings.Count(out, "not a change") >= len(garbage), tail(out, 4<<10)
	})
	time.Sleep(3 * fleetSync)
	if n := strings.Count(a.proc.out.String(), "not a change"); n != len(garbage) {
		t.Fatalf("%d garbage lines, want one per key (%d)", n, len(garbage))
	}
	for _, url := range fb.urls {
		if s := a.backend(t, url); s.State != "ready" || s.Weight != 1 {
			t.Fatalf("garbage changed %+v", s)
		}
	}
	a.send(t, 9)
	if strings.Contains(a.proc.out.String(), "panic") {
		t.Fatal("a panic")
	}
	// a real change over the garbage replaces it
	a.mustChange(t, fmt.Sprintf(`{"pool":"web","backend":%q,"state":"drain"}`, fb.urls[0]))
	data, err := os.ReadFile(storedKey(storage, fb.urls[0], "state"))
	if err != nil || !bytes.Contains(data, []byte(`"drain"`)) {
		t.Fatalf("stored after a change: %q %v", data, err)
	}
}
