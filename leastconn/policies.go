package leastconn

import (
	"fmt"
	"math"
	"strconv"

	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
)

// Selection policies: lbpool's own (least_conn, least_time), every one of
// reverse_proxy's under the same name and meaning, and hash, a consistent
// hash of any key bounded by load (policy_hash.go). The policy is chosen
// once, at provision; the pick is one switch on it (select.go), and each
// policy is a scan of the view as least_conn's is: it skips backends that
// are down, drained, in maintenance, ejected, leaving, tried or full, takes
// the first priority group that has a usable backend, and allocates
// nothing.

// Selection policies (the lb_policy option), beside PolicyLeastConn and
// PolicyLeastTime.
const (
	PolicyRoundRobin         = "round_robin"
	PolicyWeightedRoundRobin = "weighted_round_robin"
	PolicyRandom             = "random"
	PolicyRandomChoose       = "random_choose"
	PolicyFirst              = "first"
	PolicyIPHash             = "ip_hash"
	PolicyClientIPHash       = "client_ip_hash"
	PolicyURIHash            = "uri_hash"
	PolicyQuery              = "query"
	PolicyHeader             = "header"
	PolicyHash               = "hash"
	// PolicyCookie exists in the Caddyfile only: it writes the sticky
	// option (sticky.go), with reverse_proxy's argument order.
	PolicyCookie = "cookie"
)

// DefaultHashBalanceFactor bounds a hashing policy's backend to 1.25 times
// its fair share of the pool's active requests.
const DefaultHashBalanceFactor = 1.25

// maxHashBalanceFactor: a larger factor is no bound at all in practice.
const maxHashBalanceFactor = 100

// DefaultRandomChoose is random_choose's n when it is not given.
const DefaultRandomChoose = 2

// policyKind is the pick a handler makes, chosen at provision.
type policyKind uint8

const (
	kindLeastConn policyKind = iota
	kindLeastTime
	kindRoundRobin
	kindWeightedRoundRobin
	kindRandom
	kindRandomChoose
	kindFirst
	kindHash // every hashing policy: the key's source differs
)

// policyKinds maps lb_policy names to picks; hashed marks the policies that
// need a key, fallback the ones a hashing policy may fall back to.
var policyKinds = map[string]struct {
	kind     policyKind
	key      keyKind // hashing policies: where the key comes from
	fallback bool    // may be a hashing policy's fallback
	arg      string  // the argument it takes, for messages; "" for none
}{
	PolicyLeastConn:          {kind: kindLeastConn, fallback: true},
	PolicyLeastTime:          {kind: kindLeastTime, fallback: true},
	PolicyRoundRobin:         {kind: kindRoundRobin, fallback: true},
	PolicyWeightedRoundRobin: {kind: kindWeightedRoundRobin, arg: "<weight>..."},
	PolicyRandom:             {kind: kindRandom, fallback: true},
	PolicyRandomChoose:       {kind: kindRandomChoose, fallback: true, arg: "[<n>]"},
	PolicyFirst:              {kind: kindFirst, fallback: true},
	PolicyIPHash:             {kind: kindHash, key: keyRemoteHost},
	PolicyClientIPHash:       {kind: kindHash, key: keyClientIP},
	PolicyURIHash:            {kind: kindHash, key: keyURI},
	PolicyQuery:              {kind: kindHash, key: keyQuery, arg: "<key>"},
	PolicyHeader:             {kind: kindHash, key: keyHeader, arg: "<field>"},
	PolicyHash:               {kind: kindHash, key: keyTemplate, arg: "<key>"},
}

// policyNames lists the lb_policy names for messages.
func policyNames() string {
	return "least_conn, least_time, round_robin, weighted_round_robin, random, random_choose, first, " +
		"ip_hash, client_ip_hash, uri_hash, query, header, cookie or hash"
}

// policySpec is the pick a lease makes, resolved from the selection
// options at provision.
type policySpec struct {
	kind     policyKind
	fallback policyKind // a hashing policy's pick for requests without a key
	key      keySource  // a hashing policy's key
	factor   float64    // hash_balance_factor; 0: no bound
	choose   int        // random_choose's n
}

// provisionPolicy checks the selection options and chooses the pick of
// spec's leases.
func (h *Handler) provisionPolicy(spec *poolSpec) error {
	p := &spec.policy
	name := h.LBPolicy
	if name == "" {
		name = PolicyLeastConn
	}
	pk, ok := policyKinds[name]
	if name == PolicyCookie {
		return fmt.Errorf("lbpool: lb_policy cookie is the Caddyfile's way to write sticky: in JSON, set sticky (name, secret)")
	}
	if !ok {
		return fmt.Errorf("lbpool: lb_policy %q unknown (use %s)", h.LBPolicy, policyNames())
	}
	p.kind, spec.leastTime = pk.kind, pk.kind == kindLeastTime
	if pk.kind != kindHash && h.LBPolicyKey != "" {
		return fmt.Errorf("lbpool: lb_policy_key is for ip_hash, client_ip_hash, uri_hash, query, header and hash, not %s", name)
	}
	if h.LBFallback != "" && pk.kind != kindHash {
		return fmt.Errorf("lbpool: lb_fallback is for the hashing policies, not %s", name)
	}
	if h.HashBalanceFactor != nil && pk.kind != kindHash {
		return fmt.Errorf("lbpool: hash_balance_factor is for the hashing policies, not %s", name)
	}
	p.choose = DefaultRandomChoose
	if h.LBChoose != 0 {
		if h.LBChoose < 1 || h.LBChoose > exactScanMax {
			return fmt.Errorf("lbpool: lb_choose %d: want 1 to %d", h.LBChoose, exactScanMax)
		}
		p.choose = h.LBChoose
	}
	if pk.kind != kindHash {
		return nil
	}
	src, err := newKeySource(pk.key, h.LBPolicyKey)
	if err != nil {
		return fmt.Errorf("lbpool: lb_policy %s: %w", name, err)
	}
	p.key = src
	p.fallback = kindLeastConn
	if h.LBFallback != "" {
		fk, ok := policyKinds[h.LBFallback]
		if !ok || !fk.fallback {
			return fmt.Errorf("lbpool: lb_fallback %q: want least_conn, least_time, round_robin, random, random_choose or first", h.LBFallback)
		}
		p.fallback = fk.kind
		spec.leastTime = spec.leastTime || fk.kind == kindLeastTime
	}
	p.factor = DefaultHashBalanceFactor
	if f := h.HashBalanceFactor; f != nil {
		if *f != 0 && (*f < 1 || *f > maxHashBalanceFactor || math.IsNaN(*f)) {
			return fmt.Errorf("lbpool: hash_balance_factor %v: want 1 to %d, or 0 for no bound", *f, maxHashBalanceFactor)
		}
		p.factor = *f
	}
	return nil
}

// readPolicy reads lb_policy <name> [<args>] [{ fallback <policy> [<n>] }].
func readPolicy(p *parser) error {
	d, h := p.d, p.h
	if !d.NextArg() {
		return d.Errf("lb_policy: missing the policy (%s)", policyNames())
	}
	if h.LBPolicy != "" || h.Sticky != nil && p.cookiePolicy {
		return d.Err("lb_policy is set twice")
	}
	name := d.Val()
	args := d.RemainingArgs()
	if name == PolicyCookie {
		if err := p.readCookiePolicy(args); err != nil {
			return err
		}
	} else if err := p.readPolicyArgs(name, args); err != nil {
		return err
	}
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		if d.Val() != "fallback" {
			return d.Errf("lb_policy: unrecognized option '%s' (lb_policy takes fallback <policy>)", d.Val())
		}
		if err := p.readFallback(name); err != nil {
			return err
		}
	}
	return nil
}

// readPolicyArgs checks a policy's arguments and writes them.
func (p *parser) readPolicyArgs(name string, args []string) error {
	d, h := p.d, p.h
	pk, ok := policyKinds[name]
	if !ok {
		if near := nearestPolicy(name); near != "" {
			return d.Errf("lb_policy: unknown policy %q (did you mean '%s'?)", name, near)
		}
		return d.Errf("lb_policy: unknown policy %q (use %s)", name, policyNames())
	}
	switch name {
	case PolicyWeightedRoundRobin:
		if err := p.readWeights(args); err != nil {
			return err
		}
	case PolicyRandomChoose:
		if len(args) > 1 {
			return d.Errf("lb_policy random_choose: want [<n>], got %d arguments", len(args))
		}
		if len(args) == 1 {
			n, err := atoi(args[0])
			if err != nil || n < 1 || n > exactScanMax {
				return d.Errf("lb_policy random_choose: %q is not a whole number from 1 to %d", args[0], exactScanMax)
			}
			h.LBChoose = n
		}
	default:
		want := 0
		if pk.arg != "" {
			want = 1
		}
		if len(args) != want && want == 0 {
			return d.Errf("lb_policy %s: takes no arguments, got %d", name, len(args))
		}
		if len(args) != want {
			return d.Errf("lb_policy %s: want %s %s, got %d arguments", name, name, pk.arg, len(args))
		}
		if want == 1 {
			if _, err := newKeySource(pk.key, args[0]); err != nil {
				return d.Errf("lb_policy %s: %v", name, err)
			}
			h.LBPolicyKey = args[0]
		}
	}
	h.LBPolicy = name
	return nil
}

// readCookiePolicy maps lb_policy cookie [<name> [<secret>]] onto sticky.
func (p *parser) readCookiePolicy(args []string) error {
	d, h := p.d, p.h
	if len(args) > 2 {
		return d.Errf("lb_policy cookie: want [<name> [<secret>]], got %d arguments", len(args))
	}
	if h.Sticky != nil {
		return d.Err("lb_policy cookie: sticky is set too; keep one of them")
	}
	sc := StickyCookie{}
	if len(args) > 0 {
		sc.Name = args[0]
		if err := checkCookieName(sc.Name); err != nil {
			return d.Errf("lb_policy cookie: %v", err)
		}
	}
	if len(args) > 1 {
		sc.Secret = args[1]
	}
	h.Sticky, p.cookiePolicy = &sc, true
	return nil
}

// readFallback reads `fallback <policy> [<n>]` inside lb_policy's block.
func (p *parser) readFallback(policy string) error {
	d, h := p.d, p.h
	if pk := policyKinds[policy]; pk.kind != kindHash && policy != PolicyCookie {
		return d.Errf("lb_policy %s: takes no fallback (only ip_hash, client_ip_hash, uri_hash, query, header, hash and cookie do)", policy)
	}
	args := d.RemainingArgs()
	if len(args) == 0 {
		return d.Err("fallback: missing the policy")
	}
	if h.LBFallback != "" || p.cookiePolicy && h.LBPolicy != "" {
		return d.Err("fallback is set twice")
	}
	fk, ok := policyKinds[args[0]]
	if !ok || !fk.fallback {
		return d.Errf("fallback %s: want least_conn, least_time, round_robin, random, random_choose [<n>] or first", args[0])
	}
	n := 1
	if args[0] == PolicyRandomChoose {
		n = 2
	}
	if len(args) > n {
		return d.Errf("fallback %s: too many arguments", args[0])
	}
	if len(args) == 2 {
		c, err := atoi(args[1])
		if err != nil || c < 1 || c > exactScanMax {
			return d.Errf("fallback random_choose: %q is not a whole number from 1 to %d", args[1], exactScanMax)
		}
		h.LBChoose = c
	}
	if policy == PolicyCookie {
		// without a cookie, requests are picked by the pool's policy
		h.LBPolicy = args[0]
		return nil
	}
	h.LBFallback = args[0]
	return nil
}

// readWeights reads weighted_round_robin's weights: the weights of the
// backends in the order they are listed, applied when the block ends.
func (p *parser) readWeights(args []string) error {
	d := p.d
	if len(args) == 0 {
		return d.Err("lb_policy weighted_round_robin: missing the weights (one per backend, in order)")
	}
	p.wrrWeights = p.wrrWeights[:0]
	for _, a := range args {
		w, err := atoi(a)
		if err != nil || w < 1 || w > MaxWeight {
			return d.Errf("lb_policy weighted_round_robin: weight %q is not a whole number from 1 to %d (to take a backend out, drain it or leave it out)", a, MaxWeight)
		}
		p.wrrWeights = append(p.wrrWeights, w)
	}
	p.wrrToken = d.Token()
	return nil
}

// applyWeights gives weighted_round_robin's weights to the backends, once
// every `to` has been read.
func (p *parser) applyWeights() error {
	if p.wrrWeights == nil {
		return nil
	}
	errf := func(format string, a ...any) error { return tokenErr(p.wrrToken, format, a...) }
	if len(p.wrrWeights) > len(p.h.Backends) {
		return errf("lb_policy weighted_round_robin: %d weights for %d backends", len(p.wrrWeights), len(p.h.Backends))
	}
	for i, w := range p.wrrWeights {
		b := &p.h.Backends[i]
		if b.Weight != 0 && b.Weight != w {
			return errf("lb_policy weighted_round_robin: backend %s has weight %d and %d; keep one", b.URL, b.Weight, w)
		}
		b.Weight = w
	}
	return nil
}

// nearestPolicy is the policy name closest to a mistyped one.
func nearestPolicy(name string) string {
	best, bestDist := "", 3
	for _, k := range sortedPolicyNames() {
		if dist := editDistance(name, k); dist < bestDist {
			best, bestDist = k, dist
		}
	}
	return best
}

func sortedPolicyNames() []string {
	return []string{
		PolicyClientIPHash, PolicyCookie, PolicyFirst, PolicyHash, PolicyHeader, PolicyIPHash,
		PolicyLeastConn, PolicyLeastTime, PolicyQuery, PolicyRandom, PolicyRandomChoose,
		PolicyRoundRobin, PolicyURIHash, PolicyWeightedRoundRobin,
	}
}

// readHashBalanceFactor reads hash_balance_factor <f>|off.
func readHashBalanceFactor(p *parser) error {
	d := p.d
	var v string
	if !d.AllArgs(&v) {
		return d.ArgErr()
	}
	if p.h.HashBalanceFactor != nil {
		return d.Err("hash_balance_factor is set twice")
	}
	f := 0.0
	if v != "off" {
		var err error
		f, err = strconv.ParseFloat(v, 64)
		if err != nil || math.IsNaN(f) || f < 1 || f > maxHashBalanceFactor {
			return d.Errf("hash_balance_factor: %q is not a number from 1 to %d, or off", v, maxHashBalanceFactor)
		}
	}
	p.h.HashBalanceFactor = &f
	p.factorToken = d.Token()
	return nil
}

// checkPolicy reports, when the block ends, a hashing option given to a
// policy that does not hash, at the option's line.
func (p *parser) checkPolicy() error {
	if p.h.HashBalanceFactor == nil {
		return nil
	}
	if pk := policyKinds[p.h.LBPolicy]; pk.kind != kindHash {
		name := p.h.LBPolicy
		if name == "" {
			name = PolicyLeastConn
		}
		return tokenErr(p.factorToken, "hash_balance_factor: the policy is %s; it bounds ip_hash, client_ip_hash, uri_hash, query, header and hash", name)
	}
	return nil
}

// tokenErr is an error at the position of tok, as the dispenser words it.
func tokenErr(tok caddyfile.Token, format string, a ...any) error {
	d := caddyfile.NewDispenser([]caddyfile.Token{tok})
	d.Next()
	return d.Errf(format, a...)
}

// kindNames are the policies' names as {http.lbpool.pick} shows them.
var kindNames = [...]string{
	kindLeastConn:          PolicyLeastConn,
	kindLeastTime:          PolicyLeastTime,
	kindRoundRobin:         PolicyRoundRobin,
	kindWeightedRoundRobin: PolicyWeightedRoundRobin,
	kindRandom:             PolicyRandom,
	kindRandomChoose:       PolicyRandomChoose,
	kindFirst:              PolicyFirst,
	kindHash:               "hash",
}

// Why a backend was chosen, beside the policies' names.
const (
	pickSticky    = "sticky"
	pickRetry     = "retry"
	pickHashSpill = "hash_spill"
	pickBackup    = "backup"
)

// pickReason says why the backend b of try was chosen: home when the
// sticky cookie named it.
func (l *lease) pickReason(b *Backend, try int, home bool, tried *triedSet) string {
	switch {
	case home && try == 0:
		return pickSticky
	case b.backup.Load():
		return pickBackup
	case try > 0:
		return pickRetry
	case l.kind != kindHash:
		return kindNames[l.kind]
	case !tried.keyed:
		return kindNames[l.fallback]
	case tried.spilled:
		return pickHashSpill
	}
	return kindNames[kindHash]
}
