package leastconn

import (
	"fmt"
	"math"
	"net/http/httptest"
	"testing"
	"time"
)

// newHashTestHandler is a hash-policy handler over backends with the given
// weights, named b0, b1, ... (their ids in the key space), with the bound f.
func newHashTestHandler(f float64, weights ...int) *Handler {
	h := newTestHandler(weights...)
	for i, b := range h.viewed() {
		b.storeWeight(int64(max(weights[i], 1)))
	}
	h.lease.kind, h.lease.fallback, h.lease.factor = kindHash, kindLeastConn, f
	return h
}

// renamed gives the test handler's backends the ids of the given names, as
// if they had those addresses.
func renamed(h *Handler, names ...string) *Handler {
	for i, b := range h.viewed() {
		b.hashID = backendHashID(names[i])
	}
	return h
}

func keyOf(i int) uint64 { return mix64(fnvAdd(fnvOffset, fmt.Sprint("key-", i))) }

// hundredKeys are the hashes of keys 0-99, made before a measured loop.
func hundredKeys() (keys [100]uint64) {
	for i := range keys {
		keys[i] = keyOf(i)
	}
	return keys
}

// firstChoices picks each of n keys in an idle pool and returns the name of
// the backend each went to.
func firstChoices(h *Handler, names []string, n int) []string {
	out := make([]string, n)
	for k := range n {
		tried := triedSet{key: keyOf(k), keyed: true}
		i := h.pickNow(&tried)
		h.viewed()[i].active.Add(-1)
		out[k] = names[i]
	}
	return out
}

func backendNames(n int) []string {
	names := make([]string, n)
	for i := range names {
		names[i] = fmt.Sprintf("http://10.0.0.%d:80", i+1)
	}
	return names
}

const propertyKeys = 10000

func TestHashSharesOfEqualBackends(t *testing.T) {
	names := backendNames(8)
	h := renamed(newHashTestHandler(0, 1, 1, 1, 1, 1, 1, 1, 1), names...)
	count := map[string]int{}
	for _, n := range firstChoices(h, names, propertyKeys) {
		count[n]++
	}
	for _, n := range names {
		share := 100 * float64(count[n]) / propertyKeys
		t.Logf("%s: %.2f%% of first choices", n, share)
		if math.Abs(share-12.5) > 1.5 {
			t.Errorf("%s has %.2f%% of the keys, want 12.5 ± 1.5", n, share)
		}
	}
}

func TestHashSharesFollowWeights(t *testing.T) {
	names := backendNames(3)
	h := renamed(newHashTestHandler(0, 2, 1, 1), names...)
	count := map[string]int{}
	for _, n := range firstChoices(h, names, propertyKeys) {
		count[n]++
	}
	for i, want := range []float64{50, 25, 25} {
		share := 100 * float64(count[names[i]]) / propertyKeys
		t.Logf("weight %d: %.2f%% of first choices", []int{2, 1, 1}[i], share)
		if math.Abs(share-want) > 2 {
			t.Errorf("backend %d has %.2f%% of the keys, want %.0f ± 2", i, share, want)
		}
	}
}

func TestHashRemovingABackendMovesOnlyItsKeys(t *testing.T) {
	names := backendNames(8)
	before := firstChoices(renamed(newHashTestHandler(0, 1, 1, 1, 1, 1, 1, 1, 1), names...), names, propertyKeys)
	gone := names[3]
	rest := append(append([]string{}, names[:3]...), names[4:]...)
	after := firstChoices(renamed(newHashTestHandler(0, 1, 1, 1, 1, 1, 1, 1), rest...), rest, propertyKeys)
	moved, itsKeys := 0, 0
	for k := range before {
		if before[k] == gone {
			itsKeys++
			continue
		}
		if after[k] != before[k] {
			moved++
		}
	}
	t.Logf("removing 1 of 8: its %d keys moved, %d others moved", itsKeys, moved)
	if moved != 0 {
		t.Fatalf("%d keys of the other backends moved", moved)
	}
}

func TestHashAddingABackendMovesAFewKeysToIt(t *testing.T) {
	names := backendNames(9)
	before := firstChoices(renamed(newHashTestHandler(0, 1, 1, 1, 1, 1, 1, 1, 1), names[:8]...), names[:8], propertyKeys)
	after := firstChoices(renamed(newHashTestHandler(0, 1, 1, 1, 1, 1, 1, 1, 1, 1), names...), names, propertyKeys)
	moved := 0
	for k := range before {
		if after[k] == before[k] {
			continue
		}
		moved++
		if after[k] != names[8] {
			t.Fatalf("key %d moved from %s to %s, not to the new backend", k, before[k], after[k])
		}
	}
	share := float64(moved) / propertyKeys
	t.Logf("adding a 9th: %.2f%% of keys moved (1/9 = 11.11%%)", 100*share)
	if share > 1.0/9+0.01 {
		t.Fatalf("%.2f%% of keys moved, want at most 1/9 + 1%%", 100*share)
	}
}

func TestHashSpillsInTheKeysOrderAndBackWhenLoadFalls(t *testing.T) {
	h := newHashTestHandler(1.25, 1, 1, 1, 1)
	key := keyOf(7)
	pick := func() (int, bool) {
		tried := triedSet{key: key, keyed: true}
		i := h.pickNow(&tried)
		return i, tried.spilled
	}
	home, spilled := pick()
	if spilled {
		t.Fatal("the first pick of an idle pool spilled")
	}
	// 1 in flight: bound ceil(1.25 × 2 / 4) = 1, so the next spills
	second, spilled := pick()
	if !spilled || second == home {
		t.Fatalf("with its first choice at the bound the key stayed (%d, spilled %v)", second, spilled)
	}
	bs := h.viewed()
	bs[home].active.Add(-1)
	bs[second].active.Add(-1)
	for range 3 {
		again, spilled := pick()
		if again != home || spilled {
			t.Fatalf("an idle pool sent the key to %d, not back to %d", again, home)
		}
		bs[again].active.Add(-1)
	}
	// the spill order is the same every time
	bs[home].active.Store(100)
	a, _ := pick()
	bs[a].active.Add(-1)
	b, _ := pick()
	bs[b].active.Add(-1)
	if a != b || a != second {
		t.Fatalf("spills went to %d then %d, want %d both times", a, b, second)
	}
}

// A spill goes to the next backend in the key's order that is at most at
// its fair share, leaving the room between share and bound to the keys
// whose first choice it is; one over its share but under its bound takes
// the spill only when none is under.
func TestHashSpillsPreferABackendUnderItsShare(t *testing.T) {
	h := newHashTestHandler(1.25, 1, 1, 1, 1, 1, 1, 1, 1)
	bs := h.viewed()
	key := keyOf(3)
	pick := func() int {
		tried := triedSet{key: key, keyed: true}
		return h.pickNow(&tried)
	}
	// the key's first three choices: each taken out in turn
	var order [3]int
	for i := range order {
		order[i] = pick()
		bs[order[i]].active.Store(1000)
	}
	for _, b := range bs {
		b.active.Store(0)
	}
	// 14 in flight: share 15/8 (2 rounded up), bound ceil(1.25 × 15/8) = 3
	bs[order[0]].active.Store(12)
	bs[order[1]].active.Store(2)
	if got := pick(); got != order[2] {
		t.Fatalf("the spill went to %d, want %d (the next under its share; %d is over it)", got, order[2], order[1])
	}
	bs[order[2]].active.Store(0)
	// the only others under their share are tried: the spill takes the
	// room under the bound
	tried := triedSet{key: key, keyed: true}
	for j := range bs {
		if j != order[0] && j != order[1] {
			tried.add(j)
		}
	}
	if got := h.pickNow(&tried); got != order[1] {
		t.Fatalf("with the rest tried the spill went to %d, want %d", got, order[1])
	}
}

func TestHashBoundHoldsUnderOneHotKey(t *testing.T) {
	h := newHashTestHandler(1.25, 1, 1, 1, 1, 1, 1, 1, 1)
	key := keyOf(1)
	for range 32 {
		tried := triedSet{key: key, keyed: true}
		if h.pickNow(&tried) < 0 {
			t.Fatal("no pick")
		}
	}
	bound := int64(math.Ceil(1.25 * 33 / 8))
	for i, b := range h.viewed() {
		if n := b.active.Load(); n > bound {
			t.Fatalf("backend %d holds %d of one key's 32 requests, bound %d", i, n, bound)
		}
	}
	off := newHashTestHandler(0, 1, 1, 1, 1, 1, 1, 1, 1)
	for range 32 {
		tried := triedSet{key: key, keyed: true}
		off.pickNow(&tried)
	}
	top := int64(0)
	for _, b := range off.viewed() {
		top = max(top, b.active.Load())
	}
	if top != 32 {
		t.Fatalf("without a bound the key's backend holds %d of 32", top)
	}
}

func TestHashSkipsUnavailableTriedAndFull(t *testing.T) {
	h := newHashTestHandler(1.25, 1, 1, 1)
	key := keyOf(3)
	tried := triedSet{key: key, keyed: true}
	home := h.pickNow(&tried)
	h.viewed()[home].active.Add(-1)
	h.viewed()[home].setFlag(flagDrain)
	tried = triedSet{key: key, keyed: true}
	next := h.pickNow(&tried)
	if next == home || next < 0 {
		t.Fatalf("a drained backend took the key (%d)", next)
	}
	h.viewed()[next].active.Add(-1)
	tried.add(next)
	third := h.pickNow(&tried)
	if third == home || third == next || third < 0 {
		t.Fatalf("the retry went to %d (home %d, tried %d)", third, home, next)
	}
}

func TestHashWithoutAKeyFallsBack(t *testing.T) {
	h := newHashTestHandler(1.25, 1, 1, 1)
	h.lease.fallback = kindRoundRobin
	seen := map[int]bool{}
	for range 3 {
		var tried triedSet
		i := h.pickNow(&tried)
		seen[i] = true
		h.viewed()[i].active.Add(-1)
	}
	if len(seen) != 3 {
		t.Fatalf("keyless requests fell back to %v, want a rotation over 3", seen)
	}
}

func TestKeySources(t *testing.T) {
	r := httptest.NewRequest("GET", "/a/b?tenant=t1&x=2&tenant=t2", nil)
	r.Header.Set("X-User-ID", "u1")
	r.Header.Set("Cookie", "a=1; session=abc; z=9")
	r.RemoteAddr = "192.0.2.7:5555"
	cases := []struct {
		kind keyKind
		arg  string
		want string // the hashed text; "" for no key
	}{
		{keyHeader, "x-user-id", "u1"},
		{keyHeader, "X-Missing", ""},
		{keyQuery, "tenant", "t1,t2"},
		{keyQuery, "nope", ""},
		{keyTemplate, "{http.request.cookie.session}", "abc"},
		{keyTemplate, "{http.request.uri.path}", "/a/b"},
		{keyTemplate, "{http.request.remote.host}", "192.0.2.7"},
		{keyRemoteHost, "", "192.0.2.7"},
		{keyURI, "", "/a/b?tenant=t1&x=2&tenant=t2"},
	}
	for _, c := range cases {
		src, err := newKeySource(c.kind, c.arg)
		if err != nil {
			t.Fatalf("%v %q: %v", c.kind, c.arg, err)
		}
		if src.kind == keyTemplate {
			t.Fatalf("%q went through the replacer, not read directly", c.arg)
		}
		got, ok := src.keyHash(r)
		want := mix64(fnvAdd(fnvOffset, c.want))
		if ok != (c.want != "") || ok && got != want {
			t.Errorf("%v %q: hash %x ok %v, want the hash of %q", c.kind, c.arg, got, ok, c.want)
		}
	}
	if got := remoteHost("[2001:db8::1]:443"); got != "2001:db8::1" {
		t.Errorf("remoteHost of an IPv6 address: %q", got)
	}
	if src, _ := newKeySource(keyTemplate, "{http.request.header.A}-{http.request.header.B}"); src.kind != keyTemplate || src.literal != "-" {
		t.Errorf("a key of two placeholders: %+v", src)
	}
}

func TestHashPickAllocatesNothing(t *testing.T) {
	for _, n := range []int{8, 64} {
		for _, weighted := range []bool{false, true} {
			h := newHashTestHandler(1.25, make([]int, n)...)
			if weighted {
				for i, b := range h.viewed() {
					b.storeWeight(int64(1 + i%3))
				}
			}
			keys := hundredKeys()
			k := 0
			allocs := testing.AllocsPerRun(1000, func() {
				k++
				tried := triedSet{key: keys[k%len(keys)], keyed: true}
				i := h.pickNow(&tried)
				h.viewed()[i].active.Add(-1)
			})
			if allocs != 0 {
				t.Fatalf("hash pick over %d backends allocates %.1f times", n, allocs)
			}
		}
	}
	for _, kind := range []policyKind{kindRoundRobin, kindWeightedRoundRobin, kindRandom, kindRandomChoose, kindFirst} {
		h := newTestHandler(make([]int, 8)...)
		h.lease.kind, h.lease.choose = kind, 2
		testPickAllocatesNothing(t, 8, h)
	}
}

// benchmarkPickHash: the hash pick in an idle pool (each request done
// before the next) over 100 keys, with equal weights or weights 1, 2, 3.
func benchmarkPickHash(b *testing.B, n int, weighted bool) {
	h := newHashTestHandler(1.25, make([]int, n)...)
	if weighted {
		for i, be := range h.viewed() {
			be.storeWeight(int64(1 + i%3))
		}
	}
	keys := hundredKeys()
	b.ReportAllocs()
	k := 0
	for b.Loop() {
		k++
		tried := triedSet{key: keys[k%len(keys)], keyed: true}
		i := h.pickNow(&tried)
		h.viewed()[i].active.Add(-1)
	}
}

func BenchmarkPickHash8(b *testing.B)          { benchmarkPickHash(b, 8, false) }
func BenchmarkPickHash64(b *testing.B)         { benchmarkPickHash(b, 64, false) }
func BenchmarkPickHashWeighted8(b *testing.B)  { benchmarkPickHash(b, 8, true) }
func BenchmarkPickHashWeighted64(b *testing.B) { benchmarkPickHash(b, 64, true) }

// least_conn over the same pools, idle, for comparison.
func benchmarkPickLeastConnIdle(b *testing.B, n int) {
	h := newTestHandler(make([]int, n)...)
	for _, be := range h.viewed() {
		be.storeWeight(1)
	}
	b.ReportAllocs()
	for b.Loop() {
		var tried triedSet
		i := h.pickNow(&tried)
		h.viewed()[i].active.Add(-1)
	}
}

func BenchmarkPickLeastConnIdle8(b *testing.B)  { benchmarkPickLeastConnIdle(b, 8) }
func BenchmarkPickLeastConnIdle64(b *testing.B) { benchmarkPickLeastConnIdle(b, 64) }

func TestPickReasons(t *testing.T) {
	h := newHashTestHandler(1.25, 1, 1)
	h.lease.fallback = kindRandom
	primary, backup := h.viewed()[0], h.viewed()[1]
	backup.backup.Store(true)
	for _, c := range []struct {
		b     *Backend
		try   int
		home  bool
		tried triedSet
		want  string
	}{
		{primary, 0, true, triedSet{keyed: true}, "sticky"},
		{primary, 1, false, triedSet{keyed: true}, "retry"},
		{primary, 0, false, triedSet{keyed: true}, "hash"},
		{primary, 0, false, triedSet{keyed: true, spilled: true}, "hash_spill"},
		{primary, 0, false, triedSet{}, "random"},
		{backup, 0, false, triedSet{keyed: true}, "backup"},
		{backup, 1, false, triedSet{}, "backup"},
		{backup, 0, true, triedSet{}, "sticky"},
	} {
		if got := h.lease.pickReason(c.b, c.try, c.home, &c.tried); got != c.want {
			t.Errorf("backup %v try %d home %v %+v: %q, want %q", c.b.backup.Load(), c.try, c.home, c.tried, got, c.want)
		}
	}
	h.lease.kind = kindWeightedRoundRobin
	if got := h.lease.pickReason(primary, 0, false, &triedSet{}); got != "weighted_round_robin" {
		t.Errorf("weighted_round_robin's pick: %q", got)
	}
}

func TestPoliciesPickNothingFromAnEmptyPool(t *testing.T) {
	for kind := kindRoundRobin; kind <= kindHash; kind++ {
		h := newDiscoveredTestHandler(0)
		h.lease.kind, h.lease.fallback, h.lease.choose, h.lease.factor = kind, kindLeastConn, 2, 1.25
		tried := triedSet{key: 1, keyed: true}
		if i := h.pickNow(&tried); i != -1 {
			t.Fatalf("policy %d picked %d from an empty pool", kind, i)
		}
	}
}

func TestHashBoundScalesWithSlowStart(t *testing.T) {
	h := newHashTestHandler(1.25, 1, 1, 1, 1)
	key := keyOf(5)
	tried := triedSet{key: key, keyed: true}
	home := h.pickNow(&tried)
	h.viewed()[home].active.Add(-1)
	// the key's backend just came back: 10% of its weight, so with 7 in
	// flight in the pool its bound is ceil(1.25 × 8 × 0.1 / 3.1) = 1 (at full
	// weight it would be ceil(1.25 × 8 / 4) = 3)
	b := h.viewed()[home]
	b.rampLen.Store(int64(time.Hour))
	b.rampFrom.Store(time.Now().UnixNano())
	b.setFlag(flagRamp)
	for j, o := range h.viewed() {
		if j != home {
			o.active.Store(2)
		}
	}
	b.active.Store(1)
	tried = triedSet{key: key, keyed: true}
	if i := h.pickNow(&tried); i == home || !tried.spilled {
		t.Fatalf("a ramping backend at 1 in flight took its key again (%d, spilled %v)", i, tried.spilled)
	}
}
