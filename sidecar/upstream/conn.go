package upstream

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/textproto"
	"os"
	"slices"
	"strconv"
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
	guard  *guard   // bounds each operation's I/O on nc
	trace  *tracer
	wire   *wireConn         // the session's connection: nc, or TLS over it
	rd     *textproto.Reader // every reply of the session, read from wire
	bodies *sync.Pool        // *bodyBuffers, shared by all connections of the Pools

	ext       map[string]string // the extensions of the last EHLO reply (session.go)
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

	state     state  // ready, in a transaction, broken; changed by enter only
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
	if p.opts.Trace || slices.Contains(p.opts.TraceProjects, proj.Name) {
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
	c.guard = &guard{conn: nc}
	if err := c.open(ctx, u, auth); err != nil {
		c.enter(stateBroken)
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
	switch u.TLS {
	case project.TLSImplicit:
		tc := tls.Client(c.nc, cfg)
		if err := tc.HandshakeContext(ctx); err != nil {
			return c.tlsError(ctx, cfg.ServerName, err)
		}
		c.attach(tc)
		c.encrypted = true
	case project.TLSStartTLS, project.TLSNone:
		c.attach(c.nc)
	default:
		return &Error{Stage: StageConnect, Addr: c.addr, Message: fmt.Sprintf("upstream.tls %q: use starttls, implicit or none", u.TLS)}
	}

	if _, _, err := c.read(220); err != nil {
		return c.ioError(ctx, StageGreeting, err, o.GreetingTimeout)
	}
	if u.TLS == project.TLSStartTLS {
		if err := c.startTLS(ctx, cfg); err != nil {
			return err
		}
	}
	if err := c.hello(true); err != nil {
		return c.ioError(ctx, StageEHLO, err, o.GreetingTimeout)
	}
	if err := c.signIn(ctx, u, auth); err != nil {
		return err
	}
	c.readExtensions()
	return nil
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
	if ok, v := c.extension("SIZE"); ok {
		if n, err := strconv.ParseInt(v, 10, 64); err == nil && n > 0 {
			c.maxSize = n
		}
	}
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
	if c.state == stateTx {
		if err := c.run(context.Background(), "rset", c.opts.GreetingTimeout, c.simple("RSET", 250)); err != nil {
			c.log.Debug("upstream connection not reusable", "err", err.Error())
			c.enter(stateBroken)
		} else {
			c.enter(stateReady)
		}
	}
	c.done = true
	if c.state == stateBroken {
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
	c.enter(stateBroken)
	c.pl.drop(c)
}

// check makes sure a pooled connection still answers.
func (c *Conn) check(ctx context.Context) error {
	err := c.run(ctx, "noop", c.opts.GreetingTimeout, c.simple("NOOP", 250))
	if err != nil {
		c.log.Debug("pooled upstream connection failed its check", "err", err.Error())
		c.enter(stateBroken)
	}
	return err
}

// quit says QUIT, briefly, and closes c.
func (c *Conn) quit() {
	if c.state != stateBroken {
		end := c.guard.begin(context.Background(), min(quitTimeout, c.opts.GreetingTimeout))
		c.simple("QUIT", 221)()
		end()
	}
	c.enter(stateBroken)
}

// simple is a command that takes one reply with the code expect.
func (c *Conn) simple(line string, expect int) func() error {
	return func() error {
		if err := c.cmd(line); err != nil {
			return err
		}
		_, _, err := c.read(expect)
		return err
	}
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
	case c.state == stateBroken:
		return &Error{Stage: stage, Addr: c.addr, Message: "connection is broken by an earlier error"}
	}
	return nil
}

// run does one exchange within timeout and ctx.
func (c *Conn) run(ctx context.Context, stage string, timeout time.Duration, f func() error) error {
	end := c.guard.begin(ctx, timeout)
	err := f()
	end()
	if err != nil {
		return c.ioError(ctx, stage, err, timeout)
	}
	return nil
}

// ioError makes an Error of what an exchange returned. Anything but an SMTP reply, and a 421,
// leaves the connection broken.
func (c *Conn) ioError(ctx context.Context, stage string, err error, timeout time.Duration) *Error {
	e := replyError(stage, c.addr, err)
	if e.Code == 0 || e.Code == 421 {
		c.enter(stateBroken)
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
