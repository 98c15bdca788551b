package leastconn

import (
	"strconv"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/lbpool/lbpool/internal/resolve"
)

func init() {
	httpcaddyfile.RegisterHandlerDirective("lbpool", parseCaddyfile)
	// lbpool answers requests itself, where reverse_proxy would
	httpcaddyfile.RegisterDirectiveOrder("lbpool", httpcaddyfile.Before, "reverse_proxy")
}

func parseCaddyfile(h httpcaddyfile.Helper) (caddyhttp.MiddlewareHandler, error) {
	var lb Handler
	err := lb.UnmarshalCaddyfile(h.Dispenser)
	return &lb, err
}

// UnmarshalCaddyfile sets up the handler from Caddyfile tokens:
//
//	lbpool [<backend>...] {
//	    to <backend>...
//	    weight <backend> <n>
//	    backup <backend>...
//	    name <pool>
//	    health_uri <path>
//	    health_interval <duration>
//	    health_timeout <duration>
//	    health_status <code|Nxx>
//	    health_body <regexp>
//	    health_headers {
//	        <name> <value>
//	    }
//	    health_passes <n>
//	    health_fails <n>
//	    stats_uri <path>
//	    stats_workers <n>
//	    lb_policy least_conn|least_time
//	    retries <n>                     (or lb_retries)
//	    lb_try_duration <duration>
//	    lb_try_interval <duration>
//	    lb_retry_match <matchers>       (or a block of them)
//	    retry_budget <percent>% [min <n>] | off
//	    slow_start <duration>
//	    dial_timeout <duration>
//	    response_header_timeout <duration>
//	    max_conns [<backend>] <n>
//	    queue_size <n>
//	    queue_timeout <duration>
//	    fail_duration <duration>
//	    max_fails <n>
//	    unhealthy_status <code|Nxx>...
//	    unhealthy_latency <duration>
//	    max_ejected_percent <n>
//	    flap_hold <base> [max <duration>] | off
//	    state_sync <duration>|off
//	    header_up   [+|-]<field> [<value|regexp> [<replacement>]]
//	    header_down [+|-]<field> [<value|regexp> [<replacement>]]
//	    tls_trust_pool <module> [...]
//	    tls_trusted_ca_certs <pem_files...>
//	    tls_client_auth <automate_name> | <cert_file> <key_file>
//	    tls_server_name <name>
//	    tls_timeout <duration>
//	    tls_insecure_skip_verify
//	    dynamic a [<name> <port>] {
//	        name <name>
//	        port <port>
//	        refresh <duration>
//	        resolvers <ip[:port]>...
//	        versions ipv4|ipv6...
//	        scheme http|https|h2c
//	        dial_timeout <duration>
//	        dial_fallback_delay <duration>
//	    }
//	    dynamic srv [<name>] {
//	        service <service>
//	        proto <proto>
//	        grace_period <duration>
//	        (and the same options, without port and versions)
//	    }
//	    sticky cookie [<name>] {
//	        secret <key>
//	        max_age <duration>
//	        path <path>
//	        domain <domain>
//	        secure
//	        samesite lax|strict|none
//	    }
//	    (and reverse_proxy's options: see options.go for the table)
//	}
//
// Every problem is reported here, at parse time, with the file and line.
func (h *Handler) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // directive name
	p := &parser{h: h, d: d, keys: map[string]int{}, labels: map[string]bool{}, exceptPorts: map[string]bool{}}
	if err := p.addBackends(d.RemainingArgs()); err != nil {
		return err
	}
	for d.NextBlock(0) {
		if err := p.readOption(false); err != nil {
			return err
		}
	}
	p.applyTransportTLS()
	if err := p.applyWeights(); err != nil {
		return err
	}
	if err := p.checkPolicy(); err != nil {
		return err
	}
	if lr := h.LoadReports; lr != nil && lr.Source == ReportsFromStats && h.StatsURI == "" {
		return tokenErr(p.reportsToken, "load_reports stats reads the backends' stats_uri: set stats_uri")
	}

	if len(h.Backends) == 0 && len(h.Dynamic) == 0 {
		d.Reset()
		d.Next()
		return d.Err("lbpool needs at least one backend or dynamic source")
	}
	if _, err := h.discoverySpecs(); err != nil {
		return d.Err(strings.TrimPrefix(err.Error(), "lbpool: "))
	}
	if _, err := h.outlierSpec(); err != nil {
		return tokenErr(p.ejectToken, "%s", strings.TrimPrefix(err.Error(), "lbpool: "))
	}
	return nil
}

// parseDynamic reads one dynamic source, inline (`dynamic a <name> <port>`)
// or in reverse_proxy's block form (`dynamic a { name ...; port ... }`);
// each value is checked on its own line, so an error names it.
func parseDynamic(d *caddyfile.Dispenser, seen map[string]bool) (DynamicConfig, error) {
	var dc DynamicConfig
	if !d.NextArg() {
		return dc, d.Err("dynamic: missing kind (a or srv)")
	}
	dc.Kind = d.Val()
	if dc.Kind != "a" && dc.Kind != "srv" {
		return dc, d.Errf("dynamic %s: lbpool finds backends through DNS with a or srv; use reverse_proxy for other sources", dc.Kind)
	}
	if d.NextArg() {
		dc.Name = d.Val()
		if dc.Kind == "a" {
			if !d.NextArg() {
				return dc, d.Errf("dynamic a %s: missing port", dc.Name)
			}
			if err := setDynamicPort(d, &dc); err != nil {
				return dc, err
			}
		}
		if d.NextArg() {
			return dc, d.Errf("dynamic %s: unexpected argument %q", dc.Kind, d.Val())
		}
		if err := checkDynamicSeen(d, dc, seen); err != nil {
			return dc, err
		}
	}
	inline := dc.Name != ""
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		opt := d.Val()
		switch opt {
		case "name", "service", "proto", "scheme":
			var v string
			if !d.AllArgs(&v) {
				return dc, d.ArgErr()
			}
			*map[string]*string{"name": &dc.Name, "service": &dc.Service, "proto": &dc.Proto, "scheme": &dc.Scheme}[opt] = v
			if opt == "scheme" && v != "http" && v != "https" && v != "h2c" {
				return dc, d.Errf("dynamic: scheme %q not supported (use http, https or h2c)", v)
			}
			if (opt == "service" || opt == "proto") && dc.Kind != "srv" {
				return dc, d.Errf("dynamic a: %s is for srv", opt)
			}
		case "port":
			if dc.Kind != "a" || !d.NextArg() {
				return dc, d.ArgErr()
			}
			if err := setDynamicPort(d, &dc); err != nil {
				return dc, err
			}
			if d.NextArg() {
				return dc, d.ArgErr()
			}
		case "refresh", "dial_timeout", "dial_fallback_delay", "grace_period":
			dur, err := parsePositiveDuration(d)
			if err != nil {
				return dc, err
			}
			*map[string]*caddy.Duration{"refresh": &dc.Refresh, "dial_timeout": &dc.DialTimeout,
				"dial_fallback_delay": &dc.DialFallbackDelay, "grace_period": &dc.GracePeriod}[opt] = dur
		case "resolvers":
			args := d.RemainingArgs()
			if len(args) == 0 {
				return dc, d.ArgErr()
			}
			for _, r := range args {
				if _, err := resolve.ParseServer(r); err != nil {
					return dc, d.Errf("dynamic: %v", err)
				}
			}
			dc.Resolvers = append(dc.Resolvers, args...)
		case "versions":
			args := d.RemainingArgs()
			if len(args) == 0 {
				return dc, d.ArgErr()
			}
			if _, err := resolve.Network(args); err != nil {
				return dc, d.Errf("dynamic: %v", err)
			}
			dc.Versions = append(dc.Versions, args...)
		default:
			return dc, d.Errf("unrecognized dynamic option '%s'", opt)
		}
	}
	if dc.Name == "" {
		return dc, d.Errf("dynamic %s: missing DNS name", dc.Kind)
	}
	if dc.Kind == "a" && dc.Port == 0 {
		return dc, d.Errf("dynamic a %s: missing port", dc.Name)
	}
	if inline {
		_, err := checkDynamic(dc)
		if err != nil {
			return dc, d.Err(err.Error())
		}
		return dc, nil
	}
	return dc, checkDynamicSeen(d, dc, seen)
}

// checkDynamicSeen checks a source and that it was not listed before.
func checkDynamicSeen(d *caddyfile.Dispenser, dc DynamicConfig, seen map[string]bool) error {
	spec, err := checkDynamic(dc)
	if err != nil {
		return d.Err(err.Error())
	}
	if seen[spec.label] {
		return d.Errf("dynamic %s is listed twice", spec.label)
	}
	seen[spec.label] = true
	return nil
}

func setDynamicPort(d *caddyfile.Dispenser, dc *DynamicConfig) error {
	port, err := atoi(d.Val())
	if err != nil || port < 1 || port > 65535 {
		return d.Errf("dynamic a %s: port %q is not a number from 1 to 65535", dc.Name, d.Val())
	}
	dc.Port = port
	return nil
}

// parseSticky reads a sticky block; each value is checked on its own line.
func parseSticky(d *caddyfile.Dispenser) (*StickyCookie, error) {
	if !d.NextArg() {
		return nil, d.Err("sticky: missing kind (cookie)")
	}
	if d.Val() != "cookie" {
		return nil, d.Errf("sticky: unknown kind %q (use cookie)", d.Val())
	}
	sc := &StickyCookie{}
	if d.NextArg() {
		sc.Name = d.Val()
		if err := checkCookieName(sc.Name); err != nil {
			return nil, d.Errf("sticky cookie: %v", err)
		}
	}
	if d.NextArg() {
		return nil, d.Errf("sticky cookie: unexpected argument %q", d.Val())
	}
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		opt := d.Val()
		switch opt {
		case "secret", "path", "domain", "samesite":
			var v string
			if !d.AllArgs(&v) {
				return nil, d.ArgErr()
			}
			var err error
			switch opt {
			case "secret":
				sc.Secret = v
			case "path":
				sc.Path, err = v, checkCookiePath(v)
			case "domain":
				sc.Domain, err = v, checkCookieDomain(v)
			case "samesite":
				sc.SameSite = v
				_, err = sameSiteAttr(v)
			}
			if err != nil {
				return nil, d.Errf("sticky cookie: %v", err)
			}
		case "max_age":
			dur, err := parsePositiveDuration(d)
			if err != nil {
				return nil, err
			}
			if time.Duration(dur) < time.Second {
				return nil, d.Errf("max_age: %v is shorter than a second", time.Duration(dur))
			}
			sc.MaxAge = dur
		case "secure":
			if d.NextArg() {
				return nil, d.ArgErr()
			}
			sc.Secure = true
		default:
			return nil, d.Errf("unrecognized sticky cookie option '%s'", opt)
		}
	}
	return sc, nil
}

// parseFlapHold reads flap_hold <base> [max <duration>] or flap_hold off.
func parseFlapHold(d *caddyfile.Dispenser) (*FlapHold, error) {
	args := d.RemainingArgs()
	switch {
	case len(args) == 1 && args[0] == "off":
		return &FlapHold{Off: true}, nil
	case len(args) == 3 && args[1] != "max":
		return nil, d.Errf("flap_hold: unexpected %q (want max <duration>)", args[1])
	case len(args) != 1 && len(args) != 3:
		return nil, d.Err("flap_hold: want <base> [max <duration>], or off")
	}
	base, err := positiveDuration(d, "flap_hold", args[0])
	if err != nil {
		return nil, err
	}
	fh := &FlapHold{Base: base}
	if len(args) == 3 {
		if fh.Max, err = positiveDuration(d, "flap_hold max", args[2]); err != nil {
			return nil, err
		}
		if fh.Max < fh.Base {
			return nil, d.Errf("flap_hold: max %s is shorter than the base %s", args[2], args[0])
		}
	}
	return fh, nil
}

func parsePositiveDuration(d *caddyfile.Dispenser) (caddy.Duration, error) {
	return parseDuration(d, false)
}

// parseDuration reads one duration: positive, or also zero (off) when zeroOK.
func parseDuration(d *caddyfile.Dispenser, zeroOK bool) (caddy.Duration, error) {
	opt := d.Val()
	var v string
	if !d.AllArgs(&v) {
		return 0, d.ArgErr()
	}
	return durationArg(d, opt, v, zeroOK)
}

// positiveDuration reads v, the argument of opt, as a duration of at least
// 1ms (slow_start: any positive one).
func positiveDuration(d *caddyfile.Dispenser, opt, v string) (caddy.Duration, error) {
	return durationArg(d, opt, v, false)
}

// durationArg reads v, the argument of opt: at least 1ms (slow_start: any
// positive one), or also zero (off) when zeroOK.
func durationArg(d *caddyfile.Dispenser, opt, v string, zeroOK bool) (caddy.Duration, error) {
	dur, err := caddy.ParseDuration(v)
	if err != nil {
		return 0, d.Errf("%s: bad duration %q: %v", opt, v, err)
	}
	switch {
	case dur == 0 && zeroOK:
		return 0, nil
	case dur < 0 && zeroOK:
		return 0, d.Errf("%s: duration must be 0 (off) or positive, got %q", opt, v)
	case dur <= 0:
		return 0, d.Errf("%s: duration must be positive, got %q", opt, v)
	}
	if dur < time.Millisecond && opt != "slow_start" {
		return 0, d.Errf("%s: duration %q is too short (at least 1ms)", opt, v)
	}
	return caddy.Duration(dur), nil
}

// backendIndex finds the backend raw names among those listed so far
// (keys: backend key → index); host:port also names an https backend.
func backendIndex(d *caddyfile.Dispenser, keys map[string]int, opt, raw string) (int, error) {
	a, err := parseBackendURL(raw)
	if err != nil {
		return 0, d.Err(strings.TrimPrefix(err.Error(), "lbpool: "))
	}
	i, ok := keys[a.key]
	if !ok && !strings.Contains(raw, "://") {
		i, ok = keys["https://"+a.hostport]
	}
	if !ok {
		verb := map[string]string{"weight": "weighting", "max_conns": "capping", "backup": "naming"}[opt]
		return 0, d.Errf("%s: backend %s is not in this pool (list it before %s it)", opt, a.display, verb)
	}
	return i, nil
}

// parseCount reads one whole number: positive, or also zero when zeroOK,
// and at most the option's limit in countLimits.
func parseCount(d *caddyfile.Dispenser, zeroOK bool) (int, error) {
	return parseCountOf(d, d.Val(), zeroOK)
}

// parseCountOf is parseCount for an option whose limit is under the name
// field (an alias's JSON field).
func parseCountOf(d *caddyfile.Dispenser, field string, zeroOK bool) (int, error) {
	opt := d.Val()
	var v string
	if !d.AllArgs(&v) {
		return 0, d.ArgErr()
	}
	n, err := atoi(v)
	if err != nil || n < 0 || (n == 0 && !zeroOK) || n > countLimits[field] {
		what := "a positive whole number"
		if zeroOK {
			what = "a whole number, 0 or more"
		}
		return 0, d.Errf("%s: %q is not %s (at most %d)", opt, v, what, countLimits[field])
	}
	return n, nil
}

// parseStatus accepts a code (200) or a class (2xx), as reverse_proxy does.
func parseStatus(v string) (int, error) {
	if len(v) == 3 && strings.HasSuffix(strings.ToLower(v), "xx") && v[0] >= '1' && v[0] <= '5' {
		return int(v[0] - '0'), nil
	}
	code, err := atoi(v)
	if err != nil || code < 100 || code > 599 {
		return 0, &statusError{v}
	}
	return code, nil
}

// atoi reads a plain decimal number: digits only, no sign.
func atoi(v string) (int, error) {
	for _, r := range v {
		if r < '0' || r > '9' {
			return 0, strconv.ErrSyntax
		}
	}
	return strconv.Atoi(v)
}

type statusError struct{ v string }

func (e *statusError) Error() string {
	return "\"" + e.v + "\" is neither a status code (100-599) nor a class like 2xx"
}

// Interface guard.
var _ caddyfile.Unmarshaler = (*Handler)(nil)
