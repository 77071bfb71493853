package upstream

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"net"
	"sync"
	"time"
)

// longAgo is a deadline in the past: every blocked read or write returns at once.
var longAgo = time.Unix(1, 0)

// guardConn bounds all I/O of one operation (dial, MAIL, DATA, ...) by the operation's timeout and
// context. go-smtp's client sets a deadline around each command and clears it afterwards (so none
// applies while it writes a message body); guardConn clamps every deadline it sets to the end of the
// current operation, and once the operation's context is done it keeps every deadline in the past.
// It sits under TLS, which passes its deadlines down.
type guardConn struct {
	net.Conn

	mu      sync.Mutex
	gen     uint64    // counts operations, so a late context callback cannot touch the next one
	limit   time.Time // no deadline beyond this; zero between operations
	expired bool      // the operation's context is done
}

func (g *guardConn) SetDeadline(t time.Time) error {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.Conn.SetDeadline(g.clamp(t))
}

func (g *guardConn) SetReadDeadline(t time.Time) error {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.Conn.SetReadDeadline(g.clamp(t))
}

func (g *guardConn) SetWriteDeadline(t time.Time) error {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.Conn.SetWriteDeadline(g.clamp(t))
}

func (g *guardConn) clamp(t time.Time) time.Time {
	if g.expired {
		return longAgo
	}
	if !g.limit.IsZero() && (t.IsZero() || g.limit.Before(t)) {
		return g.limit
	}
	return t
}

// begin starts an operation that must end within timeout and while ctx lasts. The returned
// function ends it and lifts the deadline.
func (g *guardConn) begin(ctx context.Context, timeout time.Duration) (end func()) {
	g.mu.Lock()
	g.gen++
	gen := g.gen
	g.expired = false
	g.limit = time.Time{}
	if timeout > 0 {
		g.limit = time.Now().Add(timeout)
	}
	if d, ok := ctx.Deadline(); ok && (g.limit.IsZero() || d.Before(g.limit)) {
		g.limit = d
	}
	g.Conn.SetDeadline(g.limit)
	g.mu.Unlock()

	stop := context.AfterFunc(ctx, func() {
		g.mu.Lock()
		defer g.mu.Unlock()
		if g.gen == gen {
			g.expired = true
			g.Conn.SetDeadline(longAgo)
		}
	})
	return func() {
		stop()
		g.mu.Lock()
		defer g.mu.Unlock()
		g.gen++
		g.limit = time.Time{}
		g.expired = false
		g.Conn.SetDeadline(time.Time{})
	}
}

// wireConn is the connection go-smtp's client talks over, above TLS. It replays the greeting the
// client insists on reading itself (Postern has read the real one already, and after STARTTLS there
// is none), and traces the session when asked.
type wireConn struct {
	net.Conn
	replay io.Reader // read before Conn; nil once drained
	trace  *tracer   // nil: no trace
}

func (w *wireConn) Read(b []byte) (int, error) {
	if w.replay != nil {
		n, err := w.replay.Read(b)
		if err == io.EOF {
			w.replay, err = nil, nil
		}
		if n > 0 || err != nil {
			return n, err
		}
	}
	n, err := w.Conn.Read(b)
	w.trace.lines("S", b[:n])
	return n, err
}

func (w *wireConn) Write(b []byte) (int, error) {
	w.trace.lines("C", b)
	return w.Conn.Write(b)
}

// Trace modes: what the client's lines are logged as.
const (
	traceCommands = iota // as they are
	traceAuth            // "AUTH <mechanism> [redacted]", then "[redacted]"
	traceBody            // not at all: the message is not Postern's to log
)

// tracer logs an SMTP session line by line at debug level. It never logs credentials: while the
// AUTH exchange runs (mode traceAuth) the client's lines are redacted.
type tracer struct {
	log  *slog.Logger
	mode int
}

func (t *tracer) setMode(m int) {
	if t != nil {
		t.mode = m
	}
}

func (t *tracer) lines(dir string, b []byte) {
	if t == nil || len(b) == 0 {
		return
	}
	if dir == "C" && t.mode == traceBody {
		return
	}
	for line := range bytes.Lines(b) {
		line = bytes.TrimRight(line, "\r\n")
		text := string(line)
		if dir == "C" && t.mode == traceAuth {
			text = "[redacted]"
			if f := bytes.Fields(line); len(f) > 0 && bytes.EqualFold(f[0], []byte("AUTH")) {
				text = "AUTH [redacted]"
				if len(f) > 1 {
					text = "AUTH " + string(f[1]) + " [redacted]"
				}
			}
		}
		t.log.Debug("smtp", "dir", dir, "line", text)
	}
}
