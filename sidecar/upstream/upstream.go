// Package upstream owns talking to a project's upstream SMTP server: opening a connection (TCP,
// TLS with certificate verification, AUTH), relaying one message over it, and keeping a pool of
// signed-in connections per project so that most messages pay for none of that.
//
// The path of one message:
//
//  1. Acquire finds the project's pool. If the upstream failed to connect, greet or speak TLS a
//     moment ago, Acquire fails at once with ErrDown (a temporary error) for a backoff that starts
//     at Options.DownBackoff and doubles to 5 minutes, so queued mail for a dead upstream does not
//     tie up Postfix's delivery slots. One project's upstream never delays another's: no lock is
//     held across I/O.
//  2. Acquire reuses an idle connection opened with the same settings (checked with NOOP when it
//     has idled longer than Options.CheckIdleAfter), or opens one while the project has fewer
//     than Options.Connections allows (this replica's share of the project's limit) open, or
//     waits its turn for one, at most
//     Options.MaxConnWait.
//  3. Opening a connection: TCP; with implicit TLS the handshake, the greeting and EHLO; with
//     STARTTLS the greeting, EHLO, STARTTLS, the handshake and EHLO again (RFC 3207: everything
//     learned before TLS is forgotten); certificate verification against the system's roots plus
//     project.Upstream.CAPEM; HELO instead of the last EHLO when the upstream answers it with 500
//     or 502. Then AUTH PLAIN or LOGIN with the project's username and password, or the SASL
//     client the caller supplies (XOAUTH2); an initial response that would take the AUTH line
//     over 512 octets answers the server's first challenge instead (RFC 4954). Credentials are
//     never sent over an unencrypted connection unless the project's TLS mode is none, which only
//     a loopback upstream may use.
//  4. Mail, Rcpt and Data relay the message, or Mail and Send, which takes the recipients with
//     the message; the message is streamed while Postfix waits. With an upstream that offers
//     PIPELINING (RFC 2920), MAIL goes out with the first RCPT, and Send puts MAIL, every RCPT and
//     DATA in one write: two round trips per message. Every failure is an *Error naming the stage
//     and carrying the upstream's reply, with Temporary and AuthFailed to decide what Postfix
//     hears.
//  5. Release hands the connection back (RSET first when a transaction was left open; closed
//     instead when an error left its state unknown), Discard closes it. Idle connections close after
//     Options.IdleTimeout; connections opened with settings that have since changed (host, port,
//     TLS, server name, CA, verification, username, mechanism) are not reused.
//
// Each connection is one SMTP session that this package runs itself (session.go), from the
// greeting to QUIT: one reader of the upstream's replies and one state, ready, in a transaction
// (reset with RSET before the connection is reused) or broken (closed, never reused).
//
// Every reply of the upstream, from the greeting on, is read within limits (a line of 1000 octets,
// a reply of 64 KiB or 128 lines): a reply over them fails the exchange with ErrReplyTooLarge, a
// temporary error, and closes the connection.
//
// Credentials appear in no error and no log line. With Options.Trace the SMTP dialogue is logged
// at debug level, the AUTH exchange redacted and message bodies left out.
package upstream

import (
	"context"
	"crypto/x509"
	"log/slog"
	"os"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/emersion/go-sasl"

	"github.com/postern/postern/sidecar/project"
	"github.com/postern/postern/sidecar/secret"
)

// Auth is how a connection signs in upstream. The zero Auth sends without AUTH
// (project.AuthNone).
type Auth struct {
	// Mechanism is "PLAIN" or "LOGIN", or "" to choose: PLAIN when offered, else LOGIN. With SASL
	// set it only names the mechanism (e.g. "XOAUTH2") for logs and for telling settings apart.
	Mechanism string
	// Username is the account to sign in as.
	Username string
	// Secret is the password (or, for a SASL client that takes it, the access token).
	Secret secret.Secret
	// SASL, when set, makes the client for one AUTH exchange; Mechanism, Username and Secret are
	// then not used to sign in. This is how XOAUTH2 plugs in.
	SASL func() sasl.Client
}

// MaxDownBackoff is the longest Acquire fails fast for a project whose upstream keeps failing.
const MaxDownBackoff = 5 * time.Minute

// Defaults of the zero Options. The configuration's defaults (package config, upstream.*) are
// these.
const (
	DefaultDialTimeout     = 30 * time.Second
	DefaultGreetingTimeout = 30 * time.Second
	DefaultCommandTimeout  = 5 * time.Minute // RFC 5321
	DefaultDataTimeout     = 10 * time.Minute
	DefaultIdleTimeout     = 60 * time.Second
	DefaultMaxConnWait     = 30 * time.Second
	DefaultDownBackoff     = 15 * time.Second
	DefaultCheckIdleAfter  = 5 * time.Second
)

// quitTimeout bounds the polite QUIT before a connection is closed.
const quitTimeout = 5 * time.Second

// Options configures Pools. The zero value is usable; each field documents its default.
type Options struct {
	// LocalName is the name Postern gives in EHLO. Default: os.Hostname, else "localhost".
	LocalName string
	// DialTimeout bounds the TCP connect. Default DefaultDialTimeout.
	DialTimeout time.Duration
	// GreetingTimeout bounds everything between connect and a signed-in connection: TLS, banner,
	// EHLO, STARTTLS, AUTH. It also bounds RSET and the NOOP check of a pooled connection.
	// Default DefaultGreetingTimeout.
	GreetingTimeout time.Duration
	// CommandTimeout bounds MAIL and each RCPT. Default DefaultCommandTimeout.
	CommandTimeout time.Duration
	// DataTimeout bounds DATA as a whole: the command, the message and the final reply.
	// Default DefaultDataTimeout.
	DataTimeout time.Duration
	// IdleTimeout closes a pooled connection unused for this long. Default DefaultIdleTimeout.
	IdleTimeout time.Duration
	// MaxConnWait bounds how long Acquire waits for a project's busy connections. Default
	// DefaultMaxConnWait.
	MaxConnWait time.Duration
	// DownBackoff is how long Acquire fails fast after an upstream failed to connect, greet or
	// speak TLS; it doubles with each further failure up to MaxDownBackoff and resets once a
	// connection opens. Default DefaultDownBackoff.
	DownBackoff time.Duration
	// CheckIdleAfter: a pooled connection idle longer than this is checked with NOOP before reuse.
	// Default DefaultCheckIdleAfter.
	CheckIdleAfter time.Duration
	// RootCAs are the trusted roots; nil means the system's. A project's Upstream.CAPEM adds to them.
	RootCAs *x509.CertPool
	// Trace logs every SMTP line at debug level (AUTH redacted, message bodies left out).
	Trace bool
	// TraceProjects traces the connections of these projects only, as Trace does.
	TraceProjects []string
	// Logger receives the pools' logs. Default: discard.
	Logger *slog.Logger
	// Now is the clock for idle ages and backoffs. Default time.Now.
	Now func() time.Time
	// Connections is how many connections a project may have open at once in these pools
	// (*limits.Limiter's share of the project's limit, when replicas share it). Default: the
	// project's Limits.Connections().
	Connections func(project.Project) int
}

func (o Options) withDefaults() Options {
	if o.LocalName == "" {
		o.LocalName = "localhost"
		if h, err := os.Hostname(); err == nil && h != "" && !strings.ContainsAny(h, " \t\r\n") {
			o.LocalName = h
		}
	}
	set := func(d *time.Duration, def time.Duration) {
		if *d <= 0 {
			*d = def
		}
	}
	set(&o.DialTimeout, DefaultDialTimeout)
	set(&o.GreetingTimeout, DefaultGreetingTimeout)
	set(&o.CommandTimeout, DefaultCommandTimeout)
	set(&o.DataTimeout, DefaultDataTimeout)
	set(&o.IdleTimeout, DefaultIdleTimeout)
	set(&o.MaxConnWait, DefaultMaxConnWait)
	set(&o.DownBackoff, DefaultDownBackoff)
	set(&o.CheckIdleAfter, DefaultCheckIdleAfter)
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Connections == nil {
		o.Connections = func(p project.Project) int { return p.Limits.Connections() }
	}
	return o
}

// Pools holds one connection pool per project. It is safe for concurrent use.
type Pools struct {
	opts Options

	mu     sync.Mutex
	pools  map[string]*pool
	closed bool
	wg     sync.WaitGroup // background closes

	bodies sync.Pool // *bodyBuffers: held while a message is sent, not by idle connections
}

// NewPools returns empty pools.
func NewPools(opts Options) *Pools {
	return &Pools{opts: opts.withDefaults(), pools: make(map[string]*pool)}
}

// PoolStats describes one project's pool.
type PoolStats struct {
	Project string
	// Open counts connections open or being opened; Idle those waiting in the pool; InUse the rest.
	Open, Idle, InUse int
	// Waiting counts Acquire calls waiting for a connection.
	Waiting int
	// Dials counts connection attempts; AuthFailures the upstream's rejections of the credentials.
	Dials, AuthFailures uint64
	// DownUntil is when Acquire stops failing fast; zero when the upstream is not down.
	DownUntil time.Time
	// LastError is the last failure to open a connection, "" after a success.
	LastError string
}

// Stats describes every project's pool, sorted by project name.
func (p *Pools) Stats() []PoolStats {
	p.mu.Lock()
	pools := make([]*pool, 0, len(p.pools))
	for _, pl := range p.pools {
		pools = append(pools, pl)
	}
	p.mu.Unlock()
	now := p.opts.Now()
	out := make([]PoolStats, 0, len(pools))
	for _, pl := range pools {
		out = append(out, pl.stats(now))
	}
	slices.SortFunc(out, func(a, b PoolStats) int { return strings.Compare(a.Project, b.Project) })
	return out
}

// Close closes every idle connection (QUIT first, each bounded by a few seconds), fails every
// waiting Acquire and every later one, and closes connections still in use when they are
// released.
func (p *Pools) Close() error {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return nil
	}
	p.closed = true
	pools := make([]*pool, 0, len(p.pools))
	for _, pl := range p.pools {
		pools = append(pools, pl)
	}
	p.mu.Unlock()

	var conns []*Conn
	for _, pl := range pools {
		conns = append(conns, pl.close()...)
	}
	var wg sync.WaitGroup
	for _, c := range conns {
		wg.Go(c.quit)
	}
	wg.Wait()
	p.wg.Wait()
	return nil
}

// background runs f (closing connections) in its own goroutine, which Close waits for; once Close
// has begun, f runs in the caller's.
func (p *Pools) background(f func()) {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		f()
		return
	}
	p.wg.Add(1)
	p.mu.Unlock()
	go func() {
		defer p.wg.Done()
		f()
	}()
}

// pool returns the project's pool, creating it on first use.
func (p *Pools) pool(name, addr string) (*pool, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return nil, &Error{Stage: StagePool, Addr: addr, Err: ErrClosed}
	}
	pl := p.pools[name]
	if pl == nil {
		pl = &pool{p: p, name: name, log: p.opts.Logger.With("project", name)}
		p.pools[name] = pl
	}
	return pl, nil
}

// Acquire returns a signed-in connection to the project's upstream for one message. Give it back
// with Release (or Discard) when the message is done.
func (p *Pools) Acquire(ctx context.Context, proj project.Project, auth Auth) (*Conn, error) {
	addr := address(proj.Upstream)
	if err := ctx.Err(); err != nil {
		return nil, &Error{Stage: StagePool, Addr: addr, Message: "gave up before asking for a connection", Err: err}
	}
	pl, err := p.pool(proj.Name, addr)
	if err != nil {
		return nil, err
	}
	fp := fingerprint(proj.Upstream, auth)

	g, w := pl.take(fp, max(1, p.opts.Connections(proj)), addr)
	if w != nil {
		var err error
		if g, err = pl.wait(ctx, w, addr); err != nil {
			return nil, err
		}
	}
	if g.err != nil {
		return nil, g.err
	}
	if c := g.conn; c != nil {
		if c.fp == fp && (p.opts.Now().Sub(c.lastUsed) <= p.opts.CheckIdleAfter || c.check(ctx) == nil) {
			c.done = false
			return c, nil
		}
		// Stale: open a fresh connection in the slot it held.
		if c.state != stateBroken {
			p.background(c.quit)
		}
		pl.redial()
	}
	c, derr := p.dial(ctx, pl, proj, auth, fp)
	if err := pl.opened(c, derr); err != nil {
		return nil, err
	}
	return c, nil
}
