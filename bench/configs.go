package main

import (
	"fmt"
	"slices"
	"strings"
)

// lbConfig is one load balancer configuration under test. All of them run in
// the same Caddy binary in front of the same backends with equivalent
// settings: active checks of /health every 20s with a 2s timeout (lbpool
// always checks, so reverse_proxy does too), a 3s dial timeout, up to 1024
// idle connections per backend (lbpool's transport; reverse_proxy keeps 32 by
// default), no transparent compression, and no access log (but in the
// options scenario, where every proxy writes one; see siteSpec).
type lbConfig struct {
	Name  string `json:"name"`  // short, for tables and flags
	Label string `json:"label"` // for the chart
	// handler is the site's handler directive for these backends.
	handler func(s siteSpec) string
	// proxies is false for the respond reference, which has no backends.
	proxies bool
	// upstream is the placeholder naming the backend that served a
	// request, for the access log.
	upstream string
	// peer is set for a load balancer other than Caddy (HAProxy, nginx),
	// which only the scenarios comparing with peers run (see grpc.go).
	peer bool
}

// siteSpec is what a run's Caddyfile is made for.
type siteSpec struct {
	backends []string // host:port
	// tls, if set, makes the backends HTTPS, with HTTP version "1.1" or "2".
	tls     *certFiles
	version string
	// accessLog, if set, is the file of an access log; with logAppend it
	// names each request's backend (log_append upstream ...).
	accessLog string
	logAppend bool
	// clientTLS makes the site HTTPS (HTTP/1.1 and HTTP/2) with a
	// certificate from Caddy's internal CA, for the h2_clients scenario.
	clientTLS bool
}

// urls are the backends as the handler lists them.
func (s siteSpec) urls() string {
	if s.tls == nil {
		return strings.Join(s.backends, " ")
	}
	return "https://" + strings.Join(s.backends, " https://")
}

// baseline is the configuration every ratio is taken against.
const baseline = "rp_least_conn"

// optionsConfig is lbpool with its second-wave options all on; only the
// options scenario runs it.
const optionsConfig = "lbpool_options"

const (
	lbpoolUpstream = "{http.lbpool.backend.hostport}"
	rpUpstream     = "{http.reverse_proxy.upstream.hostport}"
)

var allConfigs = []lbConfig{
	{Name: "lbpool", Label: "lbpool", proxies: true, handler: lbpoolHandler("least_conn"), upstream: lbpoolUpstream},
	{Name: "lbpool_least_time", Label: "lbpool least_time", proxies: true, handler: lbpoolHandler("least_time"), upstream: lbpoolUpstream},
	{Name: optionsConfig, Label: "lbpool all options", proxies: true, handler: lbpoolOptionsHandler, upstream: lbpoolUpstream},
	{Name: "rp_least_conn", Label: "reverse_proxy least_conn", proxies: true, handler: reverseProxyHandler("least_conn"), upstream: rpUpstream},
	{Name: "rp_round_robin", Label: "reverse_proxy round_robin", proxies: true, handler: reverseProxyHandler("round_robin"), upstream: rpUpstream},
	{Name: "respond", Label: "respond (no proxy)", proxies: false, handler: respondHandler},
	{Name: peerHAProxy, Label: "HAProxy", proxies: true, peer: true},
	{Name: peerNginx, Label: "nginx", proxies: true, peer: true},
}

// configNames lists the known configurations, for errors.
func configNames() string {
	var names []string
	for _, c := range allConfigs {
		names = append(names, c.Name)
	}
	return strings.Join(names, ", ")
}

func configByName(name string) (lbConfig, bool) {
	for _, c := range allConfigs {
		if c.Name == name {
			return c, true
		}
	}
	return lbConfig{}, false
}

// lbpoolHandler is lbpool with an lb_policy; least_conn, the default, is
// left out of the Caddyfile so that lbpool runs as configured without one.
// lbpool speaks HTTP/2 to an HTTPS backend whenever the backend offers it
// (ALPN) and has no option to choose the version, so the https scenarios
// choose it on the backends' side.
func lbpoolHandler(policy string, extra ...string) func(siteSpec) string {
	var lines []string
	if policy != "least_conn" {
		lines = append(lines, "lb_policy "+policy)
	}
	lines = append(lines, extra...)
	return func(s siteSpec) string {
		opts := lines
		if s.tls != nil {
			opts = append(slices.Clone(lines), "tls_trust_pool file "+s.tls.CA)
		}
		return fmt.Sprintf(`lbpool %s {
		name bench
		health_uri /health
		health_interval 20s
		health_timeout 2s
		dial_timeout 3s%s
	}`, s.urls(), optionLines(opts))
	}
}

// lbpoolOptionsHandler is lbpool with the second wave's options on the
// request path all on at once: headers with placeholders, sticky sessions,
// least_time and a connection cap (the access log is the site's; see
// caddyfile).
var lbpoolOptionsHandler = lbpoolHandler("least_time",
	"max_conns 1000",
	"sticky cookie",
	"header_up X-Test "+lbpoolUpstream,
	"header_up Host "+lbpoolUpstream,
)

func optionLines(lines []string) string {
	var b strings.Builder
	for _, l := range lines {
		b.WriteString("\n\t\t" + l)
	}
	return b.String()
}

func reverseProxyHandler(policy string) func(siteSpec) string {
	return func(s siteSpec) string {
		var tlsLines []string
		if s.tls != nil {
			tlsLines = []string{"tls_trust_pool file " + s.tls.CA, "versions " + s.version}
		}
		return fmt.Sprintf(`reverse_proxy %s {
		lb_policy %s
		health_uri /health
		health_interval 20s
		health_timeout 2s
		transport http {
			dial_timeout 3s
			keepalive_idle_conns_per_host 1024
			compression off%s
		}
	}`, s.urls(), policy, strings.ReplaceAll(optionLines(tlsLines), "\n", "\n\t"))
	}
}

// respondHandler answers from Caddy itself with as many body bytes as a
// backend sends: the cost of Caddy without any proxying. It does not read a
// request body; Caddy's HTTP server (net/http) reads and discards what is
// left of a small one before it reads the next request on the connection.
func respondHandler(siteSpec) string {
	return fmt.Sprintf(`respond "%s" 200`, strings.Repeat("x", bodyLength))
}

// caddyfile is the whole Caddyfile of a run: the admin endpoint (for
// profiles and goroutine counts), plain HTTP on 127.0.0.1 only, nothing
// written to disk but the access log, if the spec asks for one.
func caddyfile(c lbConfig, adminPort, sitePort int, s siteSpec) string {
	log := ""
	if s.accessLog != "" {
		// no rolling: a roll compresses the old file inside Caddy, in the
		// middle of a measured window
		log = fmt.Sprintf(`log {
		output file %s {
			roll_disabled
		}
		format json
	}
	`, s.accessLog)
		if s.logAppend && c.upstream != "" {
			log += fmt.Sprintf("log_append upstream %s\n\t", c.upstream)
		}
	}
	global, site, tls := "auto_https off", fmt.Sprintf(":%d", sitePort), ""
	if s.clientTLS {
		// Caddy's internal CA issues the site's certificate (for the IP
		// address) at start; the load generator trusts its root, which is
		// not installed anywhere. No HTTP/3, and no redirect listener.
		global = "auto_https disable_redirects\n\tskip_install_trust\n\tservers {\n\t\tprotocols h1 h2\n\t}"
		site, tls = fmt.Sprintf("https://127.0.0.1:%d", sitePort), "tls internal\n\t"
	}
	return fmt.Sprintf(`{
	admin 127.0.0.1:%d
	%s
	persist_config off
	grace_period 1s
}

%s {
	bind 127.0.0.1
	%s%s%s
}
`, adminPort, global, site, tls, log, c.handler(s))
}
