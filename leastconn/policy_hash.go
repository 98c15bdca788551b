package leastconn

import (
	"errors"
	"math"
	"net/http"
	"net/textproto"
	"strings"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
)

// The hashing policies (hash, ip_hash, client_ip_hash, uri_hash, query,
// header) give each key its own order over the pool's backends and send a
// request to the first usable backend in its key's order, passing over a
// backend while it holds more than its share of the pool's requests.
//
// The order is weighted rendezvous hashing (highest random weight): each
// backend scores a key as
//
//	score = weight / -ln(u),   u = hash(key, backend) in (0, 1)
//
// and the key's order is by score, highest first. Removing a backend moves
// only the keys it was first for (to their second choice); adding one moves
// to it only the keys it now scores highest for, about weight/total of
// them; a backend's share of first choices is its weight's share. There is
// no table to rebuild when members change (discovered members join the key
// space as they come), and a pick hashes the key once and the key with each
// backend's id once per round. With equal weights, scores compare as u
// does, so the pick takes no logarithm.
//
// The bound (hash_balance_factor f, as "consistent hashing with bounded
// loads"): a backend is passed over for the key while
//
//	active + 1 > ceil(f × (pool active + 1) × weight / total weight)
//
// where pool active counts the requests in flight to the backends of the
// priority group and total weight is the group's usable backends'
// (effective weights: slow start scales them). The request goes to the
// next backend in the key's order that is at most at its fair share
// ((pool active + 1) × weight / total weight, rounded up), or when none is,
// the first under its bound: the room between share and bound is kept for
// the keys whose first choice the backend is. So a hot key spills over to
// a few backends in a stable order, and neither it nor a cold key moves
// the cold keys off their backends. The slot is taken
// with a compare-and-swap below the bound, so concurrent picks do not
// overshoot it. When every usable backend is at its bound (only possible
// when max_conns, tries or a change of members shrink the room), the first
// usable backend in the key's order takes the request.

// keyKind is where a hashing policy's key comes from.
type keyKind uint8

const (
	keyTemplate   keyKind = iota // any text with placeholders (hash)
	keyRemoteHost                // the connection's remote IP (ip_hash)
	keyClientIP                  // the client IP, trusted proxies applied (client_ip_hash)
	keyURI                       // the request URI (uri_hash)
	keyPath                      // the URI's path
	keyQuery                     // a query parameter's values (query)
	keyHeader                    // a header field's value (header)
	keyCookie                    // a cookie's value
)

// keySource reads a request's key. A key that is one placeholder of a
// kind below is read straight from the request without building a string;
// anything else goes through the request's replacer.
type keySource struct {
	kind    keyKind
	name    string // the header field (canonical), query parameter or cookie
	tmpl    string // keyTemplate: the key as written
	literal string // keyTemplate: tmpl with its placeholders removed: an empty key
}

// singlePlaceholders are the placeholders read without the replacer.
var singlePlaceholders = []struct {
	prefix string
	kind   keyKind
	named  bool // the name follows the prefix
}{
	{"http.request.header.", keyHeader, true},
	{"http.request.cookie.", keyCookie, true},
	{"http.request.uri.query.", keyQuery, true},
	{"http.request.uri.path", keyPath, false},
	{"http.request.uri", keyURI, false},
	{"http.request.remote.host", keyRemoteHost, false},
	{"http.vars.client_ip", keyClientIP, false},
}

// newKeySource checks a key for a policy of kind k.
func newKeySource(k keyKind, arg string) (keySource, error) {
	switch k {
	case keyHeader:
		if arg == "" || strings.ContainsAny(arg, " \t:{}") {
			return keySource{}, errors.New("want a header field name")
		}
		return keySource{kind: keyHeader, name: textproto.CanonicalMIMEHeaderKey(arg)}, nil
	case keyQuery:
		if arg == "" {
			return keySource{}, errors.New("want a query parameter's name")
		}
		return keySource{kind: keyQuery, name: arg}, nil
	case keyTemplate:
	default:
		return keySource{kind: k}, nil
	}
	if strings.TrimSpace(arg) == "" {
		return keySource{}, errors.New("want a key: text with placeholders such as {http.request.header.X-User-ID}")
	}
	if strings.Count(arg, "{") != strings.Count(arg, "}") {
		return keySource{}, errors.New("the key's braces do not match")
	}
	if inner, ok := strings.CutPrefix(arg, "{"); ok && strings.Count(arg, "{") == 1 && strings.HasSuffix(inner, "}") {
		inner = strings.TrimSuffix(inner, "}")
		for _, sp := range singlePlaceholders {
			if sp.named {
				if name, ok := strings.CutPrefix(inner, sp.prefix); ok && name != "" {
					src, _ := newKeySource(sp.kind, name)
					if sp.kind == keyCookie {
						src = keySource{kind: keyCookie, name: name}
					}
					return src, nil
				}
			} else if inner == sp.prefix {
				return keySource{kind: sp.kind}, nil
			}
		}
	}
	return keySource{kind: keyTemplate, tmpl: arg, literal: stripPlaceholders(arg)}, nil
}

// stripPlaceholders removes {...} from s.
func stripPlaceholders(s string) string {
	var b strings.Builder
	depth := 0
	for i := 0; i < len(s); i++ {
		switch c := s[i]; {
		case c == '{':
			depth++
		case c == '}' && depth > 0:
			depth--
		case depth == 0:
			b.WriteByte(c)
		}
	}
	return b.String()
}

// FNV-1a, 64 bits, fed a piece at a time so a key made of several values
// needs no string of its own.
const (
	fnvOffset = 14695981039346656037
	fnvPrime  = 1099511628211
)

func fnvAdd(h uint64, s string) uint64 {
	for i := 0; i < len(s); i++ {
		h ^= uint64(s[i])
		h *= fnvPrime
	}
	return h
}

// mix64 is a strong 64-bit finaliser (SplitMix64's): every bit of the key
// and of the backend's id reaches every bit of the score.
func mix64(x uint64) uint64 {
	x ^= x >> 30
	x *= 0xbf58476d1ce4e5b9
	x ^= x >> 27
	x *= 0x94d049bb133111eb
	x ^= x >> 31
	return x
}

// backendHashID is a backend's id in the key space: a hash of its identity
// (scheme://host:port), so it is the same on every instance and reload.
func backendHashID(key string) uint64 { return mix64(fnvAdd(fnvOffset, key)) }

// keyHash hashes r's key; ok is false for an empty key (the fallback
// policy picks then).
func (k *keySource) keyHash(r *http.Request) (uint64, bool) {
	h := uint64(fnvOffset)
	var s string
	switch k.kind {
	case keyHeader:
		if k.name == "Host" {
			s = r.Host
		} else if vv := r.Header[k.name]; len(vv) > 0 {
			s = vv[0]
		}
	case keyURI:
		s = r.RequestURI
		if s == "" && r.URL != nil {
			s = r.URL.RequestURI() // only for requests made in-process
		}
	case keyPath:
		s = r.URL.Path
	case keyRemoteHost:
		s = remoteHost(r.RemoteAddr)
	case keyClientIP:
		if ip, ok := caddyhttp.GetVar(r.Context(), caddyhttp.ClientIPVarKey).(string); ok && ip != "" {
			s = ip
		} else {
			s = remoteHost(r.RemoteAddr)
		}
	case keyCookie:
		s = cookieValue(r.Header, k.name)
	case keyQuery:
		return queryHash(r.URL.RawQuery, k.name)
	case keyTemplate:
		repl, _ := r.Context().Value(caddy.ReplacerCtxKey).(*caddy.Replacer)
		if repl == nil {
			return 0, false
		}
		s = repl.ReplaceAll(k.tmpl, "")
		if s == k.literal {
			return 0, false // every placeholder was empty
		}
	}
	if s == "" {
		return 0, false
	}
	return mix64(fnvAdd(h, s)), true
}

// remoteHost is the host part of host:port (no allocation).
func remoteHost(addr string) string {
	if i := strings.LastIndexByte(addr, ':'); i >= 0 && !strings.HasSuffix(addr, "]") {
		addr = addr[:i]
	}
	return strings.TrimSuffix(strings.TrimPrefix(addr, "["), "]")
}

// queryHash hashes the values of the parameter name in a raw query, joined
// by commas as reverse_proxy's query policy joins them; ok is false when
// the parameter is absent or empty.
func queryHash(raw, name string) (uint64, bool) {
	h, found := uint64(fnvOffset), false
	for raw != "" {
		var pair string
		pair, raw, _ = strings.Cut(raw, "&")
		k, v, _ := strings.Cut(pair, "=")
		if k != name || v == "" {
			continue
		}
		if found {
			h = fnvAdd(h, ",")
		}
		h, found = fnvAdd(h, v), true
	}
	return mix64(h), found
}

// cookieValue finds cookie name in the Cookie header lines without parsing
// them all into a list.
func cookieValue(hdr http.Header, name string) string {
	for _, line := range hdr["Cookie"] {
		for line != "" {
			var part string
			part, line, _ = strings.Cut(line, ";")
			k, v, ok := strings.Cut(strings.TrimSpace(part), "=")
			if ok && k == name {
				return strings.Trim(v, `"`)
			}
		}
	}
	return ""
}

// hrwU maps a score hash to (0, 1).
func hrwU(x uint64) float64 { return (float64(x>>11) + 0.5) / (1 << 53) }

// hrwCost is backend b's place in the order of key: the lower, the
// earlier. It is -ln(u)/weight (the inverse of the score); with equal
// weights the order is the hash's, so it takes no logarithm.
func hrwCost(key uint64, b *Backend, uniform bool) float64 {
	x := mix64(key ^ b.hashID)
	if uniform {
		return -float64(x)
	}
	return -math.Log(hrwU(x)) / float64(max(b.weight.Load(), 1))
}

// pickHash is the hashing policies' pick over the backends bs[lo:hi] of one
// priority group, for the key hash key: the first backend in the key's
// order that is usable and below its bound, or when none is, the first
// usable one. spilled reports that the backend is not the key's first
// choice. It returns -1 when no backend of the group is usable.
func (l *lease) pickHash(bs []*Backend, lo, hi int, tried *triedSet, key uint64) (chosen int, spilled bool) {
	// the bound's inputs: the group's requests in flight and usable weight
	var active, total, now int64
	uniform, w0 := true, bs[lo].weight.Load()
	for j := lo; j < hi; j++ {
		b := bs[j]
		active += b.active.Load()
		f := b.flags.Load()
		w := b.weight.Load()
		uniform = uniform && w == w0
		if f&flagsUnavailable != 0 {
			continue
		}
		w = b.scaled.Load()
		if f&flagRamp != 0 {
			w = b.rampedWeight(w, &now)
		}
		total += w
	}
	if total == 0 {
		return -1, false
	}
	// walk the key's order: each round finds the backend that comes next
	// after the previous round's (by cost, then index)
	prev, prevJ := math.Inf(-1), -1
	overflow := -1                    // the first usable backend over its bound
	roomy, roomyBound := -1, int64(0) // the first spill target over its share, under its bound
	for round := 0; round < hi-lo; round++ {
		best, bestJ := math.Inf(1), -1
		for j := lo; j < hi; j++ {
			c := hrwCost(key, bs[j], uniform)
			if (c > prev || c == prev && j > prevJ) && (c < best || c == best && j < bestJ) {
				best, bestJ = c, j
			}
		}
		if bestJ < 0 {
			break
		}
		prev, prevJ = best, bestJ
		b := bs[bestJ]
		f := b.flags.Load()
		if f&flagsUnavailable != 0 || tried.has(bestJ) || f&flagCapped != 0 && b.full() {
			continue
		}
		if l.factor == 0 {
			if b.take() {
				return bestJ, round > 0
			}
			continue
		}
		w := b.effectiveWeight(&now)
		share := float64(active+1) * float64(w) / float64(total)
		bound := int64(math.Ceil(l.factor * share))
		if round == 0 {
			if b.takeBelow(bound) {
				return bestJ, false
			}
		} else if b.takeBelow(int64(math.Ceil(share))) {
			return bestJ, true
		} else if roomy < 0 && b.active.Load() < bound {
			roomy, roomyBound = bestJ, bound
		}
		if overflow < 0 {
			overflow = bestJ
		}
	}
	if roomy >= 0 && bs[roomy].takeBelow(roomyBound) {
		return roomy, true
	}
	if overflow >= 0 && bs[overflow].take() {
		return overflow, true
	}
	return -1, false
}

// takeBelow raises b's active count while it stays at most bound (and
// below max_conns when capped).
func (b *Backend) takeBelow(bound int64) bool {
	if b.flags.Load()&flagCapped != 0 {
		bound = min(bound, b.maxConns.Load())
	}
	for {
		n := b.active.Load()
		if n+1 > bound {
			return false
		}
		if b.active.CompareAndSwap(n, n+1) {
			return true
		}
	}
}
