package leastconn

import (
	"net"
	"net/http"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/caddyserver/certmagic"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// An upgraded connection (a websocket) is copied by two goroutines of its
// own once the handler has returned (tunnel.go), so Caddy, which writes a
// request's access log line when its handler returns, would log it when it
// opened, with the handshake's duration. lbpool skips that line and writes
// Caddy's own when the tunnel ends: the same loggers (the server's logs
// settings, log_name, log_skip, log_level), message and fields, with the
// tunnel's whole duration and the bytes it carried. Fields that other
// handlers add after the proxy returns (log_append) are not on it.

// httpAppLogger names the http app's logger, which Caddy's access loggers
// are named under ("http.log.access...").
type httpAppLogger struct{}

func (httpAppLogger) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{ID: "http", New: func() caddy.Module { return httpAppLogger{} }}
}

// tunnelLog is the access log line of one tunnel, its request already
// encoded, waiting for the tunnel to end.
type tunnelLog struct {
	loggers []*zap.Logger
	level   zapcore.Level
	start   time.Time
	userID  string
	status  int
	headers zapcore.Field
}

// startTunnelLog takes the access log line of r over from Caddy, when Caddy
// would write one: it is written by end. hdr is the response's header.
func (h *Handler) startTunnelLog(r *http.Request, status int, hdr http.Header) *tunnelLog {
	ctx := r.Context()
	srv, _ := ctx.Value(caddyhttp.ServerCtxKey).(*caddyhttp.Server)
	if srv == nil || srv.Logs == nil || h.accessLogger == nil || !logsHost(srv.Logs, r.Host) {
		return nil
	}
	if skip, _ := caddyhttp.GetVar(ctx, caddyhttp.LogSkipVar).(bool); skip {
		return nil
	}
	caddyhttp.SetVar(ctx, caddyhttp.LogSkipVar, true) // Caddy's line, written now, would say less
	l := &tunnelLog{level: zapcore.InfoLevel, status: status, start: time.Now()}
	if start, ok := caddyhttp.GetVar(ctx, "start_time").(time.Time); ok {
		l.start = start
	}
	if status >= 500 {
		l.level = zapcore.ErrorLevel
	}
	if name, ok := caddyhttp.GetVar(ctx, caddyhttp.LogLevelVar).(string); ok {
		if lv, err := zapcore.ParseLevel(name); err == nil && lv >= zapcore.DebugLevel && lv <= zapcore.ErrorLevel {
			l.level = lv
		}
	}
	if repl, ok := ctx.Value(caddy.ReplacerCtxKey).(*caddy.Replacer); ok {
		l.userID, _ = repl.GetString("http.auth.user.id")
	}
	creds := srv.Logs.ShouldLogCredentials
	// the request as it came, before rewrites; encoded now, so the line
	// holds no reference to it
	req := *r
	if orig, ok := ctx.Value(caddyhttp.OriginalRequestCtxKey).(http.Request); ok {
		req.Method, req.RequestURI, req.URL = orig.Method, orig.RequestURI, orig.URL
	}
	base := h.accessLogger.With(zap.Object("request", caddyhttp.LoggableHTTPRequest{Request: &req, ShouldLogCredentials: creds}))
	for _, name := range loggerNames(srv.Logs, r) {
		if name == "" {
			l.loggers = append(l.loggers, base)
		} else {
			l.loggers = append(l.loggers, base.Named(name))
		}
	}
	l.headers = zap.Object("resp_headers", caddyhttp.LoggableHTTPHeader{Header: hdr.Clone(), ShouldLogCredentials: creds})
	return l
}

// end writes the line: the tunnel's duration from the request's start,
// read the bytes the client sent through it, and size the bytes sent to
// the client, the response head included, as Caddy counts them.
func (l *tunnelLog) end(read, size int64) {
	if l == nil {
		return
	}
	for _, lg := range l.loggers {
		if c := lg.Check(l.level, "handled request"); c != nil {
			c.Write(zap.Int64("bytes_read", read), zap.String("user_id", l.userID),
				zap.Duration("duration", time.Since(l.start)), zap.Int64("size", size),
				zap.Int("status", l.status), l.headers)
		}
	}
}

// logsHost tells whether the server logs requests to host, as Caddy
// decides it.
func logsHost(logs *caddyhttp.ServerLogConfig, host string) bool {
	if h, _, err := net.SplitHostPort(host); err == nil {
		host = h
	}
	for name := range logs.LoggerNames {
		if certmagic.MatchWildcard(host, name) {
			return true
		}
	}
	for _, skip := range logs.SkipHosts {
		if certmagic.MatchWildcard(host, skip) {
			return false
		}
	}
	return !logs.SkipUnmappedHosts
}

// loggerNames are the names of the access loggers of r, as Caddy picks
// them: log_name's, else the host's, else the default ("" is the access
// logger itself).
func loggerNames(logs *caddyhttp.ServerLogConfig, r *http.Request) []string {
	if names, ok := caddyhttp.GetVar(r.Context(), caddyhttp.AccessLoggerNameVarKey).([]any); ok {
		out := make([]string, 0, len(names))
		for _, n := range names {
			s, _ := n.(string)
			out = append(out, s)
		}
		return out
	}
	host, _, err := net.SplitHostPort(r.Host)
	if err != nil {
		host = r.Host
	}
	host = strings.ToLower(host)
	if names, ok := logs.LoggerNames[host]; ok {
		return names
	}
	labels := strings.Split(host, ".")
	for i := range labels {
		if labels[i] == "" {
			continue
		}
		labels[i] = "*"
		if names, ok := logs.LoggerNames[strings.Join(labels, ".")]; ok {
			return names
		}
	}
	return []string{logs.DefaultLoggerName}
}
