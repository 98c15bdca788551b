package leastconn

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy"
	"github.com/lbpool/lbpool/internal/upstream"
)

func TestPoolsShareATransportOnlyWithEqualTLSSettings(t *testing.T) {
	ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
	defer cancel()
	r := &registry{pools: make(map[string]*Pool), transports: make(map[upstream.Settings][]*sharedTransport)}
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

	// the same settings naming a CA file whose certificate was replaced
	// (a reload after a rotation) must not keep the old trust
	caFile := filepath.Join(t.TempDir(), "ca.pem")
	trustFile := &reverseproxy.TLSConfig{RootCAPEMFiles: []string{caFile}}
	writeSelfSignedCA(t, caFile, "first")
	first := transport(Handler{TLS: trustFile})
	if transport(Handler{TLS: &reverseproxy.TLSConfig{RootCAPEMFiles: []string{caFile}}}) != first {
		t.Error("the same CA file read twice gave two transports")
	}
	writeSelfSignedCA(t, caFile, "second")
	if transport(Handler{TLS: &reverseproxy.TLSConfig{RootCAPEMFiles: []string{caFile}}}) == first {
		t.Error("a replaced CA certificate kept the transport that trusts the old one")
	}
}

func writeSelfSignedCA(t *testing.T, path, name string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: name}, IsCA: true,
		BasicConstraintsValid: true, NotBefore: time.Now(), NotAfter: time.Now().Add(time.Hour),
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
}
