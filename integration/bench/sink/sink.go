// Package sink is the upstream mail server of Postern's benchmarks: go-smtp's server on loopback
// that accepts every message, throws the body away and counts what arrived, fast enough that it is
// never what a benchmark measures.
//
// What a Sink does with a connection:
//
//  1. It greets, and offers STARTTLS when Options.TLS is set; it then refuses AUTH and MAIL before
//     TLS.
//  2. It offers AUTH PLAIN (Options.Users) and AUTH XOAUTH2 (Options.Token) and requires one of them
//     before MAIL when any is configured. An XOAUTH2 token is checked by Options.Token.
//  3. With Options.MaxConnsPerUser, a sign-in that would give a user one connection more than that
//     is answered 421 4.3.2 and the connection closed, as Exchange Online answers a mailbox's
//     fourth concurrent connection; Counts.Refused counts them.
//  4. It reads each message to the end, discards it, and counts it under its first recipient (in
//     lower case): how many arrived, when the first and the last one did, and how long each took
//     from MAIL FROM to the end of its data (the sink's own time for a message, Timings).
//     Arrivals returns that count; benchmarks give each measured run its own recipient address.
package sink

import (
	"bytes"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"

	"github.com/postern/postern/sidecar/xoauth2/xoauth2test"
)

// Options configure Start. The zero value is a plain-text sink on a free loopback port that
// accepts everything without AUTH.
type Options struct {
	// Addr is where to listen; empty means 127.0.0.1:0.
	Addr string
	// TLS, when set, is offered as STARTTLS and required before AUTH and MAIL.
	TLS *tls.Config
	// Users are the AUTH PLAIN user names and passwords.
	Users map[string]string
	// Token, when set, offers AUTH XOAUTH2 and decides whether token is valid for user.
	Token func(user, token string) bool
	// Hostname is the name in the greeting; empty means "sink.test".
	Hostname string
	// MaxConnsPerUser is how many signed-in connections one user may have at once; 0: no limit.
	MaxConnsPerUser int
}

// Arrivals is what arrived for one recipient.
type Arrivals struct {
	// Count is the number of messages accepted.
	Count int64
	// First and Last are when the first and the last of them was accepted.
	First, Last time.Time
}

// Counts are what the sink saw overall.
type Counts struct {
	Conns, Auths, AuthFailures, Messages int64
	// Refused are the sign-ins refused with 421 4.3.2 for MaxConnsPerUser.
	Refused int64
}

// Sink is a running sink.
type Sink struct {
	opts Options
	srv  *smtp.Server
	ln   net.Listener
	done chan struct{}

	conns, auths, authFailures, messages, refused atomic.Int64

	mu     sync.Mutex
	rcpt   map[string]*Arrivals
	took   map[string][]time.Duration // per recipient, each message's MAIL FROM to end of data
	active map[string]int             // signed-in connections per user
}

// Start listens and serves until Close.
func Start(opts Options) (*Sink, error) {
	if opts.Addr == "" {
		opts.Addr = "127.0.0.1:0"
	}
	if opts.Hostname == "" {
		opts.Hostname = "sink.test"
	}
	ln, err := net.Listen("tcp", opts.Addr)
	if err != nil {
		return nil, fmt.Errorf("sink: listening on %s: %w", opts.Addr, err)
	}
	s := &Sink{opts: opts, ln: ln, done: make(chan struct{}), rcpt: map[string]*Arrivals{}, took: map[string][]time.Duration{}, active: map[string]int{}}
	srv := smtp.NewServer(s)
	srv.Domain = opts.Hostname
	srv.TLSConfig = opts.TLS
	srv.MaxLineLength = 64 << 10
	srv.MaxMessageBytes = 64 << 20
	srv.MaxRecipients = 1000
	srv.ReadTimeout = 5 * time.Minute
	srv.WriteTimeout = 5 * time.Minute
	srv.AllowInsecureAuth = opts.TLS == nil
	srv.ErrorLog = discardLogger{}
	s.srv = srv
	go func() {
		defer close(s.done)
		_ = srv.Serve(&countingListener{Listener: ln, n: &s.conns})
	}()
	return s, nil
}

// Addr is the sink's host:port.
func (s *Sink) Addr() string { return s.ln.Addr().String() }

// Port is the sink's TCP port.
func (s *Sink) Port() int { return s.ln.Addr().(*net.TCPAddr).Port }

// Close stops the sink and closes every connection.
func (s *Sink) Close() error {
	err := s.srv.Close()
	<-s.done
	return err
}

// Arrivals returns what arrived for rcpt so far.
func (s *Sink) Arrivals(rcpt string) Arrivals {
	s.mu.Lock()
	defer s.mu.Unlock()
	if a := s.rcpt[strings.ToLower(rcpt)]; a != nil {
		return *a
	}
	return Arrivals{}
}

// Timings returns how long each message that arrived for rcpt took the sink, from its MAIL FROM
// to the end of its data, in the order they arrived.
func (s *Sink) Timings(rcpt string) []time.Duration {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.took[strings.ToLower(rcpt)])
}

// Counts returns the overall counts so far.
func (s *Sink) Counts() Counts {
	return Counts{Conns: s.conns.Load(), Auths: s.auths.Load(), AuthFailures: s.authFailures.Load(), Messages: s.messages.Load(), Refused: s.refused.Load()}
}

func (s *Sink) arrived(rcpt string, now time.Time, took time.Duration) {
	s.messages.Add(1)
	key := strings.ToLower(rcpt)
	s.mu.Lock()
	defer s.mu.Unlock()
	a := s.rcpt[key]
	if a == nil {
		a = &Arrivals{First: now}
		s.rcpt[key] = a
	}
	a.Count++
	a.Last = now
	s.took[key] = append(s.took[key], took)
}

// NewSession implements smtp.Backend.
func (s *Sink) NewSession(c *smtp.Conn) (smtp.Session, error) {
	_, isTLS := c.TLSConnectionState()
	return &session{s: s, tls: isTLS}, nil
}

var (
	_ smtp.Backend     = (*Sink)(nil)
	_ smtp.AuthSession = (*session)(nil)
)

type session struct {
	s     *Sink
	tls   bool
	authd bool
	first string
	mail  time.Time // when MAIL FROM arrived
	user  string    // the signed-in user holding a place in Sink.active
}

// errTooManyConns is Exchange Online's answer to a mailbox's connection over its limit.
var errTooManyConns = &smtp.SMTPError{Code: 421, EnhancedCode: smtp.EnhancedCode{4, 3, 2}, Message: "Service not available, too many concurrent connections for this mailbox"}

// signIn takes a place for user among its connections, or refuses.
func (ss *session) signIn(user string) error {
	max := ss.s.opts.MaxConnsPerUser
	if max <= 0 {
		return nil
	}
	ss.s.mu.Lock()
	defer ss.s.mu.Unlock()
	if ss.s.active[user] >= max {
		ss.s.refused.Add(1)
		return errTooManyConns
	}
	ss.s.active[user]++
	ss.user = user
	return nil
}

var (
	errTLSFirst = &smtp.SMTPError{Code: 530, EnhancedCode: smtp.EnhancedCode{5, 7, 0}, Message: "Must issue a STARTTLS command first"}
	errAuthReq  = &smtp.SMTPError{Code: 530, EnhancedCode: smtp.EnhancedCode{5, 7, 0}, Message: "Authentication required"}
)

func (ss *session) needsAuth() bool { return len(ss.s.opts.Users) > 0 || ss.s.opts.Token != nil }

func (ss *session) AuthMechanisms() []string {
	var m []string
	if len(ss.s.opts.Users) > 0 {
		m = append(m, sasl.Plain)
	}
	if ss.s.opts.Token != nil {
		m = append(m, "XOAUTH2")
	}
	return m
}

func (ss *session) Auth(mech string) (sasl.Server, error) {
	if ss.s.opts.TLS != nil && !ss.tls {
		return nil, errTLSFirst
	}
	switch {
	case strings.EqualFold(mech, sasl.Plain) && len(ss.s.opts.Users) > 0:
		return sasl.NewPlainServer(func(identity, username, password string) error {
			want, ok := ss.s.opts.Users[username]
			if (identity != "" && identity != username) || !ok || want != password {
				ss.s.authFailures.Add(1)
				return smtp.ErrAuthFailed
			}
			if err := ss.signIn(username); err != nil {
				return err
			}
			ss.authd = true
			ss.s.auths.Add(1)
			return nil
		}), nil
	case strings.EqualFold(mech, "XOAUTH2") && ss.s.opts.Token != nil:
		return &xoauth2Server{Server: xoauth2test.NewServer(xoauth2test.Options{Check: ss.s.opts.Token, Direct: true}), ss: ss}, nil
	}
	return nil, smtp.ErrAuthUnknownMechanism
}

// xoauth2Server counts the outcome of one XOAUTH2 exchange.
type xoauth2Server struct {
	sasl.Server
	ss *session
}

func (x *xoauth2Server) Next(response []byte) ([]byte, bool, error) {
	challenge, done, err := x.Server.Next(response)
	switch {
	case err != nil:
		x.ss.s.authFailures.Add(1)
	case done:
		x.ss.authd = true
		x.ss.s.auths.Add(1)
	}
	return challenge, done, err
}

func (ss *session) Mail(string, *smtp.MailOptions) error {
	if ss.s.opts.TLS != nil && !ss.tls {
		return errTLSFirst
	}
	if ss.needsAuth() && !ss.authd {
		return errAuthReq
	}
	ss.first = ""
	ss.mail = time.Now()
	return nil
}

func (ss *session) Rcpt(to string, _ *smtp.RcptOptions) error {
	if ss.first == "" {
		ss.first = to
	}
	return nil
}

func (ss *session) Data(r io.Reader) error {
	if _, err := io.Copy(io.Discard, r); err != nil {
		return err
	}
	now := time.Now()
	ss.s.arrived(ss.first, now, now.Sub(ss.mail))
	ss.first = ""
	return nil
}

func (ss *session) Reset() { ss.first = "" }
func (ss *session) Logout() error {
	if ss.user != "" {
		ss.s.mu.Lock()
		ss.s.active[ss.user]--
		ss.s.mu.Unlock()
		ss.user = ""
	}
	return nil
}

// countingListener counts accepted connections.
type countingListener struct {
	net.Listener
	n *atomic.Int64
}

func (l *countingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	l.n.Add(1)
	if tc, ok := c.(*net.TCPConn); ok {
		if rc, err := tc.SyscallConn(); err == nil {
			return &quickAckConn{Conn: c, rc: rc}, nil
		}
	}
	return c, nil
}

// quickAckConn acknowledges what it reads at once instead of delaying the ACK (Linux's delayed
// ACK, up to 40 ms on loopback). A client that sends a short segment while an earlier one is
// unacknowledged (Nagle's algorithm; Postfix's SMTP client does during the TLS handshake) would
// otherwise wait for it, and the sink would be what the benchmark measured.
type quickAckConn struct {
	net.Conn
	rc syscall.RawConn
}

// Write closes the connection after a 421 reply: the server is closing the channel.
func (c *quickAckConn) Write(b []byte) (int, error) {
	n, err := c.Conn.Write(b)
	if bytes.HasPrefix(b, []byte("421 ")) {
		c.Conn.Close()
	}
	return n, err
}

func (c *quickAckConn) Read(b []byte) (int, error) {
	n, err := c.Conn.Read(b)
	c.rc.Control(func(fd uintptr) {
		_ = syscall.SetsockoptInt(int(fd), syscall.IPPROTO_TCP, syscall.TCP_QUICKACK, 1)
	})
	return n, err
}

type discardLogger struct{}

func (discardLogger) Printf(string, ...any) {}
func (discardLogger) Println(...any)        {}
