package leastconn

import (
	"bufio"
	"io"
	"net/http"
	"time"

	"github.com/lbpool/lbpool/internal/upstream"
)

// A 101 Switching Protocols response (a websocket, say) turns the client's
// connection and the backend's into one byte stream each way; the copying
// is internal/upstream's (Pipe, PipeFromBackend), which holds no buffer
// while a tunnel sits idle.

// tunnel hands a 101 Switching Protocols response to the client and
// leaves two goroutines copying bytes both ways until either side closes;
// the handler returns meanwhile, so an idle tunnel holds two small stacks
// and neither the handler's stack nor the state the server keeps while a
// handler runs. The backend stays counted as active, and its access log
// line waits (accesslog.go), until the tunnel ends. tunneled is false when
// the tunnel could not start: the caller still owns resp and b's slot.
func (h *Handler) tunnel(w http.ResponseWriter, r *http.Request, resp *http.Response, b *Backend) (tunneled bool) {
	backConn, ok := resp.Body.(io.ReadWriteCloser)
	if !ok {
		writeError(w, http.StatusBadGateway, "lbpool: bad gateway", 0)
		return false
	}
	conn, brw, err := http.NewResponseController(w).Hijack()
	if err != nil {
		writeError(w, http.StatusBadGateway, "lbpool: cannot switch protocols here", 0)
		return false
	}
	hdr := w.Header()
	proto := upstream.UpgradeType(resp.Header) // the one asked for (see upstream.CheckSwitch)
	removeHopHeaders(resp.Header)
	copyHeader(hdr, resp.Header)
	hdr.Set("Connection", "Upgrade")
	hdr.Set("Upgrade", proto)
	head := *resp // the head alone; the body is the backend's side of the tunnel
	head.Header = hdr
	head.Body = nil
	out := &countingWriter{w: brw} // the bytes sent to the client, as Caddy's access log counts them
	if err := head.Write(out); err != nil {
		conn.Close()
		return false
	}
	if err := brw.Flush(); err != nil {
		conn.Close()
		return false
	}
	log := h.startTunnelLog(r, resp.StatusCode, hdr)
	// what the client sent after its request is all the tunnel keeps of
	// the hijacked reader and writer, until it is sent on
	pending, _ := brw.Reader.Peek(brw.Reader.Buffered())
	*brw.Reader = bufio.Reader{}
	*brw.Writer = bufio.Writer{}

	// either direction ending closes both connections, which ends the other
	closeBoth := func() {
		conn.Close()
		backConn.Close()
	}
	var timeout *time.Timer
	if h.StreamTimeout > 0 {
		timeout = time.AfterFunc(time.Duration(h.StreamTimeout), closeBoth)
	}
	untrack := h.trackStream(b, closeBoth) // stream_close_delay (streams.go)
	in := &countingWriter{w: backConn}     // the bytes the client sent
	up := make(chan struct{})
	go func(pending []byte) {
		defer close(up)
		h.pipeUp(in, conn, pending)
		closeBoth()
	}(pending)
	go func() {
		out.w = conn
		h.pipeDown(out, backConn)
		closeBoth()
		<-up
		if timeout != nil {
			timeout.Stop()
		}
		untrack()
		h.spec.transport.used()
		b.release()
		log.end(in.n, out.n)
	}()
	return true
}

// countingWriter counts the bytes written through it.
type countingWriter struct {
	w io.Writer
	n int64
}

func (c *countingWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}

// RoundTrip sends req through the shared Transport; an upgrade keeps the
// connection it went on for the tunnel (upstream.RoundTripUpgrade).
func (t *sharedTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	if req.Header["Upgrade"] == nil {
		return t.Transport.RoundTrip(req)
	}
	return upstream.RoundTripUpgrade(t.Transport, req)
}
