package milter

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
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

// conn is one milter connection from Postfix. It wraps the net.Conn that go-milter reads and writes:
// it reads whole packets itself, with their deadlines and limits, before go-milter sees a byte of
// them; it sees the MAIL FROM parameters go-milter drops; it makes go-milter forget the header
// fields of the previous message; and it ends quietly on shutdown.
type conn struct {
	net.Conn
	srv  *Server
	ctx  context.Context // ends when Serve's ctx ends
	log  *slog.Logger
	sess *session

	rd          *bufio.Reader // the network side
	hdr         [4]byte
	pkt         bytes.Buffer // the packet being read, length included
	out         [][]byte     // what go-milter reads next: whole packets
	headerBytes int          // of SMFIC_HEADER packets since go-milter's header map was last cleared
	mailMacros  bool         // the last packet was the macros of a MAIL command

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
		rd:   bufio.NewReader(nc),
		done: make(chan struct{}),
	}
	c.sess = &session{srv: s, conn: c}
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

// Read feeds go-milter whole packets read by readPacket. Every error becomes io.EOF, because
// go-milter prints anything else with the global logger; the reason is logged here.
func (c *conn) Read(p []byte) (int, error) {
	for len(c.out) == 0 {
		if err := c.readPacket(); err != nil {
			c.logEnd(err)
			return 0, io.EOF
		}
	}
	n := copy(p, c.out[0])
	if c.out[0] = c.out[0][n:]; len(c.out[0]) == 0 {
		c.out = c.out[1:]
	}
	return n, nil
}

// Limits of the packets read from Postfix.
const (
	// maxPacketBytes bounds a packet's declared length (go-milter's own bound is 1 MiB, allocated
	// as soon as the length is read). Postfix's largest packets are header fields, which its
	// header_size_limit (default 102400) bounds, and body chunks of at most 65535 bytes.
	maxPacketBytes = 256 << 10
	// keepBuffer is the largest packet buffer kept for the next packet.
	keepBuffer = 64 << 10
)

// abortPacket is SMFIC_ABORT, which makes go-milter clear its header map.
var abortPacket = []byte{0, 0, 0, 1, byte(gomilter.CodeAbort)}

// Why readPacket ends a connection.
var (
	errIdle       = errors.New("no packet within the idle timeout")
	errSlowPacket = errors.New("a packet did not arrive whole within the packet timeout")
	errBadLength  = errors.New("a packet's declared length is out of bounds")
	errHeaders    = errors.New("the message's header fields exceed the header limit")
)

// readPacket reads one packet from the network and queues it, whole, for go-milter:
//
//  1. Waiting for its first byte is bounded by IdleTimeout. From that byte on, the whole packet
//     must arrive within PacketTimeout, however it is split: the deadline is not renewed per read.
//  2. A declared length of zero or over maxPacketBytes ends the connection at once. The packet's
//     buffer grows with the bytes that arrive, never to the declared length ahead of them, and
//     go-milter allocates its own copy only once the whole packet is here.
//  3. go-milter keeps every header field in a map it clears only on SMFIC_ABORT, which Postfix does
//     not send after every message. So an SMFIC_ABORT is queued before every new message (before
//     the macros of its MAIL command, or the MAIL command when they are missing), and the header
//     bytes since the last abort are counted: over MaxHeaderBytes the connection ends.
//  4. The strings of SMFIC_MAIL (the sender, then the ESMTP parameters go-milter drops) go to the
//     session before go-milter reads the packet.
func (c *conn) readPacket() error {
	opts := &c.srv.opts
	c.setReadDeadline(time.Now().Add(opts.IdleTimeout))
	first, err := c.rd.ReadByte()
	if err != nil {
		if errors.Is(err, os.ErrDeadlineExceeded) {
			return errIdle
		}
		return err
	}
	c.setReadDeadline(time.Now().Add(opts.PacketTimeout))
	c.hdr[0] = first
	if _, err := io.ReadFull(c.rd, c.hdr[1:]); err != nil {
		return slowOr(err)
	}
	n := binary.BigEndian.Uint32(c.hdr[:])
	if n == 0 || n > maxPacketBytes {
		return fmt.Errorf("%w: %d bytes, at most %d accepted", errBadLength, n, maxPacketBytes)
	}
	if c.pkt.Cap() > keepBuffer {
		c.pkt = bytes.Buffer{}
	}
	c.pkt.Reset()
	c.pkt.Write(c.hdr[:])
	if _, err := io.CopyN(&c.pkt, c.rd, int64(n)); err != nil {
		return slowOr(err)
	}
	pkt := c.pkt.Bytes()
	code, data := gomilter.Code(pkt[4]), pkt[5:]

	mailMacros := code == gomilter.CodeMacro && len(data) > 0 && gomilter.Code(data[0]) == gomilter.CodeMail
	if mailMacros || code == gomilter.CodeMail && !c.mailMacros {
		c.out = append(c.out, abortPacket)
		c.headerBytes = 0
	}
	c.mailMacros = mailMacros
	switch code {
	case gomilter.CodeAbort:
		c.headerBytes = 0
	case gomilter.CodeHeader:
		c.headerBytes += len(data)
		if c.headerBytes > opts.MaxHeaderBytes {
			return fmt.Errorf("%w: more than %d bytes", errHeaders, opts.MaxHeaderBytes)
		}
	case gomilter.CodeMail:
		c.sess.setMailArgs(decodeStrings(data))
	}
	c.out = append(c.out, pkt)
	return nil
}

// slowOr turns a deadline error inside a packet into errSlowPacket.
func slowOr(err error) error {
	if errors.Is(err, os.ErrDeadlineExceeded) {
		return errSlowPacket
	}
	if err == io.EOF {
		return io.ErrUnexpectedEOF
	}
	return err
}

func (c *conn) setReadDeadline(t time.Time) {
	if err := c.Conn.SetReadDeadline(t); err != nil && !c.closing.Load() {
		c.log.Debug("setting the milter read deadline failed", "err", err)
	}
}

// logEnd logs why the connection ends. Postfix applies milter_default_action to a message in
// progress on a connection that ends.
func (c *conn) logEnd(err error) {
	opts := &c.srv.opts
	switch {
	case err == io.EOF || c.closing.Load():
	case errors.Is(err, errIdle):
		c.log.Info("closing an idle milter connection", "idle_timeout", opts.IdleTimeout)
	case errors.Is(err, errSlowPacket):
		c.log.Warn("closing a milter connection: "+errSlowPacket.Error(), "packet_timeout", opts.PacketTimeout)
	case errors.Is(err, errBadLength), errors.Is(err, errHeaders):
		c.log.Warn("closing a milter connection; Postfix applies milter_default_action to the message", "err", err,
			"sender", c.sess.msg.sender, "queue_id", c.sess.msg.queueID)
	default:
		c.log.Info("milter connection failed", "err", err)
	}
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

// decodeStrings splits NUL-terminated strings.
func decodeStrings(b []byte) []string {
	s := strings.Split(string(b), "\x00")
	if len(s) > 0 && s[len(s)-1] == "" {
		s = s[:len(s)-1]
	}
	return s
}
