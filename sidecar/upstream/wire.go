package upstream

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"time"
)

// longAgo is a deadline in the past: every blocked read or write returns at once.
var longAgo = time.Unix(1, 0)

// guard bounds all I/O of one operation (dial, MAIL, DATA, ...) on a connection by the
// operation's timeout and context: begin sets the connection's deadline to the earlier of the two,
// and once the context is done puts it in the past, so every blocked read or write returns at
// once. Deadlines set on the TCP connection hold for TLS above it.
type guard struct {
	conn net.Conn

	mu  sync.Mutex
	gen uint64 // counts operations, so a late context callback cannot touch the next one
}

// begin starts an operation that must end within timeout and while ctx lasts. The returned
// function ends it and lifts the deadline.
func (g *guard) begin(ctx context.Context, timeout time.Duration) (end func()) {
	var limit time.Time
	if timeout > 0 {
		limit = time.Now().Add(timeout)
	}
	if d, ok := ctx.Deadline(); ok && (limit.IsZero() || d.Before(limit)) {
		limit = d
	}
	g.mu.Lock()
	g.gen++
	gen := g.gen
	g.conn.SetDeadline(limit)
	g.mu.Unlock()

	stop := context.AfterFunc(ctx, func() {
		g.mu.Lock()
		defer g.mu.Unlock()
		if g.gen == gen {
			g.conn.SetDeadline(longAgo)
		}
	})
	return func() {
		stop()
		g.mu.Lock()
		defer g.mu.Unlock()
		g.gen++
		g.conn.SetDeadline(time.Time{})
	}
}

// wireConn is the connection a session talks over, above TLS: every command is written to it and
// every reply of the upstream read from it, from the greeting on. It bounds the replies
// (replyLimit) and traces the session when asked.
type wireConn struct {
	net.Conn
	trace *tracer // nil: no trace
	limit replyLimit
}

func (w *wireConn) Read(b []byte) (int, error) {
	n, err := w.Conn.Read(b)
	if n, err = w.limit.check(b[:n], err); n > 0 {
		w.trace.lines("S", b[:n])
	}
	return n, err
}

// over returns err, or the reply limit's error once a read went over it. textproto hands on the
// part of a line read before a failed read as if it were a whole line, so a reply cut short by the
// limit can look complete, or like a refusal: every reply read (Conn.read) asks over.
func (w *wireConn) over(err error) error {
	if w.limit.err != nil {
		return w.limit.err
	}
	return err
}

// Limits of what Postern reads from an upstream, so that a server (or anyone on the network path
// before STARTTLS) cannot make Postern hold an unbounded reply in memory. RFC 5321 §4.5.3.1.5 caps
// a reply line at 512 octets with its CRLF; real servers stay well below that, the longest being
// Exchange Online's refusals with a diagnostic and Google's XOAUTH2 error challenge (base64 JSON,
// about 100 octets). An EHLO reply has about 20 lines.
const (
	maxReplyLine  = 1000     // octets of one reply line with its CRLF: twice RFC 5321's limit
	maxReplyBytes = 64 << 10 // octets of one reply, all its lines
	maxReplyLines = 128      // lines of one reply
)

// ErrReplyTooLarge is the cause of the Error of an exchange in which the upstream sent a reply
// line or a reply over Postern's limits. The connection is closed; the failure is temporary.
var ErrReplyTooLarge = errors.New("the upstream's reply is too large")

// replyLimit follows the replies in the bytes read from an upstream and fails the read that takes
// a line or a reply over the limits. It splits replies as net/textproto's ReadResponse does, which
// Postern reads them with: a reply is one line, unless that line is
// "ddd-...", in which case it runs up to the next line that starts with the same "ddd ".
type replyLimit struct {
	line  int     // octets of the current line so far
	head  [4]byte // its first octets
	multi bool    // the current reply's first line was "ddd-"
	code  [3]byte // that line's code
	bytes int     // octets of the current reply so far
	lines int     // complete lines of the current reply
	err   error   // once over a limit, every read fails
}

// check passes on what one read returned, or fails it when it takes a reply over the limits.
func (l *replyLimit) check(b []byte, err error) (int, error) {
	if l.err != nil {
		return 0, l.err
	}
	n := len(b)
	for len(b) > 0 {
		i := bytes.IndexByte(b, '\n')
		seg := b
		if i >= 0 {
			seg = b[:i+1]
		}
		if l.line < len(l.head) {
			copy(l.head[l.line:], seg)
		}
		l.line += len(seg)
		l.bytes += len(seg)
		switch {
		case l.line > maxReplyLine:
			l.err = fmt.Errorf("%w: a line over %d bytes", ErrReplyTooLarge, maxReplyLine)
		case l.bytes > maxReplyBytes:
			l.err = fmt.Errorf("%w: over %d bytes", ErrReplyTooLarge, maxReplyBytes)
		case i >= 0 && l.lines == maxReplyLines:
			l.err = fmt.Errorf("%w: over %d lines", ErrReplyTooLarge, maxReplyLines)
		case i >= 0:
			l.endLine()
		}
		if l.err != nil {
			return 0, l.err
		}
		b = b[len(seg):]
	}
	return n, err
}

// endLine takes note of a complete line, and of the end of the reply when the line ends it.
func (l *replyLimit) endLine() {
	n := l.line - 1 // without the LF; textproto drops a CR before it too
	if n > 0 && n <= len(l.head) && l.head[n-1] == '\r' {
		n--
	}
	l.line = 0
	l.lines++
	codeLine := n >= 4 && (l.head[3] == ' ' || l.head[3] == '-') && isCode(l.head[:3])
	if !l.multi {
		if codeLine && l.head[3] == '-' {
			l.multi = true
			copy(l.code[:], l.head[:3])
			return
		}
	} else if !codeLine || l.head[3] != ' ' || [3]byte(l.head[:3]) != l.code {
		return
	}
	l.multi, l.bytes, l.lines = false, 0, 0
}

// isCode reports whether b is a reply code as textproto reads one: three digits, at least 100.
func isCode(b []byte) bool {
	return len(b) == 3 && b[0] >= '1' && b[0] <= '9' && b[1] >= '0' && b[1] <= '9' && b[2] >= '0' && b[2] <= '9'
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
