//go:build integration

package integration

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/postern/postern/integration/harness"
	"github.com/postern/postern/sidecar/project"
	"github.com/postern/postern/sidecar/secret"
	"github.com/postern/postern/sidecar/signin"
)

// OAuth 2.0 + XOAUTH2 end to end: the front Postfix routes the project's sender to Postern,
// Postern signs in to a Dovecot submission server with XOAUTH2, Dovecot checks every token at the
// identity provider (oidc-provider) by introspection and relays to the upstream Postfix's direct
// listener, which delivers into Maildirs. The mailbox owner signs in through Postern's sign-in
// pages in headless Chromium. Token records live in Vault, whose KV versions count the writes.

const (
	oauthMailbox   = "alice@client-a.test"   // the project's mailbox, its sender and IdP account
	oauthIntruder  = "mallory@client-a.test" // another account of the same IdP
	oauthRcpt      = "bob@dest.test"
	oauthProject   = "client-a-oauth"
	oauthClientID  = "postern-test"
	oauthPassword  = "password"
	oauthTokenPath = "postern/tokens/" + oauthProject
)

// oauthWorld is one complete set of real parts for OAuth tests.
type oauthWorld struct {
	e       *harness.Env
	idp     *harness.IdP
	sub     *harness.XOAUTH2Submission
	vault   *harness.Vault
	browser *harness.Browser
}

// oauthWorldOptions configure oauthStart.
type oauthWorldOptions struct {
	// accessTTL is the lifetime of the IdP's access tokens; zero means the IdP's default (5 min).
	accessTTL time.Duration
	// idleTimeout is Postern's upstream.idle_timeout; zero keeps the default (60 s). A short one
	// makes every message sign in anew, so that the upstream judges the current token each time.
	idleTimeout time.Duration
}

// oauthStart brings up Vault, the mail parts with Postern on the Vault store, the IdP with Postern's
// callback registered, the XOAUTH2 submission server and Chromium, and adds the OAuth project.
func oauthStart(t *testing.T, ctx context.Context, opts oauthWorldOptions) *oauthWorld {
	t.Helper()
	harness.Require(t)
	chromium := harness.RequireChromium(t)
	w := &oauthWorld{vault: harness.StartVault(t)}

	dir := t.TempDir()
	tokenFile := filepath.Join(dir, "vault-token")
	if err := os.WriteFile(tokenFile, []byte(w.vault.RootToken+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	extra := fmt.Sprintf("signin: {key_file: %s, link_ttl: 1h}\n", filepath.Join(dir, "signin.key"))
	if opts.idleTimeout > 0 {
		extra += fmt.Sprintf("upstream: {idle_timeout: %s}\n", opts.idleTimeout)
	}
	w.e = startEnv(t, harness.Options{PosternConfig: extra, PosternStore: w.vault.StoreYAML(tokenFile)})
	w.e.Secrets.Add("Vault root token", w.vault.RootToken)
	w.e.Secrets.AddFile("sign-in key", filepath.Join(dir, "signin.key"))
	w.e.Secrets.AddLazy("OAuth token", w.issuedTokens)

	client := harness.IdPDefaultClient()
	w.e.Secrets.Add("OAuth client secret", client.Secret.Reveal())
	client.RedirectURIs = []string{"http://" + w.e.Postern.AdminAddr + "/signin/callback"}
	w.idp = harness.StartIdP(t, harness.IdPOptions{Clients: []harness.IdPClient{client}, AccessTTL: opts.accessTTL})
	w.sub = harness.StartXOAUTH2Submission(t, harness.XOAUTH2SubmissionOptions{IdP: w.idp, RelayPort: w.e.Upstream.DirectPort})
	w.browser = harness.StartBrowser(t, harness.BrowserOptions{Path: chromium})

	caFile := filepath.Join(dir, "submission-ca.pem")
	if err := os.WriteFile(caFile, w.sub.CAPEM, 0o644); err != nil {
		t.Fatal(err)
	}
	_, port, _ := strings.Cut(w.sub.Addr, ":")
	args := []string{"project", "add",
		"--sender", oauthMailbox,
		"--host", "127.0.0.1", "--port", port, "--tls", "starttls", "--ca-file", caFile,
		"--username", oauthMailbox,
		"--auth", "oauth2", "--provider", "generic", "--client-id", client.ID, "--client-secret-stdin",
		"--scopes", harness.IdPScopes,
		"--auth-url", w.idp.AuthorizeURL, "--token-url", w.idp.TokenURL, "--revocation-url", w.idp.RevocationURL,
		"--issuer", w.idp.Issuer,
		oauthProject}
	if _, err := w.e.Postern.CLI(ctx, client.Secret.Reveal()+"\n", args...); err != nil {
		t.Fatalf("adding the OAuth project: %v", err)
	}
	if err := w.e.Postern.WaitRouted(ctx, oauthMailbox, true); err != nil {
		t.Fatal(err)
	}
	return w
}

// link makes a new sign-in link with `postern authorize-link`.
func (w *oauthWorld) link(t *testing.T, ctx context.Context) string {
	t.Helper()
	out, err := w.e.Postern.CLI(ctx, "", "authorize-link", "--ttl", "1h", oauthProject)
	if err != nil {
		t.Fatalf("postern authorize-link: %v", err)
	}
	link := strings.TrimSpace(out)
	if !strings.HasPrefix(link, "http://"+w.e.Postern.AdminAddr+"/signin?l=") {
		t.Fatalf("postern authorize-link printed a link to %q, want the admin listener's /signin", strings.SplitN(link, "?", 2)[0])
	}
	return link
}

// signIn goes through the sign-in with Chromium as login and returns the page it ended on.
func (w *oauthWorld) signIn(t *testing.T, ctx context.Context, link, login string) harness.SignInPage {
	t.Helper()
	pg, err := w.browser.SignIn(ctx, link, harness.BrowserSignIn{Login: login, Password: secret.New(oauthPassword)})
	if err != nil {
		t.Fatalf("signing in as %s with Chromium: %v", login, err)
	}
	t.Logf("sign-in as %s: %v -> %s (account %q, detail %q)", login, pg.Steps, pg.Outcome, pg.Account, pg.Detail)
	return pg
}

// signInOK signs the mailbox in and fails the test unless the page says it is signed in.
func (w *oauthWorld) signInOK(t *testing.T, ctx context.Context, link string) {
	t.Helper()
	pg := w.signIn(t, ctx, link, oauthMailbox)
	want := []string{"postern:landing", "idp:login", "idp:consent", "postern:" + signin.OutcomeSignedIn}
	if pg.Outcome != signin.OutcomeSignedIn || pg.Account != oauthMailbox || strings.Join(pg.Steps, " ") != strings.Join(want, " ") {
		t.Fatalf("sign-in as %s: pages %v, outcome %q, account %q, detail %q, advice %q; want %v and account %s",
			oauthMailbox, pg.Steps, pg.Outcome, pg.Account, pg.Detail, pg.Advice, want, oauthMailbox)
	}
}

// version is the KV version of the project's token record in Vault (0: none).
func (w *oauthWorld) version(t *testing.T, ctx context.Context) int {
	t.Helper()
	v, err := w.vault.KVVersion(ctx, oauthTokenPath)
	if err != nil {
		t.Fatalf("reading the token record's version: %v", err)
	}
	return v
}

// record reads one version of the project's token record from Vault (0: the current one).
func (w *oauthWorld) record(t *testing.T, ctx context.Context, version int) project.Token {
	t.Helper()
	tok, ok := w.recordAt(t, ctx, version)
	if !ok {
		t.Fatalf("the token record (version %d) is empty", version)
	}
	return tok
}

// recordAt is record, and false for a version without data (as the store writes when it creates
// or deletes a record).
func (w *oauthWorld) recordAt(t *testing.T, ctx context.Context, version int) (project.Token, bool) {
	t.Helper()
	tok, ok, err := w.readRecord(ctx, version)
	if err != nil {
		t.Fatal(err)
	}
	return tok, ok
}

// readRecord is recordAt without a test: false for a version without data.
func (w *oauthWorld) readRecord(ctx context.Context, version int) (project.Token, bool, error) {
	var out struct {
		Data struct {
			Data json.RawMessage `json:"data"`
		} `json:"data"`
	}
	path := "secret/data/" + oauthTokenPath
	if version > 0 {
		path += "?version=" + strconv.Itoa(version)
	}
	if _, err := w.vault.Request(ctx, http.MethodGet, path, "", nil, &out); err != nil {
		return project.Token{}, false, fmt.Errorf("reading the token record (version %d): %w", version, err)
	}
	if d := strings.TrimSpace(string(out.Data.Data)); d == "" || d == "null" || d == "{}" {
		return project.Token{}, false, nil
	}
	tok, err := project.UnmarshalStoredToken(out.Data.Data)
	if err != nil {
		return project.Token{}, false, fmt.Errorf("decoding the token record (version %d): %w", version, err)
	}
	return tok, true, nil
}

// issuedTokens returns every access and refresh token the record ever held, for the scan of the
// logs for secrets.
func (w *oauthWorld) issuedTokens() []string {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	n, err := w.vault.KVVersion(ctx, oauthTokenPath)
	if err != nil {
		return nil
	}
	var out []string
	for v := 1; v <= n; v++ {
		tok, ok, err := w.readRecord(ctx, v)
		if err != nil || !ok {
			continue
		}
		out = append(out, tok.AccessToken.Reveal(), tok.RefreshToken.Reveal())
	}
	return out
}

// refreshTokens returns the refresh tokens the record held from version from to version to, in
// order, each once (a write that is no refresh, such as a claim or the used link's nonce, keeps
// the refresh token). It fails the test if a replaced refresh token comes back.
func (w *oauthWorld) refreshTokens(t *testing.T, ctx context.Context, from, to int) []secret.Secret {
	t.Helper()
	var out []secret.Secret
	seen := map[string]int{}
	for v := max(from, 1); v <= to; v++ {
		rec, ok := w.recordAt(t, ctx, v)
		if !ok || rec.RefreshToken.IsZero() {
			continue
		}
		if len(out) > 0 && rec.RefreshToken.Equal(out[len(out)-1]) {
			continue
		}
		if prev, ok := seen[rec.RefreshToken.Reveal()]; ok {
			t.Errorf("token record version %d went back to the refresh token of version %d", v, prev)
		}
		seen[rec.RefreshToken.Reveal()] = v
		out = append(out, rec.RefreshToken)
	}
	return out
}

// waitRotated waits until the token record holds a refresh token other than prev (a refresh has
// completed and been written), and returns it.
func (w *oauthWorld) waitRotated(t *testing.T, ctx context.Context, prev secret.Secret) secret.Secret {
	t.Helper()
	for {
		if rec, ok := w.recordAt(t, ctx, 0); ok && !rec.RefreshToken.IsZero() && !rec.RefreshToken.Equal(prev) {
			return rec.RefreshToken
		}
		select {
		case <-ctx.Done():
			t.Fatalf("the stored refresh token did not change: %v", ctx.Err())
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// waitTokenDue waits until tok is past half its lifetime: due for a refresh, since the broker
// refreshes tokens.refresh_margin before expiry but never before half a token's life, and still
// usable for the other half less the broker's minimum validity.
func waitTokenDue(t *testing.T, ctx context.Context, tok project.Token) {
	t.Helper()
	if tok.UpdatedAt.IsZero() || !tok.UpdatedAt.Before(tok.Expiry) {
		t.Fatalf("the token record has no lifetime (obtained %v, expires %v)", tok.UpdatedAt, tok.Expiry)
	}
	due := tok.UpdatedAt.Add(tok.Expiry.Sub(tok.UpdatedAt)/2 + 250*time.Millisecond)
	select {
	case <-ctx.Done():
		t.Fatalf("waiting for the token to be due for a refresh: %v", ctx.Err())
	case <-time.After(time.Until(due)):
	}
}

// oauthStatus is the project's row of /api/v1/projects.
type oauthStatus struct {
	Name   string `json:"name"`
	State  string `json:"state"`
	Reason string `json:"reason"`
	Action string `json:"action"`
}

func (w *oauthWorld) status(t *testing.T, ctx context.Context) oauthStatus {
	t.Helper()
	body, err := w.e.Postern.Get(ctx, "/api/v1/projects")
	if err != nil {
		t.Fatal(err)
	}
	var out struct {
		Projects []oauthStatus `json:"projects"`
	}
	if err := json.Unmarshal([]byte(body), &out); err != nil {
		t.Fatalf("decoding /api/v1/projects: %v", err)
	}
	for _, p := range out.Projects {
		if p.Name == oauthProject {
			return p
		}
	}
	t.Fatalf("/api/v1/projects lists no project %s", oauthProject)
	return oauthStatus{}
}

// waitState waits until the status API shows the project in state.
func (w *oauthWorld) waitState(t *testing.T, ctx context.Context, state string) oauthStatus {
	t.Helper()
	for {
		s := w.status(t, ctx)
		if s.State == state {
			return s
		}
		select {
		case <-ctx.Done():
			t.Fatalf("the project stayed in state %q (%s), want %q: %v", s.State, s.Reason, state, ctx.Err())
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// send submits n messages from the project's sender to the front Postfix.
func (w *oauthWorld) send(t *testing.T, ctx context.Context, n int, subject string) []*harness.Mail {
	t.Helper()
	var mails []*harness.Mail
	for i := range n {
		m := &harness.Mail{From: oauthMailbox, To: []string{oauthRcpt}, Subject: fmt.Sprintf("%s %d", subject, i+1)}
		submit(t, ctx, w.e, m)
		mails = append(mails, m)
	}
	return mails
}

// delivered waits for every message in the recipient's mailbox and for the front's queue to empty,
// then checks that each arrived exactly once, through the XOAUTH2 submission server.
func (w *oauthWorld) delivered(t *testing.T, ctx context.Context, mails ...*harness.Mail) {
	t.Helper()
	for _, m := range mails {
		got, err := w.e.Upstream.WaitForMessage(ctx, oauthRcpt, harness.WithID(m.ID))
		if err != nil {
			t.Fatalf("%q: %v\nqueue: %s", m.Subject, err, w.queue(ctx))
		}
		if !got.PassedThrough("submission.test") {
			t.Errorf("%q was received by %v, want the XOAUTH2 submission server (submission.test) among them", m.Subject, got.ReceivedBy())
		}
	}
	if err := w.e.Front.WaitQueueEmpty(ctx); err != nil {
		t.Fatal(err)
	}
	for _, m := range mails {
		if n := countByID(t, w.e, oauthRcpt, m.ID); n != 1 {
			t.Errorf("%q arrived %d times, want exactly once", m.Subject, n)
		}
	}
}

func (w *oauthWorld) queue(ctx context.Context) string {
	q, err := w.e.Front.Queue(ctx)
	if err != nil {
		return err.Error()
	}
	var parts []string
	for _, m := range q {
		for _, r := range m.Recipients {
			parts = append(parts, fmt.Sprintf("%s: %s", m.QueueID, r.DelayReason))
		}
	}
	return fmt.Sprintf("%d queued %v", len(q), parts)
}

// idleConns is the number of idle upstream connections Postern's metrics show for the project.
func (w *oauthWorld) idleConns(t *testing.T, ctx context.Context) int {
	t.Helper()
	body, err := w.e.Postern.Get(ctx, "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	re := regexp.MustCompile(`(?m)^postern_upstream_connections\{project="` + oauthProject + `",state="idle"\} (\d+)`)
	m := re.FindStringSubmatch(body)
	if m == nil {
		return 0
	}
	n, _ := strconv.Atoi(m[1])
	return n
}

// waitNoIdleConns waits until the project has no idle upstream connection (with a short
// upstream.idle_timeout), so that the next message signs in anew.
func (w *oauthWorld) waitNoIdleConns(t *testing.T, ctx context.Context) {
	t.Helper()
	for w.idleConns(t, ctx) > 0 {
		select {
		case <-ctx.Done():
			t.Fatalf("idle upstream connections did not close: %v", ctx.Err())
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// logCount counts the lines of Postern's log that contain s.
func (w *oauthWorld) logCount(s string) int {
	n := 0
	for _, l := range strings.Split(w.e.Postern.Log(), "\n") {
		if strings.Contains(l, s) {
			n++
		}
	}
	return n
}

// Scenarios 4, 1 and 5: a sign-in as the wrong account is refused and stores nothing; the same
// link then signs the mailbox in, and mail flows through XOAUTH2; an access token the upstream
// refuses (dropped at the IdP while the grant stays valid) costs one refresh and no bounce.
func TestOAuthSignInMailFlowsAndRejectedTokenIsRefreshed(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	// An hour-long token is never within the broker's refresh margin (10 minutes): no refresh
	// happens unless one is forced. Short idle connections make every message sign in anew.
	w := oauthStart(t, ctx, oauthWorldOptions{accessTTL: time.Hour, idleTimeout: 100 * time.Millisecond})
	link := w.link(t, ctx)

	t.Run("wrong account is refused and nothing is stored", func(t *testing.T) {
		pg := w.signIn(t, ctx, link, oauthIntruder)
		if pg.Outcome != signin.OutcomeWrongAccount {
			t.Fatalf("sign-in as %s ended on %q (%s), want %q", oauthIntruder, pg.Outcome, pg.Title, signin.OutcomeWrongAccount)
		}
		if pg.Account != oauthIntruder || pg.Mailbox != oauthMailbox {
			t.Errorf("wrong-account page names account %q and mailbox %q, want %s and %s", pg.Account, pg.Mailbox, oauthIntruder, oauthMailbox)
		}
		if v := w.version(t, ctx); v != 0 {
			t.Errorf("a token record exists after the refused sign-in (version %d)", v)
		}
	})

	var signedIn time.Time
	t.Run("the same link signs the mailbox in and mail flows", func(t *testing.T) {
		w.signInOK(t, ctx, link)
		signedIn = time.Now()
		// The sign-in writes the grant, then the used link's nonce.
		base := w.version(t, ctx)
		if base < 1 {
			t.Fatalf("no token record after the sign-in")
		}
		rec := w.record(t, ctx, 0)
		if rec.Account != oauthMailbox || rec.State != project.TokenOK || rec.AccessToken.IsZero() || rec.RefreshToken.IsZero() {
			t.Fatalf("token record: account %q, state %q, access token set %v, refresh token set %v",
				rec.Account, rec.State, !rec.AccessToken.IsZero(), !rec.RefreshToken.IsZero())
		}
		if s := w.status(t, ctx); s.State != "ok" {
			t.Errorf("status %q (%s), want ok", s.State, s.Reason)
		}
		mails := w.send(t, ctx, 2, "signed in")
		w.delivered(t, ctx, mails...)
		if rts := w.refreshTokens(t, ctx, base, w.version(t, ctx)); len(rts) != 1 {
			t.Errorf("%d refresh tokens stored after sending with an hour-long token, want 1 (no refresh)", len(rts))
		}
		// The link works once.
		pg, err := w.browser.SignIn(ctx, link, harness.BrowserSignIn{Login: oauthMailbox, Password: secret.New(oauthPassword)})
		if err != nil || pg.Outcome != signin.OutcomeLinkUsed {
			t.Errorf("opening the used link again: outcome %q, err %v; want %q", pg.Outcome, err, signin.OutcomeLinkUsed)
		}
	})
	if t.Failed() {
		return
	}

	t.Run("token refused upstream: one refresh, delivered, no bounce", func(t *testing.T) {
		before := w.version(t, ctx)
		rec := w.record(t, ctx, 0)
		if err := w.idp.DropAccessToken(ctx, rec.AccessToken); err != nil {
			t.Fatalf("dropping the access token at the IdP: %v", err)
		}
		if in, err := w.idp.Introspect(ctx, rec.AccessToken); err != nil || in.Active {
			t.Fatalf("the dropped access token: active %v, err %v; want inactive", in.Active, err)
		}
		// No pooled connection may carry the message without a new AUTH.
		w.waitNoIdleConns(t, ctx)
		// The broker answers a forced refresh within ForceWindow (5 s) of the last new token with
		// that token: wait that out, so the first refusal leads to a real refresh.
		time.Sleep(time.Until(signedIn.Add(6 * time.Second)))
		retriesBefore := w.logCount("the upstream refused the credential: trying a fresh one")

		mails := w.send(t, ctx, 1, "after revocation")
		w.delivered(t, ctx, mails...)
		sent := mails[0]
		after := w.version(t, ctx)
		if rts := w.refreshTokens(t, ctx, before, after); len(rts) != 2 {
			t.Errorf("token record versions %d to %d hold %d refresh tokens, want the old one and one new (one refresh)", before, after, len(rts))
		}
		if cur := w.record(t, ctx, 0); cur.AccessToken.Equal(rec.AccessToken) || cur.State != project.TokenOK {
			t.Errorf("token record after the refresh: state %q, access token renewed %v", cur.State, !cur.AccessToken.Equal(rec.AccessToken))
		}
		if n := w.logCount("the upstream refused the credential: trying a fresh one") - retriesBefore; n != 1 {
			t.Errorf("postern retried with a fresh token %d times, want once", n)
		}
		id := frontQueueID(t, w, sent)
		lines := deliveryLines(w.e, id)
		if len(lines) != 1 || !strings.Contains(lines[0], "status=sent") {
			t.Errorf("the front's delivery lines for %s: %q, want one status=sent (no deferral, no bounce)", id, lines)
		}
		if bounced := w.e.Front.LogLines(regexp.MustCompile(`status=bounced`)); len(bounced) > 0 {
			t.Errorf("the front bounced mail: %q", bounced)
		}
		if s := w.status(t, ctx); s.State != "ok" {
			t.Errorf("status %q (%s), want ok", s.State, s.Reason)
		}
	})
}

// oauthQueuedID returns the Message-ID marker of a message in the front's queue, from the front's
// log ("" when not logged yet).
func oauthQueuedID(t *testing.T, ctx context.Context, w *oauthWorld, queueID string) string {
	t.Helper()
	re := regexp.MustCompile(`\b` + queueID + `: message-id=<([0-9a-f]+)@postern\.test>`)
	lines := w.e.Front.LogLines(re)
	if len(lines) == 0 {
		return ""
	}
	return re.FindStringSubmatch(lines[0])[1]
}

// frontQueueID finds the front Postfix's queue ID of a message from its Message-ID in the log.
func frontQueueID(t *testing.T, w *oauthWorld, m *harness.Mail) string {
	t.Helper()
	re := regexp.MustCompile(`\b([0-9A-F]{6,}): message-id=<` + regexp.QuoteMeta(m.ID) + `@postern\.test>`)
	lines := w.e.Front.LogLines(re)
	if len(lines) == 0 {
		t.Fatalf("no queue ID in the front's log for %q", m.Subject)
	}
	return re.FindStringSubmatch(lines[0])[1]
}

// Scenario 2: access tokens live 20 s, so each is due for a refresh after 10 s and usable for 5 s
// more; a use in that window refreshes in the background. Each rotated refresh token is written
// to Vault (a new KV version each time), mail keeps flowing, and a delivery never waits on a
// refresh: with the IdP hung, a message still leaves at its first attempt.
func TestOAuthTokensRotateWithoutDelayingMail(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	w := oauthStart(t, ctx, oauthWorldOptions{accessTTL: 20 * time.Second})
	w.signInOK(t, ctx, w.link(t, ctx))
	signedIn := w.record(t, ctx, 0).RefreshToken

	waitTokenDue(t, ctx, w.record(t, ctx, 0))
	m1 := w.send(t, ctx, 1, "rotation")
	w.delivered(t, ctx, m1...)
	w.waitRotated(t, ctx, signedIn)

	// The IdP hangs: a refresh started now cannot finish, and the message must not wait for it.
	waitTokenDue(t, ctx, w.record(t, ctx, 0))
	if err := w.idp.Pause(); err != nil {
		t.Fatal(err)
	}
	resumed := false
	resume := func() {
		if !resumed {
			resumed = true
			if err := w.idp.Resume(); err != nil {
				t.Error(err)
			}
		}
	}
	t.Cleanup(resume)
	hung := w.record(t, ctx, 0).RefreshToken
	m2 := w.send(t, ctx, 1, "rotation, IdP hung")
	w.delivered(t, ctx, m2...)
	if lines := deliveryLines(w.e, frontQueueID(t, w, m2[0])); len(lines) != 1 || !strings.Contains(lines[0], "status=sent") {
		t.Errorf("with the IdP hung, the front's delivery lines are %q, want one status=sent (the first attempt)", lines)
	}
	if cur := w.record(t, ctx, 0); !cur.RefreshToken.Equal(hung) {
		t.Errorf("the stored refresh token changed while the IdP was hung")
	}
	resume()
	after := w.waitRotated(t, ctx, hung)

	waitTokenDue(t, ctx, w.record(t, ctx, 0))
	m3 := w.send(t, ctx, 2, "rotation, after")
	w.delivered(t, ctx, m3...)
	w.waitRotated(t, ctx, after)
	last := w.version(t, ctx)

	// Every refresh wrote its rotated refresh token, and a replaced refresh token never comes back.
	// The IdP revokes the grant when a spent refresh token is presented again, so refreshes that
	// kept succeeding also mean none was replayed.
	rts := w.refreshTokens(t, ctx, 1, last)
	t.Logf("%d token record versions, %d refresh tokens in turn", last, len(rts))
	if len(rts) < 4 {
		t.Errorf("%d refresh tokens stored in turn, want at least 4 (the sign-in's, and one after each round of mail)", len(rts))
	}
	if s := w.status(t, ctx); s.State != "ok" {
		t.Errorf("status %q (%s), want ok", s.State, s.Reason)
	}
}

// Scenario 3: the grant is revoked at the IdP; the next refresh gets invalid_grant, the project
// needs re-authorisation, and Postfix holds new mail with a 4.7.0 reason saying so. The owner signs
// in again through a new link, and every held message arrives exactly once.
func TestOAuthRevokedGrantHoldsMailUntilSignedInAgain(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	w := oauthStart(t, ctx, oauthWorldOptions{idleTimeout: 100 * time.Millisecond})
	first := w.link(t, ctx)
	w.signInOK(t, ctx, first)
	m1 := w.send(t, ctx, 1, "before revocation")
	w.delivered(t, ctx, m1...)

	revoked := time.Now()
	res, err := w.idp.Revoke(ctx, oauthMailbox)
	if err != nil {
		t.Fatal(err)
	}
	if res.Grants < 1 {
		t.Fatalf("the IdP revoked %d grants of %s, want at least 1", res.Grants, oauthMailbox)
	}
	// A pooled connection signed in before the revocation would still carry mail: let it close.
	w.waitNoIdleConns(t, ctx)
	held := w.send(t, ctx, 1, "held, first")
	s := w.waitState(t, ctx, "needs_reauth")
	t.Logf("status after revocation: %s: %s (%s)", s.State, s.Reason, s.Action)
	if !strings.Contains(s.Reason, "invalid_grant") || !strings.Contains(s.Action, "authorize-link") {
		t.Errorf("needs_reauth reason %q, action %q: want invalid_grant and a pointer to postern authorize-link", s.Reason, s.Action)
	}
	if rec := w.record(t, ctx, 0); rec.State != project.TokenNeedsReauth {
		t.Errorf("token record state %q, want %q", rec.State, project.TokenNeedsReauth)
	}
	// While the broker still holds an access token that is valid by its expiry, a message it is
	// refused for within ForceWindow (5 s) of the last new token is deferred as "refused the
	// credentials"; after that, as "needs re-authorisation". The messages below come after it.
	time.Sleep(time.Until(revoked.Add(6 * time.Second)))
	later := w.send(t, ctx, 2, "held")
	held = append(held, later...)

	reasons := map[string]string{} // Message-ID -> delay reason
	_, err = w.e.Front.WaitQueue(ctx, func(q []harness.QueuedMessage) bool {
		clear(reasons)
		for _, m := range q {
			if id := oauthQueuedID(t, ctx, w, m.QueueID); id != "" && len(m.Recipients) == 1 {
				reasons[id] = m.Recipients[0].DelayReason
			}
		}
		for _, m := range held {
			if !strings.Contains(reasons[m.ID], "4.7.0") {
				return false
			}
		}
		for _, m := range later {
			if !strings.Contains(reasons[m.ID], "needs re-authorisation") {
				return false
			}
		}
		return true
	})
	if err != nil {
		t.Fatalf("want %d messages deferred with 4.7.0, the last %d with needs re-authorisation: %v", len(held), len(later), err)
	}
	for _, m := range held {
		t.Logf("held %q: %s", m.Subject, reasons[m.ID])
	}
	for _, m := range held {
		if n := countByID(t, w.e, oauthRcpt, m.ID); n != 0 {
			t.Errorf("%q arrived %d times while the grant was revoked", m.Subject, n)
		}
	}

	second := w.link(t, ctx)
	if second == first {
		t.Fatal("postern authorize-link printed the same link twice")
	}
	w.signInOK(t, ctx, second)
	if s := w.status(t, ctx); s.State != "ok" {
		t.Errorf("status after the new sign-in %q (%s), want ok", s.State, s.Reason)
	}
	stop := w.e.Front.KeepFlushing(ctx, 2*time.Second)
	defer stop()
	w.delivered(t, ctx, append(m1, held...)...)
	if bounced := w.e.Front.LogLines(regexp.MustCompile(`status=bounced`)); len(bounced) > 0 {
		t.Errorf("the front bounced mail: %q", bounced)
	}
}
