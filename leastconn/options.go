package leastconn

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/rewrite"
	"github.com/dustin/go-humanize"
	"github.com/lbpool/lbpool/internal/resolve"
	"github.com/lbpool/lbpool/internal/upstream"
)

// The Caddyfile's options are one table: a name (lbpool's own, or
// reverse_proxy's for the same thing) and how to read it into the handler.
// An alias is one more line naming the same reader; the "did you mean" hint
// of an unknown option comes from the same names. Options marked transport
// are also accepted inside `transport http { }`, as reverse_proxy writes
// them.

// parser is one lbpool block being read.
type parser struct {
	h      *Handler
	d      *caddyfile.Dispenser
	keys   map[string]int  // backend key → index in h.Backends
	labels map[string]bool // dynamic sources seen
	// transport http { tls... }: backends written without a scheme are
	// HTTPS, except on these ports, as with reverse_proxy
	transportTLS bool
	exceptPorts  map[string]bool
	// lb_policy weighted_round_robin's weights, given to the backends in
	// order when the block ends, and where they were written
	wrrWeights   []int
	wrrToken     caddyfile.Token
	factorToken  caddyfile.Token // where hash_balance_factor was written
	reportsToken caddyfile.Token // where load_reports was written
	ejectToken   caddyfile.Token // where the first option of ejection was written
	cookiePolicy bool            // sticky came from lb_policy cookie
}

type option struct {
	read      func(p *parser) error
	transport bool // also inside transport http { }
}

// options is filled in init: some readers refer back to the table.
var options map[string]option

func init() {
	h := func(f func(*Handler) *caddy.Duration) func(*parser) error {
		return func(p *parser) error { return readDuration(p, f(p.h)) }
	}
	options = map[string]option{
		// backends and the pool
		"to":                      {read: readTo},
		"weight":                  {read: readWeight},
		"backup":                  {read: readBackup},
		"name":                    {read: readName},
		"max_conns":               {read: readMaxConns},
		"unhealthy_request_count": {read: readPoolMaxConns}, // reverse_proxy's name; lbpool queues beyond it
		"queue_size":              {read: readCount(func(h *Handler) *int { return &h.QueueSize }, false)},
		"queue_timeout":           {read: h(func(h *Handler) *caddy.Duration { return &h.QueueTimeout })},
		"dynamic":                 {read: readDynamic},
		"sticky":                  {read: readSticky},
		"lb_policy":               {read: readPolicy},
		"hash_balance_factor":     {read: readHashBalanceFactor},
		"retries":                 {read: readRetries},
		"lb_retries":              {read: readRetries}, // reverse_proxy's name
		"lb_try_duration":         {read: h(func(h *Handler) *caddy.Duration { return &h.TryDuration })},
		"lb_try_interval":         {read: h(func(h *Handler) *caddy.Duration { return &h.TryInterval })},
		"lb_retry_match":          {read: readRetryMatch},
		"retry_budget":            {read: readRetryBudget},
		"slow_start":              {read: readDurationOrOff(func(h *Handler) *caddy.Duration { return &h.SlowStart })},
		"state_sync":              {read: readStateSync},
		"stats_uri":               {read: readURI(func(h *Handler) *string { return &h.StatsURI })},
		"stats_workers":           {read: readCount(func(h *Handler) *int { return &h.StatsWorkers }, false)},
		"load_reports":            {read: readLoadReports},

		// active health checks
		"health_uri":              {read: readURI(func(h *Handler) *string { return &h.HealthURI })},
		"health_path":             {read: readURI(func(h *Handler) *string { return &h.HealthURI })}, // reverse_proxy's older name
		"health_port":             {read: readHealthPort},
		"health_method":           {read: readHealthMethod},
		"health_request_body":     {read: readString(func(h *Handler) *string { return &h.HealthRequestBody })},
		"health_headers":          {read: readHealthHeaders},
		"health_follow_redirects": {read: readFlag(func(h *Handler) *bool { return &h.HealthFollowRedirects })},
		"health_interval":         {read: h(func(h *Handler) *caddy.Duration { return &h.HealthInterval })},
		"health_down_interval":    {read: h(func(h *Handler) *caddy.Duration { return &h.HealthDownInterval })},
		"health_timeout":          {read: h(func(h *Handler) *caddy.Duration { return &h.HealthTimeout })},
		"health_status":           {read: readHealthStatus},
		"health_body":             {read: readHealthBody},
		"health_grpc":             {read: readHealthGRPC},
		"health_passes":           {read: readCount(func(h *Handler) *int { return &h.HealthPasses }, false)},
		"health_fails":            {read: readCount(func(h *Handler) *int { return &h.HealthFails }, false)},

		// passive health: ejection
		"fail_duration":         {read: readDurationOrOff(func(h *Handler) *caddy.Duration { return &h.FailDuration })},
		"flap_hold":             {read: readFlapHold},
		"max_fails":             {read: readCount(func(h *Handler) *int { return &h.MaxFails }, false)},
		"unhealthy_status":      {read: readUnhealthyStatus},
		"unhealthy_grpc_status": {read: readUnhealthyGRPCStatus},
		"unhealthy_latency":     {read: h(func(h *Handler) *caddy.Duration { return &h.UnhealthyLatency })},
		"max_ejected_percent":   {read: readCount(func(h *Handler) *int { return &h.MaxEjectedPercent }, false)},

		// the request path
		"header_up":          {read: func(p *parser) error { return p.h.parseHeaderOp(p.d) }},
		"header_down":        {read: func(p *parser) error { return p.h.parseHeaderOp(p.d) }},
		"method":             {read: readMethod},
		"rewrite":            {read: readRewrite},
		"request_buffers":    {read: readSize(func(h *Handler) *int64 { return &h.RequestBuffers })},
		"response_buffers":   {read: readSize(func(h *Handler) *int64 { return &h.ResponseBuffers })},
		"flush_interval":     {read: readFlushInterval},
		"trusted_proxies":    {read: readTrustedProxies},
		"proxy_status_name":  {read: readString(func(h *Handler) *string { return &h.ProxyStatusName })},
		"stream_timeout":     {read: h(func(h *Handler) *caddy.Duration { return &h.StreamTimeout })},
		"stream_close_delay": {read: h(func(h *Handler) *caddy.Duration { return &h.StreamCloseDelay })},
		"stream_buffer_size": {read: readIntSize(func(h *Handler) *int { return &h.StreamBufferSize })},
		"transport":          {read: readTransport},

		// the transport (also inside transport http { })
		"dial_timeout":                  {read: h(func(h *Handler) *caddy.Duration { return &h.DialTimeout }), transport: true},
		"dial_fallback_delay":           {read: h(func(h *Handler) *caddy.Duration { return &h.DialFallbackDelay }), transport: true},
		"response_header_timeout":       {read: h(func(h *Handler) *caddy.Duration { return &h.ResponseHeaderTimeout }), transport: true},
		"expect_continue_timeout":       {read: h(func(h *Handler) *caddy.Duration { return &h.ExpectContinueTimeout }), transport: true},
		"read_timeout":                  {read: h(func(h *Handler) *caddy.Duration { return &h.ReadTimeout }), transport: true},
		"write_timeout":                 {read: h(func(h *Handler) *caddy.Duration { return &h.WriteTimeout }), transport: true},
		"read_buffer":                   {read: readIntSize(func(h *Handler) *int { return &h.ReadBufferSize }), transport: true},
		"write_buffer":                  {read: readIntSize(func(h *Handler) *int { return &h.WriteBufferSize }), transport: true},
		"max_response_header":           {read: readSize(func(h *Handler) *int64 { return &h.MaxResponseHeaderSize }), transport: true},
		"keepalive":                     {read: readKeepAlive, transport: true},
		"keepalive_interval":            {read: readKeepAliveInterval, transport: true},
		"keepalive_idle_conns":          {read: readKeepAliveCount(func(k *reverseproxy.KeepAlive) *int { return &k.MaxIdleConns }), transport: true},
		"keepalive_idle_conns_per_host": {read: readKeepAliveCount(func(k *reverseproxy.KeepAlive) *int { return &k.MaxIdleConnsPerHost }), transport: true},
		"max_idle_conns_per_host":       {read: readKeepAliveCount(func(k *reverseproxy.KeepAlive) *int { return &k.MaxIdleConnsPerHost }), transport: true}, // reverse_proxy's older name
		"max_conns_per_host":            {read: readCount(func(h *Handler) *int { return &h.MaxConnsPerHost }, false), transport: true},
		"local_address":                 {read: readLocalAddress, transport: true},
		"resolvers":                     {read: readResolvers, transport: true},
		"compression":                   {read: readCompression, transport: true},
		"versions":                      {read: readVersions, transport: true},
		"tls":                           {read: readTLSOn, transport: true},
		"tls_insecure_skip_verify":      {read: readTLS, transport: true},
		"tls_server_name":               {read: readTLS, transport: true},
		"tls_timeout":                   {read: readTLS, transport: true},
		"tls_client_auth":               {read: readTLS, transport: true},
		"tls_trusted_ca_certs":          {read: readTLS, transport: true},
		"tls_trust_pool":                {read: readTLS, transport: true},
		"tls_curves":                    {read: readTLS, transport: true},
		"tls_renegotiation":             {read: readTLS, transport: true},
		"tls_except_ports":              {read: readExceptPorts, transport: true},
	}
}

// notHere are reverse_proxy's options lbpool refuses, each with what to
// use instead.
var notHere = map[string]string{
	"handle_response":   "handle_response routes on the backend's response: use reverse_proxy for that site",
	"replace_status":    "replace_status goes with handle_response: use reverse_proxy for that site",
	"health_upstream":   "health_upstream checks another address: lbpool checks each backend itself (health_port changes the port)",
	"verbose_logs":      "verbose_logs: lbpool logs status changes and failures itself; raise the log level to debug for more",
	"proxy_protocol":    "proxy_protocol: lbpool does not send PROXY headers; use reverse_proxy for that backend",
	"forward_proxy_url": "forward_proxy_url: lbpool connects to backends directly; use reverse_proxy to go through a forward proxy",
	"network_proxy":     "network_proxy: lbpool connects to backends directly; use reverse_proxy to go through a forward proxy",
	"buffer_requests":   "buffer_requests: use request_buffers <size>",
	"buffer_responses":  "buffer_responses: use response_buffers <size>",
}

// readOption reads the option under the cursor; inTransport: inside
// transport http { }.
func (p *parser) readOption(inTransport bool) error {
	d, name := p.d, p.d.Val()
	if strings.HasPrefix(name, "@") {
		return d.Errf("%s: response matchers go with handle_response, which lbpool does not have: use reverse_proxy for that site", name)
	}
	if msg, ok := notHere[name]; ok {
		return d.Err(msg)
	}
	opt, ok := options[name]
	if !ok || (inTransport && !opt.transport) {
		where := "lbpool option"
		if inTransport {
			where = "transport http option"
		}
		if near := nearest(name, inTransport); near != "" {
			return d.Errf("unrecognized %s '%s' (did you mean '%s'?)", where, name, near)
		}
		return d.Errf("unrecognized %s '%s'", where, name)
	}
	if ejectionOptions[name] && p.ejectToken.Text == "" {
		p.ejectToken = d.Token()
	}
	return opt.read(p)
}

// ejectionOptions shape ejection (outlier.go); they are checked together
// when the block ends, and an error names the first of them written.
var ejectionOptions = map[string]bool{
	"fail_duration": true, "max_fails": true, "unhealthy_status": true,
	"unhealthy_grpc_status": true, "unhealthy_latency": true, "max_ejected_percent": true,
}

// nearest is the known option closest to name, when one is close enough to
// be a typo of it.
func nearest(name string, inTransport bool) string {
	names := make([]string, 0, len(options)+len(notHere))
	for k, o := range options {
		if !inTransport || o.transport {
			names = append(names, k)
		}
	}
	sort.Strings(names) // ties go to the same name every time
	best, bestDist := "", 3
	if len(name) <= 4 {
		bestDist = 2
	}
	for _, k := range names {
		if dist := editDistance(name, k); dist < bestDist {
			best, bestDist = k, dist
		}
	}
	if best == "" {
		// a word of the name: "status" → health_status, unhealthy_status
		for _, k := range names {
			if len(name) >= 6 && (strings.HasSuffix(k, "_"+name) || strings.HasPrefix(k, name+"_")) {
				return k
			}
		}
	}
	return best
}

// editDistance is the Levenshtein distance of two short names.
func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}

// Readers shared by many options.

func readDuration(p *parser, dst *caddy.Duration) error {
	dur, err := parsePositiveDuration(p.d)
	if err != nil {
		return err
	}
	*dst = dur
	return nil
}

// readCount reads a whole number, positive (or 0 when zeroOK), at most the
// option's limit in countLimits, the limit JSON is held to as well.
func readCount(f func(*Handler) *int, zeroOK bool) func(*parser) error {
	return func(p *parser) error {
		n, err := parseCount(p.d, zeroOK)
		if err != nil {
			return err
		}
		*f(p.h) = n
		return nil
	}
}

// readDurationOrOff reads a duration that may also be 0: off, the default.
func readDurationOrOff(f func(*Handler) *caddy.Duration) func(*parser) error {
	return func(p *parser) error {
		dur, err := parseDuration(p.d, true)
		if err != nil {
			return err
		}
		*f(p.h) = dur
		return nil
	}
}

func readString(f func(*Handler) *string) func(*parser) error {
	return func(p *parser) error {
		if !p.d.AllArgs(f(p.h)) {
			return p.d.ArgErr()
		}
		return nil
	}
}

func readFlag(f func(*Handler) *bool) func(*parser) error {
	return func(p *parser) error {
		if p.d.NextArg() {
			return p.d.ArgErr()
		}
		*f(p.h) = true
		return nil
	}
}

func readURI(f func(*Handler) *string) func(*parser) error {
	return func(p *parser) error {
		d, opt := p.d, p.d.Val()
		var uri string
		if !d.AllArgs(&uri) {
			return d.ArgErr()
		}
		if err := checkURI(uri); err != nil {
			return d.Errf("%s: %v", opt, err)
		}
		*f(p.h) = uri
		return nil
	}
}

// parseSize reads a size as reverse_proxy does: bytes, or with a unit
// (64KiB, 1MB); `unlimited` is -1 when unlimitedOK.
func parseSize(d *caddyfile.Dispenser, unlimitedOK bool) (int64, error) {
	opt := d.Val()
	var v string
	if !d.AllArgs(&v) {
		return 0, d.ArgErr()
	}
	if v == "unlimited" && unlimitedOK {
		return -1, nil
	}
	n, err := humanize.ParseBytes(v)
	if err != nil || n > 1<<40 {
		return 0, d.Errf("%s: %q is not a size (bytes, or with a unit: 64KiB, 1MB)", opt, v)
	}
	return int64(n), nil
}

func readSize(f func(*Handler) *int64) func(*parser) error {
	return func(p *parser) error {
		n, err := parseSize(p.d, p.d.Val() != "max_response_header")
		*f(p.h) = n
		return err
	}
}

func readIntSize(f func(*Handler) *int) func(*parser) error {
	return func(p *parser) error {
		n, err := parseSize(p.d, false)
		if err == nil && n > 1<<30 {
			return p.d.Errf("%s: %d bytes is more than 1 GiB", p.d.Val(), n)
		}
		*f(p.h) = int(n)
		return err
	}
}

// Backends.

// readTo reads `to <backend>...`.
func readTo(p *parser) error {
	args := p.d.RemainingArgs()
	if len(args) == 0 {
		return p.d.ArgErr()
	}
	return p.addBackends(args)
}

// addBackends adds backends as reverse_proxy writes them: host:port,
// scheme://host:port, a port range host:8001-8006 (one backend per port),
// {env.X} (resolved when the config loads), ws:// and wss:// (the same as
// http:// and https://).
func (p *parser) addBackends(args []string) error {
	d := p.d
	for _, raw := range args {
		if hasPlaceholder(raw) {
			if !onlyEnvPlaceholders(raw) {
				return d.Errf("backend %s: upstreams chosen per request from a placeholder are not supported: use reverse_proxy for that site, or list the backends and let lbpool pick", raw)
			}
			// resolved again when the config loads; what the environment
			// holds now must already be an address
			if _, err := parseBackendURL(raw); err != nil {
				return d.Errf("%s (with the environment as it is now)", strings.TrimPrefix(err.Error(), "lbpool: "))
			}
			if _, dup := p.keys[raw]; dup {
				return d.Errf("backend %s is listed twice", raw)
			}
			p.keys[raw] = len(p.h.Backends)
			p.h.Backends = append(p.h.Backends, BackendConfig{URL: raw})
			continue
		}
		expanded, err := expandPortRange(raw)
		if err != nil {
			return d.Errf("backend %s: %v", raw, err)
		}
		for _, one := range expanded {
			a, err := parseBackendURL(one)
			if err != nil {
				return d.Err(strings.TrimPrefix(err.Error(), "lbpool: "))
			}
			if _, dup := p.keys[a.key]; dup {
				return d.Errf("backend %s is listed twice", a.display)
			}
			p.keys[a.key] = len(p.h.Backends)
			p.h.Backends = append(p.h.Backends, BackendConfig{URL: one})
		}
	}
	return nil
}

// maxPortRange bounds the backends one port range makes.
const maxPortRange = 1000

// expandPortRange turns host:8001-8003 into host:8001, host:8002,
// host:8003; ws:// and wss:// become http:// and https://.
func expandPortRange(raw string) ([]string, error) {
	switch {
	case strings.HasPrefix(raw, "ws://"):
		raw = "http://" + strings.TrimPrefix(raw, "ws://")
	case strings.HasPrefix(raw, "wss://"):
		raw = "https://" + strings.TrimPrefix(raw, "wss://")
	}
	if strings.HasPrefix(raw, unixPrefix) {
		return []string{raw}, nil
	}
	colon := strings.LastIndex(raw, ":")
	if colon < 0 || !strings.Contains(raw[colon:], "-") || strings.HasSuffix(raw[:colon], "]") && !strings.Contains(raw[:colon], "[") {
		return []string{raw}, nil
	}
	lo, hi, ok := strings.Cut(raw[colon+1:], "-")
	first, err1 := atoi(lo)
	last, err2 := atoi(hi)
	if !ok || err1 != nil || err2 != nil || first < 1 || last > 65535 || first > last {
		return nil, &portRangeError{raw[colon+1:]}
	}
	if last-first >= maxPortRange {
		return nil, &portRangeError{raw[colon+1:] + " (more than 1000 ports)"}
	}
	out := make([]string, 0, last-first+1)
	for port := first; port <= last; port++ {
		out = append(out, raw[:colon+1]+strconv.Itoa(port))
	}
	return out, nil
}

type portRangeError struct{ v string }

func (e *portRangeError) Error() string { return "bad port range " + e.v }

func hasPlaceholder(s string) bool { return strings.Contains(s, "{") }

var envPlaceholder = regexp.MustCompile(`\{env\.[A-Za-z_][A-Za-z0-9_]*\}`)

// onlyEnvPlaceholders: every placeholder in s is {env.X}, which is resolved
// once when the config loads.
func onlyEnvPlaceholders(s string) bool {
	return !strings.ContainsAny(envPlaceholder.ReplaceAllString(s, ""), "{}")
}

func readWeight(p *parser) error {
	d := p.d
	var raw, n string
	if !d.AllArgs(&raw, &n) {
		return d.ArgErr()
	}
	i, err := backendIndex(d, p.keys, "weight", raw)
	if err != nil {
		return err
	}
	w, err := atoi(n)
	if err != nil || w < 1 || w > MaxWeight {
		return d.Errf("weight: %q is not a whole number from 1 to %d", n, MaxWeight)
	}
	p.h.Backends[i].Weight = w
	return nil
}

// readBackup reads `backup <backend>...`: backends listed before.
func readBackup(p *parser) error {
	d := p.d
	args := d.RemainingArgs()
	if len(args) == 0 {
		return d.ArgErr()
	}
	for _, raw := range args {
		i, err := backendIndex(d, p.keys, "backup", raw)
		if err != nil {
			return err
		}
		p.h.Backends[i].Backup = true
	}
	return nil
}

func readName(p *parser) error {
	if !p.d.AllArgs(&p.h.Name) {
		return p.d.ArgErr()
	}
	if strings.TrimSpace(p.h.Name) == "" {
		return p.d.Err("name: the pool name must not be empty")
	}
	return nil
}

func readMaxConns(p *parser) error {
	d, opt := p.d, p.d.Val()
	args := d.RemainingArgs()
	if len(args) != 1 && len(args) != 2 {
		return d.ArgErr()
	}
	n, err := atoi(args[len(args)-1])
	if err != nil || n > countLimits["max_conns"] {
		return d.Errf("%s: %q is not a whole number, 0 or more (at most %d)", opt, args[len(args)-1], countLimits["max_conns"])
	}
	if len(args) == 1 {
		p.h.MaxConns = n
		return nil
	}
	if n == 0 {
		return d.Errf("max_conns: a backend's cap must be positive (omit it for the pool's)")
	}
	i, err := backendIndex(d, p.keys, "max_conns", args[0])
	if err != nil {
		return err
	}
	p.h.Backends[i].MaxConns = n
	return nil
}

// readPoolMaxConns reads unhealthy_request_count: the pool-wide max_conns.
func readPoolMaxConns(p *parser) error {
	var v string
	if !p.d.AllArgs(&v) {
		return p.d.ArgErr()
	}
	n, err := atoi(v)
	if err != nil || n < 1 || n > countLimits["max_conns"] {
		return p.d.Errf("%s: %q is not a positive whole number (at most %d)", p.d.Val(), v, countLimits["max_conns"])
	}
	p.h.MaxConns = n
	return nil
}

func readRetries(p *parser) error {
	n, err := parseCountOf(p.d, "retries", true)
	if err != nil {
		return err
	}
	p.h.Retries = &n
	return nil
}

// readRetryMatch reads one matcher set, in reverse_proxy's syntax: request
// matchers and expressions, on the line or in a block.
func readRetryMatch(p *parser) error {
	set, err := caddyhttp.ParseCaddyfileNestedMatcherSet(p.d)
	if err != nil {
		if strings.Contains(err.Error(), ", at "+p.d.File()+":") {
			return fmt.Errorf("lb_retry_match: %w", err) // it names the line already
		}
		return p.d.Errf("lb_retry_match: %v", err)
	}
	if raw, ok := set["expression"]; ok {
		// compiled now, so a mistake is an error naming the line
		var expr caddyhttp.MatchExpression
		ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
		defer cancel()
		if err := json.Unmarshal(raw, &expr); err != nil {
			return p.d.Errf("lb_retry_match: %v", err)
		}
		if err := expr.Provision(ctx); err != nil {
			first, _, _ := strings.Cut(err.Error(), "\n") // CEL draws the spot on more lines
			return p.d.Errf("lb_retry_match: %s", first)
		}
	}
	p.h.RetryMatchRaw = append(p.h.RetryMatchRaw, set)
	return nil
}

// readRetryBudget reads `retry_budget <percent>% [min <n>]` or
// `retry_budget off`.
func readRetryBudget(p *parser) error {
	d := p.d
	args := d.RemainingArgs()
	if len(args) == 1 && args[0] == "off" {
		p.h.RetryBudget = &RetryBudget{Off: true}
		return nil
	}
	if len(args) != 1 && len(args) != 3 {
		return d.Err("retry_budget: expected <percent>% [min <n>], or off")
	}
	pct, err := atoi(strings.TrimSuffix(args[0], "%"))
	if err != nil || !strings.HasSuffix(args[0], "%") || pct < 0 || pct > 1000 {
		return d.Errf("retry_budget: %q is not a percentage from 0%% to 1000%%", args[0])
	}
	rb := &RetryBudget{Percent: &pct}
	if len(args) == 3 {
		n, err := atoi(args[2])
		if args[1] != "min" || err != nil || n < 0 || n > 1000000 {
			return d.Errf("retry_budget: expected min <n> (a whole number up to 1000000) after the percentage, got %q %q", args[1], args[2])
		}
		rb.Min = &n
	}
	p.h.RetryBudget = rb
	return nil
}

func readStateSync(p *parser) error {
	var v string
	if !p.d.AllArgs(&v) {
		return p.d.ArgErr()
	}
	if _, err := stateSyncOf(v); err != nil {
		return p.d.Err(err.Error())
	}
	p.h.StateSync = v
	return nil
}

func readDynamic(p *parser) error {
	dc, err := parseDynamic(p.d, p.labels)
	if err != nil {
		return err
	}
	p.h.Dynamic = append(p.h.Dynamic, dc)
	return nil
}

func readFlapHold(p *parser) error {
	if p.h.FlapHold != nil {
		return p.d.Err("flap_hold is set twice")
	}
	fh, err := parseFlapHold(p.d)
	if err != nil {
		return err
	}
	p.h.FlapHold = fh
	return nil
}

// readLoadReports reads `load_reports [header|stats] { metric <name>
// blackout <d> expiry <d> error_penalty <f> }`.
func readLoadReports(p *parser) error {
	d := p.d
	if p.h.LoadReports != nil {
		return d.Err("load_reports is set twice")
	}
	lr := &LoadReports{}
	p.reportsToken = d.Token()
	if d.NextArg() {
		if v := d.Val(); v != ReportsFromHeader && v != ReportsFromStats {
			return d.Errf("load_reports: %q is neither header nor stats", v)
		}
		lr.Source = d.Val()
		if d.NextArg() {
			return d.ArgErr()
		}
	}
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		name := d.Val()
		opt := "load_reports " + name
		var v string
		switch name {
		case "metric", "blackout", "expiry", "error_penalty":
			if !d.AllArgs(&v) {
				return d.ArgErr()
			}
		default:
			return d.Errf("load_reports: unknown option %q (want metric, blackout, expiry or error_penalty)", d.Val())
		}
		var err error
		switch name {
		case "metric":
			if !metricName.MatchString(v) {
				return d.Errf("%s: %q is not a metric name (letters, digits, _ . -)", opt, v)
			}
			lr.Metric = v
		case "blackout":
			lr.Blackout, err = positiveDuration(d, opt, v)
		case "expiry":
			if lr.Expiry, err = positiveDuration(d, opt, v); err == nil && time.Duration(lr.Expiry) <= weighEvery {
				return d.Errf("%s: %s must be longer than %v, how often weights are recomputed", opt, v, weighEvery)
			}
		case "error_penalty":
			f, perr := strconv.ParseFloat(v, 64)
			if perr != nil || !(f >= 0 && f <= 100) {
				return d.Errf("%s: %q is not a number from 0 to 100", opt, v)
			}
			lr.ErrorPenalty = &f
		}
		if err != nil {
			return err
		}
	}
	p.h.LoadReports = lr
	return nil
}

func readSticky(p *parser) error {
	if p.h.Sticky != nil {
		return p.d.Err("sticky is set twice")
	}
	sc, err := parseSticky(p.d)
	if err != nil {
		return err
	}
	p.h.Sticky = sc
	return nil
}

// Health.

func readHealthPort(p *parser) error {
	var v string
	if !p.d.AllArgs(&v) {
		return p.d.ArgErr()
	}
	port, err := atoi(v)
	if err != nil || port < 1 || port > 65535 {
		return p.d.Errf("health_port: %q is not a port (1-65535)", v)
	}
	p.h.HealthPort = port
	return nil
}

func readHealthMethod(p *parser) error {
	var v string
	if !p.d.AllArgs(&v) {
		return p.d.ArgErr()
	}
	v = strings.ToUpper(v)
	if !validMethod(v) {
		return p.d.Errf("health_method: %q is not a method", v)
	}
	p.h.HealthMethod = v
	return nil
}

func readHealthStatus(p *parser) error {
	var v string
	if !p.d.AllArgs(&v) {
		return p.d.ArgErr()
	}
	code, err := parseStatus(v)
	if err != nil {
		return p.d.Errf("health_status: %v", err)
	}
	p.h.HealthStatus = code
	return nil
}

func readHealthBody(p *parser) error {
	var v string
	if !p.d.AllArgs(&v) {
		return p.d.ArgErr()
	}
	if _, err := regexp.Compile(v); err != nil {
		return p.d.Errf("health_body: bad regular expression: %v", err)
	}
	p.h.HealthBody = v
	return nil
}

// readHealthHeaders reads a block of `<name> [<value>...]`; a name alone
// sends the header empty, as reverse_proxy does.
func readHealthHeaders(p *parser) error {
	d, h := p.d, p.h
	if d.NextArg() {
		return d.ArgErr()
	}
	if h.HealthHeaders == nil {
		h.HealthHeaders = make(http.Header)
	}
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		name := d.Val()
		values := d.RemainingArgs()
		if len(values) == 0 {
			values = []string{""}
		}
		if err := checkHeader(name, values); err != nil {
			return d.Errf("health_headers: %v", err)
		}
		key := http.CanonicalHeaderKey(name)
		h.HealthHeaders[key] = append(h.HealthHeaders[key], values...)
	}
	return nil
}

func readHealthGRPC(p *parser) error {
	args := p.d.RemainingArgs()
	if len(args) > 1 {
		return p.d.ArgErr()
	}
	p.h.HealthGRPC = &HealthGRPC{}
	if len(args) == 1 {
		p.h.HealthGRPC.Service = args[0]
	}
	return nil
}

func readUnhealthyGRPCStatus(p *parser) error {
	args := p.d.RemainingArgs()
	if len(args) == 0 {
		return p.d.ArgErr()
	}
	for _, v := range args {
		code, err := parseGRPCCode(v)
		if err != nil {
			return p.d.Errf("unhealthy_grpc_status: %v", err)
		}
		p.h.UnhealthyGRPCStatus = append(p.h.UnhealthyGRPCStatus, code)
	}
	return nil
}

func readUnhealthyStatus(p *parser) error {
	args := p.d.RemainingArgs()
	if len(args) == 0 {
		return p.d.ArgErr()
	}
	for _, v := range args {
		code, err := parseStatus(v)
		if err != nil {
			return p.d.Errf("unhealthy_status: %v", err)
		}
		p.h.UnhealthyStatus = append(p.h.UnhealthyStatus, code)
	}
	return nil
}

// The request path.

func (p *parser) rewrite() *rewrite.Rewrite {
	if p.h.Rewrite == nil {
		p.h.Rewrite = new(rewrite.Rewrite)
	}
	return p.h.Rewrite
}

func readMethod(p *parser) error {
	var v string
	if !p.d.AllArgs(&v) {
		return p.d.ArgErr()
	}
	if !hasPlaceholder(v) && !validMethod(strings.ToUpper(v)) {
		return p.d.Errf("method: %q is not a method", v)
	}
	p.rewrite().Method = v
	return nil
}

func readRewrite(p *parser) error {
	var v string
	if !p.d.AllArgs(&v) {
		return p.d.ArgErr()
	}
	if !strings.HasPrefix(v, "/") && !strings.HasPrefix(v, "?") && !strings.HasPrefix(v, "{") {
		return p.d.Errf("rewrite: %q must start with / or ?", v)
	}
	p.rewrite().URI = v
	return nil
}

func readFlushInterval(p *parser) error {
	d := p.d
	var v string
	if !d.AllArgs(&v) {
		return d.ArgErr()
	}
	if v == "-1" {
		p.h.FlushInterval = -1
		return nil
	}
	dur, err := caddy.ParseDuration(v)
	if err != nil || dur < 0 {
		return d.Errf("flush_interval: %q is neither a duration nor -1", v)
	}
	p.h.FlushInterval = caddy.Duration(dur)
	return nil
}

func readTrustedProxies(p *parser) error {
	args := p.d.RemainingArgs()
	if len(args) == 0 {
		return p.d.ArgErr()
	}
	for _, v := range args {
		if v == "private_ranges" {
			p.h.TrustedProxies = append(p.h.TrustedProxies, privateRanges...)
			continue
		}
		if _, err := parseTrusted(v); err != nil {
			return p.d.Errf("trusted_proxies: %v", err)
		}
		p.h.TrustedProxies = append(p.h.TrustedProxies, v)
	}
	return nil
}

// readTransport reads `transport http { ... }`: the transport options, as
// reverse_proxy has them; other transports are not HTTP.
func readTransport(p *parser) error {
	d := p.d
	if !d.NextArg() {
		return d.ArgErr()
	}
	if kind := d.Val(); kind != "http" {
		return d.Errf("transport %s: lbpool speaks HTTP to its backends; use reverse_proxy (or php_fastcgi) for %s", kind, kind)
	}
	if d.NextArg() {
		return d.ArgErr()
	}
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		if err := p.readOption(true); err != nil {
			return err
		}
	}
	return nil
}

// The transport.

func (p *parser) keepAlive() *reverseproxy.KeepAlive {
	if p.h.KeepAlive == nil {
		p.h.KeepAlive = new(reverseproxy.KeepAlive)
	}
	return p.h.KeepAlive
}

// readKeepAlive reads `keepalive off|<idle timeout>`.
func readKeepAlive(p *parser) error {
	var v string
	if !p.d.AllArgs(&v) {
		return p.d.ArgErr()
	}
	if v == "off" {
		off := false
		p.keepAlive().Enabled = &off
		return nil
	}
	dur, err := caddy.ParseDuration(v)
	if err != nil || dur <= 0 {
		return p.d.Errf("keepalive: %q is neither off nor a positive duration", v)
	}
	p.keepAlive().IdleConnTimeout = caddy.Duration(dur)
	return nil
}

func readKeepAliveInterval(p *parser) error {
	dur, err := parsePositiveDuration(p.d)
	if err != nil {
		return err
	}
	p.keepAlive().ProbeInterval = dur
	return nil
}

func readKeepAliveCount(f func(*reverseproxy.KeepAlive) *int) func(*parser) error {
	return func(p *parser) error {
		var v string
		if !p.d.AllArgs(&v) {
			return p.d.ArgErr()
		}
		n, err := atoi(v)
		if err != nil || n > 1<<20 {
			return p.d.Errf("%s: %q is not a whole number, 0 or more", p.d.Val(), v)
		}
		*f(p.keepAlive()) = n
		return nil
	}
}

func readLocalAddress(p *parser) error {
	var v string
	if !p.d.AllArgs(&v) {
		return p.d.ArgErr()
	}
	if _, err := upstream.LocalAddr(v); err != nil {
		return p.d.Errf("local_address: %v", err)
	}
	p.h.LocalAddress = v
	return nil
}

func readResolvers(p *parser) error {
	args := p.d.RemainingArgs()
	if len(args) == 0 {
		return p.d.ArgErr()
	}
	for _, r := range args {
		if _, err := resolve.ParseServer(r); err != nil {
			return p.d.Errf("resolvers: %v", err)
		}
	}
	if p.h.Resolver == nil {
		p.h.Resolver = new(reverseproxy.UpstreamResolver)
	}
	p.h.Resolver.Addresses = append(p.h.Resolver.Addresses, args...)
	return nil
}

func readCompression(p *parser) error {
	var v string
	if !p.d.AllArgs(&v) {
		return p.d.ArgErr()
	}
	if v != "off" {
		return p.d.Errf("compression: only off (lbpool never asks backends for compression itself), got %q", v)
	}
	off := false
	p.h.Compression = &off
	return nil
}

func readVersions(p *parser) error {
	args := p.d.RemainingArgs()
	if len(args) == 0 {
		return p.d.ArgErr()
	}
	for _, v := range args {
		if err := checkVersion(v); err != nil {
			return p.d.Errf("versions: %v", err)
		}
	}
	p.h.Versions = args
	return nil
}

func readTLS(p *parser) error {
	d := p.d
	switch d.Val() {
	case "tls_curves":
		args := d.RemainingArgs()
		if len(args) == 0 {
			return d.ArgErr()
		}
		p.tls().Curves = args
	case "tls_renegotiation":
		var v string
		if !d.AllArgs(&v) {
			return d.ArgErr()
		}
		if v != "never" && v != "once" && v != "freely" {
			return d.Errf("tls_renegotiation: %q is not never, once or freely", v)
		}
		p.tls().Renegotiation = v
	default:
		if err := p.h.parseTLSOption(d); err != nil {
			return err
		}
	}
	p.transportTLS = p.transportTLS || d.Nesting() > 1
	return nil
}

func (p *parser) tls() *reverseproxy.TLSConfig {
	if p.h.TLS == nil {
		p.h.TLS = new(reverseproxy.TLSConfig)
	}
	return p.h.TLS
}

// readTLSOn reads a bare `tls`: HTTPS to backends written without a scheme.
func readTLSOn(p *parser) error {
	if p.d.NextArg() {
		return p.d.ArgErr()
	}
	p.tls()
	p.transportTLS = true
	return nil
}

func readExceptPorts(p *parser) error {
	args := p.d.RemainingArgs()
	if len(args) == 0 {
		return p.d.ArgErr()
	}
	for _, v := range args {
		if n, err := atoi(v); err != nil || n < 1 || n > 65535 {
			return p.d.Errf("tls_except_ports: %q is not a port", v)
		}
		p.exceptPorts[v] = true
	}
	p.tls()
	p.transportTLS = true
	return nil
}

// applyTransportTLS makes backends written without a scheme HTTPS when
// transport http has TLS on, except on tls_except_ports: what
// reverse_proxy's transport does, written into each backend's address.
func (p *parser) applyTransportTLS() {
	if !p.transportTLS {
		return
	}
	for i, bc := range p.h.Backends {
		if strings.Contains(bc.URL, "://") || strings.HasPrefix(bc.URL, unixPrefix) || hasPlaceholder(bc.URL) {
			continue
		}
		if _, port, err := net.SplitHostPort(bc.URL); err == nil && p.exceptPorts[port] {
			continue
		}
		p.h.Backends[i].URL = "https://" + bc.URL
	}
}

// validMethod: a token (RFC 9110 §9), as a request line carries it.
func validMethod(m string) bool {
	if m == "" {
		return false
	}
	for _, r := range m {
		if r < '!' || r > '~' || strings.ContainsRune(`"(),/:;<=>?@[\]{}`, r) {
			return false
		}
	}
	return true
}
