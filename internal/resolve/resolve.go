// Package resolve looks up the members of a DNS source: the addresses of a
// name's A and AAAA records, or of the targets of its SRV records in
// priority order. It returns address lists; what a pool makes of them
// (members joining, leaving, draining) is the pool's business.
package resolve

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"strconv"
	"strings"
	"time"
)

// Timeout bounds one lookup (SRV and the lookups of its targets).
const Timeout = 5 * time.Second

// Query is what one lookup asks.
type Query struct {
	Kind    string // "a" (A and AAAA records) or "srv"
	Name    string // the name to look up
	Port    int    // the addresses' port (kind a only)
	Network string // ip, ip4 or ip6 (see Network)
	Max     int    // at most this many addresses; records past it are left out
}

// Address is one address of an answer.
type Address struct {
	IP       net.IP
	Port     int
	Priority int    // the SRV record's priority (0 for kind a)
	Weight   uint16 // the SRV record's weight (0 for kind a)
}

// HostPort is the address as host:port.
func (a Address) HostPort() string { return net.JoinHostPort(a.IP.String(), strconv.Itoa(a.Port)) }

// ErrNoAddresses is a successful answer without a usable address: a failure
// too, so that it cannot empty a pool.
var ErrNoAddresses = errors.New("no addresses in the answer")

// Lookup asks r for q's addresses, each address and port once, in the
// order of the answer (SRV records by priority). With servers of its own
// (asked), an error no longer names the system's server, which r did not
// ask.
func Lookup(ctx context.Context, r *net.Resolver, q Query, asked bool) ([]Address, error) {
	answer, err := lookup(ctx, r, q)
	var de *net.DNSError
	if asked && errors.As(err, &de) && de.Server != "" {
		err = errors.New(strings.Replace(err.Error(), " on "+de.Server, "", 1))
	}
	return answer, err
}

func lookup(ctx context.Context, r *net.Resolver, q Query) ([]Address, error) {
	ctx, cancel := context.WithTimeout(ctx, Timeout)
	defer cancel()
	var out []Address
	seen := make(map[string]bool)
	add := func(a Address) {
		if k := a.HostPort(); !seen[k] {
			seen[k] = true
			out = append(out, a)
		}
	}
	switch q.Kind {
	case "a":
		ips, err := r.LookupIP(ctx, q.Network, q.Name)
		if err != nil {
			return nil, err
		}
		for _, ip := range ips {
			add(Address{IP: ip, Port: q.Port})
		}
	case "srv":
		_, records, err := r.LookupSRV(ctx, "", "", q.Name)
		if err != nil {
			return nil, err
		}
		for _, rec := range records {
			if len(out) >= q.Max || rec.Port == 0 {
				// records come by priority: the ones past the bound are backups
				continue
			}
			target := strings.TrimSuffix(rec.Target, ".")
			ips, err := targetIPs(ctx, r, q.Network, target)
			if err != nil {
				return nil, fmt.Errorf("srv target %s: %w", rec.Target, err)
			}
			for _, ip := range ips {
				add(Address{IP: ip, Port: int(rec.Port), Priority: int(rec.Priority), Weight: rec.Weight})
			}
		}
	default:
		return nil, fmt.Errorf("unknown kind %q", q.Kind)
	}
	if len(out) == 0 {
		return nil, ErrNoAddresses
	}
	return out, nil
}

// targetIPs resolves an SRV target, which may be an address already.
func targetIPs(ctx context.Context, r *net.Resolver, network, target string) ([]net.IP, error) {
	if ip := net.ParseIP(target); ip != nil {
		return []net.IP{ip}, nil
	}
	return r.LookupIP(ctx, network, target)
}

// NewResolver asks the given DNS servers (host:port), one at random per
// query.
func NewResolver(servers []string, dialer net.Dialer) *net.Resolver {
	return &net.Resolver{
		PreferGo: true,
		Dial: func(ctx context.Context, network, _ string) (net.Conn, error) {
			// network is udp, or tcp when an answer was truncated
			return dialer.DialContext(ctx, network, servers[rand.N(len(servers))])
		},
	}
}

// CheckName accepts a DNS name: dot-separated labels of letters, digits,
// '-' and '_', each 1-63 long, 253 in all.
func CheckName(name string) error {
	if name == "" {
		return errors.New("missing DNS name")
	}
	if len(name) > 253 {
		return fmt.Errorf("DNS name %q is longer than 253 characters", name)
	}
	for _, label := range strings.Split(name, ".") {
		if label == "" || len(label) > 63 {
			return fmt.Errorf("%q is not a DNS name (empty or over-long label)", name)
		}
		for _, r := range label {
			if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_') {
				return fmt.Errorf("%q is not a DNS name (character %q)", name, r)
			}
		}
	}
	return nil
}

// ParseServer accepts a DNS server as ip or ip:port ([v6]:port) and
// returns host:port, port 53 when none is given.
func ParseServer(v string) (string, error) {
	host, port, err := net.SplitHostPort(v)
	if err != nil {
		host, port = strings.TrimSuffix(strings.TrimPrefix(v, "["), "]"), "53"
	}
	if net.ParseIP(host) == nil {
		return "", fmt.Errorf("resolver %q: not an IP address (with an optional port)", v)
	}
	if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 || strings.TrimLeft(port, "0123456789") != "" {
		return "", fmt.Errorf("resolver %q: bad port %q", v, port)
	}
	return net.JoinHostPort(host, port), nil
}

// Network maps address families (ipv4, ipv6) to the network LookupIP takes.
func Network(versions []string) (string, error) {
	var v4, v6 bool
	for _, v := range versions {
		switch v {
		case "ipv4":
			v4 = true
		case "ipv6":
			v6 = true
		default:
			return "", fmt.Errorf("versions: unknown %q (use ipv4, ipv6)", v)
		}
	}
	switch {
	case v4 && !v6:
		return "ip4", nil
	case v6 && !v4:
		return "ip6", nil
	}
	return "ip", nil
}
