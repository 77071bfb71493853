package credential_test

import (
	"context"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/emersion/go-smtp"

	"github.com/postern/postern/sidecar/credential"
	"github.com/postern/postern/sidecar/oauth/oauthtest"
	"github.com/postern/postern/sidecar/project"
	"github.com/postern/postern/sidecar/store/filestore"
	"github.com/postern/postern/sidecar/token"
	"github.com/postern/postern/sidecar/upstream"
	"github.com/postern/postern/sidecar/upstream/upstreamtest"
	"github.com/postern/postern/sidecar/xoauth2"
)

const mailbox = "noreply@client-a.example"

// oauthEnv is one OAuth project signed in against an in-process identity provider, with an
// upstream that validates XOAUTH2 tokens with that provider, except the ones refuse says no to.
type oauthEnv struct {
	idp    *oauthtest.Server
	up     *upstreamtest.Server
	broker *token.Broker
	creds  *credential.Manager
	pools  *upstream.Pools
	p      project.Project
	first  string // the access token of the sign-in
	refuse func(tok string) bool
}

func newOAuthEnv(t *testing.T) *oauthEnv {
	t.Helper()
	e := &oauthEnv{refuse: func(string) bool { return false }}
	e.idp = oauthtest.New(t, oauthtest.Options{})
	e.up = upstreamtest.NewServer(t, upstreamtest.Options{Mechanisms: map[string]upstreamtest.Mechanism{
		xoauth2.Mechanism: upstreamtest.XOAUTH2{Direct: true, Check: func(user, tok string) bool {
			acct, ok := e.idp.Valid(tok)
			return ok && user == mailbox && acct == mailbox && !e.refuse(tok)
		}}.Mechanism(),
	}})
	dir := t.TempDir()
	st, err := filestore.Open(t.Context(), filestore.Options{Path: dir + "/store.db", KeyFile: dir + "/store.key", Create: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	e.p = project.Project{Name: "client-a", Enabled: true, Senders: []string{mailbox}, Upstream: e.up.Upstream(),
		Auth: project.Auth{Type: project.AuthOAuth2, Username: mailbox, OAuth: e.idp.OAuth("authorization_code", "smtp")}}
	e.broker = token.New(token.Options{Store: st, Instance: "test"})
	t.Cleanup(e.broker.Close)
	tok := e.idp.Grant(mailbox)
	if err := e.broker.Store(t.Context(), e.p, tok, token.SignIn{Account: mailbox}); err != nil {
		t.Fatal(err)
	}
	e.first = tok.AccessToken
	e.creds = credential.New(credential.Options{OAuth: e.broker})
	e.pools = upstream.NewPools(upstream.Options{LocalName: "postern.test"})
	t.Cleanup(func() { e.pools.Close() })
	return e
}

// deliver sends one message through the one sign-in, as a delivery does.
func (e *oauthEnv) deliver(ctx context.Context, to string) error {
	var conn *upstream.Conn
	err := e.creds.SignIn(ctx, e.p, func(a upstream.Auth) (err error) {
		conn, err = e.pools.Acquire(ctx, e.p, a)
		return err
	})
	if err != nil {
		return err
	}
	err = conn.Mail(ctx, mailbox, &smtp.MailOptions{})
	if err == nil {
		err = conn.Rcpt(ctx, to, nil)
	}
	if err == nil {
		err = conn.Data(ctx, strings.NewReader("Subject: hello\r\n\r\nhello\r\n"))
	}
	conn.Release()
	return err
}

// TestRefusedFreshTokenIsRenewedOnce: the identity provider drops the token it has just issued
// (the upstream refuses it), and 20 messages go at once. The refusal is decided per token, not by
// the time since the last refresh: one renewal, shared by every delivery refused with that token,
// and all 20 are delivered.
func TestRefusedFreshTokenIsRenewedOnce(t *testing.T) {
	t.Parallel()
	e := newOAuthEnv(t)
	e.refuse = func(tok string) bool { return tok == e.first }
	before := e.idp.Requests()

	const messages = 20
	errs := make([]error, messages)
	var wg sync.WaitGroup
	for i := range messages {
		wg.Go(func() { errs[i] = e.deliver(t.Context(), "rcpt@dest.example") })
	}
	wg.Wait()
	deferred := 0
	for _, err := range errs {
		if err != nil {
			deferred++
			t.Log(err)
		}
	}
	if deferred > 0 || len(e.up.Messages()) != messages {
		t.Fatalf("%d of %d messages deferred, %d delivered", deferred, messages, len(e.up.Messages()))
	}
	if n := e.idp.Requests() - before; n != 1 {
		t.Fatalf("%d token refreshes, want one renewal", n)
	}
	if s := e.broker.Status(e.p.Name); !s.Healthy() {
		t.Fatalf("status %+v after the renewed token was accepted", s)
	}
}

// TestHealthyAgainOnceAccepted: a project whose token the upstream refused (after the one
// renewal) shows unhealthy, and healthy again as soon as the upstream accepts its token, with no
// new sign-in.
func TestHealthyAgainOnceAccepted(t *testing.T) {
	t.Parallel()
	e := newOAuthEnv(t)
	var refusing atomic.Bool
	refusing.Store(true)
	e.refuse = func(string) bool { return refusing.Load() }

	err := e.deliver(t.Context(), "rcpt@dest.example")
	if !credential.Refused(err) {
		t.Fatalf("delivery while the upstream refuses every token: %v", err)
	}
	if s := e.broker.Status(e.p.Name); s.Healthy() || s.Rejected == "" {
		t.Fatalf("status after a refusal %+v, want unhealthy", s)
	}

	refusing.Store(false) // say, SMTP AUTH was enabled for the mailbox
	if err := e.deliver(t.Context(), "rcpt@dest.example"); err != nil {
		t.Fatalf("delivery once the upstream accepts: %v", err)
	}
	if s := e.broker.Status(e.p.Name); !s.Healthy() {
		t.Fatalf("status %+v: still unhealthy although the upstream accepts the token and mail flows", s)
	}
}
