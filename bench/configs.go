package main

import (
	"fmt"
	"strings"
)

// lbConfig is one load balancer configuration under test. All of them run in
// the same Caddy binary in front of the same backends with equivalent
// settings: active checks of /health every 20s with a 2s timeout (lbpool
// always checks, so reverse_proxy does too), a 3s dial timeout, up to 1024
// idle connections per backend (lbpool's transport; reverse_proxy keeps 32 by
// default), no transparent compression, and no access log.
type lbConfig struct {
	Name  string `json:"name"`  // short, for tables and flags
	Label string `json:"label"` // for the chart
	// handler is the site's handler directive for these backends.
	handler func(backends []string) string
	// proxies is false for the respond reference, which has no backends.
	proxies bool
}

// baseline is the configuration every ratio is taken against.
const baseline = "rp_least_conn"

var allConfigs = []lbConfig{
	{Name: "lbpool", Label: "lbpool", proxies: true, handler: lbpoolHandler("least_conn")},
	{Name: "lbpool_least_time", Label: "lbpool least_time", proxies: true, handler: lbpoolHandler("least_time")},
	{Name: "rp_least_conn", Label: "reverse_proxy least_conn", proxies: true, handler: reverseProxyHandler("least_conn")},
	{Name: "rp_round_robin", Label: "reverse_proxy round_robin", proxies: true, handler: reverseProxyHandler("round_robin")},
	{Name: "respond", Label: "respond (no proxy)", proxies: false, handler: respondHandler},
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
func lbpoolHandler(policy string) func([]string) string {
	line := ""
	if policy != "least_conn" {
		line = "\n\t\tlb_policy " + policy
	}
	return func(backends []string) string {
		return fmt.Sprintf(`lbpool %s {
		name bench%s
		health_uri /health
		health_interval 20s
		health_timeout 2s
		dial_timeout 3s
	}`, strings.Join(backends, " "), line)
	}
}

func reverseProxyHandler(policy string) func([]string) string {
	return func(backends []string) string {
		return fmt.Sprintf(`reverse_proxy %s {
		lb_policy %s
		health_uri /health
		health_interval 20s
		health_timeout 2s
		transport http {
			dial_timeout 3s
			keepalive_idle_conns_per_host 1024
			compression off
		}
	}`, strings.Join(backends, " "), policy)
	}
}

// respondHandler answers from Caddy itself with as many body bytes as a
// backend sends: the cost of Caddy without any proxying.
func respondHandler([]string) string {
	return fmt.Sprintf(`respond "%s" 200`, strings.Repeat("x", bodyLength))
}

// caddyfile is the whole Caddyfile of a run: the admin endpoint (for
// profiles), plain HTTP on 127.0.0.1 only, nothing written to disk.
func caddyfile(c lbConfig, adminPort, sitePort int, backends []string) string {
	return fmt.Sprintf(`{
	admin 127.0.0.1:%d
	auto_https off
	persist_config off
	grace_period 1s
}

:%d {
	bind 127.0.0.1
	%s
}
`, adminPort, sitePort, c.handler(backends))
}
