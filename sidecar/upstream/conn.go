package upstream

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/textproto"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/postern/postern/sidecar/project"
)

// Conn is one signed-in connection to an upstream, lent out by Acquire for one message at a time.
// It is not safe for concurrent use.
type Conn struct {
	pl     *pool
	opts   *Options
	log    *slog.Logger
	addr   string
	fp     string
	mech   string
	nc     net.Conn // the TCP connection
	guard  *guardConn
	trace  *tracer
	wire   *wireConn // what client talks over
	client *smtp.Client
	rd     *textproto.Reader // the replies of transactions (tx.go)
	bodies *sync.Pool        // *bodyBuffers, shared by all connections of the Pools

	maxSize   int64
	encrypted bool
	lastUsed  time.Time
	idleGen   uint64
	idleTimer *time.Timer

	pipelining bool      // the upstream offers PIPELINING
	queue      []command // MAIL, until it goes out with the recipients
	mailErr    *Error    // the upstream refused this transaction's MAIL
	mailFrom   string    // this transaction's sender
	mailOpts   smtp.MailOptions

	txOpen    bool   // MAIL was sent and the transaction has not ended
	broken    bool   // an error left the session in an unknown state
	silent    bool   // a reply did not come within its timeout: the upstream stopped answering
	done      bool   // released or discarded
	reply     string // the upstream's reply to the last accepted message
	closeOnce sync.Once
}

// dial opens and signs in a connection (step 3 of the package comment).
func (p *Pools) dial(ctx context.Context, pl *pool, proj project.Project, auth Auth, fp string) (*Conn, *Error) {
	u := proj.Upstream
	addr := address(u)
	c := &Conn{opts: &p.opts, log: pl.log.With("upstream", addr), addr: addr, fp: fp, bodies: &p.bodies}
	if p.opts.Trace {
		c.trace = &tracer{log: c.log}
	}
	d := net.Dialer{Timeout: p.opts.DialTimeout}
	nc, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		e := &Error{Stage: StageConnect, Addr: addr, Message: "cannot connect", Err: err}
		if ctx.Err() != nil {
			e.Err = fmt.Errorf("%w: %w", context.Cause(ctx), err)
		}
		return nil, e
	}
	c.nc = nc
	c.guard = &guardConn{Conn: nc}
	if err := c.open(ctx, u, auth); err != nil {
		c.closeNow()
		return nil, err
	}
	c.lastUsed = p.opts.Now()
	c.log.Debug("upstream connection open", "tls", string(u.TLS), "auth", c.mech)
	return c, nil
}

// open secures the connection, reads the greeting, says EHLO and signs in, all within
// GreetingTimeout.
func (c *Conn) open(ctx context.Context, u project.Upstream, auth Auth) *Error {
	o := c.opts
	end := c.guard.begin(ctx, o.GreetingTimeout)
	defer end()

	if u.TLS == project.TLSNone && !isLoopback(c.nc.RemoteAddr()) {
		return &Error{Stage: StageConnect, Addr: c.addr,
			Message: "upstream.tls none is allowed only for a loopback upstream: use starttls or implicit"}
	}
	var cfg *tls.Config
	if u.TLS != project.TLSNone {
		var err error
		if cfg, err = tlsConfig(u, o.RootCAs); err != nil {
			return &Error{Stage: StageTLS, Addr: c.addr, Message: err.Error()}
		}
		if cfg.InsecureSkipVerify {
			// The project's explicit opt-out; said on every connection so that it is never
			// silently off.
			c.log.Warn("the upstream's certificate is NOT verified (upstream.insecure_skip_verify is set): "+
				"anyone on the path can read the credentials and the mail; set upstream.ca_pem instead",
				"server_name", cfg.ServerName)
		}
	}
	var conn net.Conn = c.guard
	switch u.TLS {
	case project.TLSImplicit:
		tc := tls.Client(c.guard, cfg)
		if err := tc.HandshakeContext(ctx); err != nil {
			return c.tlsError(ctx, cfg.ServerName, err)
		}
		conn, c.encrypted = tc, true
	case project.TLSStartTLS, project.TLSNone:
	default:
		return &Error{Stage: StageConnect, Addr: c.addr, Message: fmt.Sprintf("upstream.tls %q: use starttls, implicit or none", u.TLS)}
	}

	pw := &wireConn{Conn: conn, trace: c.trace}
	pre := textproto.NewConn(pw)
	if _, err := readReply(pre, pw, 220); err != nil {
		return c.ioError(ctx, StageGreeting, err, o.GreetingTimeout)
	}
	if u.TLS == project.TLSStartTLS {
		tc, err := c.startTLS(ctx, pre, pw, cfg)
		if err != nil {
			return err
		}
		conn, c.encrypted, pre = tc, true, nil
	}

	// go-smtp's client reads the greeting itself; give it one, followed by anything the server
	// sent after its real greeting.
	replay := io.Reader(strings.NewReader("220 greeting read\r\n"))
	if pre != nil && pre.R.Buffered() > 0 {
		rest, _ := pre.R.Peek(pre.R.Buffered())
		replay = io.MultiReader(replay, bytes.NewReader(bytes.Clone(rest)))
	}
	c.wire = &wireConn{Conn: conn, replay: replay, trace: c.trace}
	c.client = smtp.NewClient(c.wire)
	c.client.CommandTimeout = o.GreetingTimeout
	c.client.SubmissionTimeout = o.DataTimeout
	if err := c.wire.over(c.client.Hello(o.LocalName)); err != nil {
		return c.ioError(ctx, StageEHLO, err, o.GreetingTimeout)
	}

	if auth.SASL != nil || auth.Username != "" {
		if !c.encrypted && u.TLS != project.TLSNone {
			return &Error{Stage: StageAuth, Addr: c.addr, Message: "refusing to send credentials over an unencrypted connection"}
		}
		sc, mech, err := saslClient(c.client, auth)
		if err != nil {
			return &Error{Stage: StageAuth, Addr: c.addr, Message: err.Error()}
		}
		c.mech = mech
		c.trace.setMode(traceAuth)
		err = c.wire.over(c.client.Auth(sc))
		c.trace.setMode(traceCommands)
		if err != nil {
			return c.ioError(ctx, StageAuth, err, o.GreetingTimeout)
		}
	}
	c.client.CommandTimeout = o.CommandTimeout
	c.readExtensions()
	return nil
}

// startTLS says EHLO, requires STARTTLS, and runs the handshake. The caller says EHLO again.
func (c *Conn) startTLS(ctx context.Context, pre *textproto.Conn, pw *wireConn, cfg *tls.Config) (net.Conn, *Error) {
	o := c.opts
	if err := pre.PrintfLine("EHLO %s", o.LocalName); err != nil {
		return nil, c.ioError(ctx, StageEHLO, err, o.GreetingTimeout)
	}
	msg, err := readReply(pre, pw, 250)
	if err != nil {
		return nil, c.ioError(ctx, StageEHLO, err, o.GreetingTimeout)
	}
	if !hasExtension(msg, "STARTTLS") {
		return nil, &Error{Stage: StageTLS, Addr: c.addr,
			Message: "the upstream offers no STARTTLS, and Postern sends neither credentials nor mail in plain text " +
				"(for a server that speaks TLS from the start, set upstream.tls to implicit)"}
	}
	if err := pre.PrintfLine("STARTTLS"); err != nil {
		return nil, c.ioError(ctx, StageTLS, err, o.GreetingTimeout)
	}
	if _, err := readReply(pre, pw, 220); err != nil {
		return nil, c.ioError(ctx, StageTLS, err, o.GreetingTimeout)
	}
	if pre.R.Buffered() > 0 {
		return nil, &Error{Stage: StageTLS, Addr: c.addr, Message: "the upstream sent data before the TLS handshake"}
	}
	tc := tls.Client(c.guard, cfg)
	if err := tc.HandshakeContext(ctx); err != nil {
		return nil, c.tlsError(ctx, cfg.ServerName, err)
	}
	return tc, nil
}

func (c *Conn) tlsError(ctx context.Context, name string, err error) *Error {
	if ctx.Err() != nil || isTimeout(err) {
		return c.ioError(ctx, StageTLS, err, c.opts.GreetingTimeout)
	}
	return handshakeError(c.addr, name, err)
}

// readExtensions notes what the upstream's last EHLO reply said that Mail needs.
func (c *Conn) readExtensions() {
	c.pipelining = c.has("PIPELINING")
	c.maxSize = 0
	if ok, v := c.client.Extension("SIZE"); ok {
		if n, err := strconv.ParseInt(v, 10, 64); err == nil && n > 0 {
			c.maxSize = n
		}
	}
}

func (c *Conn) has(ext string) bool {
	ok, _ := c.client.Extension(ext)
	return ok
}

// MaxSize is the largest message the upstream accepts, from its SIZE extension; 0 if it set none.
func (c *Conn) MaxSize() int64 { return c.maxSize }

// LastReply is the upstream's text accepting the last message sent over c (often with its queue
// id), for logs.
func (c *Conn) LastReply() string { return c.reply }

func (c *Conn) refuse(opts *smtp.MailOptions) *Error {
	if opts == nil {
		return nil
	}
	local := func(code int, enh smtp.EnhancedCode, msg string) *Error {
		return &Error{Stage: StageMail, Addr: c.addr, Code: code, Enhanced: enh, Message: msg, Local: true}
	}
	switch {
	case opts.Body == smtp.Body8BitMIME && !c.has("8BITMIME"):
		return local(554, smtp.EnhancedCode{5, 6, 3}, "the upstream does not accept 8-bit message bodies (no 8BITMIME)")
	case opts.Body == smtp.BodyBinaryMIME:
		return local(554, smtp.EnhancedCode{5, 6, 3}, "binary message bodies (BINARYMIME) cannot be relayed upstream")
	case opts.UTF8 && !c.has("SMTPUTF8"):
		return local(553, smtp.EnhancedCode{5, 6, 7}, "the upstream does not accept internationalised addresses (no SMTPUTF8)")
	case opts.RequireTLS && !c.has("REQUIRETLS"):
		return local(554, smtp.EnhancedCode{5, 7, 30}, "the upstream does not support REQUIRETLS")
	case c.maxSize > 0 && opts.Size > c.maxSize:
		return local(552, smtp.EnhancedCode{5, 3, 4}, fmt.Sprintf("message size %d exceeds the upstream's limit of %d", opts.Size, c.maxSize))
	}
	return nil
}

// Release returns c to its pool for the next message: after RSET when a transaction is still
// open, or closed instead when an error left it in an unknown state. c must not be used after.
func (c *Conn) Release() {
	if c.done {
		return
	}
	c.queue, c.mailErr, c.mailFrom, c.mailOpts = nil, nil, "", smtp.MailOptions{}
	if !c.broken && c.txOpen {
		err := c.run(context.Background(), "rset", c.opts.GreetingTimeout, func() error {
			if err := c.client.Reset(); err != nil {
				return err
			}
			// go-smtp's client says EHLO again after RSET; do it now, within this bound.
			return c.client.Hello(c.opts.LocalName)
		})
		if err != nil {
			c.broken = true
			c.log.Debug("upstream connection not reusable", "error", err.Error())
		} else {
			c.txOpen = false
			c.readExtensions()
		}
	}
	c.done = true
	if c.broken {
		c.closeNow()
		c.pl.drop(c)
		return
	}
	c.pl.giveBack(c)
}

// Discard closes c without reuse. c must not be used after.
func (c *Conn) Discard() {
	if c.done {
		return
	}
	c.done = true
	c.broken = true
	c.closeNow()
	c.pl.drop(c)
}

// check makes sure a pooled connection still answers.
func (c *Conn) check(ctx context.Context) error {
	err := c.run(ctx, "noop", c.opts.GreetingTimeout, c.client.Noop)
	if err != nil {
		c.broken = true
		c.log.Debug("pooled upstream connection failed its check", "error", err.Error())
	}
	return err
}

// quit says QUIT, briefly, and closes c.
func (c *Conn) quit() {
	if !c.broken && c.client != nil {
		end := c.guard.begin(context.Background(), min(quitTimeout, c.opts.GreetingTimeout))
		c.client.Quit()
		end()
	}
	c.closeNow()
}

func (c *Conn) closeNow() {
	c.closeOnce.Do(func() {
		c.stopIdleTimer()
		if c.nc != nil {
			c.nc.Close()
		}
	})
}

func (c *Conn) stopIdleTimer() {
	if c.idleTimer != nil {
		c.idleTimer.Stop()
		c.idleTimer = nil
	}
}

func (c *Conn) unusable(stage string) *Error {
	switch {
	case c.done:
		return &Error{Stage: stage, Addr: c.addr, Message: "connection used after Release or Discard"}
	case c.broken:
		return &Error{Stage: stage, Addr: c.addr, Message: "connection is broken by an earlier error"}
	}
	return nil
}

// run does one exchange within timeout and ctx.
func (c *Conn) run(ctx context.Context, stage string, timeout time.Duration, f func() error) error {
	end := c.guard.begin(ctx, timeout)
	err := c.wire.over(f())
	end()
	if err != nil {
		return c.ioError(ctx, stage, err, timeout)
	}
	return nil
}

// ioError makes an Error of what an exchange returned. Anything but an SMTP reply, and a 421,
// leaves the connection unusable.
func (c *Conn) ioError(ctx context.Context, stage string, err error, timeout time.Duration) *Error {
	if errors.Is(err, smtp.ErrTooLongLine) {
		// go-smtp's client limits the lines it reads, as wireConn does (replyLimit).
		err = fmt.Errorf("%w: %w", ErrReplyTooLarge, err)
	}
	e := replyError(stage, c.addr, err)
	if e.Code == 0 || e.Code == 421 {
		c.broken = true
		c.closeNow()
	}
	if e.Code != 0 {
		return e
	}
	if ctx.Err() != nil {
		e.Message = "gave up"
		e.Err = fmt.Errorf("%w: %w", context.Cause(ctx), err)
	} else if d, ok := ctx.Deadline(); ok && isTimeout(err) && !time.Now().Before(d) {
		e.Message = "gave up"
		e.Err = fmt.Errorf("%w: %w", context.DeadlineExceeded, err)
	} else if isTimeout(err) {
		e.Message = fmt.Sprintf("no answer within %s", timeout)
		c.silent = true
	}
	return e
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.Is(err, os.ErrDeadlineExceeded) || (errors.As(err, &ne) && ne.Timeout())
}

func isLoopback(a net.Addr) bool {
	ta, ok := a.(*net.TCPAddr)
	return ok && ta.IP.IsLoopback()
}

// readReply reads one reply from tp, which reads w, turning a negative one into an
// *smtp.SMTPError as go-smtp does.
func readReply(tp *textproto.Conn, w *wireConn, expect int) (string, error) {
	_, msg, err := tp.ReadResponse(expect)
	err = w.over(err)
	var te *textproto.Error
	if errors.As(err, &te) {
		return msg, toSMTPError(te.Code, te.Msg)
	}
	return msg, err
}

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

// hasExtension reports whether an EHLO reply (as textproto returns it) lists ext.
func hasExtension(ehlo, ext string) bool {
	sc := bufio.NewScanner(strings.NewReader(ehlo))
	sc.Scan() // the greeting line
	for sc.Scan() {
		if f := strings.Fields(sc.Text()); len(f) > 0 && strings.EqualFold(f[0], ext) {
			return true
		}
	}
	return false
}
