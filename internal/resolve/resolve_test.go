package resolve_test

import (
	"context"
	"errors"
	"net"
	"strings"
	"testing"

	"github.com/lbpool/lbpool/internal/lbtest"
	"github.com/lbpool/lbpool/internal/resolve"
	"github.com/miekg/dns"
)

func resolverOf(d *lbtest.DNS) *net.Resolver {
	return resolve.NewResolver([]string{d.Addr}, net.Dialer{Timeout: resolve.Timeout})
}

func hostPorts(as []resolve.Address) []string {
	var out []string
	for _, a := range as {
		out = append(out, a.HostPort())
	}
	return out
}

func TestLookupAGivesEachAddressOnceOnThePort(t *testing.T) {
	d := lbtest.NewDNS(t)
	d.SetA("app.test", "127.0.0.2", "127.0.0.3", "127.0.0.2")
	got, err := resolve.Lookup(context.Background(), resolverOf(d), resolve.Query{Kind: "a", Name: "app.test", Port: 8080, Network: "ip4", Max: 10}, true)
	if err != nil {
		t.Fatal(err)
	}
	if s := strings.Join(hostPorts(got), " "); s != "127.0.0.2:8080 127.0.0.3:8080" && s != "127.0.0.3:8080 127.0.0.2:8080" {
		t.Fatalf("got %s", s)
	}
}

func TestLookupSRVKeepsPriorityOrderWeightsAndTheBound(t *testing.T) {
	d := lbtest.NewDNS(t)
	d.SetA("a.test", "127.0.0.2")
	d.SetA("b.test", "127.0.0.3")
	d.SetA("c.test", "127.0.0.4")
	d.SetSRV("_http._tcp.app.test",
		lbtest.SRV{Target: "b.test", Port: 9002, Priority: 20, Weight: 5},
		lbtest.SRV{Target: "a.test", Port: 9001, Priority: 10, Weight: 3},
		lbtest.SRV{Target: "c.test", Port: 9003, Priority: 30, Weight: 1})
	q := resolve.Query{Kind: "srv", Name: "_http._tcp.app.test", Network: "ip4", Max: 10}
	got, err := resolve.Lookup(context.Background(), resolverOf(d), q, true)
	if err != nil {
		t.Fatal(err)
	}
	if s := strings.Join(hostPorts(got), " "); s != "127.0.0.2:9001 127.0.0.3:9002 127.0.0.4:9003" {
		t.Fatalf("got %s, want priority order", s)
	}
	if got[0].Priority != 10 || got[0].Weight != 3 || got[1].Priority != 20 || got[1].Weight != 5 {
		t.Fatalf("priorities and weights not carried: %+v", got)
	}
	q.Max = 2
	got, err = resolve.Lookup(context.Background(), resolverOf(d), q, true)
	if err != nil || len(got) != 2 {
		t.Fatalf("with Max 2: %v, %v; want the two first by priority", hostPorts(got), err)
	}
}

func TestLookupFailuresNameTheCauseNotTheSystemsServer(t *testing.T) {
	d := lbtest.NewDNS(t)
	d.SetRcode("broken.test", dns.RcodeServerFailure)
	_, err := resolve.Lookup(context.Background(), resolverOf(d), resolve.Query{Kind: "a", Name: "gone.test", Port: 80, Network: "ip", Max: 10}, true)
	var de *net.DNSError
	if !errors.As(err, &de) && err == nil {
		t.Fatal("an unknown name was answered")
	}
	if err != nil && strings.Contains(err.Error(), " on ") {
		t.Fatalf("the error names a server: %v", err)
	}
	d.SetSRV("_x._tcp.empty.test", lbtest.SRV{Target: "nowhere.test", Port: 0, Priority: 1, Weight: 1})
	_, err = resolve.Lookup(context.Background(), resolverOf(d), resolve.Query{Kind: "srv", Name: "_x._tcp.empty.test", Network: "ip", Max: 10}, true)
	if !errors.Is(err, resolve.ErrNoAddresses) {
		t.Fatalf("an answer with no usable record: %v, want ErrNoAddresses", err)
	}
}

func TestNamesServersAndNetworks(t *testing.T) {
	for _, name := range []string{"app.internal", "_http._tcp.app", "a-b.c_d"} {
		if err := resolve.CheckName(name); err != nil {
			t.Errorf("%q refused: %v", name, err)
		}
	}
	for _, name := range []string{"", "a..b", "a b", strings.Repeat("a", 64) + ".b", strings.Repeat("a.", 127) + "aa"} {
		if resolve.CheckName(name) == nil {
			t.Errorf("%q accepted", name)
		}
	}
	for in, want := range map[string]string{"127.0.0.1": "127.0.0.1:53", "127.0.0.1:5353": "127.0.0.1:5353", "[::1]:53": "[::1]:53", "::1": "[::1]:53"} {
		if got, err := resolve.ParseServer(in); err != nil || got != want {
			t.Errorf("ParseServer(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	for _, in := range []string{"dns.test", "127.0.0.1:0", "127.0.0.1:+53", "127.0.0.1:70000"} {
		if _, err := resolve.ParseServer(in); err == nil {
			t.Errorf("ParseServer(%q) accepted", in)
		}
	}
	for in, want := range map[string]string{"": "ip", "ipv4": "ip4", "ipv6": "ip6", "ipv4 ipv6": "ip"} {
		if got, err := resolve.Network(strings.Fields(in)); err != nil || got != want {
			t.Errorf("Network(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	if _, err := resolve.Network([]string{"ipv5"}); err == nil {
		t.Error("ipv5 accepted")
	}
}
