package upstream_test

import (
	"bytes"
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"

	"github.com/postern/postern/sidecar/project"
	"github.com/postern/postern/sidecar/secret"
	"github.com/postern/postern/sidecar/upstream"
	"github.com/postern/postern/sidecar/upstream/upstreamtest"
)

const (
	user     = "mailbox@client.example"
	password = "s3cret-Pa55word"
	from     = "noreply@client.example"
	to       = "someone@elsewhere.example"
	body     = "From: noreply@client.example\r\nSubject: hello\r\n\r\nhello there\r\n"
)

// logBuffer collects log output from many goroutines.
type logBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (l *logBuffer) Write(b []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.Write(b)
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.String()
}

// clock is a settable Options.Now.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func newClock() *clock { return &clock{t: time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)} }

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *clock) Add(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

// newPools makes pools that log everything into the returned buffer, which is checked for the
// password when the test ends.
func newPools(t *testing.T, opts upstream.Options) (*upstream.Pools, *logBuffer) {
	t.Helper()
	logs := &logBuffer{}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	p := upstream.NewPools(opts)
	t.Cleanup(func() {
		p.Close()
		assertNoSecret(t, "logs", logs.String())
	})
	return p, logs
}

// assertNoSecret fails if s holds the password in any form that went on the wire.
func assertNoSecret(t *testing.T, what, s string) {
	t.Helper()
	b64 := base64.StdEncoding.EncodeToString
	for _, form := range []string{password, b64([]byte(password)), b64([]byte("\x00" + user + "\x00" + password))} {
		if strings.Contains(s, form) {
			t.Errorf("%s hold the password: %s", what, s)
		}
	}
}

func ctxFor(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func proj(name string, srv *upstreamtest.Server) project.Project {
	return project.Project{Name: name, Enabled: true, Senders: []string{from}, Upstream: srv.Upstream()}
}

func basic(mech string) upstream.Auth {
	return upstream.Auth{Mechanism: mech, Username: user, Secret: secret.New(password)}
}

func users() map[string]string { return map[string]string{user: password} }

// send relays one message over c.
func send(ctx context.Context, c *upstream.Conn, rcpts []string, msg string) error {
	if err := c.Mail(ctx, from, nil); err != nil {
		return err
	}
	for _, r := range rcpts {
		if err := c.Rcpt(ctx, r, nil); err != nil {
			return err
		}
	}
	return c.Data(ctx, strings.NewReader(msg))
}

// deliver acquires, sends one message and releases.
func deliver(t *testing.T, pools *upstream.Pools, p project.Project, auth upstream.Auth) {
	t.Helper()
	ctx := ctxFor(t)
	c, err := pools.Acquire(ctx, p, auth)
	if err != nil {
		t.Fatalf("Acquire: %v", err)
	}
	if err := send(ctx, c, []string{to}, body); err != nil {
		c.Discard()
		t.Fatalf("send: %v", err)
	}
	c.Release()
}

func asError(t *testing.T, err error) *upstream.Error {
	t.Helper()
	var e *upstream.Error
	if !errors.As(err, &e) {
		t.Fatalf("error %v (%T) is not an *upstream.Error", err, err)
	}
	return e
}

// eventually polls cond until it holds; the bound only keeps a broken test from hanging.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("never happened: %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

func waitServer(t *testing.T, srv *upstreamtest.Server, cond func(upstreamtest.Stats) bool) {
	t.Helper()
	if err := srv.Wait(ctxFor(t), cond); err != nil {
		t.Fatal(err)
	}
}

func poolStats(t *testing.T, pools *upstream.Pools, name string) upstream.PoolStats {
	t.Helper()
	for _, s := range pools.Stats() {
		if s.Project == name {
			return s
		}
	}
	t.Fatalf("no pool for %q in %+v", name, pools.Stats())
	return upstream.PoolStats{}
}

func TestDeliver(t *testing.T) {
	t.Parallel()
	loginOnly := map[string]upstreamtest.Mechanism{
		sasl.Login: upstreamtest.LoginMechanism(func(u, p string) bool { return u == user && p == password }),
	}
	cases := []struct {
		name     string
		server   upstreamtest.Options
		auth     upstream.Auth
		wantUser string
	}{
		{"starttls plain", upstreamtest.Options{TLS: project.TLSStartTLS, Users: users()}, basic("PLAIN"), user},
		{"starttls login", upstreamtest.Options{TLS: project.TLSStartTLS, Users: users()}, basic("LOGIN"), user},
		{"starttls chooses plain", upstreamtest.Options{TLS: project.TLSStartTLS, Users: users()}, basic(""), user},
		{"chooses login when plain is not offered", upstreamtest.Options{TLS: project.TLSStartTLS, Mechanisms: loginOnly}, basic(""), user},
		{"implicit tls", upstreamtest.Options{TLS: project.TLSImplicit, Users: users()}, basic(""), user},
		{"plain text on loopback", upstreamtest.Options{Users: users()}, basic("PLAIN"), user},
		{"no auth", upstreamtest.Options{TLS: project.TLSStartTLS}, upstream.Auth{}, ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			srv := upstreamtest.NewServer(t, tc.server)
			pools, _ := newPools(t, upstream.Options{})
			p := proj("client-a", srv)
			deliver(t, pools, p, tc.auth)

			msgs := srv.Messages()
			if len(msgs) != 1 {
				t.Fatalf("upstream got %d messages, want 1", len(msgs))
			}
			m := msgs[0]
			if m.User != tc.wantUser || m.From != from || len(m.To) != 1 || m.To[0] != to || string(m.Data) != body {
				t.Errorf("upstream got %+v", m)
			}
			if wantTLS := p.Upstream.TLS != project.TLSNone; m.TLS != wantTLS {
				t.Errorf("message TLS = %v, want %v", m.TLS, wantTLS)
			}
		})
	}
}

// TestBodiesArriveIntact sends bodies that need dot-stuffing or line-ending care one after the
// other over one pooled connection, in TLS and in plain text, and compares what the upstream
// stored.
func TestBodiesArriveIntact(t *testing.T) {
	t.Parallel()
	big := strings.Repeat("a line of a long message, with a dot.\r\n.and one that starts with one\r\n", 4000)
	bodies := []struct{ name, sent, stored string }{
		{"plain", body, body},
		{"dot lines", "Subject: x\r\n\r\n.\r\n..\r\n.x\r\n", "Subject: x\r\n\r\n.\r\n..\r\n.x\r\n"},
		{"first byte a dot", ".\r\n", ".\r\n"},
		{"no final line ending", "Subject: x\r\n\r\nend", "Subject: x\r\n\r\nend\r\n"},
		{"bare LF", "Subject: x\n\n.a\nb\n", "Subject: x\r\n\r\n.a\r\nb\r\n"},
		{"bare CR inside a line", "Subject: x\r\n\r\na\rb\r\n", "Subject: x\r\n\r\na\rb\r\n"},
		{"large", big, big},
		{"empty", "", "\r\n"},
		{"after an empty one", body, body},
	}
	for _, tls := range []project.TLSMode{project.TLSStartTLS, project.TLSNone} {
		t.Run(string(tls), func(t *testing.T) {
			t.Parallel()
			srv := upstreamtest.NewServer(t, upstreamtest.Options{TLS: tls, Users: users()})
			pools, _ := newPools(t, upstream.Options{})
			p := proj("client-a", srv)
			ctx := ctxFor(t)
			c, err := pools.Acquire(ctx, p, basic("PLAIN"))
			if err != nil {
				t.Fatal(err)
			}
			defer c.Discard()
			for _, b := range bodies {
				if err := send(ctx, c, []string{to}, b.sent); err != nil {
					t.Fatalf("%s: %v", b.name, err)
				}
			}
			msgs := srv.Messages()
			if len(msgs) != len(bodies) {
				t.Fatalf("upstream got %d messages, want %d", len(msgs), len(bodies))
			}
			for i, b := range bodies {
				if got := string(msgs[i].Data); got != b.stored {
					t.Errorf("%s: upstream stored %d bytes %.80q..., want %d bytes %.80q...", b.name, len(got), got, len(b.stored), b.stored)
				}
			}
			if st := srv.Stats(); st.Conns != 1 {
				t.Errorf("upstream saw %d connections, want 1 for all messages", st.Conns)
			}
		})
	}
}

func TestWrongPassword(t *testing.T) {
	t.Parallel()
	srv := upstreamtest.NewServer(t, upstreamtest.Options{TLS: project.TLSStartTLS, Users: users()})
	pools, _ := newPools(t, upstream.Options{})
	p := proj("client-a", srv)

	for _, mech := range []string{"PLAIN", "LOGIN"} {
		wrong := upstream.Auth{Mechanism: mech, Username: user, Secret: secret.New("wrong-" + password)}
		_, err := pools.Acquire(ctxFor(t), p, wrong)
		e := asError(t, err)
		if e.Stage != upstream.StageAuth || e.Code != 535 || !e.AuthFailed() || !e.Temporary() {
			t.Errorf("%s: got %#v (AuthFailed %v, Temporary %v), want a temporary auth failure with 535",
				mech, e, e.AuthFailed(), e.Temporary())
		}
		assertNoSecret(t, "the error", err.Error())
		if strings.Contains(err.Error(), "wrong-") {
			t.Errorf("the error holds the wrong password: %v", err)
		}
	}
	if got := poolStats(t, pools, "client-a").AuthFailures; got != 2 {
		t.Errorf("AuthFailures = %d, want 2", got)
	}
	// A rejected credential says nothing about the upstream being down.
	deliver(t, pools, p, basic(""))
}

func TestCertificateVerification(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name    string
		mode    project.TLSMode
		mutate  func(*project.Upstream)
		wantErr string // in the error; "" means delivery works
	}{
		{"trusted CA", project.TLSStartTLS, func(*project.Upstream) {}, ""},
		{"no CA", project.TLSStartTLS, func(u *project.Upstream) { u.CAPEM = "" }, "upstream.ca_pem"},
		{"no CA, implicit", project.TLSImplicit, func(u *project.Upstream) { u.CAPEM = "" }, "upstream.ca_pem"},
		{"wrong name", project.TLSStartTLS, func(u *project.Upstream) { u.ServerName = "mail.wrong.example" }, "upstream.server_name"},
		{"server name override", project.TLSStartTLS, func(u *project.Upstream) { u.ServerName = "localhost" }, ""},
		{"not a PEM", project.TLSStartTLS, func(u *project.Upstream) { u.CAPEM = "nonsense" }, "upstream.ca_pem"},
		{"verification off", project.TLSImplicit, func(u *project.Upstream) { u.CAPEM = ""; u.InsecureSkipVerify = true }, ""},
		{"verification off, starttls", project.TLSStartTLS, func(u *project.Upstream) { u.CAPEM = ""; u.InsecureSkipVerify = true }, ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			srv := upstreamtest.NewServer(t, upstreamtest.Options{TLS: tc.mode, Users: users()})
			pools, logs := newPools(t, upstream.Options{})
			p := proj("client-a", srv)
			tc.mutate(&p.Upstream)
			c, err := pools.Acquire(ctxFor(t), p, basic(""))
			// Verification is never silently off: every connection without it says so, loudly.
			warned := strings.Contains(logs.String(), "level=WARN") && strings.Contains(logs.String(), "certificate is NOT verified")
			if warned != p.Upstream.InsecureSkipVerify {
				t.Errorf("warned about unverified certificates: %v, want %v; logs:\n%s", warned, p.Upstream.InsecureSkipVerify, logs.String())
			}
			if tc.wantErr == "" {
				if err != nil {
					t.Fatalf("Acquire: %v", err)
				}
				c.Release()
				return
			}
			e := asError(t, err)
			if e.Stage != upstream.StageTLS || !e.Temporary() || !strings.Contains(e.Error(), tc.wantErr) {
				t.Errorf("got %v (stage %q), want a temporary tls error naming %s", e, e.Stage, tc.wantErr)
			}
			if st := srv.Stats(); st.Auths+st.AuthFailures != 0 {
				t.Errorf("credentials were sent: %+v", st)
			}
		})
	}
}

func TestRefusesPlainTextWithoutSTARTTLS(t *testing.T) {
	t.Parallel()
	// A plain-text server that would take AUTH: Postern must not offer it the password.
	srv := upstreamtest.NewServer(t, upstreamtest.Options{Users: users()})
	pools, _ := newPools(t, upstream.Options{})
	p := proj("client-a", srv)
	p.Upstream.TLS = project.TLSStartTLS
	_, err := pools.Acquire(ctxFor(t), p, basic(""))
	e := asError(t, err)
	if e.Stage != upstream.StageTLS || !e.Temporary() || !strings.Contains(e.Message, "STARTTLS") {
		t.Errorf("got %v, want a temporary tls error about STARTTLS", e)
	}
	if st := srv.Stats(); st.Auths+st.AuthFailures != 0 || st.Messages != 0 {
		t.Errorf("the upstream saw AUTH or mail: %+v", st)
	}
}

func TestReuse(t *testing.T) {
	t.Parallel()
	srv := upstreamtest.NewServer(t, upstreamtest.Options{
		TLS: project.TLSStartTLS, Users: users(),
		RejectRcpt: func(to string) *smtp.SMTPError {
			if strings.HasPrefix(to, "nobody@") {
				return &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 1, 1}, Message: "no such user"}
			}
			return nil
		},
	})
	pools, logs := newPools(t, upstream.Options{Trace: true})
	p := proj("client-a", srv)
	ctx := ctxFor(t)

	deliver(t, pools, p, basic(""))
	deliver(t, pools, p, basic(""))

	// A transaction left open (its only recipient refused) is reset before the connection is reused.
	c, err := pools.Acquire(ctx, p, basic(""))
	if err != nil {
		t.Fatal(err)
	}
	if err := send(ctx, c, []string{"nobody@elsewhere.example"}, body); err == nil {
		t.Fatal("the refused recipient went through")
	}
	c.Release()
	deliver(t, pools, p, basic(""))

	if st := srv.Stats(); st.Conns != 1 || st.Auths != 1 || st.Messages != 3 {
		t.Errorf("upstream saw %+v, want 1 connection, 1 AUTH, 3 messages", st)
	}
	if s := poolStats(t, pools, "client-a"); s.Dials != 1 || s.Open != 1 || s.Idle != 1 {
		t.Errorf("pool stats %+v, want 1 dial and 1 idle connection", s)
	}
	for _, m := range srv.Messages() {
		if m.ConnID != 1 {
			t.Errorf("message on connection %d", m.ConnID)
		}
	}
	trace := logs.String()
	for _, want := range []string{"line=RSET", `line="AUTH PLAIN [redacted]"`, "line=STARTTLS"} {
		if !strings.Contains(trace, want) {
			t.Errorf("the trace lacks %s:\n%s", want, trace)
		}
	}
	if strings.Contains(trace, "hello there") {
		t.Errorf("the trace holds the message body")
	}
}

func TestTraceRedactsLogin(t *testing.T) {
	t.Parallel()
	srv := upstreamtest.NewServer(t, upstreamtest.Options{TLS: project.TLSStartTLS, Users: users()})
	pools, logs := newPools(t, upstream.Options{Trace: true})
	deliver(t, pools, proj("client-a", srv), basic("LOGIN"))
	if trace := logs.String(); !strings.Contains(trace, `line="AUTH LOGIN [redacted]"`) || !strings.Contains(trace, "line=[redacted]") {
		t.Errorf("the LOGIN exchange is not traced redacted:\n%s", trace)
	}
}

func TestMaxConnections(t *testing.T) {
	t.Parallel()
	srv := upstreamtest.NewServer(t, upstreamtest.Options{TLS: project.TLSStartTLS, Users: users()})
	pools, _ := newPools(t, upstream.Options{})
	p := proj("client-a", srv)
	p.Limits.MaxConnections = 2
	ctx := ctxFor(t)

	c1, err := pools.Acquire(ctx, p, basic(""))
	if err != nil {
		t.Fatal(err)
	}
	c2, err := pools.Acquire(ctx, p, basic(""))
	if err != nil {
		t.Fatal(err)
	}
	type result struct {
		c   *upstream.Conn
		err error
	}
	third := make(chan result, 1)
	go func() {
		c, err := pools.Acquire(ctx, p, basic(""))
		third <- result{c, err}
	}()
	eventually(t, "the third Acquire waits", func() bool { return poolStats(t, pools, "client-a").Waiting == 1 })
	select {
	case r := <-third:
		t.Fatalf("the third Acquire did not wait for a free connection: %v", r.err)
	default:
	}
	if err := send(ctx, c1, []string{to}, body); err != nil {
		t.Fatal(err)
	}
	c1.Release()
	var r result
	select {
	case r = <-third:
	case <-ctx.Done():
		t.Fatal("the third Acquire never got the released connection")
	}
	if r.err != nil {
		t.Fatal(r.err)
	}
	if err := send(ctx, r.c, []string{to}, body); err != nil {
		t.Fatal(err)
	}
	r.c.Release()
	c2.Release()
	if st := srv.Stats(); st.Conns != 2 || st.Messages != 2 {
		t.Errorf("upstream saw %+v, want 2 connections and 2 messages", st)
	}
}

func TestMaxConnWait(t *testing.T) {
	t.Parallel()
	srv := upstreamtest.NewServer(t, upstreamtest.Options{TLS: project.TLSStartTLS, Users: users()})
	pools, _ := newPools(t, upstream.Options{MaxConnWait: 50 * time.Millisecond})
	p := proj("client-a", srv)
	p.Limits.MaxConnections = 1
	ctx := ctxFor(t)
	c, err := pools.Acquire(ctx, p, basic(""))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Release()

	_, err = pools.Acquire(ctx, p, basic(""))
	if e := asError(t, err); e.Stage != upstream.StagePool || !errors.Is(err, upstream.ErrBusy) || !e.Temporary() {
		t.Errorf("got %v, want a temporary pool error wrapping ErrBusy", err)
	}

	cctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() {
		_, err := pools.Acquire(cctx, p, basic(""))
		done <- err
	}()
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) || !asError(t, err).Temporary() {
		t.Errorf("got %v, want a temporary error wrapping context.Canceled", err)
	}
	if s := poolStats(t, pools, "client-a"); s.Waiting != 0 || s.Open != 1 {
		t.Errorf("pool stats %+v after the waits gave up", s)
	}
}

func TestIdleTimeout(t *testing.T) {
	t.Parallel()
	srv := upstreamtest.NewServer(t, upstreamtest.Options{TLS: project.TLSStartTLS, Users: users()})
	pools, _ := newPools(t, upstream.Options{IdleTimeout: 20 * time.Millisecond})
	p := proj("client-a", srv)
	deliver(t, pools, p, basic(""))
	waitServer(t, srv, func(s upstreamtest.Stats) bool { return s.Closed == 1 })
	if s := poolStats(t, pools, "client-a"); s.Open != 0 || s.Idle != 0 {
		t.Errorf("pool stats %+v after the idle connection closed", s)
	}
	deliver(t, pools, p, basic(""))
	if st := srv.Stats(); st.Conns != 2 {
		t.Errorf("upstream saw %d connections, want 2", st.Conns)
	}
}

func TestHangingUpstreamDoesNotDelayOthers(t *testing.T) {
	t.Parallel()
	hang := upstreamtest.NewServer(t, upstreamtest.Options{Hang: true})
	good := upstreamtest.NewServer(t, upstreamtest.Options{TLS: project.TLSStartTLS, Users: users()})
	pools, _ := newPools(t, upstream.Options{GreetingTimeout: 2 * time.Second})
	ctx := ctxFor(t)

	aDone := make(chan error, 1)
	go func() {
		c, err := pools.Acquire(ctx, proj("project-a", hang), upstream.Auth{})
		if c != nil {
			c.Release()
		}
		aDone <- err
	}()
	waitServer(t, hang, func(s upstreamtest.Stats) bool { return s.Conns == 1 })

	// Project A is now waiting for a banner that never comes; project B delivers meanwhile.
	deliver(t, pools, proj("project-b", good), basic(""))
	select {
	case err := <-aDone:
		t.Fatalf("project A returned before project B had delivered: %v", err)
	default:
	}

	err := <-aDone
	e := asError(t, err)
	if e.Stage != upstream.StageGreeting || e.Code != 0 || !e.Temporary() || !strings.Contains(e.Message, "2s") {
		t.Errorf("project A: got %v, want a temporary greeting timeout after 2s", err)
	}

	// Project A now fails fast, without a connection; project B is unaffected.
	_, err = pools.Acquire(ctx, proj("project-a", hang), upstream.Auth{})
	if !errors.Is(err, upstream.ErrDown) || !asError(t, err).Temporary() {
		t.Errorf("got %v, want a fast temporary ErrDown", err)
	}
	if st := hang.Stats(); st.Conns != 1 {
		t.Errorf("the hanging upstream saw %d connections, want 1", st.Conns)
	}
	deliver(t, pools, proj("project-b", good), basic(""))
}

// Once an upstream failed to answer, the next try is made by at most the project's limit of
// callers; every other caller is turned away at once instead of waiting behind them, so that a
// silent upstream holds no more of Postfix's delivery slots than its limit.
func TestSilentUpstreamHoldsNoMoreThanItsLimit(t *testing.T) {
	t.Parallel()
	clk := newClock()
	hang := upstreamtest.NewServer(t, upstreamtest.Options{Hang: true})
	pools, _ := newPools(t, upstream.Options{Now: clk.Now, GreetingTimeout: time.Second})
	p := proj("client-a", hang)
	p.Limits.MaxConnections = 1
	ctx := ctxFor(t)

	if _, err := pools.Acquire(ctx, p, upstream.Auth{}); asError(t, err).Stage != upstream.StageGreeting {
		t.Fatalf("first attempt: got %v, want a greeting timeout", err)
	}
	clk.Add(time.Minute) // past the backoff: the upstream is tried again
	dialer := make(chan error, 1)
	go func() {
		_, err := pools.Acquire(ctx, p, upstream.Auth{})
		dialer <- err
	}()
	waitServer(t, hang, func(s upstreamtest.Stats) bool { return s.Conns == 2 })

	other := make(chan error, 1)
	go func() {
		_, err := pools.Acquire(ctx, p, upstream.Auth{})
		other <- err
	}()
	var err error
	eventually(t, "the second caller returns or waits", func() bool {
		select {
		case err = <-other:
			return true
		default:
		}
		if s := poolStats(t, pools, "client-a"); s.Waiting > 0 {
			t.Fatalf("a second caller waits behind the connection trying a silent upstream (pool %+v)", s)
		}
		return false
	})
	if !errors.Is(err, upstream.ErrDown) || !asError(t, err).Temporary() {
		t.Errorf("second caller: got %v, want a temporary ErrDown", err)
	}
	if err := <-dialer; asError(t, err).Stage != upstream.StageGreeting {
		t.Errorf("the caller trying again: got %v, want a greeting timeout", err)
	}
}

// A connection on which the upstream stopped answering turns away the callers waiting for a
// connection at once, instead of handing them the slot to queue behind a silent upstream.
func TestSilentConnectionTurnsWaitersAway(t *testing.T) {
	t.Parallel()
	release := make(chan struct{})
	t.Cleanup(func() { close(release) })
	srv := upstreamtest.NewServer(t, upstreamtest.Options{TLS: project.TLSStartTLS, Users: users(),
		RejectData: func(upstreamtest.Message) *smtp.SMTPError { <-release; return nil }})
	pools, _ := newPools(t, upstream.Options{DataTimeout: 300 * time.Millisecond})
	p := proj("client-a", srv)
	p.Limits.MaxConnections = 1
	ctx := ctxFor(t)

	c, err := pools.Acquire(ctx, p, basic(""))
	if err != nil {
		t.Fatal(err)
	}
	waiter := make(chan error, 1)
	go func() {
		w, err := pools.Acquire(ctx, p, basic(""))
		if w != nil {
			w.Release()
		}
		waiter <- err
	}()
	eventually(t, "the second caller waits", func() bool { return poolStats(t, pools, "client-a").Waiting == 1 })
	err = send(ctx, c, []string{to}, body)
	if e := asError(t, err); !strings.Contains(e.Message, "no answer within") {
		t.Fatalf("send: got %v, want no answer within the data timeout", err)
	}
	c.Discard()
	if err := <-waiter; !errors.Is(err, upstream.ErrDown) || !asError(t, err).Temporary() {
		t.Errorf("the waiting caller: got %v, want a temporary ErrDown at once", err)
	}
}

func TestDownBackoff(t *testing.T) {
	t.Parallel()
	clk := newClock()
	srv := upstreamtest.NewServer(t, upstreamtest.Options{TLS: project.TLSStartTLS, Users: users()})
	pools, _ := newPools(t, upstream.Options{Now: clk.Now})
	p := proj("client-a", srv)
	ctx := ctxFor(t)
	srv.Stop()

	_, err := pools.Acquire(ctx, p, basic(""))
	if e := asError(t, err); e.Stage != upstream.StageConnect || errors.Is(err, upstream.ErrDown) || !e.Temporary() {
		t.Fatalf("first attempt: got %v, want a temporary connect error", err)
	}
	_, err = pools.Acquire(ctx, p, basic(""))
	if e := asError(t, err); e.Stage != upstream.StagePool || !errors.Is(err, upstream.ErrDown) || !e.Temporary() ||
		!strings.Contains(e.Message, "backoff 15s") {
		t.Fatalf("second attempt: got %v, want a fast temporary ErrDown naming the backoff", err)
	}
	s := poolStats(t, pools, "client-a")
	if !s.DownUntil.Equal(clk.Now().Add(15*time.Second)) || s.Dials != 1 || s.LastError == "" {
		t.Errorf("pool stats %+v, want down for 15s after 1 dial", s)
	}

	clk.Add(16 * time.Second)
	if _, err := pools.Acquire(ctx, p, basic("")); errors.Is(err, upstream.ErrDown) || err == nil {
		t.Fatalf("after the backoff: got %v, want a new connect attempt", err)
	}
	if s := poolStats(t, pools, "client-a"); !s.DownUntil.Equal(clk.Now().Add(30 * time.Second)) {
		t.Errorf("down until %v, want the backoff doubled to 30s", s.DownUntil)
	}

	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	if _, err := pools.Acquire(ctx, p, basic("")); !errors.Is(err, upstream.ErrDown) {
		t.Fatalf("within the backoff: got %v, want ErrDown", err)
	}
	clk.Add(31 * time.Second)
	deliver(t, pools, p, basic(""))
	if s := poolStats(t, pools, "client-a"); !s.DownUntil.IsZero() || s.LastError != "" {
		t.Errorf("pool stats %+v after a success, want up", s)
	}

	// A success reset the backoff: the next outage starts at 15s again.
	srv.Stop()
	clk.Add(10 * time.Second) // long enough for the pooled connection to be checked first
	if _, err := pools.Acquire(ctx, p, basic("")); asError(t, err).Stage != upstream.StageConnect {
		t.Fatalf("got %v, want a connect error", err)
	}
	if s := poolStats(t, pools, "client-a"); !s.DownUntil.Equal(clk.Now().Add(15 * time.Second)) {
		t.Errorf("down until %v, want 15s after a success", s.DownUntil)
	}
}

func TestStaleConnectionReplaced(t *testing.T) {
	t.Parallel()
	clk := newClock()
	srv := upstreamtest.NewServer(t, upstreamtest.Options{TLS: project.TLSStartTLS, Users: users()})
	pools, _ := newPools(t, upstream.Options{Now: clk.Now})
	p := proj("client-a", srv)
	deliver(t, pools, p, basic(""))

	// The upstream drops the idle connection; the NOOP check before reuse notices.
	srv.Stop()
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	clk.Add(10 * time.Second)
	deliver(t, pools, p, basic(""))
	if st := srv.Stats(); st.Conns != 2 || st.Messages != 2 {
		t.Errorf("upstream saw %+v, want 2 connections and 2 messages", st)
	}
	if s := poolStats(t, pools, "client-a"); s.Dials != 2 || s.Open != 1 {
		t.Errorf("pool stats %+v, want 2 dials and 1 open connection", s)
	}
}

func TestSettingsChangeDropsPooled(t *testing.T) {
	t.Parallel()
	const other = "other@client.example"
	srv := upstreamtest.NewServer(t, upstreamtest.Options{
		TLS: project.TLSStartTLS, Users: map[string]string{user: password, other: "other-password"},
	})
	pools, _ := newPools(t, upstream.Options{})
	p := proj("client-a", srv)

	deliver(t, pools, p, basic(""))
	// A new secret for the same user does not drop a connection that is signed in already.
	deliver(t, pools, p, upstream.Auth{Username: user, Secret: secret.New("rotated-password")})
	if st := srv.Stats(); st.Conns != 1 {
		t.Fatalf("a rotated secret opened a new connection: %+v", st)
	}

	deliver(t, pools, p, upstream.Auth{Username: other, Secret: secret.New("other-password")})
	if m := srv.Messages(); srv.Stats().Conns != 2 || m[2].User != other || m[2].ConnID != 2 {
		t.Fatalf("the message after the username change went as %q on connection %d", m[2].User, m[2].ConnID)
	}
	waitServer(t, srv, func(s upstreamtest.Stats) bool { return s.Closed == 1 })

	p.Upstream.ServerName = "localhost"
	deliver(t, pools, p, upstream.Auth{Username: other, Secret: secret.New("other-password")})
	if st := srv.Stats(); st.Conns != 3 {
		t.Fatalf("a changed server name reused a connection: %+v", st)
	}
	waitServer(t, srv, func(s upstreamtest.Stats) bool { return s.Closed == 2 })
	if s := poolStats(t, pools, "client-a"); s.Open != 1 {
		t.Errorf("pool stats %+v, want only the new connection open", s)
	}
}

func TestRecipientRejected(t *testing.T) {
	t.Parallel()
	srv := upstreamtest.NewServer(t, upstreamtest.Options{
		TLS: project.TLSStartTLS, Users: users(),
		RejectRcpt: func(to string) *smtp.SMTPError {
			if to == "nobody@elsewhere.example" {
				return &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 1, 1}, Message: "no such user here"}
			}
			return nil
		},
	})
	pools, _ := newPools(t, upstream.Options{})
	ctx := ctxFor(t)
	c, err := pools.Acquire(ctx, proj("client-a", srv), basic(""))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Release()
	if err := c.Mail(ctx, from, nil); err != nil {
		t.Fatal(err)
	}
	err = c.Rcpt(ctx, "nobody@elsewhere.example", nil)
	e := asError(t, err)
	if e.Stage != upstream.StageRcpt || e.Code != 550 || e.Enhanced != (smtp.EnhancedCode{5, 1, 1}) ||
		e.Message != "no such user here" || e.Temporary() || e.AuthFailed() {
		t.Errorf("got %#v, want the upstream's permanent 550 5.1.1", e)
	}
	if err := c.Rcpt(ctx, to, nil); err != nil {
		t.Fatalf("the next recipient: %v", err)
	}
	if err := c.Data(ctx, strings.NewReader(body)); err != nil {
		t.Fatalf("Data: %v", err)
	}
	if m := srv.Messages(); len(m) != 1 || len(m[0].To) != 1 || m[0].To[0] != to {
		t.Errorf("upstream got %+v", m)
	}
	if c.LastReply() == "" {
		t.Error("LastReply is empty after an accepted message")
	}
}

func TestDataReplies(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name      string
		reply     *smtp.SMTPError
		temporary bool
	}{
		{"send as denied", &smtp.SMTPError{Code: 554, EnhancedCode: smtp.EnhancedCode{5, 2, 252},
			Message: "SendAsDenied; mailbox@client.example not allowed to send as noreply@client.example"}, false},
		{"gmail daily limit", &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 4, 5},
			Message: "Daily user sending limit exceeded."}, true},
		{"exchange submission quota", &smtp.SMTPError{Code: 554, EnhancedCode: smtp.EnhancedCode{5, 2, 0},
			Message: "STOREDRV.Submission.Exception:SubmissionQuotaExceededException; Failed to process message"}, true},
		{"greylisted", &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 7, 1}, Message: "try again later"}, true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			var reject sync.Once
			srv := upstreamtest.NewServer(t, upstreamtest.Options{
				TLS: project.TLSStartTLS, Users: users(),
				RejectData: func(upstreamtest.Message) (e *smtp.SMTPError) {
					reject.Do(func() { e = tc.reply })
					return e
				},
			})
			pools, _ := newPools(t, upstream.Options{})
			p := proj("client-a", srv)
			ctx := ctxFor(t)
			c, err := pools.Acquire(ctx, p, basic(""))
			if err != nil {
				t.Fatal(err)
			}
			err = send(ctx, c, []string{to}, body)
			c.Release()
			e := asError(t, err)
			if e.Stage != upstream.StageData || e.Code != tc.reply.Code || e.Enhanced != tc.reply.EnhancedCode ||
				e.Message != tc.reply.Message || e.Temporary() != tc.temporary {
				t.Errorf("got %#v (temporary %v), want the upstream's reply, temporary %v", e, e.Temporary(), tc.temporary)
			}
			// The connection is fine after a refused message.
			deliver(t, pools, p, basic(""))
			if st := srv.Stats(); st.Conns != 1 || st.Messages != 1 {
				t.Errorf("upstream saw %+v, want 1 connection and 1 message", st)
			}
		})
	}
}

type failingReader struct {
	r   io.Reader
	err error
}

func (f *failingReader) Read(b []byte) (int, error) {
	n, err := f.r.Read(b)
	if err == io.EOF {
		return n, f.err
	}
	return n, err
}

func TestDataReaderFailureAbandonsMessage(t *testing.T) {
	t.Parallel()
	srv := upstreamtest.NewServer(t, upstreamtest.Options{TLS: project.TLSStartTLS, Users: users()})
	pools, _ := newPools(t, upstream.Options{})
	p := proj("client-a", srv)
	ctx := ctxFor(t)
	c, err := pools.Acquire(ctx, p, basic(""))
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Mail(ctx, from, nil); err != nil {
		t.Fatal(err)
	}
	if err := c.Rcpt(ctx, to, nil); err != nil {
		t.Fatal(err)
	}
	lost := errors.New("postfix went away")
	err = c.Data(ctx, &failingReader{r: strings.NewReader("Subject: half\r\n\r\nhalf a mess"), err: lost})
	c.Release()
	if e := asError(t, err); e.Stage != upstream.StageData || !errors.Is(err, lost) || !e.Temporary() {
		t.Errorf("got %v, want a temporary data error wrapping the reader's", err)
	}
	waitServer(t, srv, func(s upstreamtest.Stats) bool { return s.Closed == 1 })
	if st := srv.Stats(); st.Messages != 0 {
		t.Errorf("the upstream took the truncated message: %+v", srv.Messages())
	}
	deliver(t, pools, p, basic(""))
	if st := srv.Stats(); st.Conns != 2 {
		t.Errorf("upstream saw %d connections, want a fresh one after the abandoned message", st.Conns)
	}
}

func TestDataHonoursContext(t *testing.T) {
	t.Parallel()
	entered, hold := make(chan struct{}), make(chan struct{})
	defer close(hold)
	srv := upstreamtest.NewServer(t, upstreamtest.Options{
		TLS: project.TLSStartTLS, Users: users(),
		RejectData: func(upstreamtest.Message) *smtp.SMTPError {
			close(entered)
			<-hold
			return nil
		},
	})
	pools, _ := newPools(t, upstream.Options{})
	ctx, cancel := context.WithCancel(ctxFor(t))
	c, err := pools.Acquire(ctx, proj("client-a", srv), basic(""))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Release()
	go func() {
		<-entered
		cancel()
	}()
	err = send(ctx, c, []string{to}, body)
	if e := asError(t, err); e.Stage != upstream.StageData || !errors.Is(err, context.Canceled) || !e.Temporary() {
		t.Errorf("got %v, want a temporary data error wrapping context.Canceled", err)
	}
}

func TestMailParameters(t *testing.T) {
	t.Parallel()
	ctx := ctxFor(t)

	t.Run("8BITMIME and SIZE passed", func(t *testing.T) {
		t.Parallel()
		srv := upstreamtest.NewServer(t, upstreamtest.Options{TLS: project.TLSStartTLS, Users: users(), MaxMessageBytes: 1000})
		pools, _ := newPools(t, upstream.Options{})
		c, err := pools.Acquire(ctx, proj("client-a", srv), basic(""))
		if err != nil {
			t.Fatal(err)
		}
		defer c.Release()
		if c.MaxSize() != 1000 {
			t.Errorf("MaxSize = %d, want 1000", c.MaxSize())
		}
		err = c.Mail(ctx, from, &smtp.MailOptions{Size: 2000})
		if e := asError(t, err); e.Code != 552 || e.Enhanced != (smtp.EnhancedCode{5, 3, 4}) || !e.Local || e.Temporary() {
			t.Errorf("too big: got %#v, want a permanent local 552 5.3.4", e)
		}
		if err := c.Mail(ctx, from, &smtp.MailOptions{Size: int64(len(body)), Body: smtp.Body8BitMIME}); err != nil {
			t.Fatal(err)
		}
		if err := c.Rcpt(ctx, to, nil); err != nil {
			t.Fatal(err)
		}
		if err := c.Data(ctx, strings.NewReader(body)); err != nil {
			t.Fatal(err)
		}
		m := srv.Messages()[0]
		if m.Opts.Size != int64(len(body)) || m.Opts.Body != smtp.Body8BitMIME {
			t.Errorf("upstream got MAIL parameters %+v, want SIZE and BODY=8BITMIME", m.Opts)
		}
	})

	t.Run("no 8BITMIME upstream", func(t *testing.T) {
		t.Parallel()
		srv := upstreamtest.NewServer(t, upstreamtest.Options{No8BitMIME: true})
		pools, _ := newPools(t, upstream.Options{})
		c, err := pools.Acquire(ctx, proj("client-a", srv), upstream.Auth{})
		if err != nil {
			t.Fatal(err)
		}
		defer c.Release()
		if c.MaxSize() != 0 {
			t.Errorf("MaxSize = %d for a SIZE without a limit", c.MaxSize())
		}
		err = c.Mail(ctx, from, &smtp.MailOptions{Body: smtp.Body8BitMIME})
		if e := asError(t, err); e.Code != 554 || e.Enhanced != (smtp.EnhancedCode{5, 6, 3}) || !e.Local || e.Temporary() {
			t.Errorf("8-bit body: got %#v, want a permanent 554 5.6.3", e)
		}
		err = c.Mail(ctx, from, &smtp.MailOptions{UTF8: true})
		if e := asError(t, err); e.Code != 553 || e.Enhanced != (smtp.EnhancedCode{5, 6, 7}) || e.Temporary() {
			t.Errorf("SMTPUTF8: got %#v, want a permanent 553 5.6.7", e)
		}
		if err := send(ctx, c, []string{to}, body); err != nil {
			t.Fatal(err)
		}
		if m := srv.Messages()[0]; m.Opts.Body != "" {
			t.Errorf("upstream without 8BITMIME got BODY=%s", m.Opts.Body)
		}
	})
}

func TestClose(t *testing.T) {
	t.Parallel()
	srv := upstreamtest.NewServer(t, upstreamtest.Options{TLS: project.TLSStartTLS, Users: users()})
	pools, _ := newPools(t, upstream.Options{})
	p := proj("client-a", srv)
	deliver(t, pools, p, basic(""))
	ctx := ctxFor(t)
	busy, err := pools.Acquire(ctx, p, basic(""))
	if err != nil {
		t.Fatal(err)
	}
	if err := pools.Close(); err != nil {
		t.Fatal(err)
	}
	if st := srv.Stats(); st.Closed != 0 {
		t.Errorf("Close closed a connection in use: %+v", st)
	}
	if err := send(ctx, busy, []string{to}, body); err != nil {
		t.Fatalf("a connection in use stopped working at Close: %v", err)
	}
	busy.Release()
	waitServer(t, srv, func(s upstreamtest.Stats) bool { return s.Closed == 1 })
	if _, err := pools.Acquire(ctx, p, basic("")); !errors.Is(err, upstream.ErrClosed) {
		t.Errorf("Acquire after Close: got %v, want ErrClosed", err)
	}
}

func TestTemporary(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name string
		err  upstream.Error
		want bool
	}{
		{"network failure", upstream.Error{Stage: upstream.StageConnect, Err: io.EOF}, true},
		{"timeout in data", upstream.Error{Stage: upstream.StageData, Message: "no answer within 10m"}, true},
		{"pool busy", upstream.Error{Stage: upstream.StagePool, Err: upstream.ErrBusy}, true},
		{"4xx rcpt", upstream.Error{Stage: upstream.StageRcpt, Code: 452, Enhanced: smtp.EnhancedCode{4, 5, 3}}, true},
		{"exchange thread limit", upstream.Error{Stage: upstream.StageMail, Code: 432, Enhanced: smtp.EnhancedCode{4, 3, 2},
			Message: "Concurrent connections limit exceeded"}, true},
		{"5xx greeting", upstream.Error{Stage: upstream.StageGreeting, Code: 554, Message: "no service"}, true},
		{"5xx auth", upstream.Error{Stage: upstream.StageAuth, Code: 535, Enhanced: smtp.EnhancedCode{5, 7, 3}}, true},
		{"5xx mail", upstream.Error{Stage: upstream.StageMail, Code: 550, Enhanced: smtp.EnhancedCode{5, 7, 1}}, true},
		{"5xx rcpt", upstream.Error{Stage: upstream.StageRcpt, Code: 550, Enhanced: smtp.EnhancedCode{5, 1, 1}}, false},
		{"5xx data", upstream.Error{Stage: upstream.StageData, Code: 554, Enhanced: smtp.EnhancedCode{5, 7, 60}}, false},
		{"5xx data without enhanced code", upstream.Error{Stage: upstream.StageData, Code: 554, Message: "rejected"}, false},
		{"local 8BITMIME refusal", upstream.Error{Stage: upstream.StageMail, Code: 554, Enhanced: smtp.EnhancedCode{5, 6, 3}, Local: true}, false},
		{"gmail daily limit on data", upstream.Error{Stage: upstream.StageData, Code: 550, Enhanced: smtp.EnhancedCode{5, 4, 5},
			Message: "Daily user sending limit exceeded."}, true},
		{"gmail daily limit on rcpt", upstream.Error{Stage: upstream.StageRcpt, Code: 550, Enhanced: smtp.EnhancedCode{5, 4, 5},
			Message: "Daily SMTP relay sending limit exceeded for customer"}, true},
		{"exchange submission quota", upstream.Error{Stage: upstream.StageData, Code: 554, Enhanced: smtp.EnhancedCode{5, 2, 0},
			Message: "STOREDRV.Submission.Exception:SubmissionQuotaExceededException; Failed to process message"}, true},
		{"exchange other 5.2.0", upstream.Error{Stage: upstream.StageData, Code: 554, Enhanced: smtp.EnhancedCode{5, 2, 0},
			Message: "STOREDRV.Submission.Exception:InvalidRecipientsException"}, false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			if got := tc.err.Temporary(); got != tc.want {
				t.Errorf("Temporary() = %v, want %v for %v", got, tc.want, &tc.err)
			}
		})
	}
}

func TestAuthFailed(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name string
		err  upstream.Error
		want bool
	}{
		{"535 5.7.8", upstream.Error{Stage: upstream.StageAuth, Code: 535, Enhanced: smtp.EnhancedCode{5, 7, 8}}, true},
		{"exchange 535 5.7.3", upstream.Error{Stage: upstream.StageAuth, Code: 535, Enhanced: smtp.EnhancedCode{5, 7, 3}}, true},
		{"exchange smtp auth disabled", upstream.Error{Stage: upstream.StageAuth, Code: 535, Enhanced: smtp.EnhancedCode{5, 7, 139},
			Message: "Authentication unsuccessful, SmtpClientAuthentication is disabled for the Tenant."}, true},
		{"550 5.7.30 basic auth", upstream.Error{Stage: upstream.StageAuth, Code: 550, Enhanced: smtp.EnhancedCode{5, 7, 30}}, true},
		{"gmail 534", upstream.Error{Stage: upstream.StageAuth, Code: 534, Enhanced: smtp.EnhancedCode{5, 7, 9}}, true},
		{"535 without enhanced code", upstream.Error{Stage: upstream.StageAuth, Code: 535}, true},
		{"454 temporary failure", upstream.Error{Stage: upstream.StageAuth, Code: 454, Enhanced: smtp.EnhancedCode{4, 7, 0}}, false},
		{"mechanism unknown", upstream.Error{Stage: upstream.StageAuth, Code: 504, Enhanced: smtp.EnhancedCode{5, 7, 4}}, false},
		{"no AUTH offered", upstream.Error{Stage: upstream.StageAuth, Message: "the upstream offers no AUTH"}, false},
		{"network during auth", upstream.Error{Stage: upstream.StageAuth, Err: io.EOF}, false},
		{"535 outside auth", upstream.Error{Stage: upstream.StageMail, Code: 535}, false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			if got := tc.err.AuthFailed(); got != tc.want {
				t.Errorf("AuthFailed() = %v, want %v for %v", got, tc.want, &tc.err)
			}
		})
	}
}

func TestErrorText(t *testing.T) {
	t.Parallel()
	cases := []struct {
		err  upstream.Error
		want string
	}{
		{upstream.Error{Stage: "rcpt", Addr: "smtp.example:587", Code: 550, Enhanced: smtp.EnhancedCode{5, 1, 1}, Message: "no such user"},
			"upstream smtp.example:587 rcpt: 550 5.1.1 no such user"},
		{upstream.Error{Stage: "connect", Addr: "smtp.example:587", Message: "cannot connect", Err: io.EOF},
			"upstream smtp.example:587 connect: cannot connect: EOF"},
		{upstream.Error{Stage: "pool", Err: upstream.ErrClosed}, "upstream pool: upstream pools are closed"},
	}
	for _, tc := range cases {
		if got := tc.err.Error(); got != tc.want {
			t.Errorf("Error() = %q, want %q", got, tc.want)
		}
	}
}

func ExamplePools() {
	// A project whose upstream is a Microsoft 365 mailbox with basic AUTH.
	p := project.Project{
		Name:     "client-a",
		Upstream: project.Upstream{Host: "smtp.office365.com", Port: 587, TLS: project.TLSStartTLS},
	}
	auth := upstream.Auth{Username: "noreply@client-a.example", Secret: secret.New("app password")}

	pools := upstream.NewPools(upstream.Options{DialTimeout: time.Second})
	defer pools.Close()
	relay := func(ctx context.Context, msg io.Reader) error {
		c, err := pools.Acquire(ctx, p, auth)
		if err != nil {
			return err
		}
		defer c.Release()
		if err := c.Mail(ctx, "noreply@client-a.example", nil); err != nil {
			return err
		}
		if err := c.Rcpt(ctx, "someone@example.org", nil); err != nil {
			return err
		}
		return c.Data(ctx, msg)
	}
	_ = relay
	fmt.Println("ready")
	// Output: ready
}

// An upstream, or anyone on the network path before STARTTLS, cannot make Postern hold an
// unbounded reply in memory: every reply read (the greeting, the EHLO before STARTTLS or without
// it, the transaction's replies) stops at a line or reply limit, as a temporary failure that
// closes the connection. Not parallel: the
// memory it measures must be its own.
func TestReplyLimits(t *testing.T) {
	const payload = 64 << 20
	for _, tc := range []struct {
		name  string
		tls   project.TLSMode
		flood upstreamtest.Flood
		stage string
	}{
		{"greeting line", project.TLSStartTLS, upstreamtest.Flood{At: upstreamtest.FloodGreeting}, upstream.StageGreeting},
		{"greeting lines", project.TLSStartTLS, upstreamtest.Flood{At: upstreamtest.FloodGreeting, Lines: true}, upstream.StageGreeting},
		{"EHLO before STARTTLS", project.TLSStartTLS, upstreamtest.Flood{At: upstreamtest.FloodEHLO}, upstream.StageEHLO},
		{"EHLO lines before STARTTLS", project.TLSStartTLS, upstreamtest.Flood{At: upstreamtest.FloodEHLO, Lines: true}, upstream.StageEHLO},
		{"EHLO without STARTTLS", project.TLSNone, upstreamtest.Flood{At: upstreamtest.FloodEHLO}, upstream.StageEHLO},
		{"EHLO lines without STARTTLS", project.TLSNone, upstreamtest.Flood{At: upstreamtest.FloodEHLO, Lines: true}, upstream.StageEHLO},
		{"MAIL", project.TLSStartTLS, upstreamtest.Flood{At: upstreamtest.FloodMail}, upstream.StageMail},
		{"MAIL lines", project.TLSStartTLS, upstreamtest.Flood{At: upstreamtest.FloodMail, Lines: true}, upstream.StageMail},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tc.flood.Bytes = payload
			srv := upstreamtest.NewServer(t, upstreamtest.Options{TLS: tc.tls, Users: users(), Flood: &tc.flood})
			pools, _ := newPools(t, upstream.Options{GreetingTimeout: 10 * time.Second, CommandTimeout: 10 * time.Second})
			ctx := ctxFor(t)
			auth := basic("")
			if tc.tls == project.TLSNone {
				auth = upstream.Auth{}
			}
			var before, after runtime.MemStats
			runtime.GC()
			runtime.ReadMemStats(&before)

			c, err := pools.Acquire(ctx, proj("flooded", srv), auth)
			if err == nil {
				err = send(ctx, c, []string{to}, body)
				c.Discard()
				if err == nil {
					t.Fatal("the message went through a flooded connection")
				}
			}
			runtime.ReadMemStats(&after)
			e := asError(t, err)
			if e.Stage != tc.stage || e.Code != 0 || !e.Temporary() || !errors.Is(err, upstream.ErrReplyTooLarge) {
				t.Errorf("got %v, want a temporary %s error for a reply over the limit", err, tc.stage)
			}
			waitServer(t, srv, func(s upstreamtest.Stats) bool { return s.Closed == s.Conns })
			// What the upstream could write is what Postern read (a few KiB) and the sockets' buffers.
			if sent := srv.Stats().FloodBytes; sent > payload/8 {
				t.Errorf("the upstream wrote %d bytes of its %d-byte reply before Postern hung up", sent, payload)
			}
			if grew := after.TotalAlloc - before.TotalAlloc; grew > payload/8 {
				t.Errorf("Postern allocated %d bytes reading a flood of %d", grew, payload)
			}
		})
	}
}
