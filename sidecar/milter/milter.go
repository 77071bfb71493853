// Package milter is Postern's mail filter for Postfix's smtpd_milters and non_smtpd_milters. At
// submission time it tells an application what the project's upstream would refuse later, so the
// application hears a clear reply at once instead of a bounce after the message has been queued.
//
// The flow of one message:
//
//  1. MAIL FROM. A sender whose domain Postern does not serve (Domains) is accepted at once: Postfix
//     sends nothing more about that message, so unrelated mail costs one round trip. Otherwise the
//     sender's project is resolved (Resolver): a sender of a served domain that belongs to no project
//     gets 550 5.7.1; a disabled project 451 4.7.0; a credential that needs re-authorisation
//     (CredentialState) 451 4.7.0; an unreachable directory or any other fault 451 4.3.0. A SIZE=
//     parameter above the project's size limit gets 552 5.3.4. A sender no quoting can carry upstream
//     (address.Path: a control character, no domain) gets 553 5.1.7 before any lookup.
//  2. RCPT TO. A recipient no quoting can carry upstream gets 553 5.1.3. Recipients are counted; every one above the project's limit gets 452 4.5.3 and the
//     others go on. 452 rather than 550: RFC 5321 (sections 4.5.3.1.8 and 4.5.3.1.10) makes 452 the
//     reply for "too many recipients", and a client that gets it sends the remaining recipients in
//     another transaction (Postfix's own smtp client does), while 550 would bounce them for a limit
//     that is only about how the message is split.
//  3. End of headers. Every address in the From header must be one the project may send as
//     (project.MaySendAs); otherwise the upstream would answer 5.7.60 SendAsDenied after DATA, so the
//     milter answers 550 5.7.60 naming what the mailbox may send as. A message without a From address,
//     or with one net/mail cannot parse, gets 550 5.6.0: RFC 5322 requires exactly one From field
//     and the upstream's send-as check needs an address to compare. (Postfix adds a missing From
//     itself for clients in local_header_rewrite_clients, so this milter sees one for them.) Postfix
//     sends header fields once the client has finished DATA, so this reply, like the upstream's,
//     comes at the end of the message; it still comes before the message is queued. When no size
//     limit applies the message is accepted here and Postfix sends no body.
//  4. Body. Bytes are counted (header fields and body, with CRLF line ends, as Postfix hands them
//     over); above the limit the message gets 552 5.3.4 as soon as the limit is passed. Otherwise it
//     is accepted at the end of the message.
//
// Every decision about a Postern sender is logged once at info with the project, sender, queue id and
// SASL login; accepting unrelated mail is logged at debug.
//
// Limits come from the project (project.Limits) or, where it sets none, from HostLimits matched
// against the upstream host: Exchange Online 500 recipients and 35 MiB, Gmail 100 recipients and
// 35 MiB unless configured otherwise.
//
// The protocol is go-milter's (github.com/emersion/go-milter v0.5), which negotiates milter
// protocol version 2 with Postfix. How this package works around that library:
//
//   - It does not hand the MAIL FROM ESMTP parameters (SIZE=) to the Milter, and Postfix has no macro
//     for them. The connection wrapper reads every packet before go-milter does and hands the
//     parameters of SMFIC_MAIL to the session; see conn.readPacket.
//   - It creates a new Milter value after every accept, reject or tempfail, so each connection gets
//     its own go-milter server whose NewMilter returns the same per-connection session, and the
//     session collects the header fields it needs itself, starting afresh at every MAIL FROM.
//   - It keeps every header field of a connection in a map it clears only on SMFIC_ABORT, which
//     Postfix does not send after every message. The wrapper queues an SMFIC_ABORT before every
//     new message, and ends the connection when the header fields since the last abort exceed
//     MaxHeaderBytes.
//   - It allocates a packet's declared length (up to 1 MiB) as soon as it has read the length, and
//     has no timeouts. The wrapper reads whole packets itself first: waiting for a packet is bounded
//     by IdleTimeout, a started packet must arrive whole within PacketTimeout, a declared length
//     over 256 KiB ends the connection, and every reply is written within WriteTimeout.
//   - It writes its own diagnostics with the standard library's global log package. Read errors,
//     timeouts, limits and shutdown are turned into a clean end of stream, so they are logged here
//     instead; a failed write or a malformed packet is still reported there.
//   - It answers every header field, so the milter never asks Postfix to skip those replies.
//
// The milter protects itself by ending a connection, never by a reply about the message: a
// connection that breaks a limit (header fields over MaxHeaderBytes, a packet over 256 KiB or
// slower than PacketTimeout) is closed, and Postfix applies milter_default_action to the message in
// progress (tempfail by default: the client tries again later). How many connections are served at
// once is the listener's business: Postern's listeners cap it (listen.max_connections.milter).
package milter

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"sync"
	"time"

	gomilter "github.com/emersion/go-milter"

	"github.com/postern/postern/sidecar/backoff"
	"github.com/postern/postern/sidecar/project"
)

// Resolver finds the project an envelope sender belongs to. It returns an error for which
// Options.IsNoProject is true when the sender belongs to no project, and one for which
// Options.IsUnavailable is true when the directory cannot answer now.
type Resolver interface {
	Resolve(ctx context.Context, sender string) (project.Project, error)
}

// Domains says whether a domain is routed through Postern at all: some project has an address or
// an @domain in it. *route.Table satisfies it.
type Domains interface {
	ServesDomain(domain string) bool
}

// CredentialState reports the health of a project's credential, with the reason in the provider's
// words. The reason goes to the log, never into a reply.
type CredentialState interface {
	State(p project.Project) (state project.TokenState, reason string)
}

// CredentialStateFunc adapts a function to CredentialState.
type CredentialStateFunc func(p project.Project) (state project.TokenState, reason string)

// State calls f(p).
func (f CredentialStateFunc) State(p project.Project) (project.TokenState, string) { return f(p) }

// HostLimit gives the limits of a provider's upstream, for projects that set none of their own.
type HostLimit struct {
	// Host is the upstream host: exact ("smtp.gmail.com") or "*.domain", which matches every host
	// under domain but not domain itself. Case does not matter.
	Host string
	// MaxRecipients per message; zero means no limit from this entry.
	MaxRecipients int
	// MaxMessageBytes per message; zero means no limit from this entry.
	MaxMessageBytes int64
}

// DefaultHostLimits are the published per-message limits of Exchange Online and Gmail.
func DefaultHostLimits() []HostLimit {
	const mib = 1 << 20
	return []HostLimit{
		{Host: "*.office365.com", MaxRecipients: 500, MaxMessageBytes: 35 * mib},
		{Host: "*.outlook.com", MaxRecipients: 500, MaxMessageBytes: 35 * mib},
		{Host: "smtp.gmail.com", MaxRecipients: 100, MaxMessageBytes: 35 * mib},
	}
}

// Default timeouts.
const (
	// DefaultIdleTimeout is long because Postfix keeps its milter connection for the whole SMTP
	// session: the milter waits while the client thinks between commands (up to smtpd_timeout each)
	// and while it uploads a large message.
	DefaultIdleTimeout = time.Hour
	// DefaultWriteTimeout matches Postfix's milter_command_timeout, which is how long Postfix waits
	// for a reply.
	DefaultWriteTimeout = 30 * time.Second
	// DefaultLookupTimeout is shorter than milter_command_timeout (30s), so a slow directory
	// gets this milter's own 451 rather than Postfix's milter_default_action.
	DefaultLookupTimeout = 20 * time.Second
	// DefaultPacketTimeout is far longer than Postfix needs: it writes each packet at once.
	DefaultPacketTimeout = 10 * time.Second
)

// Default limits.
const (
	// DefaultMaxHeaderBytes is ten of Postfix's largest header fields (header_size_limit 102400).
	DefaultMaxHeaderBytes = 1 << 20
)

// Options configures a Server. Resolver, Domains and IsNoProject are required; every other zero
// value is safe.
type Options struct {
	// Resolver finds a sender's project. Required.
	Resolver Resolver
	// Domains says which sender domains are Postern's. Required.
	Domains Domains
	// Credentials reports whether a project's credential needs re-authorisation. Nil: not checked.
	Credentials CredentialState
	// IsNoProject reports whether a Resolver error means "this sender belongs to no project"
	// (for example errors.Is(err, directory.ErrNoProject)). Required.
	IsNoProject func(error) bool
	// IsUnavailable reports whether a Resolver error means "the directory cannot answer now". Nil:
	// only a lookup that ran out of time counts. Either way the reply is a 451; this only changes
	// its text and the log.
	IsUnavailable func(error) bool
	// HostLimits are the limits of projects that set none, by upstream host; the first match wins.
	// Nil means DefaultHostLimits(); an empty non-nil slice means no defaults at all.
	HostLimits []HostLimit
	// Logger receives the decisions. Nil: discarded.
	Logger *slog.Logger
	// IdleTimeout closes a connection on which Postfix sends nothing for this long. Zero means
	// DefaultIdleTimeout.
	IdleTimeout time.Duration
	// WriteTimeout bounds writing one reply. Zero means DefaultWriteTimeout.
	WriteTimeout time.Duration
	// LookupTimeout bounds one Resolver call. Zero means DefaultLookupTimeout.
	LookupTimeout time.Duration
	// PacketTimeout bounds the arrival of one packet from its first byte to its last. Zero means
	// DefaultPacketTimeout.
	PacketTimeout time.Duration
	// MaxHeaderBytes bounds the header fields of one message (their names and values as Postfix
	// sends them); over it the connection is closed. Zero means DefaultMaxHeaderBytes.
	MaxHeaderBytes int
}

// Server is the milter. One Server may serve several listeners at once.
type Server struct {
	opts Options
	log  *slog.Logger
}

// The protocol steps the milter asks for: no connect or HELO information, no unknown commands and
// no DATA event. Body chunks are asked for because a size limit may apply; a message without one is
// accepted at the end of its headers, which stops Postfix from sending its body. The last two bits
// are not defined for protocol version 2, but Postfix honours them whatever the version, and
// without them Postfix sends SMFIC_UNKNOWN for an unknown SMTP command, which go-milter answers by
// closing the connection.
const protocol = gomilter.OptNoConnect | gomilter.OptNoHelo | gomilter.OptNoUnknown | gomilter.OptNoData

// New checks opts and returns a Server, or every problem with opts at once.
func New(opts Options) (*Server, error) {
	var errs []error
	if opts.Resolver == nil {
		errs = append(errs, errors.New("milter: Resolver is required"))
	}
	if opts.Domains == nil {
		errs = append(errs, errors.New("milter: Domains is required"))
	}
	if opts.IsNoProject == nil {
		errs = append(errs, errors.New("milter: IsNoProject is required (for example errors.Is(err, directory.ErrNoProject))"))
	}
	if opts.IdleTimeout < 0 || opts.WriteTimeout < 0 || opts.LookupTimeout < 0 || opts.PacketTimeout < 0 {
		errs = append(errs, errors.New("milter: timeouts must not be negative"))
	}
	if opts.MaxHeaderBytes < 0 {
		errs = append(errs, errors.New("milter: MaxHeaderBytes must not be negative"))
	}
	if opts.HostLimits == nil {
		opts.HostLimits = DefaultHostLimits()
	}
	for i, h := range opts.HostLimits {
		if err := checkHostPattern(h.Host); err != nil {
			errs = append(errs, fmt.Errorf("milter: HostLimits[%d]: %w", i, err))
		}
		if h.MaxRecipients < 0 || h.MaxMessageBytes < 0 {
			errs = append(errs, fmt.Errorf("milter: HostLimits[%d] %q: negative limits are not allowed", i, h.Host))
		}
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	if opts.IsUnavailable == nil {
		opts.IsUnavailable = func(error) bool { return false }
	}
	if opts.IdleTimeout == 0 {
		opts.IdleTimeout = DefaultIdleTimeout
	}
	if opts.WriteTimeout == 0 {
		opts.WriteTimeout = DefaultWriteTimeout
	}
	if opts.LookupTimeout == 0 {
		opts.LookupTimeout = DefaultLookupTimeout
	}
	if opts.PacketTimeout == 0 {
		opts.PacketTimeout = DefaultPacketTimeout
	}
	if opts.MaxHeaderBytes == 0 {
		opts.MaxHeaderBytes = DefaultMaxHeaderBytes
	}
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Server{opts: opts, log: log}, nil
}

// Serve accepts milter connections from Postfix on ln until ctx ends or ln fails. On return ln is
// closed, every connection it accepted is closed (Postfix applies milter_default_action to a message
// in progress) and every session has finished. It returns nil when ctx ended, the accept error
// otherwise.
func (s *Server) Serve(ctx context.Context, ln net.Listener) error {
	stop := context.AfterFunc(ctx, func() { ln.Close() })
	defer stop()

	var (
		mu    sync.Mutex
		conns = map[*conn]struct{}{}
		wg    sync.WaitGroup
	)
	defer func() {
		mu.Lock()
		for c := range conns {
			c.shutdown()
		}
		mu.Unlock()
		wg.Wait()
	}()

	failures := 0
	for {
		nc, err := ln.Accept()
		if err != nil {
			if ctx.Err() != nil {
				ln.Close()
				return nil
			}
			if errors.Is(err, net.ErrClosed) {
				return fmt.Errorf("accepting milter connections on %s: %w", ln.Addr(), err)
			}
			// Out of file descriptors and the like: wait and try again, as net/http does.
			failures++
			delay := backoff.Accept().Delay(failures)
			s.log.Warn("accepting a milter connection failed; retrying", "addr", ln.Addr().String(), "err", err, "retry_in", delay)
			backoff.Sleep(ctx, delay)
			continue
		}
		failures = 0
		c := s.newConn(ctx, nc)
		mu.Lock()
		conns[c] = struct{}{}
		mu.Unlock()
		wg.Add(1)
		go func() {
			defer wg.Done()
			c.serve()
			mu.Lock()
			delete(conns, c)
			mu.Unlock()
		}()
	}
}

// limitsFor returns the effective per-message limits of p; zero means none.
func (s *Server) limitsFor(p project.Project) (maxRcpt int, maxBytes int64) {
	maxRcpt, maxBytes = p.Limits.MaxRecipients, p.Limits.MaxMessageBytes
	if maxRcpt > 0 && maxBytes > 0 {
		return maxRcpt, maxBytes
	}
	for _, h := range s.opts.HostLimits {
		if !hostMatches(h.Host, p.Upstream.Host) {
			continue
		}
		if maxRcpt == 0 {
			maxRcpt = h.MaxRecipients
		}
		if maxBytes == 0 {
			maxBytes = h.MaxMessageBytes
		}
		break
	}
	return maxRcpt, maxBytes
}

func checkHostPattern(p string) error {
	d := strings.TrimPrefix(p, "*.")
	if d == "" || strings.ContainsAny(d, "*@ \t/:") {
		return fmt.Errorf("host %q: use a host name or *.domain", p)
	}
	return nil
}

// hostMatches reports whether host matches pattern (see HostLimit.Host).
func hostMatches(pattern, host string) bool {
	pattern = strings.ToLower(strings.TrimSuffix(pattern, "."))
	host = strings.ToLower(strings.TrimSuffix(host, "."))
	if suffix, ok := strings.CutPrefix(pattern, "*"); ok {
		return strings.HasSuffix(host, suffix) && len(host) > len(suffix)
	}
	return host == pattern
}
