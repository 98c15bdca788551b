package leastconn

import (
	"crypto/hmac"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/binary"
	"fmt"
	"net"
	"net/http"
	"net/textproto"
	"strconv"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/lbpool/lbpool/internal/resolve"
	"golang.org/x/net/http/httpguts"
)

// Sticky sessions keep a client on the backend that served it first,
// through a cookie, as HAProxy's cookie persistence does. The first
// response of a session sets the cookie; its value is an opaque id of the
// backend: a MAC (HMAC-SHA256 keyed with the secret) of the backend's
// identity (scheme://host:port), so it names no address, is the same across
// reloads and restarts, and cannot be made up without the secret. A request
// whose cookie names a backend that is up and ready or draining goes there;
// any other request is picked by least connections and gets a new cookie.
//
// The request path looks a value up in a table built with each view
// (sorted by id; found by binary search, then the rest of the MAC compared
// in constant time), so discovered members are covered and the lookup takes
// no lock and allocates nothing.

// Sticky cookie defaults, also documented in docs/configuration.md.
const (
	DefaultStickyCookieName = "lb"
	DefaultStickyCookiePath = "/"
)

// The cookie value: stickyMACLen bytes of the MAC, base64url without
// padding. The first 8 bytes are the table's search key; the other 10 are
// compared in constant time.
const (
	stickyMACLen   = 18
	stickyValueLen = 24 // base64.RawURLEncoding.EncodedLen(stickyMACLen)
	stickyIDLen    = 8
)

// stickyDomain separates these MACs from any other use of the secret.
const stickyDomain = "lbpool sticky v1\x00"

// StickyCookie configures sticky sessions through a cookie.
type StickyCookie struct {
	// The cookie's name. Default: `lb`.
	Name string `json:"name,omitempty"`

	// The key the cookie's value is signed with (HMAC-SHA256), so that a
	// client cannot make up a value that names a backend. Placeholders
	// such as `{env.LB_SECRET}` are replaced when the config loads.
	// Without a secret the value is a plain hash of the backend's address,
	// as with reverse_proxy's cookie policy: a client that learns another
	// client's value can use it to reach that backend.
	Secret string `json:"secret,omitempty"`

	// How long the browser keeps the cookie (Max-Age). Default: a session
	// cookie, gone when the browser closes.
	MaxAge caddy.Duration `json:"max_age,omitempty"`

	// The cookie's Path. Default: `/`.
	Path string `json:"path,omitempty"`

	// The cookie's Domain. Default: none (the request's host only).
	Domain string `json:"domain,omitempty"`

	// Always mark the cookie Secure. Default: Secure when the request came
	// over TLS (directly, or through a trusted proxy that says https).
	Secure bool `json:"secure,omitempty"`

	// The cookie's SameSite: `lax`, `strict` or `none` (which is always
	// Secure, as browsers require). Default: `lax`.
	SameSite string `json:"samesite,omitempty"`
}

// stickyCookie is a checked StickyCookie, as the request path uses it.
type stickyCookie struct {
	name   string
	key    []byte
	attrs  string // "; Path=/; Max-Age=60; HttpOnly; SameSite=Lax"
	secure bool   // Secure on every response, not only over TLS
}

// provisionSticky resolves the sticky option into the spec, whose views
// then carry the cookie table.
func (h *Handler) provisionSticky(s *poolSpec) error {
	if h.Sticky == nil {
		return nil
	}
	sc, err := newStickyCookie(*h.Sticky)
	if err != nil {
		return fmt.Errorf("lbpool: sticky: %w", err)
	}
	s.sticky, h.sticky = sc, sc
	return nil
}

// newStickyCookie checks c and fills in defaults.
func newStickyCookie(c StickyCookie) (*stickyCookie, error) {
	setDefault(&c.Name, DefaultStickyCookieName)
	setDefault(&c.Path, DefaultStickyCookiePath)
	setDefault(&c.SameSite, "lax")
	if err := checkCookieName(c.Name); err != nil {
		return nil, err
	}
	if err := checkCookiePath(c.Path); err != nil {
		return nil, err
	}
	if c.Domain != "" {
		if err := checkCookieDomain(c.Domain); err != nil {
			return nil, err
		}
	}
	sameSite, err := sameSiteAttr(c.SameSite)
	if err != nil {
		return nil, err
	}
	maxAge := time.Duration(c.MaxAge)
	if maxAge != 0 && maxAge < time.Second {
		return nil, fmt.Errorf("max_age %v is shorter than a second", maxAge)
	}
	var attrs strings.Builder
	attrs.WriteString("; Path=" + c.Path)
	if c.Domain != "" {
		attrs.WriteString("; Domain=" + strings.TrimPrefix(c.Domain, "."))
	}
	if maxAge > 0 {
		attrs.WriteString("; Max-Age=" + strconv.FormatInt(int64(maxAge/time.Second), 10))
	}
	attrs.WriteString("; HttpOnly; SameSite=" + sameSite)
	secret := caddy.NewReplacer().ReplaceKnown(c.Secret, "")
	return &stickyCookie{
		name:   c.Name,
		key:    []byte(secret),
		attrs:  attrs.String(),
		secure: c.Secure || sameSite == "None",
	}, nil
}

// checkCookieName accepts an HTTP token (RFC 6265 cookie-name).
func checkCookieName(name string) error {
	if !httpguts.ValidHeaderFieldName(name) {
		return fmt.Errorf("cookie name %q is not a token (letters, digits and !#$%%&'*+-.^_`|~)", name)
	}
	return nil
}

// checkCookiePath accepts an absolute path of printable characters but ';'.
func checkCookiePath(path string) error {
	if !strings.HasPrefix(path, "/") {
		return fmt.Errorf("path %q must start with /", path)
	}
	for i := 0; i < len(path); i++ {
		if c := path[i]; c < 0x21 || c > 0x7e || c == ';' {
			return fmt.Errorf("path %q has a character a cookie path cannot carry", path)
		}
	}
	return nil
}

// checkCookieDomain accepts a DNS name (a leading dot is dropped, as
// browsers do) or an IP address.
func checkCookieDomain(domain string) error {
	if net.ParseIP(domain) != nil {
		return nil
	}
	if err := resolve.CheckName(strings.TrimPrefix(domain, ".")); err != nil {
		return fmt.Errorf("domain: %w", err)
	}
	return nil
}

// sameSiteAttr maps lax, strict and none to the attribute's value.
func sameSiteAttr(v string) (string, error) {
	switch v {
	case "lax":
		return "Lax", nil
	case "strict":
		return "Strict", nil
	case "none":
		return "None", nil
	}
	return "", fmt.Errorf("samesite %q is not lax, strict or none", v)
}

// stickyTable maps cookie values to the backends of one view.
type stickyTable struct {
	byID   []stickyEntry // sorted by id
	values []string      // the cookie value of each backend, by view index
}

type stickyEntry struct {
	id    uint64
	tag   [stickyMACLen - stickyIDLen]byte
	index int // in the view
}

// table builds the cookie table of a view's backends; nil without sticky.
func (s *stickyCookie) table(backends []*Backend) *stickyTable {
	if s == nil {
		return nil
	}
	t := &stickyTable{byID: make([]stickyEntry, len(backends)), values: make([]string, len(backends))}
	for i, b := range backends {
		mac := s.mac(b.addr.key)
		e := stickyEntry{id: binary.BigEndian.Uint64(mac[:stickyIDLen]), index: i}
		copy(e.tag[:], mac[stickyIDLen:])
		t.byID[i] = e
		t.values[i] = base64.RawURLEncoding.EncodeToString(mac[:])
	}
	// insertion sort: views are built off the request path, and rarely large
	for i := 1; i < len(t.byID); i++ {
		for j := i; j > 0 && t.byID[j].id < t.byID[j-1].id; j-- {
			t.byID[j], t.byID[j-1] = t.byID[j-1], t.byID[j]
		}
	}
	return t
}

// mac is the first stickyMACLen bytes of HMAC-SHA256(secret, identity).
func (s *stickyCookie) mac(identity string) [stickyMACLen]byte {
	m := hmac.New(sha256.New, s.key)
	m.Write([]byte(stickyDomain))
	m.Write([]byte(identity))
	var out [stickyMACLen]byte
	copy(out[:], m.Sum(nil))
	return out
}

// lookup returns the view index of the backend value names, or -1 when
// value is not one of the table's.
func (t *stickyTable) lookup(value string) int {
	if len(value) != stickyValueLen {
		return -1
	}
	var mac [stickyMACLen]byte
	if n, err := base64.RawURLEncoding.Strict().Decode(mac[:], []byte(value)); err != nil || n != stickyMACLen {
		return -1
	}
	id := binary.BigEndian.Uint64(mac[:stickyIDLen])
	lo, hi := 0, len(t.byID)
	for lo < hi {
		m := int(uint(lo+hi) >> 1)
		if t.byID[m].id < id {
			lo = m + 1
		} else {
			hi = m
		}
	}
	if lo == len(t.byID) || t.byID[lo].id != id {
		return -1
	}
	e := &t.byID[lo]
	if subtle.ConstantTimeCompare(e.tag[:], mac[stickyIDLen:]) != 1 {
		return -1
	}
	return e.index
}

// find reads the request's Cookie headers and returns the view index of
// the backend the first valid cookie of the name names, or -1. It takes
// the pairs as RFC 6265 writes them (name=value separated by "; "), a
// value in double quotes too, and allocates nothing.
func (t *stickyTable) find(cookies []string, name string) int {
	for _, line := range cookies {
		for line != "" {
			var pair string
			pair, line, _ = strings.Cut(line, ";")
			k, v, ok := strings.Cut(textproto.TrimString(pair), "=")
			if !ok || k != name {
				continue
			}
			if len(v) >= 2 && v[0] == '"' && v[len(v)-1] == '"' {
				v = v[1 : len(v)-1]
			}
			if i := t.lookup(v); i >= 0 {
				return i
			}
		}
	}
	return -1
}

// home returns the view index of the backend the request's cookie
// names, with its active count raised, when that backend may take the
// request: up, ready or draining, not leaving, and in the first priority
// group that can take traffic. Otherwise -1: the pick decides, and the
// response gets a new cookie.
func (s *stickyCookie) home(r *http.Request, v *view) int {
	i := v.sticky.find(r.Header["Cookie"], s.name)
	if i < 0 {
		return -1
	}
	b := v.backends[i]
	if b.flags.Load()&(flagDown|flagMaint|flagLeaving|flagEjected) != 0 || !v.inFirstUsableGroup(i) {
		return -1
	}
	if !b.take() {
		return -1 // full (max_conns): the session moves, as when its home is down
	}
	b.sticky.Add(1)
	return i
}

// inFirstUsableGroup reports whether no backend of a priority group before
// i's can take new traffic: a session on a backup member moves back once
// the primaries are up.
func (v *view) inFirstUsableGroup(i int) bool {
	if i < v.groups[0] {
		return true
	}
	start := 0
	for _, end := range v.groups {
		if i < end {
			break
		}
		start = end
	}
	for _, b := range v.backends[:start] {
		if b.flags.Load()&flagsUnavailable == 0 {
			return false
		}
	}
	return true
}

// setCookie adds the Set-Cookie of the backend at view index i to the
// response; dropCookie takes it back when that try failed before the
// response began.
func (s *stickyCookie) setCookie(w http.ResponseWriter, r *http.Request, v *view, i int) {
	c := s.name + "=" + v.sticky.values[i] + s.attrs
	if s.secure || r.TLS != nil || forwardedHTTPS(r) {
		c += "; Secure"
	}
	w.Header().Add("Set-Cookie", c)
}

func (s *stickyCookie) dropCookie(w http.ResponseWriter) {
	hdr := w.Header()
	switch n := len(hdr["Set-Cookie"]); n {
	case 0:
	case 1:
		delete(hdr, "Set-Cookie")
	default:
		hdr["Set-Cookie"] = hdr["Set-Cookie"][:n-1]
	}
}

// forwardedHTTPS: the request came through a proxy the server trusts, and
// that proxy says the client spoke https.
func forwardedHTTPS(r *http.Request) bool {
	trusted, _ := caddyhttp.GetVar(r.Context(), caddyhttp.TrustedProxyVarKey).(bool)
	if !trusted {
		return false
	}
	proto := r.Header.Values("X-Forwarded-Proto")
	if len(proto) == 0 {
		return false
	}
	last := proto[len(proto)-1]
	if i := strings.LastIndexByte(last, ','); i >= 0 {
		last = last[i+1:]
	}
	return strings.EqualFold(textproto.TrimString(last), "https")
}
