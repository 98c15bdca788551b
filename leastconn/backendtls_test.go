package leastconn

import (
	"context"
	"testing"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy"
)

func TestPoolsShareATransportOnlyWithEqualTLSSettings(t *testing.T) {
	ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
	defer cancel()
	r := &registry{pools: make(map[string]*Pool), transports: make(map[transportSettings][]*sharedTransport)}
	transport := func(h Handler) *sharedTransport {
		t.Helper()
		h.Backends = []BackendConfig{{URL: "https://127.0.0.1:1"}}
		s, err := h.poolSpec()
		if err != nil {
			t.Fatal(err)
		}
		if err := h.provisionTLS(ctx, s); err != nil {
			t.Fatal(err)
		}
		return r.transportFor(s.transportSettings(), s.tls.config)
	}
	named := func(name string) *reverseproxy.TLSConfig { return &reverseproxy.TLSConfig{ServerName: name} }

	plain := transport(Handler{})
	if transport(Handler{}) != plain {
		t.Error("two pools without TLS settings got two transports")
	}
	a := transport(Handler{TLS: named("a.test")})
	if a == plain || transport(Handler{TLS: named("a.test")}) != a {
		t.Error("equal TLS settings must share a transport, and only those")
	}
	if b := transport(Handler{TLS: named("b.test")}); b == a || b.TLSClientConfig.ServerName != "b.test" {
		t.Error("another server name must get its own transport")
	}
	legacy := transport(Handler{TLSInsecureSkipVerify: true})
	if legacy == plain || transport(Handler{TLS: &reverseproxy.TLSConfig{InsecureSkipVerify: true}}) != legacy {
		t.Error("tls_insecure_skip_verify and tls.insecure_skip_verify must be one setting")
	}
	if !legacy.TLSClientConfig.InsecureSkipVerify {
		t.Error("insecure_skip_verify did not reach the transport")
	}
}
