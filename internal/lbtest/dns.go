package lbtest

import (
	"fmt"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/miekg/dns"
)

// DNS is a real DNS server on 127.0.0.1 (UDP and TCP on one port) whose
// answers the test sets: A/AAAA, SRV, CNAME, or an error code. A name it
// was not told about is NXDOMAIN. An answer too large for a UDP reply is
// truncated, so resolvers ask again over TCP, as with a real server.
type DNS struct {
	Addr    string       // 127.0.0.1:port, for the resolvers option
	Queries atomic.Int64 // questions answered

	mu      sync.Mutex
	records map[string][]dns.RR // by lowercased FQDN
	rcodes  map[string]int
	servers []*dns.Server
}

// SRV is one SRV record of a DNS answer.
type SRV struct {
	Target           string
	Port             uint16
	Priority, Weight uint16
}

// NewDNS starts a DNS server on a free port of 127.0.0.1; it stops with the
// test.
func NewDNS(t testing.TB) *DNS {
	t.Helper()
	d := &DNS{records: make(map[string][]dns.RR), rcodes: make(map[string]int)}
	var err error
	for range 20 {
		if err = d.listen(FreePort(t)); err == nil {
			t.Cleanup(d.Stop)
			return d
		}
	}
	t.Fatalf("dns server: %v", err)
	return nil
}

// listen starts the UDP and TCP servers on port.
func (d *DNS) listen(port int) error {
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	pc, err := net.ListenPacket("udp", addr)
	if err != nil {
		return err
	}
	l, err := net.Listen("tcp", addr)
	if err != nil {
		pc.Close()
		return err
	}
	handler := dns.HandlerFunc(d.answer)
	udp := &dns.Server{PacketConn: pc, Handler: handler}
	tcp := &dns.Server{Listener: l, Handler: handler, ReadTimeout: 2 * time.Second}
	var started sync.WaitGroup
	started.Add(2)
	udp.NotifyStartedFunc, tcp.NotifyStartedFunc = started.Done, started.Done
	go func() { _ = udp.ActivateAndServe() }()
	go func() { _ = tcp.ActivateAndServe() }()
	started.Wait()
	d.mu.Lock()
	d.Addr = addr
	d.servers = []*dns.Server{udp, tcp}
	d.mu.Unlock()
	return nil
}

// Stop stops answering: the port is closed, queries time out or are refused.
func (d *DNS) Stop() {
	d.mu.Lock()
	servers := d.servers
	d.servers = nil
	d.mu.Unlock()
	for _, s := range servers {
		_ = s.Shutdown()
	}
}

// Restart answers again on the same address.
func (d *DNS) Restart(t testing.TB) {
	t.Helper()
	var port int
	if _, p, err := net.SplitHostPort(d.Addr); err == nil {
		_, _ = fmt.Sscan(p, &port)
	}
	var err error
	for range 100 {
		if err = d.listen(port); err == nil {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("dns restart: %v", err)
}

func fqdn(name string) string { return dns.Fqdn(strings.ToLower(name)) }

// SetA makes name answer with these addresses (A for IPv4, AAAA for IPv6),
// and clears an error code set for it. No addresses: an empty answer.
func (d *DNS) SetA(name string, ips ...string) {
	var rrs []dns.RR
	hdr := func(t uint16) dns.RR_Header {
		return dns.RR_Header{Name: fqdn(name), Rrtype: t, Class: dns.ClassINET, Ttl: 1}
	}
	for _, s := range ips {
		ip := net.ParseIP(s)
		if ip4 := ip.To4(); ip4 != nil {
			rrs = append(rrs, &dns.A{Hdr: hdr(dns.TypeA), A: ip4})
		} else {
			rrs = append(rrs, &dns.AAAA{Hdr: hdr(dns.TypeAAAA), AAAA: ip})
		}
	}
	d.set(name, rrs)
}

// SetSRV makes name answer with these SRV records.
func (d *DNS) SetSRV(name string, records ...SRV) {
	var rrs []dns.RR
	for _, r := range records {
		rrs = append(rrs, &dns.SRV{
			Hdr:    dns.RR_Header{Name: fqdn(name), Rrtype: dns.TypeSRV, Class: dns.ClassINET, Ttl: 1},
			Target: fqdn(r.Target), Port: r.Port, Priority: r.Priority, Weight: r.Weight,
		})
	}
	d.set(name, rrs)
}

// SetCNAME makes name an alias of target.
func (d *DNS) SetCNAME(name, target string) {
	d.set(name, []dns.RR{&dns.CNAME{
		Hdr:    dns.RR_Header{Name: fqdn(name), Rrtype: dns.TypeCNAME, Class: dns.ClassINET, Ttl: 1},
		Target: fqdn(target),
	}})
}

// SetRcode makes every question about name fail with rcode
// (dns.RcodeServerFailure, dns.RcodeNameError).
func (d *DNS) SetRcode(name string, rcode int) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.rcodes[fqdn(name)] = rcode
}

func (d *DNS) set(name string, rrs []dns.RR) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.records[fqdn(name)] = rrs
	delete(d.rcodes, fqdn(name))
}

// answer follows CNAMEs within the zone (at most 8, as a loop must end)
// and answers with the records of the question's type.
func (d *DNS) answer(w dns.ResponseWriter, req *dns.Msg) {
	d.Queries.Add(1)
	m := new(dns.Msg)
	m.SetReply(req)
	m.Authoritative = true
	if len(req.Question) != 1 {
		m.Rcode = dns.RcodeFormatError
		_ = w.WriteMsg(m)
		return
	}
	q := req.Question[0]
	name := strings.ToLower(q.Name)
	d.mu.Lock()
	for hops := 0; hops < 8; hops++ {
		if rcode, ok := d.rcodes[name]; ok {
			m.Rcode = rcode
			break
		}
		rrs, ok := d.records[name]
		if !ok {
			m.Rcode = dns.RcodeNameError
			break
		}
		if len(rrs) == 1 && rrs[0].Header().Rrtype == dns.TypeCNAME && q.Qtype != dns.TypeCNAME {
			m.Answer = append(m.Answer, rrs[0])
			name = rrs[0].(*dns.CNAME).Target
			continue
		}
		for _, rr := range rrs {
			if rr.Header().Rrtype == q.Qtype {
				m.Answer = append(m.Answer, rr)
			}
		}
		break
	}
	d.mu.Unlock()
	if _, udp := w.RemoteAddr().(*net.UDPAddr); udp {
		size := dns.MinMsgSize
		if opt := req.IsEdns0(); opt != nil {
			size = int(opt.UDPSize())
		}
		m.Truncate(size)
	}
	_ = w.WriteMsg(m)
}

// NewBackendsOnLoopback starts n backends on 127.0.0.2, 127.0.0.3, ... all
// on one port, as the addresses of one DNS name; it returns them and the
// port. handler is as in NewBackend.
func NewBackendsOnLoopback(t testing.TB, n int, handler func(name string) http.HandlerFunc) ([]*Backend, int) {
	t.Helper()
	for range 20 {
		port := FreePort(t)
		var ls []net.Listener
		for i := range n {
			l, err := net.Listen("tcp", fmt.Sprintf("127.0.0.%d:%d", i+2, port))
			if err != nil {
				break
			}
			ls = append(ls, l)
		}
		if len(ls) < n {
			for _, l := range ls {
				l.Close()
			}
			continue
		}
		out := make([]*Backend, n)
		for i, l := range ls {
			name := fmt.Sprintf("m%d", i+2)
			var h http.HandlerFunc
			if handler != nil {
				h = handler(name)
			}
			out[i] = newBackendOn(t, name, l, h)
		}
		return out, port
	}
	t.Fatalf("no port free on 127.0.0.2-%d", n+1)
	return nil, 0
}

// IP is the backend's IP address.
func (b *Backend) IP() string {
	host, _, _ := net.SplitHostPort(b.addr)
	return host
}
