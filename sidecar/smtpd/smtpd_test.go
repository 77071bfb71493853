package smtpd

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/postern/postern/sidecar/credential"
	"github.com/postern/postern/sidecar/directory"
	"github.com/postern/postern/sidecar/project"
	"github.com/postern/postern/sidecar/secret"
	"github.com/postern/postern/sidecar/upstream"
	"github.com/postern/postern/sidecar/upstream/upstreamtest"
)

// memStore is a store.Projects over a slice.
type memStore struct {
	mu       sync.Mutex
	projects []project.Project
	err      error
}

func (m *memStore) Projects(context.Context) ([]project.Project, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return slices.Clone(m.projects), m.err
}

// fakeCreds is a credential source that hands out the project's password; with fresh set, a
// renewal hands out fresh. It records each call: false for Credential, true for Renew.
type fakeCreds struct {
	mu       sync.Mutex
	forced   []bool
	rejected []string
	fresh    string
	err      error
}

func (f *fakeCreds) Credential(_ context.Context, p project.Project) (upstream.Auth, error) {
	return f.credential(p, false)
}

func (f *fakeCreds) Renew(_ context.Context, p project.Project, _ upstream.Auth) (upstream.Auth, error) {
	return f.credential(p, true)
}

func (f *fakeCreds) credential(p project.Project, force bool) (upstream.Auth, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.forced = append(f.forced, force)
	if f.err != nil {
		return upstream.Auth{}, f.err
	}
	if p.Auth.Type == project.AuthNone {
		return upstream.Auth{}, nil
	}
	pw := p.Auth.Password
	if force && f.fresh != "" {
		pw = secret.New(f.fresh)
	}
	return upstream.Auth{Username: p.Auth.Username, Secret: pw}, nil
}

func (f *fakeCreds) Rejected(_ context.Context, p project.Project, err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.rejected = append(f.rejected, p.Name+": "+err.Error())
}

func (f *fakeCreds) Accepted(context.Context, project.Project) {}

// manager signs in through f: as a source that renews for OAuth and plugin projects, as one that
// cannot (a password) for basic and none.
func (f *fakeCreds) manager() *credential.Manager {
	return credential.New(credential.Options{Basic: basicOnly{f}, OAuth: f, Plugin: f})
}

// basicOnly hides Renew: a password is not renewed.
type basicOnly struct{ credential.Source }

func (f *fakeCreds) calls() ([]bool, []string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.forced), slices.Clone(f.rejected)
}

type logBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.Write(p)
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.String()
}

type harness struct {
	t      *testing.T
	store  *memStore
	dir    *directory.Directory
	creds  *fakeCreds
	pools  *upstream.Pools
	logs   *logBuffer
	srv    *Server
	sock   string
	cancel context.CancelFunc
	served chan error
}

const password = "pw-secret-4b1d"

// basicProject makes a project delivering to up as user@domain with password.
func basicProject(name, domain string, up *upstreamtest.Server) project.Project {
	return project.Project{
		Name:     name,
		Enabled:  true,
		Senders:  []string{"noreply@" + domain},
		Upstream: up.Upstream(),
		Auth:     project.Auth{Type: project.AuthBasic, Username: "user@" + domain, Password: secret.New(password)},
	}
}

func fakeUpstream(t *testing.T, opts upstreamtest.Options, users ...string) *upstreamtest.Server {
	if opts.Users == nil && len(users) > 0 {
		opts.Users = map[string]string{}
		for _, u := range users {
			opts.Users[u] = password
		}
	}
	return upstreamtest.NewServer(t, opts)
}

// newHarness serves LMTP on a unix socket with a real directory and real upstream pools.
func newHarness(t *testing.T, opts Options, projects ...project.Project) *harness {
	t.Helper()
	return newHarnessWithStore(t, opts, &memStore{projects: projects})
}

func newHarnessWithStore(t *testing.T, opts Options, store *memStore) *harness {
	t.Helper()
	h := &harness{t: t, store: store, creds: &fakeCreds{}, logs: &logBuffer{}}
	log := slog.New(slog.NewTextHandler(h.logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	h.dir = directory.New(h.store, directory.Options{Logger: log, MinReloadGap: time.Hour})
	h.dir.Load(t.Context()) // a failing store is a case under test
	h.pools = upstream.NewPools(upstream.Options{Logger: log, LocalName: "postern.test"})
	t.Cleanup(func() { h.pools.Close() })

	opts.Resolver, opts.Credentials, opts.Upstreams, opts.Logger = h.dir, h.creds.manager(), h.pools, log
	if opts.Hostname == "" {
		opts.Hostname = "postern.test"
	}
	srv, err := New(opts)
	if err != nil {
		t.Fatal(err)
	}
	h.srv = srv
	// A short directory keeps the socket path within the unix limit.
	dir, err := os.MkdirTemp("", "smtpd")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	h.sock = filepath.Join(dir, "lmtp.sock")
	l, err := net.Listen("unix", h.sock)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	h.cancel, h.served = cancel, make(chan error, 1)
	go func() { h.served <- srv.ServeLMTP(ctx, l) }()
	t.Cleanup(func() {
		cancel()
		if err := <-h.served; err != nil {
			t.Errorf("ServeLMTP: %v", err)
		}
		if strings.Contains(h.logs.String(), password) {
			t.Errorf("a password reached the log")
		}
	})
	return h
}

func (h *harness) dial() *smtp.Client {
	h.t.Helper()
	nc, err := net.Dial("unix", h.sock)
	if err != nil {
		h.t.Fatal(err)
	}
	c := smtp.NewClientLMTP(nc)
	c.CommandTimeout = time.Minute
	c.SubmissionTimeout = time.Minute
	if err := c.Hello("postfix.test"); err != nil {
		h.t.Fatal(err)
	}
	h.t.Cleanup(func() { c.Close() })
	return c
}

// result is what Postfix would see of one transaction.
type result struct {
	mail error
	rcpt map[string]error
	data map[string]error // per accepted recipient
}

// refusal is the reply refusing rcpt, at RCPT or, over LMTP, after the message.
func (r result) refusal(rcpt string) error {
	if err := r.rcpt[rcpt]; err != nil {
		return err
	}
	return r.data[rcpt]
}

func (r result) delivered(rcpt string) bool {
	d, ok := r.data[rcpt]
	return r.mail == nil && ok && d == nil
}

// send runs one LMTP transaction; stop after a failure is left to the caller's checks.
func send(t *testing.T, c *smtp.Client, from string, to []string, body string, opts *smtp.MailOptions) result {
	t.Helper()
	res := result{rcpt: map[string]error{}, data: map[string]error{}}
	if res.mail = c.Mail(from, opts); res.mail != nil {
		c.Reset()
		return res
	}
	var accepted []string
	for _, rcpt := range to {
		if res.rcpt[rcpt] = c.Rcpt(rcpt, nil); res.rcpt[rcpt] == nil {
			accepted = append(accepted, rcpt)
		}
	}
	if len(accepted) == 0 {
		c.Reset()
		return res
	}
	w, err := c.Data()
	if err != nil {
		t.Fatalf("DATA: %v", err)
	}
	if _, err := w.Write([]byte(body)); err != nil {
		t.Fatalf("writing the body: %v", err)
	}
	_, err = w.CloseWithLMTPResponse()
	var lmtpErr smtp.LMTPDataError
	if err != nil && !errors.As(err, &lmtpErr) {
		t.Fatalf("end of DATA: %v", err)
	}
	for _, rcpt := range accepted {
		if e, ok := lmtpErr[rcpt]; ok {
			res.data[rcpt] = e
		} else {
			res.data[rcpt] = nil
		}
	}
	return res
}

func wantReply(t *testing.T, what string, err error, code int, enhanced smtp.EnhancedCode, text string) {
	t.Helper()
	var se *smtp.SMTPError
	if !errors.As(err, &se) {
		t.Fatalf("%s: got %v, want %d %v", what, err, code, enhanced)
	}
	if se.Code != code || se.EnhancedCode != enhanced || !strings.Contains(se.Message, text) {
		t.Fatalf("%s: got %d %v %q, want %d %v containing %q", what, se.Code, se.EnhancedCode, se.Message, code, enhanced, text)
	}
}

const body = "From: noreply@a.example\r\nTo: x@dest.example\r\nSubject: hello\r\n\r\nHello there.\r\n"

func TestDelivery(t *testing.T) {
	t.Parallel()
	up := fakeUpstream(t, upstreamtest.Options{TLS: project.TLSStartTLS}, "user@a.example")
	h := newHarness(t, Options{}, basicProject("a", "a.example", up))
	c := h.dial()
	for i := range 3 {
		res := send(t, c, "noreply@a.example", []string{"x@dest.example", "y@dest.example"}, body, &smtp.MailOptions{Size: int64(len(body))})
		if !res.delivered("x@dest.example") || !res.delivered("y@dest.example") {
			t.Fatalf("message %d not delivered: %+v %v\n%s", i, res, res.data["x@dest.example"], h.logs)
		}
	}
	msgs := up.Messages()
	if len(msgs) != 3 {
		t.Fatalf("upstream has %d messages, want 3", len(msgs))
	}
	m := msgs[0]
	if m.From != "noreply@a.example" || !slices.Equal(m.To, []string{"x@dest.example", "y@dest.example"}) ||
		string(m.Data) != body || m.User != "user@a.example" || !m.TLS || m.Opts.Size != int64(len(body)) {
		t.Fatalf("upstream received %+v", m)
	}
	// One signed-in upstream connection carried every message, and no message read the store.
	if st := up.Stats(); st.Conns != 1 || st.Auths != 1 {
		t.Fatalf("upstream stats %+v, want one connection and one AUTH", st)
	}
	if n := h.dir.StoreReads(); n != 1 {
		t.Fatalf("store read %d times, want once (at load)", n)
	}
	logs := h.logs.String()
	for _, want := range []string{"msg=delivered", "project=a", "sender=noreply@a.example", "recipients=2"} {
		if !strings.Contains(logs, want) {
			t.Fatalf("log lacks %q:\n%s", want, logs)
		}
	}
}

func TestDeliveryOverSMTP(t *testing.T) {
	t.Parallel()
	up := fakeUpstream(t, upstreamtest.Options{}, "user@a.example")
	store := &memStore{projects: []project.Project{basicProject("a", "a.example", up)}}
	dir := directory.New(store, directory.Options{})
	if err := dir.Load(t.Context()); err != nil {
		t.Fatal(err)
	}
	pools := upstream.NewPools(upstream.Options{})
	t.Cleanup(func() { pools.Close() })
	srv, err := New(Options{Resolver: dir, Credentials: credential.New(credential.Options{}), Upstreams: pools, MaxMessageBytes: 1000})
	if err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	served := make(chan error, 1)
	go func() { served <- srv.ServeSMTP(ctx, l) }()
	defer func() {
		cancel()
		if err := <-served; err != nil {
			t.Fatal(err)
		}
	}()

	c, err := smtp.Dial(l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.Hello("postfix.test"); err != nil {
		t.Fatal(err)
	}
	if ok, v := c.Extension("SIZE"); !ok || v != "1000" {
		t.Fatalf("SIZE advertised as %q, %v", v, ok)
	}
	if ok, _ := c.Extension("8BITMIME"); !ok {
		t.Fatal("8BITMIME not advertised")
	}
	if err := c.SendMail("noreply@a.example", []string{"x@dest.example"}, strings.NewReader(body)); err != nil {
		t.Fatalf("SendMail: %v", err)
	}
	if msgs := up.Messages(); len(msgs) != 1 || string(msgs[0].Data) != body {
		t.Fatalf("upstream got %+v", msgs)
	}
	// SIZE above the limit: 552 at MAIL.
	wantReply(t, "MAIL SIZE=2000", c.Mail("noreply@a.example", &smtp.MailOptions{Size: 2000}), 552, smtp.EnhancedCode{5, 3, 4}, "")
}

func TestServeSMTPRefusesNonLoopback(t *testing.T) {
	t.Parallel()
	srv, err := New(Options{Resolver: &directory.Directory{}, Credentials: credential.New(credential.Options{}), Upstreams: upstream.NewPools(upstream.Options{})})
	if err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	err = srv.ServeSMTP(t.Context(), publicAddrListener{l})
	if err == nil || !strings.Contains(err.Error(), "loopback") {
		t.Fatalf("ServeSMTP on a public address: %v", err)
	}
}

type publicAddrListener struct{ net.Listener }

func (publicAddrListener) Addr() net.Addr { return &net.TCPAddr{IP: net.IPv4(192, 0, 2, 1), Port: 25} }

func TestUpstreamRejectsOneRecipient(t *testing.T) {
	t.Parallel()
	up := fakeUpstream(t, upstreamtest.Options{RejectRcpt: func(to string) *smtp.SMTPError {
		if to == "gone@dest.example" {
			return &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 1, 1}, Message: "User unknown"}
		}
		if to == "busy@dest.example" {
			return &smtp.SMTPError{Code: 450, EnhancedCode: smtp.EnhancedCode{4, 2, 1}, Message: "Mailbox busy"}
		}
		return nil
	}}, "user@a.example")
	h := newHarness(t, Options{}, basicProject("a", "a.example", up))
	c := h.dial()
	res := send(t, c, "noreply@a.example", []string{"x@dest.example", "gone@dest.example", "busy@dest.example", "y@dest.example"}, body, nil)
	// Over LMTP the recipients go upstream with DATA: each refusal is that recipient's reply
	// after the message.
	for rcpt, err := range res.rcpt {
		if err != nil {
			t.Errorf("RCPT %s = %v, want it accepted until the upstream answers", rcpt, err)
		}
	}
	wantReply(t, "gone", res.refusal("gone@dest.example"), 550, smtp.EnhancedCode{5, 1, 1}, "User unknown")
	wantReply(t, "busy", res.refusal("busy@dest.example"), 450, smtp.EnhancedCode{4, 2, 1}, "Mailbox busy")
	if !res.delivered("x@dest.example") || !res.delivered("y@dest.example") {
		t.Fatalf("the other recipients were not delivered: %+v", res)
	}
	if msgs := up.Messages(); len(msgs) != 1 || !slices.Equal(msgs[0].To, []string{"x@dest.example", "y@dest.example"}) {
		t.Fatalf("upstream got %+v", msgs)
	}

	// Every recipient refused: nothing is sent, each gets its refusal, the connections go on.
	res = send(t, c, "noreply@a.example", []string{"gone@dest.example", "busy@dest.example"}, body, nil)
	wantReply(t, "gone alone", res.refusal("gone@dest.example"), 550, smtp.EnhancedCode{5, 1, 1}, "User unknown")
	wantReply(t, "busy alone", res.refusal("busy@dest.example"), 450, smtp.EnhancedCode{4, 2, 1}, "Mailbox busy")
	res = send(t, c, "noreply@a.example", []string{"z@dest.example"}, body, nil)
	if !res.delivered("z@dest.example") {
		t.Fatalf("the next message was not delivered: %+v", res)
	}
	if msgs := up.Messages(); len(msgs) != 2 {
		t.Fatalf("upstream got %d messages, want 2", len(msgs))
	}
	if st := up.Stats(); st.Conns != 1 {
		t.Errorf("upstream saw %d connections, want 1: a refused recipient leaves the connection usable", st.Conns)
	}
	want := Outcomes{Delivered: 3, Deferred: 2, Refused: 2}
	if st := h.srv.Stats(); st.Sessions != 1 || len(st.Recipients) != 1 || st.Recipients["a"] != want {
		t.Errorf("Stats = %+v, want 1 session and project a's recipients %+v", st, want)
	}
}

func TestUpstreamRejectsData(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name     string
		reply    *smtp.SMTPError
		code     int
		enhanced smtp.EnhancedCode
	}{
		{"send as denied bounces", &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 7, 60}, Message: "SendAsDenied"}, 550, smtp.EnhancedCode{5, 7, 60}},
		{"temporary stays temporary", &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 3, 0}, Message: "try later"}, 451, smtp.EnhancedCode{4, 3, 0}},
		{"quota 5xx is deferred", &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 4, 5}, Message: "Daily user sending limit exceeded"}, 451, smtp.EnhancedCode{4, 4, 5}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			up := fakeUpstream(t, upstreamtest.Options{RejectData: func(upstreamtest.Message) *smtp.SMTPError { return tc.reply }}, "user@a.example")
			h := newHarness(t, Options{}, basicProject("a", "a.example", up))
			c := h.dial()
			res := send(t, c, "noreply@a.example", []string{"x@dest.example", "y@dest.example"}, body, nil)
			// Over LMTP each accepted recipient gets the upstream's one final reply.
			for _, rcpt := range []string{"x@dest.example", "y@dest.example"} {
				wantReply(t, "DATA for "+rcpt, res.data[rcpt], tc.code, tc.enhanced, tc.reply.Message)
			}
			// The session and the upstream connection go on.
			if err := c.Noop(); err != nil {
				t.Fatal(err)
			}
		})
	}
}

func TestWrongPassword(t *testing.T) {
	t.Parallel()
	up := fakeUpstream(t, upstreamtest.Options{Users: map[string]string{"user@a.example": "another password"}})
	h := newHarness(t, Options{}, basicProject("a", "a.example", up))
	res := send(t, h.dial(), "noreply@a.example", []string{"x@dest.example"}, body, nil)
	wantReply(t, "MAIL", res.mail, 451, smtp.EnhancedCode{4, 7, 0}, "refused the credentials")
	if n := len(up.Messages()); n != 0 {
		t.Fatalf("%d messages delivered", n)
	}
	forced, rejected := h.creds.calls()
	if !slices.Equal(forced, []bool{false}) {
		t.Fatalf("credential calls %v: a password is not refreshed", forced)
	}
	if len(rejected) != 1 || !strings.Contains(rejected[0], "535") {
		t.Fatalf("Rejected calls %q, want one with the upstream's 535", rejected)
	}
}

func TestOAuthCredentialIsRefreshedOnce(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name      string
		fresh     string // what the forced refresh returns
		delivered bool
	}{
		{"fresh credential works", password, true},
		{"fresh credential refused too", "still wrong", false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			up := fakeUpstream(t, upstreamtest.Options{}, "user@a.example")
			p := basicProject("a", "a.example", up)
			p.Auth.Type = project.AuthOAuth2
			p.Auth.Password = secret.New("expired token")
			h := newHarness(t, Options{}, p)
			h.creds.fresh = tc.fresh
			res := send(t, h.dial(), "noreply@a.example", []string{"x@dest.example"}, body, nil)
			forced, rejected := h.creds.calls()
			if !slices.Equal(forced, []bool{false, true}) {
				t.Fatalf("credential calls %v, want one normal and one forced", forced)
			}
			if tc.delivered {
				if !res.delivered("x@dest.example") || len(rejected) != 0 {
					t.Fatalf("not delivered after the refresh: %+v, rejected %q", res, rejected)
				}
				return
			}
			wantReply(t, "MAIL", res.mail, 451, smtp.EnhancedCode{4, 7, 0}, "refused the credentials")
			if len(rejected) != 1 {
				t.Fatalf("Rejected calls %q, want one", rejected)
			}
			if n := len(up.Messages()); n != 0 {
				t.Fatalf("%d messages delivered", n)
			}
		})
	}
}

func TestMailRefusals(t *testing.T) {
	t.Parallel()
	up := fakeUpstream(t, upstreamtest.Options{}, "user@a.example", "user@off.example", "user@reauth.example")
	disabled := basicProject("off", "off.example", up)
	disabled.Enabled = false
	removed := project.Tombstone(basicProject("gone", "gone.example", up), time.Now())
	tests := []struct {
		name     string
		sender   string
		credErr  error
		code     int
		enhanced smtp.EnhancedCode
		text     string
	}{
		{"unknown sender", "someone@elsewhere.example", nil, 451, smtp.EnhancedCode{4, 7, 1}, "sender <someone@elsewhere.example> is not served by Postern now"},
		{"bounce", "", nil, 451, smtp.EnhancedCode{4, 7, 1}, "is not served by Postern now"},
		{"disabled project", "noreply@off.example", nil, 451, smtp.EnhancedCode{4, 7, 0}, "project off is disabled"},
		{"removed project", "noreply@gone.example", nil, 451, smtp.EnhancedCode{4, 7, 0}, "project gone was removed; its mail waits until it is added again or purged"},
		{"needs re-authorisation", "noreply@a.example", fmt.Errorf("token: %w", &credential.ReauthError{Reason: "invalid_grant: AADSTS700082"}),
			451, smtp.EnhancedCode{4, 7, 0}, "project a needs re-authorisation: the mailbox owner must sign in again"},
		{"credential source down", "noreply@a.example", errors.New("vault: connection refused"), 451, smtp.EnhancedCode{4, 3, 0}, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			h := newHarness(t, Options{}, basicProject("a", "a.example", up), disabled, removed)
			h.creds.err = tc.credErr
			res := send(t, h.dial(), tc.sender, []string{"x@dest.example"}, body, nil)
			wantReply(t, "MAIL", res.mail, tc.code, tc.enhanced, tc.text)
		})
	}
	if st := up.Stats(); st.Conns != 0 {
		t.Fatalf("the upstream was contacted %d times", st.Conns)
	}
}

func TestStoreUnavailable(t *testing.T) {
	t.Parallel()
	h := newHarnessWithStore(t, Options{}, &memStore{err: errors.New("vault sealed")})
	res := send(t, h.dial(), "noreply@a.example", []string{"x@dest.example"}, body, nil)
	wantReply(t, "MAIL", res.mail, 451, smtp.EnhancedCode{4, 3, 0}, "")
}

func TestUpstreamDown(t *testing.T) {
	t.Parallel()
	up := fakeUpstream(t, upstreamtest.Options{}, "user@a.example")
	p := basicProject("a", "a.example", up)
	up.Stop()
	h := newHarness(t, Options{}, p)
	res := send(t, h.dial(), "noreply@a.example", []string{"x@dest.example"}, body, nil)
	var se *smtp.SMTPError
	if !errors.As(res.mail, &se) || se.Code/100 != 4 || !strings.Contains(se.Message, up.Addr()) {
		t.Fatalf("MAIL with the upstream down: %v, want 4xx naming %s", res.mail, up.Addr())
	}
}

func TestHangingUpstreamDoesNotDelayAnotherProject(t *testing.T) {
	t.Parallel()
	hanging := fakeUpstream(t, upstreamtest.Options{Hang: true}, "user@a.example")
	healthy := fakeUpstream(t, upstreamtest.Options{}, "user@b.example")
	h := newHarness(t, Options{}, basicProject("a", "a.example", hanging), basicProject("b", "b.example", healthy))
	t.Cleanup(hanging.Stop) // before the harness's cleanup, should the test fail early

	aDone := make(chan result, 1)
	ca := h.dial()
	go func() { aDone <- send(t, ca, "noreply@a.example", []string{"x@dest.example"}, body, nil) }()
	if err := hanging.Wait(t.Context(), func(s upstreamtest.Stats) bool { return s.Conns >= 1 }); err != nil {
		t.Fatal(err)
	}

	// Project A's transaction is stuck on its upstream; project B's goes through meanwhile.
	res := send(t, h.dial(), "noreply@b.example", []string{"x@dest.example"}, body, nil)
	if !res.delivered("x@dest.example") {
		t.Fatalf("project b not delivered while project a hangs: %+v", res)
	}
	select {
	case r := <-aDone:
		t.Fatalf("project a finished before its upstream was released: %+v", r)
	default:
	}

	hanging.Stop() // the hanging upstream drops its connections
	r := <-aDone
	var se *smtp.SMTPError
	if !errors.As(r.mail, &se) || se.Code/100 != 4 {
		t.Fatalf("project a: %v, want a 4xx", r.mail)
	}
}

func TestRateLimit(t *testing.T) {
	t.Parallel()
	up := fakeUpstream(t, upstreamtest.Options{}, "user@a.example")
	p := basicProject("a", "a.example", up)
	p.Limits.MessagesPerMinute = 1
	h := newHarness(t, Options{RateWait: 50 * time.Millisecond}, p)
	c := h.dial()
	if res := send(t, c, "noreply@a.example", []string{"x@dest.example"}, body, nil); !res.delivered("x@dest.example") {
		t.Fatalf("first message: %+v", res)
	}
	// The next slot is a minute away, beyond RateWait: deferred at once.
	res := send(t, c, "noreply@a.example", []string{"x@dest.example"}, body, nil)
	wantReply(t, "second MAIL", res.mail, 451, smtp.EnhancedCode{4, 7, 0}, "rate limit reached")
	if n := len(up.Messages()); n != 1 {
		t.Fatalf("%d messages delivered, want 1", n)
	}
}

func TestSizeLimits(t *testing.T) {
	t.Parallel()
	up := fakeUpstream(t, upstreamtest.Options{MaxMessageBytes: 500}, "user@a.example")
	p := basicProject("a", "a.example", up)
	p.Limits.MaxMessageBytes = 200
	h := newHarness(t, Options{MaxMessageBytes: 1000}, p)
	c := h.dial()
	if ok, v := c.Extension("SIZE"); !ok || v != "1000" {
		t.Fatalf("SIZE advertised as %q %v", v, ok)
	}
	big := body + strings.Repeat("x", 300) + "\r\n"
	tests := []struct {
		name string
		size int64
	}{
		{"over the server's limit", 2000},
		{"over the project's limit", 300},
	}
	for _, tc := range tests {
		res := send(t, c, "noreply@a.example", []string{"x@dest.example"}, big, &smtp.MailOptions{Size: tc.size})
		wantReply(t, tc.name, res.mail, 552, smtp.EnhancedCode{5, 3, 4}, "")
	}
	// Without SIZE the body itself is measured.
	res := send(t, c, "noreply@a.example", []string{"x@dest.example"}, big, nil)
	wantReply(t, "DATA over the project's limit", res.data["x@dest.example"], 552, smtp.EnhancedCode{5, 3, 4}, "")
	if n := len(up.Messages()); n != 0 {
		t.Fatalf("%d oversized messages delivered", n)
	}
	// The session is still good for a message that fits.
	if res := send(t, c, "noreply@a.example", []string{"x@dest.example"}, body, nil); !res.delivered("x@dest.example") {
		t.Fatalf("small message after the big ones: %+v", res)
	}
}

func TestLineLengthLimit(t *testing.T) {
	t.Parallel()
	up := fakeUpstream(t, upstreamtest.Options{}, "user@a.example")
	h := newHarness(t, Options{}, basicProject("a", "a.example", up))
	longest := body + strings.Repeat("x", maxLineLength-2) + "\r\n"
	if res := send(t, h.dial(), "noreply@a.example", []string{"x@dest.example"}, longest, nil); !res.delivered("x@dest.example") {
		t.Fatalf("a line of %d bytes: %+v", maxLineLength, res)
	}
	if msgs := up.Messages(); len(msgs) != 1 || string(msgs[0].Data) != longest {
		t.Fatalf("upstream got %d messages, want the one with the longest line intact", len(msgs))
	}
	// One byte more: the message is not relayed, and Postfix hears a temporary failure or loses
	// the connection, which it retries.
	tooLong := body + strings.Repeat("x", maxLineLength-1) + "\r\n"
	res := send(t, h.dial(), "noreply@a.example", []string{"x@dest.example"}, tooLong, nil)
	var se *smtp.SMTPError
	if err := res.data["x@dest.example"]; err == nil || errors.As(err, &se) && se.Code/100 != 4 {
		t.Fatalf("a line of %d bytes: %v, want a temporary failure", maxLineLength+1, err)
	}
	if n := len(up.Messages()); n != 1 {
		t.Fatalf("upstream got %d messages, want still 1", n)
	}
}

func TestTooManyRecipients(t *testing.T) {
	t.Parallel()
	up := fakeUpstream(t, upstreamtest.Options{}, "user@a.example")
	p := basicProject("a", "a.example", up)
	p.Limits.MaxRecipients = 2
	h := newHarness(t, Options{}, p)
	res := send(t, h.dial(), "noreply@a.example", []string{"1@dest.example", "2@dest.example", "3@dest.example"}, body, nil)
	wantReply(t, "third RCPT", res.rcpt["3@dest.example"], 452, smtp.EnhancedCode{4, 5, 3}, "too many recipients")
	if !res.delivered("1@dest.example") || !res.delivered("2@dest.example") {
		t.Fatalf("%+v", res)
	}
	if msgs := up.Messages(); len(msgs) != 1 || len(msgs[0].To) != 2 {
		t.Fatalf("upstream got %+v", msgs)
	}
}

func TestResetReleasesTheUpstreamConnection(t *testing.T) {
	t.Parallel()
	up := fakeUpstream(t, upstreamtest.Options{}, "user@a.example")
	p := basicProject("a", "a.example", up)
	p.Limits.MaxConnections = 1
	h := newHarness(t, Options{}, p)
	c := h.dial()
	if err := c.Mail("noreply@a.example", nil); err != nil {
		t.Fatal(err)
	}
	if err := c.Rcpt("x@dest.example", nil); err != nil {
		t.Fatal(err)
	}
	if err := c.Reset(); err != nil {
		t.Fatal(err)
	}
	// With one connection allowed, another session can only proceed if RSET gave it back.
	if res := send(t, h.dial(), "noreply@a.example", []string{"y@dest.example"}, body, nil); !res.delivered("y@dest.example") {
		t.Fatalf("after RSET: %+v", res)
	}
	// A session that ends in the middle of a transaction gives its connection back too.
	if err := c.Mail("noreply@a.example", nil); err != nil {
		t.Fatal(err)
	}
	c.Close()
	if res := send(t, h.dial(), "noreply@a.example", []string{"z@dest.example"}, body, nil); !res.delivered("z@dest.example") {
		t.Fatalf("after a session was dropped mid-transaction: %+v", res)
	}
	if msgs := up.Messages(); len(msgs) != 2 || msgs[0].To[0] != "y@dest.example" || msgs[1].To[0] != "z@dest.example" {
		t.Fatalf("upstream got %+v", msgs)
	}
}

func TestShutdownLetsTheTransactionInFlightFinish(t *testing.T) {
	t.Parallel()
	entered, release := make(chan struct{}, 1), make(chan struct{})
	var releaseOnce sync.Once
	releaseUpstream := func() { releaseOnce.Do(func() { close(release) }) }
	up := fakeUpstream(t, upstreamtest.Options{RejectData: func(upstreamtest.Message) *smtp.SMTPError {
		entered <- struct{}{}
		<-release
		return nil
	}}, "user@a.example")
	t.Cleanup(releaseUpstream)
	h := newHarness(t, Options{ShutdownTimeout: time.Hour}, basicProject("a", "a.example", up))

	// An idle session, spoken to by hand to see what the server says unasked.
	idle, err := net.Dial("unix", h.sock)
	if err != nil {
		t.Fatal(err)
	}
	defer idle.Close()
	idleR := bufio.NewReader(idle)
	fmt.Fprintf(idle, "LHLO postfix.test\r\n")
	for {
		line, err := idleR.ReadString('\n')
		if err != nil {
			t.Fatal(err)
		}
		if strings.HasPrefix(line, "250 ") {
			break
		}
	}

	busy := h.dial()
	done := make(chan result, 1)
	go func() { done <- send(t, busy, "noreply@a.example", []string{"x@dest.example"}, body, nil) }()
	<-entered // the message is at the upstream, waiting for its final reply

	h.cancel()
	// The idle session is told and closed; by then the listener no longer accepts.
	rest, _ := io.ReadAll(idleR)
	if !strings.HasPrefix(string(rest), "421 ") {
		t.Fatalf("idle session got %q at shutdown, want a 421", rest)
	}
	if _, err := net.Dial("unix", h.sock); err == nil {
		t.Fatal("still accepting after shutdown began")
	}
	releaseUpstream()
	if res := <-done; !res.delivered("x@dest.example") {
		t.Fatalf("the transaction in flight did not finish: %+v", res)
	}
	// The session closes after its transaction.
	if err := busy.Noop(); err == nil {
		t.Fatal("the busy session stayed open after its transaction during shutdown")
	}
	if err := <-h.served; err != nil {
		t.Fatalf("ServeLMTP: %v", err)
	}
	h.served <- nil // for the cleanup
}

func TestShutdownCutsOffAfterTheTimeout(t *testing.T) {
	t.Parallel()
	entered, release := make(chan struct{}, 1), make(chan struct{})
	up := fakeUpstream(t, upstreamtest.Options{RejectData: func(upstreamtest.Message) *smtp.SMTPError {
		entered <- struct{}{}
		<-release
		return nil
	}}, "user@a.example")
	t.Cleanup(func() { close(release) })
	h := newHarness(t, Options{ShutdownTimeout: time.Millisecond}, basicProject("a", "a.example", up))
	busy := h.dial()
	done := make(chan error, 1)
	go func() {
		busy.Mail("noreply@a.example", nil)
		busy.Rcpt("x@dest.example", nil)
		w, err := busy.Data()
		if err != nil {
			done <- err
			return
		}
		w.Write([]byte(body))
		done <- w.Close()
	}()
	<-entered
	h.cancel()
	if err := <-h.served; err != nil {
		t.Fatalf("ServeLMTP: %v", err)
	}
	h.served <- nil
	// Postfix sees the connection lost (and retries later), not a reply.
	if err := <-done; err == nil {
		t.Fatal("a reply arrived for a transaction cut off at shutdown")
	}
}

func TestNewReportsEveryProblem(t *testing.T) {
	t.Parallel()
	_, err := New(Options{MaxRecipients: -1, RateWait: -time.Second, Hostname: "two words"})
	if err == nil {
		t.Fatal("New accepted empty options")
	}
	for _, want := range []string{"Resolver", "Credentials", "Upstreams", "MaxRecipients", "RateWait", "Hostname"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error lacks %q: %v", want, err)
		}
	}
}

func TestSMTPUTF8IsPassedThrough(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name     string
		upstream bool // the upstream offers SMTPUTF8
	}{
		{"upstream offers SMTPUTF8", true},
		{"upstream lacks SMTPUTF8", false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			up := fakeUpstream(t, upstreamtest.Options{SMTPUTF8: tc.upstream}, "user@a.example")
			h := newHarness(t, Options{}, basicProject("a", "a.example", up))
			c := h.dial()
			if ok, _ := c.Extension("SMTPUTF8"); !ok {
				t.Fatal("SMTPUTF8 not advertised")
			}
			res := send(t, c, "noreply@a.example", []string{"jürgen@dest.example"}, body, &smtp.MailOptions{UTF8: true})
			if !tc.upstream {
				// The upstream said it cannot take it: a definite no, not a retry loop.
				wantReply(t, "MAIL", res.mail, 553, smtp.EnhancedCode{5, 6, 7}, "SMTPUTF8")
				return
			}
			if !res.delivered("jürgen@dest.example") {
				t.Fatalf("%+v", res)
			}
			if m := up.Messages(); len(m) != 1 || !m[0].Opts.UTF8 {
				t.Fatalf("upstream got %+v", m)
			}
		})
	}
}
