// Package smtpd owns the LMTP (unix socket) and SMTP (loopback TCP) server Postfix delivers
// Postern's mail to, and the mapping of every outcome to the reply Postfix hears.
//
// Postern stores no mail: each transaction is passed through to the project's upstream while
// Postfix waits, so Postfix's queue keeps the message until the upstream has accepted it.
//
// The path of one transaction on a session (one Postfix connection, with its own ctx, cancelled
// on logout):
//
//  1. MAIL FROM: a sender no quoting can carry upstream (address.Path: control characters, no
//     domain) is refused with 553 5.1.7, and one beyond ASCII without the SMTPUTF8 parameter with
//     553 5.6.7. The sender's project is resolved (Resolver). No project now: 451 4.7.1 (the mail is
//     queued already; see replyFor). Project
//     configuration unavailable: 451 4.3.0. Project disabled: 451 4.7.0. A SIZE over the project's
//     limit: 552 5.3.4. A project paused after its upstream's quota reply: 451 4.7.0. The
//     project's messages-per-minute share is waited for, at most Options.RateWait, else 451
//     4.7.0 (package limits owns every limit and its share across replicas).
//  2. The project signs in through Credentials (package credential), which acquires an upstream
//     connection (Upstreams) with the project's credential, renews a refused credential once where
//     it can and reports the outcome to its source. A credential that needs a person to sign in
//     again is 451 4.7.0, and so is a refusal that stands. Then MAIL FROM with SIZE and BODY is ready for the upstream (sent at
//     once, or with the first recipient when the upstream offers PIPELINING).
//  3. RCPT TO: a recipient no quoting can carry upstream is refused with 553 5.1.3, one beyond
//     ASCII without SMTPUTF8 on MAIL FROM with 553 5.6.7; both before it goes anywhere, over LMTP
//     too. Past the project's recipient limit 452 4.5.3 (Postfix sends the rest in another
//     transaction); past its recipients-per-day share 451 4.7.0 (a recipient is counted when it is
//     accepted, and given back when the upstream does not take the message). Over SMTP the upstream's reply for that recipient is passed back. Over LMTP
//     the recipient is taken, and goes upstream with DATA.
//  4. DATA: over LMTP, the recipients and DATA go upstream together (one round trip where the
//     upstream pipelines), then the body streams to the upstream if it took a recipient. Each
//     recipient then gets its own reply: the upstream's refusal of that recipient, or its one
//     final reply to the message. Over SMTP the body streams to the upstream and its final reply
//     is passed back. The message comes with DATA or in BDAT chunks (CHUNKING, which go-smtp
//     offers); either way a line over maxLineLength (2000 bytes) ends it with 451 4.6.0. A message
//     that comes with DATA is read by Postern itself, in bulk, not by go-smtp's reader, which
//     takes a byte at a time (data.go argues it; a differential fuzz test holds the two equal).
//  5. The upstream connection goes back to its pool at the end of the transaction (RSET, Reset,
//     logout), or is discarded when a failure left its state unknown.
//
// An upstream's reply that reports a provider's sending quota (upstream.Error.Quota) is answered
// with a 4xx, never a bounce, and pauses the project (limits.Limiter.Pause).
//
// Every failure goes through replyFor: an upstream's definite no (5xx to RCPT or DATA) is passed
// on; everything else is temporary, so mail is never bounced for an operational fault.
//
// Every command line must arrive whole within Options.ReadTimeout and every message within
// Options.DataTimeout; a connection that runs out of either is answered 421 4.4.2 and closed, and no
// partial line is ever run as a command (framing.go).
//
// When Serve's ctx ends the listener closes, connections between transactions close at once, and
// transactions in flight may finish for Options.ShutdownTimeout before their connections are cut.
package smtpd

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"strings"
	"sync/atomic"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/postern/postern/sidecar/health"

	"github.com/postern/postern/sidecar/credential"
	"github.com/postern/postern/sidecar/directory"
	"github.com/postern/postern/sidecar/limits"
	"github.com/postern/postern/sidecar/project"
	"github.com/postern/postern/sidecar/upstream"
)

// Resolver finds the project serving an envelope sender (*directory.Directory). Its errors are
// directory.ErrNoProject and directory.ErrUnavailable.
type Resolver interface {
	Resolve(ctx context.Context, sender string) (project.Project, error)
}

// Credentials is the one sign-in to an upstream (*credential.Manager): it gets the project's
// credential, calls attempt with it, renews it once where the upstream refused it and its source
// can, and reports the outcome to the source. An error matching credential.ErrNeedsReauth means a
// person must sign in again.
type Credentials interface {
	SignIn(ctx context.Context, p project.Project, attempt func(upstream.Auth) error) error
}

// Upstreams hands out signed-in upstream connections (*upstream.Pools).
type Upstreams interface {
	Acquire(ctx context.Context, p project.Project, a upstream.Auth) (*upstream.Conn, error)
}

var (
	_ Resolver    = (*directory.Directory)(nil)
	_ Credentials = (*credential.Manager)(nil)
	_ Upstreams   = (*upstream.Pools)(nil)
)

// Defaults for zero Options fields.
const (
	DefaultMaxMessageBytes = 50 << 20
	DefaultMaxRecipients   = 1000
	DefaultReadTimeout     = 10 * time.Minute
	DefaultDataTimeout     = 10 * time.Minute
	DefaultWriteTimeout    = 5 * time.Minute
	DefaultRateWait        = 30 * time.Second
	DefaultShutdownTimeout = 30 * time.Second
)

// Options configure a Server. Resolver, Credentials and Upstreams are required; every other zero
// field means its default.
type Options struct {
	Resolver    Resolver
	Credentials Credentials
	Upstreams   Upstreams
	// Logger receives one line per transaction outcome and the server's own errors. Nil discards.
	Logger *slog.Logger
	// Hostname is the name in the greeting. Default: os.Hostname, else "localhost".
	Hostname string
	// MaxMessageBytes is advertised with SIZE and enforced on every message; a project's own
	// Limits.MaxMessageBytes can only lower it. Default DefaultMaxMessageBytes.
	MaxMessageBytes int64
	// MaxRecipients per transaction, advertised and enforced; a project's own
	// Limits.MaxRecipients can only lower it. Default DefaultMaxRecipients.
	MaxRecipients int
	// ReadTimeout bounds waiting for Postfix's next command line, which must arrive whole within it:
	// a line cut off by it is never run, and the connection is answered 421 4.4.2 and closed.
	// Default DefaultReadTimeout.
	ReadTimeout time.Duration
	// DataTimeout bounds the data of one message, from the 354 reply to DATA to the final dot, or
	// one BDAT chunk from its command on. A message cut off by it is never relayed; its recipients
	// get a temporary failure and the connection is closed. Default DefaultDataTimeout.
	DataTimeout time.Duration
	// WriteTimeout bounds writing one reply. Default DefaultWriteTimeout.
	WriteTimeout time.Duration
	// Limiter enforces the projects' limits (this replica's share of them) and pauses after
	// quota replies. Nil: a Limiter of its own, for one replica.
	Limiter *limits.Limiter
	// RateWait bounds the wait for a project's messages-per-minute budget before 451 4.7.0.
	// Default DefaultRateWait.
	RateWait time.Duration
	// ShutdownTimeout bounds how long transactions in flight may finish after Serve's ctx ends.
	// Default DefaultShutdownTimeout.
	ShutdownTimeout time.Duration
	// Health receives the end of every transaction, at the stage where it ended, and the time of
	// each upstream round trip (package health). Nil: a Tracker of the Server's own.
	Health *health.Tracker
}

// Server is Postern's LMTP and SMTP server. One Server may serve several listeners.
type Server struct {
	opts     Options
	log      *slog.Logger
	limiter  *limits.Limiter
	counts   counters
	rateWait atomic.Int64 // Options.RateWait, changed by SetRateWait
}

// SetRateWait changes Options.RateWait for the transactions that start from now on (a
// configuration reload). Zero or less means DefaultRateWait.
func (s *Server) SetRateWait(d time.Duration) {
	if d <= 0 {
		d = DefaultRateWait
	}
	s.rateWait.Store(int64(d))
}

// New checks opts and returns a Server, or every problem with opts at once.
func New(opts Options) (*Server, error) {
	var errs []error
	if opts.Health == nil {
		opts.Health = health.New(health.Options{})
	}
	if opts.Resolver == nil {
		errs = append(errs, errors.New("smtpd: Resolver is required"))
	}
	if opts.Credentials == nil {
		errs = append(errs, errors.New("smtpd: Credentials is required"))
	}
	if opts.Upstreams == nil {
		errs = append(errs, errors.New("smtpd: Upstreams is required"))
	}
	if strings.ContainsAny(opts.Hostname, " \t\r\n") {
		errs = append(errs, fmt.Errorf("smtpd: Hostname %q contains blanks", opts.Hostname))
	}
	for _, neg := range []struct {
		name string
		bad  bool
	}{
		{"MaxMessageBytes", opts.MaxMessageBytes < 0},
		{"MaxRecipients", opts.MaxRecipients < 0},
		{"ReadTimeout", opts.ReadTimeout < 0},
		{"DataTimeout", opts.DataTimeout < 0},
		{"WriteTimeout", opts.WriteTimeout < 0},
		{"RateWait", opts.RateWait < 0},
		{"ShutdownTimeout", opts.ShutdownTimeout < 0},
	} {
		if neg.bad {
			errs = append(errs, fmt.Errorf("smtpd: %s is negative", neg.name))
		}
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}

	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.Hostname == "" {
		opts.Hostname = "localhost"
		if h, err := os.Hostname(); err == nil && h != "" && !strings.ContainsAny(h, " \t\r\n") {
			opts.Hostname = h
		}
	}
	if opts.MaxMessageBytes == 0 {
		opts.MaxMessageBytes = DefaultMaxMessageBytes
	}
	if opts.MaxRecipients == 0 {
		opts.MaxRecipients = DefaultMaxRecipients
	}
	if opts.ReadTimeout == 0 {
		// Never zero: graceful shutdown relies on go-smtp setting a read deadline per command.
		opts.ReadTimeout = DefaultReadTimeout
	}
	if opts.DataTimeout == 0 {
		opts.DataTimeout = DefaultDataTimeout
	}
	if opts.WriteTimeout == 0 {
		opts.WriteTimeout = DefaultWriteTimeout
	}
	if opts.RateWait == 0 {
		opts.RateWait = DefaultRateWait
	}
	if opts.ShutdownTimeout == 0 {
		opts.ShutdownTimeout = DefaultShutdownTimeout
	}
	if opts.Limiter == nil {
		opts.Limiter = limits.New(limits.Options{})
	}
	s := &Server{opts: opts, log: opts.Logger, limiter: opts.Limiter}
	s.rateWait.Store(int64(opts.RateWait))
	return s, nil
}

// ServeLMTP serves LMTP on l (Postfix's `lmtp:unix:...` transport) until ctx ends, then shuts down
// gracefully and returns nil. It returns an error if accepting fails. It closes l.
func (s *Server) ServeLMTP(ctx context.Context, l net.Listener) error {
	return s.serve(ctx, l, true)
}

// ServeSMTP serves SMTP on l (Postfix's `smtp:[127.0.0.1]:port` transport) until ctx ends, then
// shuts down gracefully and returns nil. l must listen on a loopback address: the server relays
// without authentication. It closes l.
func (s *Server) ServeSMTP(ctx context.Context, l net.Listener) error {
	if a, ok := l.Addr().(*net.TCPAddr); !ok || !a.IP.IsLoopback() {
		l.Close()
		return fmt.Errorf("smtpd: refusing to serve SMTP on %s: only loopback addresses are allowed", l.Addr())
	}
	return s.serve(ctx, l, false)
}

func (s *Server) serve(ctx context.Context, l net.Listener, lmtp bool) error {
	proto := "smtp"
	if lmtp {
		proto = "lmtp"
	}
	log := s.log.With("listener", proto, "addr", l.Addr().String())

	// Sessions live on past ctx (to finish what they started) until the hard stop.
	sessionBase, hardStop := context.WithCancel(context.WithoutCancel(ctx))
	defer hardStop()

	dl := newDrainListener(l, s.opts.DataTimeout)
	srv := smtp.NewServer(&backend{srv: s, lmtp: lmtp, base: sessionBase, log: log})
	srv.LMTP = lmtp
	srv.Domain = s.opts.Hostname
	srv.MaxMessageBytes = s.opts.MaxMessageBytes
	srv.MaxRecipients = s.opts.MaxRecipients
	// Passed through: the upstream connection refuses (553 5.6.7) what its upstream cannot take.
	srv.EnableSMTPUTF8 = true
	// The framer bounds lines on the wire and countingReader the message's own lines (maxLineLength),
	// the same for DATA and BDAT; go-smtp's own check (a byte at a time) would count the start of a
	// BDAT chunk read together with its command as part of a command line.
	srv.MaxLineLength = 0
	srv.ReadTimeout = s.opts.ReadTimeout
	srv.WriteTimeout = s.opts.WriteTimeout
	srv.ErrorLog = errorLog{log}

	served := make(chan error, 1)
	go func() { served <- srv.Serve(dl) }()
	log.Info("serving")

	var serveErr error
	select {
	case err := <-served:
		serveErr = fmt.Errorf("smtpd: serving %s on %s: %w", proto, l.Addr(), err)
		log.Error("accepting connections failed", "err", err)
	case <-ctx.Done():
	}

	dl.Listener.Close()
	dl.drain()
	grace := time.NewTimer(s.opts.ShutdownTimeout)
	defer grace.Stop()
	select {
	case <-dl.wait():
	case <-grace.C:
		log.Warn("transactions still running after the shutdown timeout: cutting them off (Postfix retries them)")
		hardStop()
		dl.closeAll()
		<-dl.wait()
	}
	srv.Close()
	if serveErr == nil {
		<-served
	}
	log.Info("stopped")
	return serveErr
}

// backend makes one session per Postfix connection.
type backend struct {
	srv  *Server
	lmtp bool
	base context.Context
	log  *slog.Logger
}

func (b *backend) NewSession(c *smtp.Conn) (smtp.Session, error) {
	ctx, cancel := context.WithCancel(b.base)
	dc, _ := c.Conn().(*drainConn)
	b.srv.counts.session()
	return &session{
		srv:    b.srv,
		dc:     dc,
		lmtp:   b.lmtp,
		ctx:    ctx,
		cancel: cancel,
		log:    b.log.With("client", c.Hostname()),
	}, nil
}

// errorLog passes go-smtp's own error messages to the logger.
type errorLog struct{ log *slog.Logger }

func (e errorLog) Printf(format string, v ...any) {
	e.log.Warn("smtp server", "err", strings.TrimSpace(fmt.Sprintf(format, v...)))
}

func (e errorLog) Println(v ...any) {
	e.log.Warn("smtp server", "err", strings.TrimSpace(fmt.Sprintln(v...)))
}
