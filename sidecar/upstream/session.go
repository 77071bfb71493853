package upstream

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"net/textproto"
	"strconv"
	"strings"

	"github.com/emersion/go-smtp"
)

// A connection's SMTP session is Postern's own from the first byte to QUIT, as in mox's
// smtpclient: one writer of commands (cmd), one reader of replies (read) over the current
// connection (plain text, then TLS after STARTTLS), and one state.
//
//  1. The greeting is read once, by read.
//  2. EHLO (hello) records the extensions; an upstream that answers EHLO with 500 or 502 gets
//     HELO and counts as offering none. After STARTTLS the session starts over on the TLS
//     connection with a fresh reader and forgets every extension (RFC 3207), and says EHLO again.
//  3. AUTH (auth.go) and transactions (tx.go) write with cmd and read with read.
//  4. Every state change goes through enter: ready (signed in, no transaction), in a transaction
//     (MAIL went out and the upstream has not given its final word: RSET before reuse), broken (an
//     error left the session in an unknown state: the connection is closed and never reused).

// state is where a connection's session stands.
type state int

const (
	// stateReady: no transaction is open; the connection may take MAIL or go back to its pool.
	stateReady state = iota
	// stateTx: MAIL went out and the transaction has not ended; RSET before the connection is
	// reused.
	stateTx
	// stateBroken: closed, or in a state nobody knows; never used again. There is no way back.
	stateBroken
)

func (s state) String() string {
	switch s {
	case stateReady:
		return "ready"
	case stateTx:
		return "in a transaction"
	}
	return "broken"
}

// enter moves c's session to s. Entering stateBroken closes the connection; a broken session stays
// broken.
func (c *Conn) enter(s state) {
	if c.state == stateBroken {
		return
	}
	c.state = s
	if s == stateBroken {
		c.closeNow()
	}
}

// attach makes conn the connection the session talks over, with a fresh reader and reply limits,
// and forgets the extensions learned before: at the start and after the TLS handshake of STARTTLS.
func (c *Conn) attach(conn net.Conn) {
	c.wire = &wireConn{Conn: conn, trace: c.trace}
	c.rd = textproto.NewReader(bufio.NewReader(c.wire))
	c.ext = nil
}

// cmd writes one command line.
func (c *Conn) cmd(line string) error {
	_, err := io.WriteString(c.wire, line+"\r\n")
	return err
}

// read reads one reply. A reply whose code is not expect (as textproto.Reader.ReadResponse
// checks it: 250, 25 for any 25x, 0 for any) is returned as an *smtp.SMTPError; a reply over the
// limits as ErrReplyTooLarge.
func (c *Conn) read(expect int) (code int, msg string, err error) {
	code, msg, err = c.rd.ReadResponse(expect)
	err = c.wire.over(err)
	var te *textproto.Error
	if errors.As(err, &te) {
		return code, msg, toSMTPError(te.Code, te.Msg)
	}
	return code, msg, err
}

// toSMTPError makes an *smtp.SMTPError of a reply, its enhanced code taken from the start of its
// text (RFC 2034) and removed from the start of each of its lines.
func toSMTPError(code int, msg string) *smtp.SMTPError {
	e := &smtp.SMTPError{Code: code, Message: msg}
	first, rest, ok := strings.Cut(msg, " ")
	if !ok {
		return e
	}
	parts := strings.Split(first, ".")
	if len(parts) != 3 {
		return e
	}
	var enh smtp.EnhancedCode
	for i, p := range parts {
		n, err := strconv.Atoi(p)
		if err != nil {
			return e
		}
		enh[i] = n
	}
	e.EnhancedCode = enh
	e.Message = strings.ReplaceAll(rest, "\n"+first+" ", "\n")
	return e
}

// hello says EHLO and records the extensions the upstream offers. With fallback, an upstream that
// does not know EHLO (500, 502) is greeted with HELO and offers none.
func (c *Conn) hello(fallback bool) error {
	name := c.opts.LocalName
	if strings.ContainsAny(name, "\r\n") {
		return errors.New("the local name (Options.LocalName) holds a line break")
	}
	if err := c.cmd("EHLO " + name); err != nil {
		return err
	}
	_, msg, err := c.read(250)
	var se *smtp.SMTPError
	if fallback && errors.As(err, &se) && (se.Code == 500 || se.Code == 502) {
		if err := c.cmd("HELO " + name); err != nil {
			return err
		}
		_, _, err = c.read(250)
		return err
	}
	if err != nil {
		return err
	}
	c.ext = parseEHLO(msg)
	return nil
}

// parseEHLO returns the extensions of an EHLO reply (as textproto returns it: its lines joined by
// LF, the first one the server's greeting), keyed by their names in upper case, each with its
// parameters.
func parseEHLO(msg string) map[string]string {
	ext := make(map[string]string)
	lines := strings.Split(msg, "\n")
	for _, line := range lines[1:] {
		name, params, _ := strings.Cut(line, " ")
		ext[strings.ToUpper(name)] = params
	}
	return ext
}

// extension reports whether the upstream's last EHLO reply offered ext, and its parameters.
func (c *Conn) extension(ext string) (bool, string) {
	params, ok := c.ext[strings.ToUpper(ext)]
	return ok, params
}

func (c *Conn) has(ext string) bool {
	ok, _ := c.extension(ext)
	return ok
}

// startTLS says EHLO, requires STARTTLS, runs the handshake and attaches the session to the TLS
// connection. The caller says EHLO again.
func (c *Conn) startTLS(ctx context.Context, cfg *tls.Config) *Error {
	o := c.opts
	if err := c.hello(false); err != nil {
		return c.ioError(ctx, StageEHLO, err, o.GreetingTimeout)
	}
	if !c.has("STARTTLS") {
		return &Error{Stage: StageTLS, Addr: c.addr,
			Message: "the upstream offers no STARTTLS, and Postern sends neither credentials nor mail in plain text " +
				"(for a server that speaks TLS from the start, set upstream.tls to implicit)"}
	}
	if err := c.cmd("STARTTLS"); err != nil {
		return c.ioError(ctx, StageTLS, err, o.GreetingTimeout)
	}
	if _, _, err := c.read(220); err != nil {
		return c.ioError(ctx, StageTLS, err, o.GreetingTimeout)
	}
	if c.rd.R.Buffered() > 0 {
		return &Error{Stage: StageTLS, Addr: c.addr, Message: "the upstream sent data before the TLS handshake"}
	}
	tc := tls.Client(c.nc, cfg)
	if err := tc.HandshakeContext(ctx); err != nil {
		return c.tlsError(ctx, cfg.ServerName, err)
	}
	c.attach(tc)
	c.encrypted = true
	return nil
}
