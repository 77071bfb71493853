package cli

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/postern/postern/sidecar/oauth/oauthtest"
	"github.com/postern/postern/sidecar/project"
	"github.com/postern/postern/sidecar/secret"
	"github.com/postern/postern/sidecar/signin"
	"github.com/postern/postern/sidecar/store"
	"github.com/postern/postern/sidecar/upstream/upstreamtest"
	"github.com/postern/postern/sidecar/xoauth2"
)

const (
	oauthMailbox = "noreply@client.example"
	oauthSecret  = "client-Secret-Value-7"
)

// signInHarness is a harness whose configuration keeps the sign-in key in the test's directory.
func signInHarness(t *testing.T, extra string) *harness {
	t.Helper()
	dir := t.TempDir()
	h := newHarness(t, fmt.Sprintf("signin:\n  key_file: %s\n%s", filepath.Join(dir, "signin.key"), extra))
	h.initStore()
	return h
}

func (h *harness) putProject(p project.Project) {
	h.t.Helper()
	if _, err := h.store().PutProject(h.t.Context(), p); err != nil {
		h.t.Fatal(err)
	}
}

func (h *harness) token(name string) (project.Token, error) {
	h.t.Helper()
	return h.store().Token(h.t.Context(), name)
}

// oauthProjectFor is an OAuth project at the fake identity provider idp, delivering to up (or to a
// loopback port nobody listens on).
func oauthProjectFor(name string, idp *oauthtest.Server, grant string, up *upstreamtest.Server) project.Project {
	p := project.Project{
		Name: name, Enabled: true, Senders: []string{oauthMailbox},
		Upstream: project.Upstream{Host: "127.0.0.1", Port: 9, TLS: project.TLSNone},
		Auth:     project.Auth{Type: project.AuthOAuth2, Username: oauthMailbox, OAuth: idp.OAuth(grant, "openid", "email", "offline_access")},
	}
	if grant == "client_credentials" {
		p.Auth.OAuth.Scopes = []string{"smtp"}
	}
	if up != nil {
		p.Upstream = up.Upstream()
	}
	return p
}

// xoauth2Upstream accepts the tokens idp issued for who.
func xoauth2Upstream(t *testing.T, idp *oauthtest.Server, who string) *upstreamtest.Server {
	return upstreamtest.NewServer(t, upstreamtest.Options{Mechanisms: map[string]upstreamtest.Mechanism{
		xoauth2.Mechanism: upstreamtest.XOAUTH2{Direct: true, Check: func(user, tok string) bool {
			acct, ok := idp.Valid(tok)
			return ok && user == oauthMailbox && strings.EqualFold(acct, who)
		}}.Mechanism(),
	}})
}

func TestProjectOAuthSettings(t *testing.T) {
	t.Parallel()
	h := signInHarness(t, "")
	const pw = "basic-Password-1"

	r := h.mustRun(oauthSecret+"\n", "project", "add", "m365", "--sender", oauthMailbox, "--host", "smtp.office365.com",
		"--username", oauthMailbox, "--auth", "oauth2", "--provider", "microsoft", "--tenant", "client.example",
		"--client-id", "0b6f-client", "--client-secret-stdin", "--scopes", "https://outlook.office.com/SMTP.Send offline_access,openid email")
	if !strings.Contains(r.stdout, "next: send the mailbox owner a sign-in link: postern authorize-link m365") ||
		!strings.Contains(r.stdout, "http://127.0.0.1:8025/signin/callback") {
		t.Errorf("add does not say what comes next:\n%s", r.stdout)
	}
	p := h.project("m365")
	o := p.Auth.OAuth
	if p.Auth.Type != project.AuthOAuth2 || o == nil || o.Provider != "microsoft" || o.Tenant != "client.example" || o.ClientID != "0b6f-client" ||
		o.ClientSecret.Reveal() != oauthSecret || strings.Join(o.Scopes, " ") != "https://outlook.office.com/SMTP.Send offline_access openid email" {
		t.Fatalf("stored %+v %+v", p.Auth, o)
	}

	r = h.mustRun("", "project", "show", "m365")
	for _, want := range []string{"oauth provider:", "microsoft", "oauth tenant:", "oauth client secret:", "[set]", "token:", "not signed in", "next step:", "postern authorize-link m365"} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("show lacks %q:\n%s", want, r.stdout)
		}
	}

	// Only the scopes change; the secret stays.
	h.mustRun("", "project", "update", "m365", "--scopes", "https://outlook.office.com/SMTP.Send")
	if p := h.project("m365"); p.Auth.OAuth.ClientSecret.Reveal() != oauthSecret || len(p.Auth.OAuth.Scopes) != 1 || p.Auth.OAuth.Tenant != "client.example" {
		t.Fatalf("after a scope change: %+v", p.Auth.OAuth)
	}

	// A token record shows its state, never its values.
	exp := time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)
	if _, err := h.store().PutToken(h.t.Context(), "m365", project.Token{AccessToken: secret.New("access-Value-1"), RefreshToken: secret.New("refresh-Value-1"),
		State: project.TokenNeedsReauth, Reason: "invalid_grant: AADSTS700082", Account: oauthMailbox, Expiry: exp}); err != nil {
		t.Fatal(err)
	}
	r = h.mustRun("", "project", "show", "m365")
	for _, want := range []string{"needs_reauth (invalid_grant: AADSTS700082)", "token account:", oauthMailbox, "2030-01-02T03:04:05Z", "next step:"} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("show lacks %q:\n%s", want, r.stdout)
		}
	}

	// Back to basic authentication: the OAuth settings go, a password is needed.
	if r := h.run("", "project", "update", "m365", "--auth", "basic"); r.code != ExitFail || !strings.Contains(r.stderr, "auth.password is empty") {
		t.Fatalf("basic without a password: %v", r)
	}
	h.mustRun(pw, "project", "update", "m365", "--auth", "basic", "--password-stdin")
	p = h.project("m365")
	if p.Auth.Type != project.AuthBasic || p.Auth.OAuth != nil || p.Auth.Password.Reveal() != pw || p.Auth.Username != oauthMailbox {
		t.Fatalf("after switching to basic: %+v", p.Auth)
	}

	// And to OAuth again, at another provider: the password goes, nothing of Microsoft's stays.
	r = h.mustRun("google-Secret-2", "project", "update", "m365", "--auth", "oauth2", "--provider", "google", "--client-id", "gid.apps.googleusercontent.com", "--client-secret-stdin")
	if !strings.Contains(r.stdout, "next: send the mailbox owner a sign-in link") {
		t.Errorf("update does not say what comes next:\n%s", r.stdout)
	}
	p = h.project("m365")
	if p.Auth.Type != project.AuthOAuth2 || !p.Auth.Password.IsZero() || p.Auth.OAuth.Provider != "google" || p.Auth.OAuth.Tenant != "" ||
		p.Auth.OAuth.ClientSecret.Reveal() != "google-Secret-2" || len(p.Auth.OAuth.Scopes) != 0 {
		t.Fatalf("after switching to google: %+v %+v", p.Auth, p.Auth.OAuth)
	}
	h.neverPrinted(oauthSecret, pw, "google-Secret-2", "access-Value-1", "refresh-Value-1")
}

func TestProjectOAuthFlagErrors(t *testing.T) {
	t.Parallel()
	ms := []string{"--auth", "oauth2", "--provider", "microsoft", "--tenant", "client.example", "--client-id", "cid"}
	add := func(extra ...string) []string {
		return append([]string{"project", "add", "new", "--sender", "a@new.example", "--host", "smtp.new.example", "--username", "a@new.example"}, extra...)
	}
	tests := []struct {
		name  string
		stdin string
		args  []string
		want  []string
	}{
		{"provider for a basic project", "pw", add("--password-stdin", "--provider", "microsoft", "--scopes", "x"),
			[]string{"--provider is for OAuth projects", "--scopes is for OAuth projects"}},
		{"unknown auth", "", add("--auth", "kerberos"), []string{`--auth "kerberos": use basic, oauth2, plugin or none`}},
		{"google device flow", "", add("--auth", "oauth2", "--provider", "google", "--client-id", "g", "--grant", "device_code"), []string{"no device flow"}},
		{"tenant for google", "", add("--auth", "oauth2", "--provider", "google", "--client-id", "g", "--tenant", "t"), []string{"--tenant is for the microsoft provider"}},
		{"endpoint for microsoft", "", add(append(ms, "--token-url", "https://idp.example/token")...), []string{"--token-url is for the generic provider"}},
		{"microsoft without tenant", "", add("--auth", "oauth2", "--provider", "microsoft", "--client-id", "c"), []string{"auth.oauth.tenant is empty"}},
		{"generic without endpoints", "", add("--auth", "oauth2", "--provider", "generic", "--client-id", "c"), []string{"token_url is empty"}},
		{"generic code grant without auth url", "", add("--auth", "oauth2", "--provider", "generic", "--client-id", "c", "--token-url", "https://idp.example/token"), []string{"needs auth_url"}},
		{"app-only without secret", "", add(append(ms, "--grant", "client_credentials")...), []string{"client_credentials needs a client secret"}},
		{"app-only on a multi-tenant endpoint", "s", add("--auth", "oauth2", "--provider", "microsoft", "--tenant", "organizations", "--client-id", "c", "--grant", "client_credentials", "--client-secret-stdin"), []string{"the tenant's own id or domain"}},
		{"unknown grant", "", add(append(ms, "--grant", "implicit")...), []string{`auth.oauth.grant "implicit"`}},
		{"no provider", "", add("--auth", "oauth2", "--client-id", "c"), []string{`auth.oauth.provider ""`}},
		{"password for oauth", "pw", add(append(ms, "--password-stdin")...), []string{"without a password"}},
		{"two secrets on stdin", "pw", add(append(ms, "--password-stdin", "--client-secret-stdin")...), []string{"standard input holds one secret"}},
		{"secret stdin and prompt", "s", add(append(ms, "--client-secret-stdin", "--client-secret-prompt")...), []string{"give one"}},
		{"mechanism for oauth", "", add(append(ms, "--mechanism", "LOGIN")...), []string{"--mechanism is for basic"}},
		{"empty secret", "", add(append(ms, "--client-secret-stdin")...), []string{"no client secret on standard input"}},
		{"secret prompt without terminal", "", add(append(ms, "--client-secret-prompt")...), []string{"no terminal to ask for the client secret: pipe it in with --client-secret-stdin"}},
		{"update to oauth with mechanism", "", []string{"project", "update", "basic-a", "--auth", "oauth2", "--provider", "google", "--client-id", "g", "--mechanism", "PLAIN"}, []string{"--mechanism is for basic"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			h := signInHarness(t, "")
			h.mustRun("pw", "project", "add", "basic-a", "--sender", "a@basic.example", "--host", "smtp.basic.example", "--username", "a@basic.example", "--password-stdin")
			before := h.project("basic-a")
			r := h.run(tc.stdin, tc.args...)
			if r.code == ExitOK {
				t.Fatalf("accepted: %v", r)
			}
			for _, w := range tc.want {
				if !strings.Contains(r.stderr, w) {
					t.Errorf("stderr does not say %q:\n%s", w, r.stderr)
				}
			}
			if n := h.projectCount(); n != 1 {
				t.Errorf("%d projects after a refused command", n)
			}
			if after := h.project("basic-a"); after.Version != before.Version {
				t.Errorf("basic-a changed")
			}
		})
	}
}

func TestAuthorizeLink(t *testing.T) {
	t.Parallel()
	idp := oauthtest.New(t, oauthtest.Options{})
	h := signInHarness(t, "")
	h.putProject(oauthProjectFor("client-a", idp, "", nil))
	r := h.mustRun("", "authorize-link", "client-a", "--ttl", "1h")
	lines := strings.Split(strings.TrimSpace(r.stdout), "\n")
	if len(lines) != 1 || !strings.HasPrefix(lines[0], "http://127.0.0.1:8025/signin?l=") {
		t.Fatalf("stdout is not one link:\n%s", r.stdout)
	}
	if !strings.Contains(r.stderr, oauthMailbox) || !strings.Contains(r.stderr, "works once") || !strings.Contains(r.stderr, "http://127.0.0.1:8025/signin/callback") {
		t.Errorf("stderr:\n%s", r.stderr)
	}
	cfgText, _ := os.ReadFile(h.cfgPath)
	key := regexp.MustCompile(`key_file: (\S+signin\.key)`).FindSubmatch(cfgText)
	if key == nil {
		t.Fatalf("no signin key file in\n%s", cfgText)
	}
	fi, err := os.Stat(string(key[1]))
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("key file: %v %v", fi, err)
	}
	k, err := signin.LoadKey(string(key[1]))
	if err != nil {
		t.Fatal(err)
	}
	links, _ := signin.NewLinks(k, "http://127.0.0.1:8025")
	u, _ := url.Parse(lines[0])
	link, err := links.Verify(u.Query().Get("l"), time.Now())
	if err != nil {
		t.Fatalf("the printed link does not verify with the key file: %v", err)
	}
	if d := time.Until(link.Expiry); link.Project != "client-a" || link.Mailbox != oauthMailbox || d > time.Hour || d < 58*time.Minute {
		t.Errorf("link %+v (expires in %v)", link, d)
	}

	// authorize without --device prints a link too, with the key made before.
	r = h.mustRun("", "authorize", "client-a")
	u2, _ := url.Parse(strings.TrimSpace(r.stdout))
	if l2, err := links.Verify(u2.Query().Get("l"), time.Now()); err != nil || l2.Nonce == link.Nonce || time.Until(l2.Expiry) < 71*time.Hour {
		t.Errorf("authorize printed %q: %+v %v", r.stdout, l2, err)
	}
}

func TestAuthorizeLinkPublicURL(t *testing.T) {
	t.Parallel()
	idp := oauthtest.New(t, oauthtest.Options{})
	h := signInHarness(t, "  public_url: https://postern.example.com/\n")
	h.putProject(oauthProjectFor("client-a", idp, "", nil))
	r := h.mustRun("", "authorize-link", "client-a")
	if !strings.HasPrefix(r.stdout, "https://postern.example.com/signin?l=") || !strings.Contains(r.stderr, "https://postern.example.com/signin/callback") {
		t.Fatalf("%v", r)
	}
}

func TestAuthorizeRefuses(t *testing.T) {
	t.Parallel()
	idp := oauthtest.New(t, oauthtest.Options{ClientSecret: oauthSecret})
	tests := []struct {
		name  string
		extra string
		args  []string
		code  int
		want  string
	}{
		{"unknown project", "", []string{"authorize-link", "nope"}, ExitFail, "no project named nope"},
		{"basic project", "", []string{"authorize-link", "basic-a"}, ExitFail, "signs in with basic, not OAuth"},
		{"basic project, authorize", "", []string{"authorize", "basic-a"}, ExitFail, "nothing to authorize"},
		{"device project", "", []string{"authorize-link", "device-a"}, ExitFail, "postern authorize --device device-a"},
		{"app-only project", "", []string{"authorize-link", "app-a"}, ExitFail, "no person signs in"},
		{"app-only device", "", []string{"authorize", "--device", "app-a"}, ExitUsage, "no device sign-in"},
		{"ttl too long", "", []string{"authorize-link", "code-a", "--ttl", "1000h"}, ExitFail, "at most"},
		{"no admin listener", "listen:\n  admin: \"\"\n", []string{"authorize-link", "code-a"}, ExitFail, "the sign-in pages are not served"},
		{"no name", "", []string{"authorize"}, ExitUsage, "missing argument"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			h := signInHarness(t, "")
			if tc.extra != "" {
				// The harness's configuration has a listen section of its own: add to it.
				b, _ := os.ReadFile(h.cfgPath)
				b = bytes.Replace(b, []byte("listen:\n"), []byte(tc.extra), 1)
				if err := os.WriteFile(h.cfgPath, b, 0o600); err != nil {
					t.Fatal(err)
				}
			}
			h.mustRun("pw", "project", "add", "basic-a", "--sender", "a@basic.example", "--host", "smtp.basic.example", "--username", "a@basic.example", "--password-stdin")
			code := oauthProjectFor("code-a", idp, "", nil)
			code.Senders = []string{"@code.example"}
			device := oauthProjectFor("device-a", idp, "device_code", nil)
			device.Senders = []string{"@device.example"}
			app := oauthProjectFor("app-a", idp, "client_credentials", nil)
			app.Senders = []string{"@app.example"}
			for _, p := range []project.Project{code, device, app} {
				h.putProject(p)
			}
			r := h.run("", tc.args...)
			if r.code != tc.code || !strings.Contains(r.stderr, tc.want) {
				t.Fatalf("want exit %d saying %q, got %v", tc.code, tc.want, r)
			}
			if r.stdout != "" && tc.code != ExitOK {
				t.Errorf("stdout on failure: %q", r.stdout)
			}
		})
	}
}

// lockedBuffer is written by the command while the test reads it.
type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// waitFor waits until re matches the buffer, and returns the match.
func (b *lockedBuffer) waitFor(t *testing.T, re *regexp.Regexp) []string {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		if m := re.FindStringSubmatch(b.String()); m != nil {
			return m
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("the output never matched %s:\n%s", re, b.String())
	return nil
}

// start runs the command in the background.
func (h *harness) start(args ...string) (stdout, stderr *lockedBuffer, done <-chan int) {
	stdout, stderr = &lockedBuffer{}, &lockedBuffer{}
	app := *h.app
	app.Stdin, app.Stdout, app.Stderr = strings.NewReader(""), stdout, stderr
	ch := make(chan int, 1)
	ctx, cancel := context.WithTimeout(h.t.Context(), time.Minute)
	go func() {
		defer cancel()
		ch <- app.Run(ctx, args)
	}()
	return stdout, stderr, ch
}

func TestAuthorizeDevice(t *testing.T) {
	t.Parallel()
	userCodeRE := regexp.MustCompile(`enter the code (\S+)`)
	tests := []struct {
		name    string
		grant   string
		args    []string
		approve func(idp *oauthtest.Server, code string)
		exit    int
		stdout  []string
		stderr  []string
		saved   bool
	}{
		{
			name: "signed in and checked", grant: "device_code", args: []string{"authorize", "client-a"},
			approve: func(idp *oauthtest.Server, code string) { idp.ApproveDevice(code, oauthMailbox) },
			exit:    ExitOK, saved: true,
			stdout: []string{"To sign in the mailbox " + oauthMailbox, "waiting for sign-in... (attempt 1)", "signed in as " + oauthMailbox, "the mail server accepted the token"},
		},
		{
			name: "device flag on an authorization code project", grant: "", args: []string{"authorize", "--device", "client-a"},
			approve: func(idp *oauthtest.Server, code string) { idp.ApproveDevice(code, strings.ToUpper(oauthMailbox)) },
			exit:    ExitOK, saved: true,
			stdout: []string{"signed in as " + strings.ToUpper(oauthMailbox)},
		},
		{
			name: "wrong account", grant: "device_code", args: []string{"authorize", "client-a"},
			approve: func(idp *oauthtest.Server, code string) { idp.ApproveDevice(code, "someone.else@client.example") },
			exit:    ExitFail,
			stderr:  []string{"someone.else@client.example signed in, but project client-a sends as " + oauthMailbox, "nothing was saved", "535 5.7.3"},
		},
		{
			name: "declined", grant: "device_code", args: []string{"authorize", "client-a"},
			approve: func(idp *oauthtest.Server, code string) { idp.DenyDevice(code) },
			exit:    ExitFail,
			stderr:  []string{"the sign-in was declined", "access_denied", "nothing was saved"},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			idp := oauthtest.New(t, oauthtest.Options{})
			up := xoauth2Upstream(t, idp, oauthMailbox)
			h := signInHarness(t, "")
			h.putProject(oauthProjectFor("client-a", idp, tc.grant, up))

			stdout, stderr, done := h.start(tc.args...)
			code := stdout.waitFor(t, userCodeRE)[1]
			stdout.waitFor(t, regexp.MustCompile(`waiting for sign-in\.\.\. \(attempt 1\)`))
			tc.approve(idp, code)
			var exit int
			select {
			case exit = <-done:
			case <-time.After(time.Minute):
				t.Fatal("authorize did not finish")
			}
			if exit != tc.exit {
				t.Fatalf("exit %d, want %d\nstdout:\n%s\nstderr:\n%s", exit, tc.exit, stdout, stderr)
			}
			for _, w := range tc.stdout {
				if !strings.Contains(stdout.String(), w) {
					t.Errorf("stdout does not say %q:\n%s", w, stdout)
				}
			}
			for _, w := range tc.stderr {
				if !strings.Contains(stderr.String(), w) {
					t.Errorf("stderr does not say %q:\n%s", w, stderr)
				}
			}
			rec, err := h.token("client-a")
			if !tc.saved {
				if !errors.Is(err, store.ErrNotFound) {
					t.Fatalf("a token record was written: %v", err)
				}
				return
			}
			if err != nil || rec.State != project.TokenOK || !strings.EqualFold(rec.Account, oauthMailbox) || rec.RefreshToken.IsZero() {
				t.Fatalf("token record %+v, %v", rec, err)
			}
			if st := up.Stats(); st.Auths != 1 || st.Messages != 0 {
				t.Errorf("upstream %+v: want one AUTH and no mail", st)
			}
			all := stdout.String() + stderr.String()
			if strings.Contains(all, rec.AccessToken.Reveal()) || strings.Contains(all, rec.RefreshToken.Reveal()) {
				t.Error("a token was printed")
			}
		})
	}
}

func TestAuthorizeClientCredentials(t *testing.T) {
	t.Parallel()
	t.Run("works", func(t *testing.T) {
		t.Parallel()
		idp := oauthtest.New(t, oauthtest.Options{ClientSecret: oauthSecret})
		up := xoauth2Upstream(t, idp, idp.ClientID) // app-only tokens belong to the app
		h := signInHarness(t, "")
		p := oauthProjectFor("app-a", idp, "client_credentials", up)
		h.putProject(p)
		// An earlier failure left needs_reauth behind; a working registration clears it.
		if _, err := h.store().PutToken(t.Context(), "app-a", project.Token{State: project.TokenNeedsReauth, Reason: "invalid_client"}); err != nil {
			t.Fatal(err)
		}
		r := h.mustRun("", "authorize", "app-a")
		if !strings.Contains(r.stdout, "the app registration of project app-a works") || !strings.Contains(r.stdout, "the mail server accepted the token") {
			t.Errorf("stdout:\n%s", r.stdout)
		}
		rec, err := h.token("app-a")
		if err != nil || rec.State != project.TokenOK || rec.AccessToken.IsZero() {
			t.Fatalf("token record %+v %v", rec, err)
		}
		if up.Stats().Auths != 1 || idp.RequestsOf("client_credentials") != 1 {
			t.Errorf("upstream %+v, %d token requests", up.Stats(), idp.RequestsOf("client_credentials"))
		}
		h.neverPrinted(oauthSecret, rec.AccessToken.Reveal())
	})
	t.Run("bad secret", func(t *testing.T) {
		t.Parallel()
		idp := oauthtest.New(t, oauthtest.Options{ClientSecret: oauthSecret})
		h := signInHarness(t, "")
		p := oauthProjectFor("app-a", idp, "client_credentials", nil)
		p.Auth.OAuth.ClientSecret = secret.New("wrong")
		h.putProject(p)
		r := h.run("", "authorize", "app-a")
		if r.code != ExitFail || !strings.Contains(r.stderr, "invalid_client") || !strings.Contains(r.stderr, "check the client id, the client secret") {
			t.Fatalf("%v", r)
		}
		if _, err := h.token("app-a"); !errors.Is(err, store.ErrNotFound) {
			t.Errorf("a token record was written: %v", err)
		}
	})
	t.Run("upstream refuses", func(t *testing.T) {
		t.Parallel()
		idp := oauthtest.New(t, oauthtest.Options{ClientSecret: oauthSecret})
		up := xoauth2Upstream(t, idp, "nobody") // refuses every token, Exchange style
		h := signInHarness(t, "")
		h.putProject(oauthProjectFor("app-a", idp, "client_credentials", up))
		r := h.run("", "authorize", "app-a")
		if r.code != ExitFail || !strings.Contains(r.stderr, "535 5.7.3") || !strings.Contains(r.stderr, "SMTP.Send") || !strings.Contains(r.stderr, "The grant is saved") {
			t.Fatalf("%v", r)
		}
		if r := h.mustRun("", "authorize", "app-a", "--check=false"); strings.Contains(r.stdout, "signing in to") {
			t.Errorf("--check=false still checked:\n%s", r.stdout)
		}
	})
}
