// Package upstreamtest is an in-process upstream SMTP server for tests: go-smtp's server on
// 127.0.0.1, speaking real SMTP, with the knobs a relay's tests need.
//
// What a Server does with a connection:
//
//  1. It accepts on 127.0.0.1 and counts the connection. In Hang mode it stops there: no banner,
//     ever, until Stop or Close.
//  2. It greets, in plain text or (TLSImplicit) after a TLS handshake with a certificate for
//     127.0.0.1, ::1 and localhost signed by a CA made in memory (CAPEM).
//  3. With TLSStartTLS it offers STARTTLS and refuses AUTH and MAIL before it.
//  4. It offers AUTH PLAIN and LOGIN checked against Options.Users (or Options.Mechanisms, which
//     may hold XOAUTH2Mechanism for OAuth 2.0 access tokens), and requires AUTH before MAIL when any
//     mechanism is offered.
//  5. It takes MAIL, RCPT and DATA, asks Options.RejectRcpt and Options.RejectData, and records
//     every accepted message with its envelope and the user who signed in.
//
// With Options.Flood it answers the greeting, the first EHLO or MAIL with a reply that does not
// end, and counts how much of it the client took (Stats.FloodBytes).
//
// Stop closes the listener and every connection; Start listens again on the same port.
package upstreamtest

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"

	"github.com/postern/postern/sidecar/project"
)

// Options configures a Server. The zero value is a plain-text server that accepts everything
// without AUTH.
type Options struct {
	// TLS is TLSStartTLS (offer and require STARTTLS), TLSImplicit (TLS from the first byte), or
	// "" / TLSNone (plain text, no STARTTLS offered).
	TLS project.TLSMode
	// Users are the accepted username → password pairs for the default PLAIN and LOGIN.
	Users map[string]string
	// Mechanisms, when set, replaces the default PLAIN and LOGIN: each entry makes the server side
	// of one SASL mechanism.
	Mechanisms map[string]Mechanism
	// MaxMessageBytes is advertised as SIZE and enforced; 0 advertises SIZE without a limit.
	MaxMessageBytes int64
	// SMTPUTF8 advertises SMTPUTF8.
	SMTPUTF8 bool
	// No8BitMIME leaves 8BITMIME out of the EHLO reply. It works on plain-text sessions only.
	No8BitMIME bool
	// RejectRcpt, when it returns non-nil, is the reply to RCPT TO:<to>.
	RejectRcpt func(to string) *smtp.SMTPError
	// RejectData is called with each message after its body is read; non-nil is the reply to the
	// final dot and the message is not recorded. It may block to make the upstream slow.
	RejectData func(m Message) *smtp.SMTPError
	// Hang accepts connections and never sends a banner.
	Hang bool
	// Flood, when set, replaces one reply with an endless one.
	Flood *Flood
}

// Flood is a reply that does not end, sent to test a client's limits: one line that never ends, or
// short lines of a multi-line reply that never ends. The server sends it until the client closes
// the connection or Bytes are sent, then closes the connection. At FloodGreeting and FloodEHLO
// the session is the server's own, not go-smtp's: it greets (at FloodEHLO), reads one line and
// floods; at FloodMail the flood is written where go-smtp would reply to MAIL, inside TLS if the
// session is encrypted.
type Flood struct {
	// At is where the flood replaces the server's reply.
	At FloodPoint
	// Lines sends an endless multi-line reply ("220-xxx..." lines of 100 bytes) instead of one
	// endless line.
	Lines bool
	// Bytes is the most the flood sends. Default 64 MiB.
	Bytes int64
}

// FloodPoint is where a Flood replaces the server's reply.
type FloodPoint int

// The replies a Flood can replace.
const (
	FloodGreeting FloodPoint = iota // the 220 greeting
	FloodEHLO                       // the reply to the first EHLO
	FloodMail                       // the reply to MAIL
)

// Mechanism makes the server side of one SASL exchange. It calls login with the user name once
// the credentials check out, and fails the exchange with an *smtp.SMTPError (such as
// smtp.ErrAuthFailed) otherwise.
type Mechanism func(login func(username string)) sasl.Server

// Message is one accepted message.
type Message struct {
	ConnID int    // which connection carried it, counted from 1
	User   string // who signed in, "" without AUTH
	TLS    bool   // whether the session was encrypted
	From   string
	Opts   smtp.MailOptions // MAIL parameters (Size, Body, UTF8, ...)
	To     []string
	Data   []byte
}

// Stats counts what the server saw.
type Stats struct {
	Conns        int   // TCP connections accepted
	Closed       int   // connections closed, by either side
	Auths        int   // successful AUTH exchanges
	AuthFailures int   // failed AUTH exchanges
	Messages     int   // accepted messages
	FloodBytes   int64 // bytes of Options.Flood written to clients
}

// Server is a running fake upstream.
type Server struct {
	opts  Options
	ca    *authority
	tlsCf *tls.Config

	mu       sync.Mutex
	port     int
	ln       net.Listener
	srv      *smtp.Server
	served   chan struct{} // closed when the current Serve returns
	conns    map[*trackedConn]struct{}
	stats    Stats
	messages []Message
	changed  chan struct{} // closed and replaced on every change of stats
}

// NewServer starts a Server on 127.0.0.1 and closes it when the test ends.
func NewServer(t testing.TB, opts Options) *Server {
	t.Helper()
	ca, err := newAuthority()
	if err != nil {
		t.Fatalf("upstreamtest: certificate: %v", err)
	}
	s := &Server{opts: opts, ca: ca, conns: make(map[*trackedConn]struct{}), changed: make(chan struct{})}
	s.tlsCf = &tls.Config{Certificates: []tls.Certificate{ca.leaf}, MinVersion: tls.VersionTLS12}
	if err := s.Start(); err != nil {
		t.Fatalf("upstreamtest: %v", err)
	}
	t.Cleanup(s.Close)
	return s
}

// Addr is the server's host:port.
func (s *Server) Addr() string {
	return net.JoinHostPort("127.0.0.1", fmt.Sprint(s.Port()))
}

// Port is the server's TCP port; it stays the same across Stop and Start.
func (s *Server) Port() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.port
}

// CAPEM is the PEM of the CA that signed the server's certificate, for project.Upstream.CAPEM.
func (s *Server) CAPEM() string { return s.ca.pem }

// Upstream describes the server as a project's upstream: host 127.0.0.1, its port, its TLS mode,
// and its CA.
func (s *Server) Upstream() project.Upstream {
	mode := s.opts.TLS
	if mode == "" {
		mode = project.TLSNone
	}
	u := project.Upstream{Host: "127.0.0.1", Port: s.Port(), TLS: mode}
	if mode != project.TLSNone {
		u.CAPEM = s.CAPEM()
	}
	return u
}

// Start listens again (on the same port after Stop).
func (s *Server) Start() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.ln != nil {
		return errors.New("upstreamtest: already started")
	}
	addr := "127.0.0.1:0"
	if s.port != 0 {
		addr = net.JoinHostPort("127.0.0.1", fmt.Sprint(s.port))
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("listening on %s: %w", addr, err)
	}
	s.port = ln.Addr().(*net.TCPAddr).Port

	srv := smtp.NewServer(smtp.BackendFunc(s.newSession))
	srv.Domain = "upstreamtest.localhost"
	srv.ReadTimeout = time.Minute
	srv.WriteTimeout = time.Minute
	srv.MaxMessageBytes = s.opts.MaxMessageBytes
	srv.EnableSMTPUTF8 = s.opts.SMTPUTF8
	srv.ErrorLog = log.New(io.Discard, "", 0)
	if offersXOAUTH2(s.opts) {
		srv.MaxLineLength = maxXOAUTH2Line
	}
	switch s.opts.TLS {
	case project.TLSStartTLS:
		srv.TLSConfig = s.tlsCf
	case project.TLSImplicit:
	default:
		srv.AllowInsecureAuth = true
	}
	s.ln, s.srv, s.served = ln, srv, make(chan struct{})
	go func(done chan struct{}) {
		defer close(done)
		srv.Serve(&listener{Listener: ln, s: s})
	}(s.served)
	return nil
}

// Stop closes the listener and every connection, so the port refuses connections until Start.
func (s *Server) Stop() {
	s.mu.Lock()
	ln, srv, served := s.ln, s.srv, s.served
	s.ln, s.srv = nil, nil
	s.mu.Unlock()
	if ln == nil {
		return
	}
	ln.Close()
	srv.Close()
	<-served
	// No connection is accepted any more; close those go-smtp does not know (Hang mode).
	s.mu.Lock()
	conns := make([]*trackedConn, 0, len(s.conns))
	for c := range s.conns {
		conns = append(conns, c)
	}
	s.mu.Unlock()
	for _, c := range conns {
		c.Close()
	}
}

// Close stops the server for good.
func (s *Server) Close() { s.Stop() }

// Stats returns the counts so far.
func (s *Server) Stats() Stats {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.stats
}

// Messages returns every accepted message so far.
func (s *Server) Messages() []Message {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.messages)
}

// Wait blocks until cond holds for the server's Stats, or ctx ends.
func (s *Server) Wait(ctx context.Context, cond func(Stats) bool) error {
	for {
		s.mu.Lock()
		ok, ch, st := cond(s.stats), s.changed, s.stats
		s.mu.Unlock()
		if ok {
			return nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return fmt.Errorf("upstreamtest: waiting (stats %+v): %w", st, ctx.Err())
		}
	}
}

// update changes the stats under the lock and wakes Wait.
func (s *Server) update(f func(*Stats)) {
	s.mu.Lock()
	defer s.mu.Unlock()
	f(&s.stats)
	close(s.changed)
	s.changed = make(chan struct{})
}

// listener counts and tracks connections, holds them in Hang mode, and speaks implicit TLS.
type listener struct {
	net.Listener
	s *Server
}

func (l *listener) Accept() (net.Conn, error) {
	for {
		nc, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		s := l.s
		if tcp, ok := nc.(*net.TCPConn); ok && s.opts.Flood != nil {
			// Keep what the kernel holds small, so Stats.FloodBytes is close to what the client read.
			tcp.SetWriteBuffer(64 << 10)
		}
		tc := &trackedConn{Conn: nc, s: s, filter8bit: s.opts.No8BitMIME}
		s.mu.Lock()
		s.conns[tc] = struct{}{}
		s.mu.Unlock()
		s.update(func(st *Stats) {
			st.Conns++
			tc.id = st.Conns
		})
		if s.opts.Hang {
			continue
		}
		var c net.Conn = tc
		if s.opts.TLS == project.TLSImplicit {
			c = tls.Server(tc, s.tlsCf)
		}
		if f := s.opts.Flood; f != nil && f.At != FloodMail {
			go s.floodSession(c, f)
			continue
		}
		return c, nil
	}
}

// trackedConn counts its closing and, for No8BitMIME, drops 8BITMIME from EHLO replies (go-smtp's
// server writes each reply line with one Write).
type trackedConn struct {
	net.Conn
	s          *Server
	id         int
	filter8bit bool
	once       sync.Once
}

func (c *trackedConn) Write(b []byte) (int, error) {
	if c.filter8bit && string(b) == "250-8BITMIME\r\n" {
		return len(b), nil
	}
	return c.Conn.Write(b)
}

func (c *trackedConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(func() {
		c.s.mu.Lock()
		delete(c.s.conns, c)
		c.s.mu.Unlock()
		c.s.update(func(st *Stats) { st.Closed++ })
	})
	return err
}

// floodSession is a session at FloodGreeting or FloodEHLO.
func (s *Server) floodSession(c net.Conn, f *Flood) {
	defer c.Close()
	c.SetDeadline(time.Now().Add(time.Minute))
	code := "220"
	if f.At == FloodEHLO {
		code = "250"
		if _, err := io.WriteString(c, "220 upstreamtest.localhost ESMTP\r\n"); err != nil {
			return
		}
		if _, err := bufio.NewReader(c).ReadString('\n'); err != nil {
			return
		}
	}
	s.flood(c, f, code)
}

// flood writes f's endless reply with code to c.
func (s *Server) flood(c net.Conn, f *Flood, code string) {
	limit := f.Bytes
	if limit <= 0 {
		limit = 64 << 20
	}
	var chunk []byte
	if f.Lines {
		line := code + "-" + strings.Repeat("x", 94) + "\r\n"
		chunk = []byte(strings.Repeat(line, 320))
	} else {
		if _, err := io.WriteString(c, code+" "); err != nil {
			return
		}
		chunk = bytes.Repeat([]byte("x"), 32<<10)
	}
	for sent := int64(0); sent < limit; {
		n, err := c.Write(chunk[:min(int64(len(chunk)), limit-sent)])
		sent += int64(n)
		s.update(func(st *Stats) { st.FloodBytes += int64(n) })
		if err != nil {
			return
		}
	}
}

func (s *Server) newSession(c *smtp.Conn) (smtp.Session, error) {
	nc := c.Conn()
	tc, isTLS := nc.(*tls.Conn)
	if isTLS {
		nc = tc.NetConn()
	}
	sess := &session{s: s, conn: c, tls: isTLS}
	if t, ok := nc.(*trackedConn); ok {
		sess.connID = t.id
	}
	return sess, nil
}

// session is one SMTP session (go-smtp makes a new one after STARTTLS).
type session struct {
	s      *Server
	conn   *smtp.Conn
	connID int
	tls    bool
	user   string
	from   string
	opts   smtp.MailOptions
	to     []string
}

var _ smtp.AuthSession = (*session)(nil)

func (ss *session) mechanisms() map[string]Mechanism {
	if ss.s.opts.Mechanisms != nil {
		return ss.s.opts.Mechanisms
	}
	if len(ss.s.opts.Users) == 0 {
		return nil
	}
	check := func(user, pass string) bool {
		want, ok := ss.s.opts.Users[user]
		return ok && want == pass
	}
	return map[string]Mechanism{sasl.Plain: PlainMechanism(check), sasl.Login: LoginMechanism(check)}
}

func (ss *session) AuthMechanisms() []string {
	var names []string
	for name := range ss.mechanisms() {
		names = append(names, name)
	}
	slices.Sort(names)
	slices.Reverse(names) // PLAIN before LOGIN, as servers usually list them
	return names
}

func (ss *session) Auth(mech string) (sasl.Server, error) {
	m, ok := ss.mechanisms()[strings.ToUpper(mech)]
	if !ok {
		return nil, smtp.ErrAuthUnknownMechanism
	}
	if ss.s.opts.TLS == project.TLSStartTLS && !ss.tls {
		return nil, &smtp.SMTPError{Code: 530, EnhancedCode: smtp.EnhancedCode{5, 7, 0}, Message: "Must issue a STARTTLS command first"}
	}
	return &countingServer{
		Server: m(func(user string) {
			ss.user = user
			ss.s.update(func(st *Stats) { st.Auths++ })
		}),
		failed: func() { ss.s.update(func(st *Stats) { st.AuthFailures++ }) },
	}, nil
}

// countingServer counts failed exchanges.
type countingServer struct {
	sasl.Server
	failed func()
}

func (c *countingServer) Next(response []byte) ([]byte, bool, error) {
	challenge, done, err := c.Server.Next(response)
	if err != nil {
		c.failed()
	}
	return challenge, done, err
}

func (ss *session) Mail(from string, opts *smtp.MailOptions) error {
	if ss.s.opts.TLS == project.TLSStartTLS && !ss.tls {
		return &smtp.SMTPError{Code: 530, EnhancedCode: smtp.EnhancedCode{5, 7, 0}, Message: "Must issue a STARTTLS command first"}
	}
	if ss.user == "" && len(ss.mechanisms()) > 0 {
		return &smtp.SMTPError{Code: 530, EnhancedCode: smtp.EnhancedCode{5, 7, 0}, Message: "Authentication required"}
	}
	if f := ss.s.opts.Flood; f != nil && f.At == FloodMail {
		// go-smtp has flushed every earlier reply; what goes out now stands for this one.
		c := ss.conn.Conn()
		c.SetWriteDeadline(time.Now().Add(time.Minute))
		ss.s.flood(c, f, "250")
		c.Close()
		return errors.New("flooded")
	}
	ss.from = from
	ss.opts = smtp.MailOptions{}
	if opts != nil {
		ss.opts = *opts
	}
	return nil
}

func (ss *session) Rcpt(to string, _ *smtp.RcptOptions) error {
	if f := ss.s.opts.RejectRcpt; f != nil {
		if e := f(to); e != nil {
			return e
		}
	}
	ss.to = append(ss.to, to)
	return nil
}

func (ss *session) Data(r io.Reader) error {
	body, err := io.ReadAll(r)
	if err != nil {
		return err
	}
	m := Message{ConnID: ss.connID, User: ss.user, TLS: ss.tls, From: ss.from, Opts: ss.opts, To: slices.Clone(ss.to), Data: body}
	if f := ss.s.opts.RejectData; f != nil {
		if e := f(m); e != nil {
			return e
		}
	}
	ss.s.mu.Lock()
	ss.s.messages = append(ss.s.messages, m)
	ss.s.mu.Unlock()
	ss.s.update(func(st *Stats) { st.Messages++ })
	return nil
}

func (ss *session) Reset() {
	ss.from, ss.opts, ss.to = "", smtp.MailOptions{}, nil
}

func (ss *session) Logout() error { return nil }
