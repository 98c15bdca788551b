package leastconn

import (
	"encoding/base64"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
)

// newStickyTestHandler builds a handler over n detached backends
// (http://10.0.0.<i>:8080) with sticky cookies signed with secret.
func newStickyTestHandler(t testing.TB, n int, secret string) *Handler {
	t.Helper()
	sc, err := newStickyCookie(StickyCookie{Secret: secret})
	if err != nil {
		t.Fatal(err)
	}
	p := &Pool{name: "test"}
	h := &Handler{lease: &lease{spec: &poolSpec{sticky: sc}}, sticky: sc}
	for i := range n {
		a, err := parseBackendURL(fmt.Sprintf("10.0.%d.%d:8080", i/250, i%250))
		if err != nil {
			t.Fatal(err)
		}
		a.weight = 1
		h.lease.backends = append(h.lease.backends, newBackend(p, a))
	}
	h.lease.view.Store(h.lease.buildView())
	return h
}

// cookieFor is the Cookie header value that names backend i of h's view.
func cookieFor(h *Handler, i int) string {
	return "lb=" + h.lease.view.Load().sticky.values[i]
}

func stickyRequest(cookie ...string) *http.Request {
	r := httptest.NewRequest(http.MethodGet, "http://example.com/", nil)
	for _, c := range cookie {
		r.Header.Add("Cookie", c)
	}
	return r
}

func TestStickyValueIsOpaqueStableAndKeyed(t *testing.T) {
	a := newStickyTestHandler(t, 3, "s3cret")
	b := newStickyTestHandler(t, 3, "s3cret")
	other := newStickyTestHandler(t, 3, "another")
	va, vb, vo := a.lease.view.Load().sticky.values, b.lease.view.Load().sticky.values, other.lease.view.Load().sticky.values
	for i := range va {
		if va[i] != vb[i] {
			t.Errorf("backend %d: value %q, then %q for the same backend and secret", i, va[i], vb[i])
		}
		if va[i] == vo[i] {
			t.Errorf("backend %d: two secrets give the same value %q", i, va[i])
		}
		if len(va[i]) != stickyValueLen || strings.Contains(va[i], "10.0") || strings.Contains(va[i], "8080") {
			t.Errorf("backend %d: value %q is not an opaque %d-character id", i, va[i], stickyValueLen)
		}
	}
	// the value depends on the backend's identity, not its place in the list
	a.lease.backends[0], a.lease.backends[2] = a.lease.backends[2], a.lease.backends[0]
	a.lease.view.Store(a.lease.buildView())
	if got := a.lease.view.Load().sticky.values[0]; got != vb[2] {
		t.Errorf("after reordering, backend 10.0.0.2 has value %q, was %q", got, vb[2])
	}
}

func TestStickyHomeFollowsTheCookieWhileTheBackendMayTakeIt(t *testing.T) {
	h := newStickyTestHandler(t, 3, "k")
	v := h.lease.view.Load()
	tests := []struct {
		name  string
		flags uint32
		want  int
	}{
		{"ready", 0, 1},
		{"drain keeps the session", flagDrain, 1},
		{"ramping", flagRamp, 1},
		{"down moves it", flagDown, -1},
		{"maint moves it", flagMaint, -1},
		{"leaving moves it", flagLeaving, -1},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			b := v.backends[1]
			b.flags.Store(tc.flags)
			defer b.flags.Store(0)
			before := b.sticky.Load()
			got := h.sticky.home(stickyRequest(cookieFor(h, 1)), v)
			if got != tc.want {
				t.Fatalf("home %d, want %d", got, tc.want)
			}
			if got >= 0 {
				if b.active.Load() != 1 || b.sticky.Load() != before+1 {
					t.Fatalf("active %d, sticky %d: a sticky request counts like any other", b.active.Load(), b.sticky.Load())
				}
				b.active.Add(-1)
			}
		})
	}
}

func TestStickyHomeIgnoresForgedStaleAndMalformedValues(t *testing.T) {
	h := newStickyTestHandler(t, 3, "k")
	v := h.lease.view.Load()
	good := v.sticky.values[2]
	mac, err := base64.RawURLEncoding.DecodeString(good)
	if err != nil {
		t.Fatal(err)
	}
	mac[stickyMACLen-1] ^= 1 // the id matches, the tag does not
	forged := base64.RawURLEncoding.EncodeToString(mac)
	stale := newStickyTestHandler(t, 3, "old secret").lease.view.Load().sticky.values[2]
	for _, c := range []string{
		"",
		"lb=",
		"lb=" + forged,
		"lb=" + stale,
		"lb=" + good[:stickyValueLen-1],
		"lb=" + good + "A",
		"lb=" + strings.Repeat("=", stickyValueLen),
		"LB=" + good,
		"xlb=" + good,
		"lb =" + good,
	} {
		if got := h.sticky.home(stickyRequest(c), v); got != -1 {
			t.Errorf("Cookie %q: routed to %d, want no home", c, got)
			v.backends[got].active.Add(-1)
		}
	}
	for _, c := range [][]string{
		{"a=1; lb=" + good + "; b=2"},
		{"lb=\"" + good + "\""},
		{"lb=" + stale + "; lb=" + good}, // the first valid one counts
		{"a=1", "lb=" + good},
		{"  lb=" + good + "  ;"},
	} {
		if got := h.sticky.home(stickyRequest(c...), v); got != 2 {
			t.Errorf("Cookie %q: routed to %d, want 2", c, got)
		} else {
			v.backends[2].active.Add(-1)
		}
	}
}

func TestStickySessionOnABackupMemberMovesBackToThePrimaries(t *testing.T) {
	h := newStickyTestHandler(t, 4, "k")
	v := h.lease.view.Load()
	v.groups = []int{2, 4} // two primaries, two backups
	r := stickyRequest(cookieFor(h, 3))
	if got := h.sticky.home(r, v); got != -1 {
		t.Fatalf("a backup member kept a session while the primaries are up (home %d)", got)
	}
	v.backends[0].flags.Store(flagDown)
	v.backends[1].flags.Store(flagMaint)
	if got := h.sticky.home(r, v); got != 3 {
		t.Fatalf("with every primary out, the backup member lost its session (home %d)", got)
	}
}

func TestStickySetCookieAttributes(t *testing.T) {
	tests := []struct {
		name string
		cfg  StickyCookie
		tls  bool
		want string
	}{
		{"defaults", StickyCookie{}, false, "lb=%s; Path=/; HttpOnly; SameSite=Lax"},
		{"over TLS", StickyCookie{}, true, "lb=%s; Path=/; HttpOnly; SameSite=Lax; Secure"},
		{"every option", StickyCookie{Name: "srv", MaxAge: caddy.Duration(time.Hour), Path: "/app", Domain: ".example.com", SameSite: "strict", Secure: true},
			false, "srv=%s; Path=/app; Domain=example.com; Max-Age=3600; HttpOnly; SameSite=Strict; Secure"},
		{"none is always secure", StickyCookie{SameSite: "none"}, false, "lb=%s; Path=/; HttpOnly; SameSite=None; Secure"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			sc, err := newStickyCookie(tc.cfg)
			if err != nil {
				t.Fatal(err)
			}
			v := &view{backends: []*Backend{newBackend(nil, backendAddr{key: "http://10.0.0.1:80"})}, groups: []int{1}}
			v.sticky = sc.table(v.backends)
			r := stickyRequest()
			if tc.tls {
				r = httptest.NewRequest(http.MethodGet, "https://example.com/", nil)
			}
			w := httptest.NewRecorder()
			w.Header().Add("Set-Cookie", "app=1")
			sc.setCookie(w, r, v, 0)
			want := fmt.Sprintf(tc.want, v.sticky.values[0])
			if got := w.Header()["Set-Cookie"]; len(got) != 2 || got[1] != want {
				t.Fatalf("Set-Cookie %q, want %q after the app's", got, want)
			}
			if _, err := http.ParseSetCookie(want); err != nil {
				t.Fatalf("Set-Cookie %q does not parse: %v", want, err)
			}
			sc.dropCookie(w)
			if got := w.Header()["Set-Cookie"]; len(got) != 1 || got[0] != "app=1" {
				t.Fatalf("after dropCookie Set-Cookie is %q", got)
			}
		})
	}
}

func TestStickyConfigErrors(t *testing.T) {
	for _, cfg := range []StickyCookie{
		{Name: "a b"},
		{Name: "a;b"},
		{Path: "app"},
		{Path: "/a;b"},
		{Domain: "exa mple.com"},
		{SameSite: "Lax"},
		{SameSite: "sometimes"},
		{MaxAge: caddy.Duration(500 * time.Millisecond)},
	} {
		if _, err := newStickyCookie(cfg); err == nil {
			t.Errorf("%+v was accepted", cfg)
		}
	}
}

func TestStickyLookupAllocatesNothing(t *testing.T) {
	for _, n := range []int{3, 256} {
		h := newStickyTestHandler(t, n, "k")
		v := h.lease.view.Load()
		r := stickyRequest("session=abc; " + cookieFor(h, n-1) + "; theme=dark")
		allocs := testing.AllocsPerRun(1000, func() {
			i := h.sticky.home(r, v)
			v.backends[i].active.Add(-1)
		})
		if allocs != 0 {
			t.Fatalf("sticky lookup over %d backends allocates %.1f times", n, allocs)
		}
	}
}

// benchmarkPickSticky measures the request path's choice with a sticky
// cookie: the cookie lookup on a request that carries one (the pick does
// not run), and, for a new session, the failed lookup and the pick.
func benchmarkPickSticky(b *testing.B, n int) {
	h := newStickyTestHandler(b, n, "k")
	v := h.lease.view.Load()
	withCookie := stickyRequest("session=abc; " + cookieFor(h, n/2) + "; theme=dark")
	newSession := stickyRequest("session=abc; theme=dark")
	b.Run("session", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			i := h.sticky.home(withCookie, v)
			v.backends[i].active.Add(-1)
		}
	})
	b.Run("session/parallel", func(b *testing.B) {
		b.ReportAllocs()
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				i := h.sticky.home(withCookie, v)
				v.backends[i].active.Add(-1)
			}
		})
	})
	b.Run("new", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			i := h.sticky.home(newSession, v)
			if i < 0 {
				var tried triedSet
				i = h.lease.pick(v, &tried)
			}
			v.backends[i].active.Add(-1)
		}
	})
}

func BenchmarkPickSticky3(b *testing.B)   { benchmarkPickSticky(b, 3) }
func BenchmarkPickSticky256(b *testing.B) { benchmarkPickSticky(b, 256) }

// FuzzStickyCookie feeds Cookie headers to the sticky cookie parser: it
// never panics, only finds values the table holds, finds a valid cookie
// net/http finds, and finds one appended after any header.
func FuzzStickyCookie(f *testing.F) {
	h := newStickyTestHandler(f, 3, "k")
	v := h.lease.view.Load()
	for _, seed := range []string{
		"", "lb=", "lb", ";;;", "lb=\"\"", "a=1; b=2",
		cookieFor(h, 0), "x=y; " + cookieFor(h, 1) + "; z", "lb=\"" + v.sticky.values[2] + "\"",
		"lb=" + strings.Repeat("A", stickyValueLen), "lb=" + v.sticky.values[1][:20] + "====",
	} {
		f.Add(seed, uint8(0))
	}
	f.Fuzz(func(t *testing.T, header string, k uint8) {
		i := v.sticky.find([]string{header}, "lb")
		if i < -1 || i >= len(v.backends) {
			t.Fatalf("find returned %d over %d backends", i, len(v.backends))
		}
		if i >= 0 && !strings.Contains(header, v.sticky.values[i]) {
			t.Fatalf("found backend %d in %q, which does not hold its value", i, header)
		}
		r := &http.Request{Header: http.Header{"Cookie": {header}}}
		if c, err := r.Cookie("lb"); err == nil && v.sticky.lookup(c.Value) >= 0 && i < 0 {
			t.Fatalf("net/http finds the valid cookie %q in %q, find does not", c.Value, header)
		}
		want := int(k) % len(v.backends)
		appended := header + "; " + cookieFor(h, want)
		got := v.sticky.find([]string{appended}, "lb")
		if got < 0 || (i < 0 && got != want) {
			t.Fatalf("after appending backend %d's cookie to %q, find returns %d", want, header, got)
		}
	})
}
