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

// tunnel hands a 101 Switching Protocols response to the client and copies
// bytes both ways until either side closes. The backend stays counted as
// active for the tunnel's lifetime.
func (h *Handler) tunnel(w http.ResponseWriter, resp *http.Response, b *Backend) error {
	backConn, ok := resp.Body.(io.ReadWriteCloser)
	if !ok {
		writeError(w, http.StatusBadGateway, "lbpool: bad gateway", 0)
		return nil
	}
	conn, brw, err := http.NewResponseController(w).Hijack()
	if err != nil {
		backConn.Close()
		writeError(w, http.StatusBadGateway, "lbpool: cannot switch protocols here", 0)
		return nil
	}
	defer conn.Close()
	defer backConn.Close()

	hdr := w.Header()
	proto := upstream.UpgradeType(resp.Header) // the one asked for (see upstream.CheckSwitch)
	removeHopHeaders(resp.Header)
	copyHeader(hdr, resp.Header)
	hdr.Set("Connection", "Upgrade")
	hdr.Set("Upgrade", proto)
	head := *resp // the head alone; proxyTo still closes resp.Body
	head.Header = hdr
	head.Body = nil
	if err := head.Write(brw); err != nil {
		return nil
	}
	if err := brw.Flush(); err != nil {
		return nil
	}
	// what the client sent after its request is all the tunnel keeps of
	// the hijacked reader and writer. The server's connection, which lives
	// as long as this handler, points at both; the server uses neither
	// after a hijack, so emptying them lets their buffers go.
	pending, _ := brw.Reader.Peek(brw.Reader.Buffered())
	*brw.Reader = bufio.Reader{}
	*brw.Writer = bufio.Writer{}
	brw = nil

	// either direction ending closes both connections, which ends the other
	closeBoth := func() {
		conn.Close()
		backConn.Close()
	}
	if h.StreamTimeout > 0 {
		t := time.AfterFunc(time.Duration(h.StreamTimeout), closeBoth)
		defer t.Stop()
	}
	defer h.trackStream(b, closeBoth)() // stream_close_delay (streams.go)
	up := make(chan struct{})
	go func(pending []byte) {
		defer close(up)
		h.pipeUp(backConn, conn, pending)
		closeBoth()
	}(pending)
	h.pipeDown(conn, backConn)
	closeBoth()
	<-up
	return nil
}

// RoundTrip sends req through the shared Transport; an upgrade keeps the
// connection it went on for the tunnel (upstream.RoundTripUpgrade).
func (t *sharedTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	if req.Header["Upgrade"] == nil {
		return t.Transport.RoundTrip(req)
	}
	return upstream.RoundTripUpgrade(t.Transport, req)
}
