package leastconn

import (
	"bytes"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy"
	"github.com/caddyserver/caddy/v2/modules/caddytls"
)

// HTTPS backends take reverse_proxy's TLS settings: the same JSON (the
// `tls` object of its `transport http`), the same Caddyfile options, and
// Caddy's own code to turn them into a client config. Traffic, health
// checks and stats fetches share the pool's transport, so they share its
// TLS too. Pools whose TLS settings are equal share one transport (see
// registry.transportFor).

// backendTLS is a pool's resolved TLS client settings.
type backendTLS struct {
	config  *tls.Config   // never nil
	key     string        // the settings as JSON: part of the transport's key
	timeout time.Duration // handshake timeout; 0 means the transport's default
}

// provisionTLS builds the pool's TLS client config. A trust pool module is
// loaded with the handler's context, as reverse_proxy's transport does.
func (h *Handler) provisionTLS(ctx caddy.Context, s *poolSpec) error {
	cfg := h.TLS
	if h.TLSInsecureSkipVerify { // the older top-level field
		merged := reverseproxy.TLSConfig{}
		if cfg != nil {
			merged = *cfg
		}
		merged.InsecureSkipVerify = true
		cfg = &merged
	}
	if cfg == nil {
		s.tls = backendTLS{config: new(tls.Config)}
		return nil
	}
	if cfg.ExceptPorts != nil {
		return fmt.Errorf("lbpool: tls: except_ports is not supported (give each backend its scheme)")
	}
	key, err := json.Marshal(cfg)
	if err != nil {
		return fmt.Errorf("lbpool: tls: %v", err)
	}
	var compact bytes.Buffer
	if err := json.Compact(&compact, key); err == nil {
		key = compact.Bytes()
	}
	tc, err := cfg.MakeTLSClientConfig(ctx)
	if err != nil {
		return fmt.Errorf("lbpool: tls: %v", err)
	}
	if tc == nil {
		tc = new(tls.Config)
	}
	if cfg.HandshakeTimeout < 0 {
		return fmt.Errorf("lbpool: tls: handshake_timeout must be positive")
	}
	s.tls = backendTLS{config: tc, key: string(key), timeout: time.Duration(cfg.HandshakeTimeout)}
	return nil
}

// sameTLS tells whether two client configs made from equal settings trust
// the same roots and present the same certificates (files may have changed
// between two loads of one config).
func sameTLS(a, b *tls.Config) bool {
	switch {
	case (a.RootCAs == nil) != (b.RootCAs == nil):
		return false
	case a.RootCAs != nil && !a.RootCAs.Equal(b.RootCAs):
		return false
	case len(a.Certificates) != len(b.Certificates):
		return false
	}
	for i := range a.Certificates {
		ca, cb := a.Certificates[i].Certificate, b.Certificates[i].Certificate
		if len(ca) != len(cb) {
			return false
		}
		for j := range ca {
			if !bytes.Equal(ca[j], cb[j]) {
				return false
			}
		}
	}
	return true
}

// parseTLSOption reads one tls_* option into h.TLS, with reverse_proxy's
// syntax:
//
//	tls_trust_pool <module> [...]
//	tls_trusted_ca_certs <pem_files...>
//	tls_client_auth <automate_name> | <cert_file> <key_file>
//	tls_server_name <name>
//	tls_timeout <duration>
//	tls_insecure_skip_verify
func (h *Handler) parseTLSOption(d *caddyfile.Dispenser) error {
	if h.TLS == nil {
		h.TLS = new(reverseproxy.TLSConfig)
	}
	t := h.TLS
	opt := d.Val()
	switch opt {
	case "tls_insecure_skip_verify":
		if d.NextArg() {
			return d.ArgErr()
		}
		t.InsecureSkipVerify = true

	case "tls_server_name":
		if !d.AllArgs(&t.ServerName) {
			return d.ArgErr()
		}
		if t.ServerName == "" {
			return d.Err("tls_server_name: the name must not be empty")
		}

	case "tls_timeout":
		dur, err := parsePositiveDuration(d)
		if err != nil {
			return err
		}
		t.HandshakeTimeout = dur

	case "tls_client_auth":
		args := d.RemainingArgs()
		switch len(args) {
		case 1:
			t.ClientCertificateAutomate = args[0]
		case 2:
			t.ClientCertificateFile, t.ClientCertificateKeyFile = args[0], args[1]
		default:
			return d.Errf("tls_client_auth: want <automate_name> or <cert_file> <key_file>, got %d arguments", len(args))
		}

	case "tls_trusted_ca_certs":
		args := d.RemainingArgs()
		if len(args) == 0 {
			return d.ArgErr()
		}
		if t.CARaw != nil {
			return d.Err("cannot specify both 'tls_trust_pool' and 'tls_trusted_ca_certs'")
		}
		t.RootCAPEMFiles = append(t.RootCAPEMFiles, args...)

	case "tls_trust_pool":
		if !d.NextArg() {
			return d.ArgErr()
		}
		stem := d.Val()
		if t.CARaw != nil {
			return d.Err("cannot specify 'tls_trust_pool' twice")
		}
		if len(t.RootCAPEMFiles) > 0 {
			return d.Err("cannot specify both 'tls_trust_pool' and 'tls_trusted_ca_certs'")
		}
		unm, err := caddyfile.UnmarshalModule(d, "tls.ca_pool.source."+stem)
		if err != nil {
			return err
		}
		if _, ok := unm.(caddytls.CA); !ok {
			return d.Errf("tls_trust_pool: module %s is not a certificate pool", stem)
		}
		t.CARaw = caddyconfig.JSONModuleObject(unm, "provider", stem, nil)

	default:
		return d.Errf("unrecognized lbpool option '%s'", opt)
	}
	return nil
}
