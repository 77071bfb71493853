//go:build integration

package integration

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/postern/postern/integration/harness"
	"github.com/postern/postern/sidecar/secret"
)

// These tests check the OAuth test infrastructure itself: a real authorization server
// (oidc-provider) and a real XOAUTH2-validating submission server (Dovecot), driven by hand-written
// protocol exchanges so that they do not depend on Postern's own client code.

func TestOAuthIdPCodeFlowAndRotation(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	idp := harness.StartIdP(t, harness.IdPOptions{AccessTTL: 5 * time.Second})

	tok, err := idp.SignIn(ctx, harness.IdPSignInOptions{Login: "alice@client-a.test", Password: secret.New("password")})
	if err != nil {
		t.Fatalf("sign-in: %v", err)
	}
	if tok.AccessToken.IsZero() || tok.RefreshToken.IsZero() || tok.IDToken.IsZero() {
		t.Fatalf("want access, refresh and id tokens, got scope %q", tok.Scope)
	}
	if tok.Email != "alice@client-a.test" {
		t.Errorf("id_token email = %q, want alice@client-a.test", tok.Email)
	}
	if !strings.Contains(" "+tok.Scope+" ", " smtp ") {
		t.Errorf("scope %q lacks smtp", tok.Scope)
	}
	if tok.ExpiresIn <= 0 || tok.ExpiresIn > 5*time.Second {
		t.Errorf("expires_in = %s, want at most the configured 5s", tok.ExpiresIn)
	}
	t.Logf("token response: type %s, scope %q, access token %d chars", tok.TokenType, tok.Scope, len(tok.AccessToken.Reveal()))

	in, err := idp.Introspect(ctx, tok.AccessToken)
	if err != nil {
		t.Fatalf("introspect: %v", err)
	}
	if !in.Active || in.Email != "alice@client-a.test" || in.Sub != "alice@client-a.test" || in.ClientID != harness.IdPDefaultClientID {
		t.Errorf("introspection = %+v, want active token of alice for %s", in, harness.IdPDefaultClientID)
	}

	// Rotation: every refresh returns a new refresh token.
	first := tok.RefreshToken
	second, err := idp.Refresh(ctx, "", first)
	if err != nil {
		t.Fatalf("first refresh: %v", err)
	}
	if second.RefreshToken.IsZero() || second.RefreshToken.Equal(first) {
		t.Fatalf("first refresh did not rotate the refresh token")
	}
	if second.AccessToken.Equal(tok.AccessToken) {
		t.Errorf("refresh returned the same access token")
	}
	third, err := idp.Refresh(ctx, "", second.RefreshToken)
	if err != nil {
		t.Fatalf("second refresh: %v", err)
	}
	if third.RefreshToken.IsZero() || third.RefreshToken.Equal(second.RefreshToken) {
		t.Fatalf("second refresh did not rotate the refresh token")
	}

	// Replaying a spent refresh token fails and revokes the whole grant (reuse detection).
	_, err = idp.Refresh(ctx, "", first)
	if !harness.IdPIsInvalidGrant(err) {
		t.Fatalf("replayed refresh token: err = %v, want invalid_grant", err)
	}
	t.Logf("replayed refresh token: %v", err)
	_, err = idp.Refresh(ctx, "", third.RefreshToken)
	if !harness.IdPIsInvalidGrant(err) {
		t.Fatalf("newest refresh token after a replay: err = %v, want invalid_grant (grant revoked)", err)
	}
	t.Logf("newest refresh token after the replay: %v", err)
	in, err = idp.Introspect(ctx, third.AccessToken)
	if err != nil {
		t.Fatalf("introspect: %v", err)
	}
	if in.Active {
		t.Errorf("access token of the revoked grant is still active")
	}
}

func TestOAuthIdPRefusesWrongPassword(t *testing.T) {
	t.Parallel()
	idp := harness.StartIdP(t, harness.IdPOptions{})
	_, err := idp.SignIn(context.Background(), harness.IdPSignInOptions{Login: "alice@client-a.test", Password: secret.New("wrong")})
	if err == nil || !strings.Contains(err.Error(), "sign-in refused") {
		t.Fatalf("sign-in with a wrong password: err = %v, want sign-in refused", err)
	}
}

func TestOAuthIdPRevocation(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	idp := harness.StartIdP(t, harness.IdPOptions{})
	signIn := func(t *testing.T, login string) harness.IdPTokens {
		t.Helper()
		tok, err := idp.SignIn(ctx, harness.IdPSignInOptions{Login: login, Password: secret.New("password")})
		if err != nil {
			t.Fatalf("sign-in %s: %v", login, err)
		}
		return tok
	}

	t.Run("admin route revokes every grant of the account", func(t *testing.T) {
		alice1 := signIn(t, "alice@client-a.test")
		alice2 := signIn(t, "alice@client-a.test")
		mallory := signIn(t, "mallory@client-a.test")
		res, err := idp.Revoke(ctx, "alice@client-a.test")
		if err != nil {
			t.Fatalf("revoke: %v", err)
		}
		if res.Grants != 2 {
			t.Errorf("revoked %d grants, want 2", res.Grants)
		}
		for name, rt := range map[string]secret.Secret{"first": alice1.RefreshToken, "second": alice2.RefreshToken} {
			if _, err := idp.Refresh(ctx, "", rt); !harness.IdPIsInvalidGrant(err) {
				t.Errorf("%s grant of alice after revoke: err = %v, want invalid_grant", name, err)
			}
		}
		in, err := idp.Introspect(ctx, alice1.AccessToken)
		if err != nil {
			t.Fatalf("introspect: %v", err)
		}
		if in.Active {
			t.Errorf("alice's access token is still active after revoke")
		}
		if _, err := idp.Refresh(ctx, "", mallory.RefreshToken); err != nil {
			t.Errorf("mallory's grant was touched: %v", err)
		}
	})

	t.Run("revocation endpoint revokes the grant of a refresh token", func(t *testing.T) {
		tok := signIn(t, "alice@client-a.test")
		if err := idp.RevokeToken(ctx, "", tok.RefreshToken, "refresh_token"); err != nil {
			t.Fatalf("revoke token: %v", err)
		}
		if _, err := idp.Refresh(ctx, "", tok.RefreshToken); !harness.IdPIsInvalidGrant(err) {
			t.Errorf("refresh after revocation: err = %v, want invalid_grant", err)
		}
		in, err := idp.Introspect(ctx, tok.AccessToken)
		if err != nil {
			t.Fatalf("introspect: %v", err)
		}
		if in.Active {
			t.Errorf("access token is still active after its refresh token was revoked")
		}
	})
}

func TestOAuthXOAUTH2Submission(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	sink := startOAuthSink(t)
	idp := harness.StartIdP(t, harness.IdPOptions{AccessTokenBits: 24000})
	sub := harness.StartXOAUTH2Submission(t, harness.XOAUTH2SubmissionOptions{IdP: idp, RelayPort: sink.port})

	alice, err := idp.SignIn(ctx, harness.IdPSignInOptions{Login: "alice@client-a.test", Password: secret.New("password")})
	if err != nil {
		t.Fatalf("sign-in: %v", err)
	}
	if n := len(alice.AccessToken.Reveal()); n < 3000 {
		t.Fatalf("access token is %d characters, want a Microsoft-sized one (about 4000)", n)
	}

	t.Run("valid token sends mail", func(t *testing.T) {
		c := dialOAuthSubmission(t, sub, "127.0.0.1")
		c.startTLS(t, sub)
		r := c.authXOAUTH2(t, "alice@client-a.test", alice.AccessToken)
		if r.code != 235 {
			t.Fatalf("AUTH XOAUTH2 = %d %q, want 235", r.code, r.lines)
		}
		t.Logf("AUTH XOAUTH2 with a %d-character token: %d %s", len(alice.AccessToken.Reveal()), r.code, r.lines[len(r.lines)-1])
		c.expect(t, "MAIL FROM:<alice@client-a.test>", 250)
		c.expect(t, "RCPT TO:<bob@example.test>", 250)
		c.expect(t, "DATA", 354)
		c.expect(t, "From: alice@client-a.test\r\nTo: bob@example.test\r\nSubject: xoauth2 infra\r\n\r\nhello through dovecot\r\n.", 250)
		c.expect(t, "QUIT", 221)
		msg := sink.wait(t)
		if msg.from != "alice@client-a.test" || len(msg.to) != 1 || msg.to[0] != "bob@example.test" || !strings.Contains(msg.data, "hello through dovecot") {
			t.Errorf("relayed message = %+v", msg)
		}
	})

	refused := []struct {
		name  string
		user  string
		token secret.Secret
	}{
		{name: "garbage token", user: "alice@client-a.test", token: secret.New("not-a-token")},
		{name: "token of another mailbox", user: "mallory@client-a.test", token: alice.AccessToken},
	}
	for _, tc := range refused {
		t.Run(tc.name+" is refused", func(t *testing.T) {
			c := dialOAuthSubmission(t, sub, "127.0.0.1")
			c.startTLS(t, sub)
			r := c.authXOAUTH2(t, tc.user, tc.token)
			t.Logf("%s: challenge %s, then %d %q", tc.name, r.challenge, r.code, r.lines)
			r.refused(t)
		})
	}

	t.Run("revoked grant's token is refused", func(t *testing.T) {
		mallory, err := idp.SignIn(ctx, harness.IdPSignInOptions{Login: "mallory@client-a.test", Password: secret.New("password")})
		if err != nil {
			t.Fatalf("sign-in: %v", err)
		}
		if _, err := idp.Revoke(ctx, "mallory@client-a.test"); err != nil {
			t.Fatalf("revoke: %v", err)
		}
		c := dialOAuthSubmission(t, sub, "127.0.0.1")
		c.startTLS(t, sub)
		c.authXOAUTH2(t, "mallory@client-a.test", mallory.AccessToken).refused(t)
		if _, err := idp.Refresh(ctx, "", mallory.RefreshToken); !harness.IdPIsInvalidGrant(err) {
			t.Errorf("refresh after revoke: err = %v, want invalid_grant", err)
		}
	})

	t.Run("no AUTH before STARTTLS from another address", func(t *testing.T) {
		c := dialOAuthSubmission(t, sub, "127.0.0.2")
		ext := c.ehlo(t)
		t.Logf("EHLO before TLS from 127.0.0.2: %q", ext)
		for _, l := range ext {
			if strings.HasPrefix(strings.ToUpper(l), "AUTH") {
				t.Errorf("AUTH offered before STARTTLS: %q", l)
			}
		}
		code, lines := c.cmd(t, "AUTH XOAUTH2")
		t.Logf("AUTH before STARTTLS from 127.0.0.2: %d %q", code, lines)
		if code/100 != 5 {
			t.Errorf("AUTH before STARTTLS = %d %q, want 5xx", code, lines)
		}
		c.startTLS(t, sub)
		ext = c.ehlo(t)
		if !strings.Contains(strings.Join(ext, "\n"), "XOAUTH2") {
			t.Errorf("AUTH XOAUTH2 not offered after STARTTLS: %q", ext)
		}
	})

	t.Run("127.0.0.1 to 127.0.0.1 counts as secure", func(t *testing.T) {
		// Dovecot's own rule (client address == server address): AUTH is offered before STARTTLS.
		c := dialOAuthSubmission(t, sub, "127.0.0.1")
		ext := c.ehlo(t)
		if !strings.Contains(strings.Join(ext, "\n"), "AUTH XOAUTH2") {
			t.Errorf("EHLO before TLS from 127.0.0.1 = %q, want AUTH offered", ext)
		}
	})

	t.Run("IdP down is a temporary failure", func(t *testing.T) {
		tok, err := idp.SignIn(ctx, harness.IdPSignInOptions{Login: "alice@client-a.test", Password: secret.New("password")})
		if err != nil {
			t.Fatalf("sign-in: %v", err)
		}
		idp.Stop()
		c := dialOAuthSubmission(t, sub, "127.0.0.1")
		c.startTLS(t, sub)
		r := c.authXOAUTH2(t, "alice@client-a.test", tok.AccessToken)
		t.Logf("IdP down: %d %q", r.code, r.lines)
		if r.code != 454 || !strings.HasPrefix(r.lines[len(r.lines)-1], "4.7.0") {
			t.Fatalf("AUTH XOAUTH2 with the IdP down = %d %q, want 454 4.7.0", r.code, r.lines)
		}
	})
}

func TestOAuthXOAUTH2ExpiredToken(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	sink := startOAuthSink(t)
	idp := harness.StartIdP(t, harness.IdPOptions{AccessTTL: 2 * time.Second})
	sub := harness.StartXOAUTH2Submission(t, harness.XOAUTH2SubmissionOptions{IdP: idp, RelayPort: sink.port})

	tok, err := idp.SignIn(ctx, harness.IdPSignInOptions{Login: "alice@client-a.test", Password: secret.New("password")})
	if err != nil {
		t.Fatalf("sign-in: %v", err)
	}
	c := dialOAuthSubmission(t, sub, "127.0.0.1")
	c.startTLS(t, sub)
	// The token is accepted while it lives; a machine too busy to ask in time only skips this half.
	if time.Until(tok.Expiry) > time.Second {
		if r := c.authXOAUTH2(t, "alice@client-a.test", tok.AccessToken); r.code != 235 && time.Now().Before(tok.Expiry) {
			t.Fatalf("AUTH XOAUTH2 with a live token = %d %q, want 235", r.code, r.lines)
		}
	}

	// Waiting out the token's lifetime is the behaviour under test, not a timing assertion.
	time.Sleep(time.Until(tok.Expiry) + 1500*time.Millisecond)
	c = dialOAuthSubmission(t, sub, "127.0.0.1")
	c.startTLS(t, sub)
	r := c.authXOAUTH2(t, "alice@client-a.test", tok.AccessToken)
	t.Logf("expired token: challenge %s, then %d %q", r.challenge, r.code, r.lines)
	r.refused(t)

	fresh, err := idp.Refresh(ctx, "", tok.RefreshToken)
	if err != nil {
		t.Fatalf("refresh after expiry: %v", err)
	}
	if fresh.AccessToken.Equal(tok.AccessToken) || fresh.RefreshToken.Equal(tok.RefreshToken) {
		t.Errorf("refresh after expiry returned a spent token")
	}
}

// oauthSMTPConn is a hand-driven SMTP client connection.
type oauthSMTPConn struct {
	conn net.Conn
	r    *bufio.Reader
}

func dialOAuthSubmission(t *testing.T, sub *harness.XOAUTH2Submission, localIP string) *oauthSMTPConn {
	t.Helper()
	d := net.Dialer{Timeout: 5 * time.Second, LocalAddr: &net.TCPAddr{IP: net.ParseIP(localIP)}}
	conn, err := d.Dial("tcp", sub.Addr)
	if err != nil {
		t.Fatalf("dial %s from %s: %v", sub.Addr, localIP, err)
	}
	_ = conn.SetDeadline(time.Now().Add(30 * time.Second))
	t.Cleanup(func() { conn.Close() })
	c := &oauthSMTPConn{conn: conn, r: bufio.NewReader(conn)}
	if code, lines := c.read(t); code != 220 {
		t.Fatalf("greeting %d %q", code, lines)
	}
	return c
}

func (c *oauthSMTPConn) read(t *testing.T) (int, []string) {
	t.Helper()
	var lines []string
	for {
		line, err := c.r.ReadString('\n')
		if err != nil {
			t.Fatalf("reading reply: %v (so far %q)", err, lines)
		}
		line = strings.TrimRight(line, "\r\n")
		if len(line) < 4 {
			t.Fatalf("short reply line %q", line)
		}
		lines = append(lines, line[4:])
		if line[3] == ' ' {
			var code int
			fmt.Sscanf(line[:3], "%d", &code)
			return code, lines
		}
	}
}

// cmd sends one line and reads the reply. Lines are never logged here: they may carry tokens.
func (c *oauthSMTPConn) cmd(t *testing.T, line string) (int, []string) {
	t.Helper()
	if _, err := io.WriteString(c.conn, line+"\r\n"); err != nil {
		t.Fatalf("writing command: %v", err)
	}
	return c.read(t)
}

func (c *oauthSMTPConn) expect(t *testing.T, line string, want int) {
	t.Helper()
	if code, lines := c.cmd(t, line); code != want {
		verb, _, _ := strings.Cut(line, " ")
		t.Fatalf("%s: %d %q, want %d", verb, code, lines, want)
	}
}

func (c *oauthSMTPConn) ehlo(t *testing.T) []string {
	t.Helper()
	code, lines := c.cmd(t, "EHLO client.test")
	if code != 250 {
		t.Fatalf("EHLO: %d %q", code, lines)
	}
	return lines[1:]
}

func (c *oauthSMTPConn) startTLS(t *testing.T, sub *harness.XOAUTH2Submission) {
	t.Helper()
	c.ehlo(t)
	c.expect(t, "STARTTLS", 220)
	tc := tls.Client(c.conn, sub.TLSConfig())
	if err := tc.Handshake(); err != nil {
		t.Fatalf("TLS handshake: %v", err)
	}
	c.conn = tc
	c.r = bufio.NewReader(tc)
	c.ehlo(t)
}

// oauthAuthResult is the outcome of an XOAUTH2 exchange.
type oauthAuthResult struct {
	code  int
	lines []string
	// challenge is the decoded JSON of a 334 error challenge, empty when the server sent none.
	challenge string
}

// authXOAUTH2 sends `AUTH XOAUTH2`, the response after the empty 334 (never on the AUTH line: real
// tokens pass RFC 4954's 512-octet line limit), and, when the server answers with a 334 error
// challenge, the empty line that makes it send its final reply.
func (c *oauthSMTPConn) authXOAUTH2(t *testing.T, user string, token secret.Secret) oauthAuthResult {
	t.Helper()
	code, lines := c.cmd(t, "AUTH XOAUTH2")
	if code != 334 || strings.Join(lines, "") != "" {
		t.Fatalf("AUTH XOAUTH2: %d %q, want an empty 334", code, lines)
	}
	resp := base64.StdEncoding.EncodeToString([]byte("user=" + user + "\x01auth=Bearer " + token.Reveal() + "\x01\x01"))
	code, lines = c.cmd(t, resp)
	if code != 334 {
		return oauthAuthResult{code: code, lines: lines}
	}
	challenge, err := base64.StdEncoding.DecodeString(strings.Join(lines, ""))
	if err != nil {
		t.Fatalf("334 challenge is not base64: %q", lines)
	}
	var js map[string]any
	if err := json.Unmarshal(challenge, &js); err != nil {
		t.Fatalf("334 challenge is not JSON: %q", challenge)
	}
	code, lines = c.cmd(t, "")
	return oauthAuthResult{code: code, lines: lines, challenge: string(challenge)}
}

// refused fails the test unless the server refused the token the way Dovecot does: a 334 error
// challenge {"status":"401",...}, then, after the client's empty line, 535 5.7.8.
func (r oauthAuthResult) refused(t *testing.T) {
	t.Helper()
	if r.code != 535 || !strings.HasPrefix(r.lines[len(r.lines)-1], "5.7.8") || !strings.Contains(r.challenge, `"status":"401"`) {
		t.Fatalf("AUTH XOAUTH2 = %d %q after challenge %q, want 535 5.7.8 after a 401 challenge", r.code, r.lines, r.challenge)
	}
}

// oauthSink is a plain SMTP server that keeps what it receives.
type oauthSink struct {
	port int
	msgs chan oauthSinkMessage
}

type oauthSinkMessage struct {
	from string
	to   []string
	data string
}

func startOAuthSink(t *testing.T) *oauthSink {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("sink listen: %v", err)
	}
	s := &oauthSink{port: l.Addr().(*net.TCPAddr).Port, msgs: make(chan oauthSinkMessage, 16)}
	srv := smtp.NewServer(oauthSinkBackend{s})
	srv.Domain = "sink.test"
	srv.ReadTimeout = 30 * time.Second
	srv.WriteTimeout = 30 * time.Second
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		_ = srv.Serve(l)
	}()
	t.Cleanup(func() {
		_ = srv.Close()
		wg.Wait()
	})
	return s
}

func (s *oauthSink) wait(t *testing.T) oauthSinkMessage {
	t.Helper()
	select {
	case m := <-s.msgs:
		return m
	case <-time.After(30 * time.Second):
		t.Fatalf("no message reached the sink")
		return oauthSinkMessage{}
	}
}

type oauthSinkBackend struct{ s *oauthSink }

func (b oauthSinkBackend) NewSession(*smtp.Conn) (smtp.Session, error) {
	return &oauthSinkSession{s: b.s}, nil
}

type oauthSinkSession struct {
	s   *oauthSink
	msg oauthSinkMessage
}

func (ss *oauthSinkSession) Reset()        { ss.msg = oauthSinkMessage{} }
func (ss *oauthSinkSession) Logout() error { return nil }
func (ss *oauthSinkSession) Mail(from string, _ *smtp.MailOptions) error {
	ss.msg.from = from
	return nil
}
func (ss *oauthSinkSession) Rcpt(to string, _ *smtp.RcptOptions) error {
	ss.msg.to = append(ss.msg.to, to)
	return nil
}
func (ss *oauthSinkSession) Data(r io.Reader) error {
	b, err := io.ReadAll(r)
	if err != nil {
		return &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 3, 0}, Message: "read failed"}
	}
	ss.msg.data = string(b)
	ss.s.msgs <- ss.msg
	return nil
}
