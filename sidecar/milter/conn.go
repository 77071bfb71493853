package milter

import (
	"context"
	"encoding/binary"
	"errors"
	"io"
	"log/slog"
	"net"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	gomilter "github.com/emersion/go-milter"
)

// conn is one milter connection from Postfix. It wraps the net.Conn that go-milter reads and writes,
// to add deadlines, to see the MAIL FROM parameters go-milter drops, and to end quietly on shutdown.
type conn struct {
	net.Conn
	srv  *Server
	ctx  context.Context // ends when Serve's ctx ends
	log  *slog.Logger
	sess *session

	tee       frameTee
	closing   atomic.Bool // set by shutdown
	closeOnce sync.Once
	done      chan struct{} // closed when go-milter closes the connection
}

var _ net.Conn = (*conn)(nil)

func (s *Server) newConn(ctx context.Context, nc net.Conn) *conn {
	c := &conn{
		Conn: nc,
		srv:  s,
		ctx:  ctx,
		log:  s.log.With("milter_client", remoteName(nc)),
		done: make(chan struct{}),
	}
	c.sess = &session{srv: s, conn: c}
	c.tee.onMail = c.sess.setMailArgs
	return c
}

func remoteName(nc net.Conn) string {
	if a := nc.RemoteAddr(); a != nil && a.String() != "" && a.String() != "@" {
		return a.String()
	}
	return "unix"
}

// serve runs go-milter on this one connection and returns when the session has ended. A go-milter
// server per connection is what lets NewMilter hand back this connection's session every time the
// library asks for a fresh Milter.
func (c *conn) serve() {
	gs := &gomilter.Server{
		NewMilter: func() gomilter.Milter { return c.sess },
		Protocol:  protocol,
		Actions:   0, // no modifications of any kind
	}
	_ = gs.Serve(&oneConnListener{c: c})
}

// shutdown closes the underlying connection; go-milter then sees the end of the stream and closes
// the connection itself.
func (c *conn) shutdown() {
	c.closing.Store(true)
	c.Conn.Close()
}

// Read feeds go-milter. Every read gets the idle deadline, every byte passes the frame tee, and
// every error becomes io.EOF, because go-milter prints anything else with the global logger.
func (c *conn) Read(p []byte) (int, error) {
	if err := c.Conn.SetReadDeadline(time.Now().Add(c.srv.opts.IdleTimeout)); err != nil && !c.closing.Load() {
		c.log.Debug("setting the milter read deadline failed", "err", err)
	}
	n, err := c.Conn.Read(p)
	c.tee.feed(p[:n])
	if err != nil {
		switch {
		case err == io.EOF || c.closing.Load():
		case errors.Is(err, os.ErrDeadlineExceeded):
			c.log.Info("closing an idle milter connection", "idle_timeout", c.srv.opts.IdleTimeout)
		default:
			c.log.Info("milter connection failed", "err", err)
		}
		return n, io.EOF
	}
	return n, nil
}

// Write sends a reply within the write deadline.
func (c *conn) Write(p []byte) (int, error) {
	if err := c.Conn.SetWriteDeadline(time.Now().Add(c.srv.opts.WriteTimeout)); err != nil && !c.closing.Load() {
		c.log.Debug("setting the milter write deadline failed", "err", err)
	}
	return c.Conn.Write(p)
}

// Close is called by go-milter when the session ends.
func (c *conn) Close() error {
	err := c.Conn.Close()
	c.closeOnce.Do(func() { close(c.done) })
	if c.closing.Load() {
		return nil
	}
	return err
}

// oneConnListener hands go-milter its one connection, then blocks until that connection is closed.
type oneConnListener struct {
	c    *conn
	used bool
}

func (l *oneConnListener) Accept() (net.Conn, error) {
	if !l.used {
		l.used = true
		return l.c, nil
	}
	<-l.c.done
	return nil, net.ErrClosed
}

func (l *oneConnListener) Close() error   { return nil }
func (l *oneConnListener) Addr() net.Addr { return l.c.LocalAddr() }

// maxMailPacket bounds the SMFIC_MAIL packet the tee keeps; real ones are a few hundred bytes.
const maxMailPacket = 64 << 10

// frameTee follows the milter packet framing (a 4-byte big-endian length, then the command byte and
// its data) of the bytes go-milter reads, and hands the strings of every SMFIC_MAIL packet to onMail:
// the sender in angle brackets, then the ESMTP parameters. It never changes what go-milter reads.
//
// go-milter reads a whole packet before acting on it and never reads ahead, so onMail has run by the
// time the Milter's MailFrom is called for the same packet.
type frameTee struct {
	onMail func(args []string)

	hdr   [4]byte
	nhdr  int
	left  uint32 // bytes of the current packet still to come; 0 while reading a length
	first bool   // the next byte is the packet's command
	keep  bool   // the current packet is SMFIC_MAIL and is being kept
	buf   []byte
}

func (t *frameTee) feed(p []byte) {
	for len(p) > 0 {
		if t.left == 0 {
			n := copy(t.hdr[t.nhdr:], p)
			t.nhdr += n
			p = p[n:]
			if t.nhdr == len(t.hdr) {
				t.nhdr = 0
				t.left = binary.BigEndian.Uint32(t.hdr[:])
				t.first = true
			}
			continue
		}
		if t.first {
			t.first = false
			t.keep = p[0] == byte(gomilter.CodeMail) && t.left <= maxMailPacket
			t.buf = t.buf[:0]
		}
		n := min(uint32(len(p)), t.left)
		if t.keep {
			t.buf = append(t.buf, p[:n]...)
		}
		t.left -= n
		p = p[n:]
		if t.left == 0 && t.keep {
			t.keep = false
			if t.onMail != nil {
				t.onMail(decodeStrings(t.buf[1:]))
			}
		}
	}
}

// decodeStrings splits NUL-terminated strings.
func decodeStrings(b []byte) []string {
	s := strings.Split(string(b), "\x00")
	if len(s) > 0 && s[len(s)-1] == "" {
		s = s[:len(s)-1]
	}
	return s
}
