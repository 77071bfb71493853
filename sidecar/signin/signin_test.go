package signin_test

import (
	"bytes"
	"context"
	"errors"
	"html"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/cookiejar"
	"net/http/httptest"
	"net/url"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/postern/postern/sidecar/credential"
	"github.com/postern/postern/sidecar/oauth/oauthtest"
	"github.com/postern/postern/sidecar/project"
	"github.com/postern/postern/sidecar/secret"
	"github.com/postern/postern/sidecar/signin"
	"github.com/postern/postern/sidecar/store"
	"github.com/postern/postern/sidecar/store/boltstore"
	"github.com/postern/postern/sidecar/token"
	"github.com/postern/postern/sidecar/upstream"
	"github.com/postern/postern/sidecar/upstream/upstreamtest"
	"github.com/postern/postern/sidecar/xoauth2"
)

const (
	mailbox      = "noreply@client.example"
	clientSecret = "client-Secret-42"
)

// clock is a settable time source.
type clock struct{ offset atomic.Int64 }

func (c *clock) Now() time.Time          { return time.Now().Add(time.Duration(c.offset.Load())) }
func (c *clock) Advance(d time.Duration) { c.offset.Add(int64(d)) }

// syncBuffer collects log output from several goroutines.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// env is Postern's admin listener with the sign-in pages, over a real token broker and file store,
// with a fake identity provider.
type env struct {
	t      *testing.T
	idp    *oauthtest.Server
	st     store.Store
	broker *token.Broker
	key    []byte
	base   string
	links  *signin.Links
	clock  *clock
	logs   *syncBuffer
	p      project.Project

	mu     sync.Mutex
	tested []string // projects TestAuth was called for
}

type envOptions struct {
	// project changes the project before it is stored.
	project func(*project.Project)
	// testAuth replaces the recording TestAuth; nil keeps it.
	testAuth func(e *env) func(context.Context, project.Project) error
	// noTestAuth leaves TestAuth out.
	noTestAuth bool
	// idp changes the fake identity provider's options.
	idp func(*oauthtest.Options)
}

func newEnv(t *testing.T, o envOptions) *env {
	t.Helper()
	e := &env{t: t, clock: &clock{}, logs: &syncBuffer{}, key: newKey(t)}
	idpOpts := oauthtest.Options{ClientSecret: clientSecret}
	if o.idp != nil {
		o.idp(&idpOpts)
	}
	e.idp = oauthtest.New(t, idpOpts)
	st, err := boltstore.Open(t.Context(), boltstore.Options{Path: filepath.Join(t.TempDir(), "store.db"), KeyFile: filepath.Join(t.TempDir(), "store.key"), Create: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	e.st = st
	e.broker = token.New(token.Options{Store: st, Instance: "test", Now: e.clock.Now})
	t.Cleanup(e.broker.Close)

	e.p = project.Project{
		Name: "client-a", Enabled: true, Senders: []string{mailbox},
		Upstream: project.Upstream{Host: "127.0.0.1", Port: 25, TLS: project.TLSNone},
		Auth:     project.Auth{Type: project.AuthOAuth2, Username: mailbox, OAuth: e.idp.OAuth("", "openid", "email", "offline_access")},
	}
	if o.project != nil {
		o.project(&e.p)
	}
	if _, err := st.PutProject(t.Context(), e.p); err != nil {
		t.Fatal(err)
	}

	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	e.base = "http://" + l.Addr().String()
	e.links, err = signin.NewLinks(e.key, e.base)
	if err != nil {
		t.Fatal(err)
	}
	srv := e.newServer(o)
	ts := httptest.NewUnstartedServer(srv.Handler())
	ts.Listener.Close()
	ts.Listener = l
	ts.Start()
	t.Cleanup(ts.Close)
	return e
}

// newServer makes a sign-in server over e's store: another replica when called again.
func (e *env) newServer(o envOptions) *signin.Server {
	e.t.Helper()
	opts := signin.Options{
		Key: e.key, PublicURL: e.base, Projects: e.st, Tokens: e.st, Grants: e.broker,
		Logger: slog.New(slog.NewTextHandler(e.logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
		Now:    e.clock.Now,
	}
	switch {
	case o.noTestAuth:
	case o.testAuth != nil:
		opts.TestAuth = o.testAuth(e)
	default:
		opts.TestAuth = func(_ context.Context, p project.Project) error {
			e.mu.Lock()
			defer e.mu.Unlock()
			e.tested = append(e.tested, p.Name)
			return nil
		}
	}
	srv, err := signin.New(opts)
	if err != nil {
		e.t.Fatal(err)
	}
	return srv
}

func (e *env) testedProjects() []string {
	e.mu.Lock()
	defer e.mu.Unlock()
	return append([]string(nil), e.tested...)
}

// link makes a sign-in link for the env's project.
func (e *env) link(ttl time.Duration) (string, signin.Link) {
	e.t.Helper()
	u, l, err := e.links.New(e.p, ttl, e.clock.Now())
	if err != nil {
		e.t.Fatal(err)
	}
	return u, l
}

// noToken checks that no token record was written.
func (e *env) noToken() {
	e.t.Helper()
	if _, err := e.st.Token(e.t.Context(), e.p.Name); !errors.Is(err, store.ErrNotFound) {
		e.t.Fatalf("a token record exists (or the store failed): %v", err)
	}
}

// neverShown checks that no token or secret reached a page or the log.
func (e *env) neverShown(pages ...string) {
	e.t.Helper()
	secrets := []string{clientSecret}
	if rec, err := e.st.Token(e.t.Context(), e.p.Name); err == nil {
		secrets = append(secrets, rec.AccessToken.Reveal(), rec.RefreshToken.Reveal())
	}
	all := strings.Join(pages, "\n") + e.logs.String()
	for _, s := range secrets {
		if s != "" && strings.Contains(all, s) {
			e.t.Errorf("a secret of %d characters was shown", len(s))
		}
	}
}

// browser keeps cookies and does not follow redirects by itself.
type browser struct {
	t *testing.T
	c *http.Client
}

func newBrowser(t *testing.T) *browser {
	jar, _ := cookiejar.New(nil)
	return &browser{t: t, c: &http.Client{Jar: jar, Timeout: 30 * time.Second,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}}
}

type response struct {
	code     int
	body     string
	location string
	header   http.Header
}

// outcome is the data-outcome of the page.
func (r response) outcome() string {
	m := regexp.MustCompile(`<main id="page"[^>]* data-outcome="([^"]*)"`).FindStringSubmatch(r.body)
	if m == nil {
		return ""
	}
	return m[1]
}

// text is the unescaped text of the element with id.
func (r response) text(id string) string {
	m := regexp.MustCompile(`id="` + id + `"[^>]*>([^<]*)<`).FindStringSubmatch(r.body)
	if m == nil {
		return ""
	}
	return html.UnescapeString(m[1])
}

func (b *browser) do(req *http.Request) response {
	b.t.Helper()
	resp, err := b.c.Do(req)
	if err != nil {
		b.t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return response{code: resp.StatusCode, body: string(body), location: resp.Header.Get("Location"), header: resp.Header}
}

func (b *browser) get(u string) response {
	b.t.Helper()
	req, err := http.NewRequestWithContext(b.t.Context(), http.MethodGet, u, nil)
	if err != nil {
		b.t.Fatal(err)
	}
	return b.do(req)
}

func (b *browser) post(u string, form url.Values) response {
	b.t.Helper()
	req, err := http.NewRequestWithContext(b.t.Context(), http.MethodPost, u, strings.NewReader(form.Encode()))
	if err != nil {
		b.t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	return b.do(req)
}

var (
	formActionRE = regexp.MustCompile(`<form id="signin-form" method="post" action="([^"]*)">`)
	formLinkRE   = regexp.MustCompile(`<input type="hidden" name="l" value="([^"]*)">`)
)

// press opens the landing page of link and presses the #signin button; it returns the provider's
// authorization URL the browser is sent to.
func (b *browser) press(link string) *url.URL {
	b.t.Helper()
	landing := b.get(link)
	if landing.code != http.StatusOK || landing.outcome() != signin.OutcomeLanding || !strings.Contains(landing.body, `<button id="signin" name="signin"`) {
		b.t.Fatalf("landing page: %d %s\n%s", landing.code, landing.outcome(), landing.body)
	}
	action, l := formActionRE.FindStringSubmatch(landing.body), formLinkRE.FindStringSubmatch(landing.body)
	if action == nil || l == nil {
		b.t.Fatalf("no sign-in form on the landing page:\n%s", landing.body)
	}
	r := b.post(html.UnescapeString(action[1]), url.Values{"l": {html.UnescapeString(l[1])}, "signin": {""}})
	if r.code != http.StatusSeeOther || r.location == "" {
		b.t.Fatalf("pressing the button: %d %s\n%s", r.code, r.outcome(), r.body)
	}
	u, err := url.Parse(r.location)
	if err != nil {
		b.t.Fatal(err)
	}
	return u
}

// authorize plays the provider's sign-in page: it returns the callback URL the provider sends the
// browser back to.
func (b *browser) authorize(u *url.URL) string {
	b.t.Helper()
	r := b.get(u.String())
	if r.code != http.StatusFound || r.location == "" {
		b.t.Fatalf("provider's authorization endpoint: %d %s", r.code, r.body)
	}
	return r.location
}

func TestSignIn(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOptions{})
	link, made := e.link(72 * time.Hour)
	b := newBrowser(t)

	landing := b.get(link)
	if landing.text("project") != "client-a" || landing.text("mailbox") != mailbox || !strings.Contains(landing.text("scopes"), "openid") {
		t.Errorf("landing page names project %q, mailbox %q, scopes %q", landing.text("project"), landing.text("mailbox"), landing.text("scopes"))
	}
	for _, h := range []string{"Referrer-Policy", "Cache-Control", "X-Frame-Options", "Content-Security-Policy"} {
		if landing.header.Get(h) == "" {
			t.Errorf("landing page without %s", h)
		}
	}
	if strings.Contains(landing.body, "<script") {
		t.Error("the landing page has a script")
	}

	auth := b.press(link)
	q := auth.Query()
	if got := auth.Scheme + "://" + auth.Host + auth.Path; got != e.idp.AuthURL {
		t.Errorf("sent to %s, want the provider's %s", got, e.idp.AuthURL)
	}
	for k, want := range map[string]string{
		"response_type": "code", "client_id": e.idp.ClientID, "code_challenge_method": "S256",
		"login_hint": mailbox, "redirect_uri": e.base + "/signin/callback",
	} {
		if q.Get(k) != want {
			t.Errorf("authorization URL: %s = %q, want %q", k, q.Get(k), want)
		}
	}
	if len(q.Get("state")) < 32 || len(q.Get("code_challenge")) != 43 {
		t.Errorf("authorization URL: state %q, code_challenge %q", q.Get("state"), q.Get("code_challenge"))
	}
	cookies := b.c.Jar.Cookies(&url.URL{Scheme: "http", Host: strings.TrimPrefix(e.base, "http://"), Path: "/signin/callback"})
	if len(cookies) != 1 || !strings.HasPrefix(cookies[0].Name, "postern_signin_") || strings.Contains(cookies[0].Value, q.Get("state")) {
		t.Fatalf("sign-in cookie %v", cookies)
	}
	if len(b.c.Jar.Cookies(&url.URL{Scheme: "http", Host: strings.TrimPrefix(e.base, "http://"), Path: "/status"})) != 0 {
		t.Error("the sign-in cookie is sent to other pages")
	}

	callback := b.authorize(auth)
	done := b.get(callback)
	if done.code != http.StatusOK || done.outcome() != signin.OutcomeSignedIn {
		t.Fatalf("callback: %d %s\n%s", done.code, done.outcome(), done.body)
	}
	if done.text("account") != mailbox {
		t.Errorf("the result names account %q", done.text("account"))
	}
	if b.c.Jar.Cookies(&url.URL{Scheme: "http", Host: strings.TrimPrefix(e.base, "http://"), Path: "/signin/callback"}) != nil {
		t.Error("the sign-in cookie survived the callback")
	}

	rec, err := e.st.Token(t.Context(), "client-a")
	if err != nil {
		t.Fatalf("no token record after the sign-in: %v", err)
	}
	if rec.State != project.TokenOK || rec.Account != mailbox || rec.RefreshToken.IsZero() || !rec.UsedSignIns[made.Nonce].Equal(made.Expiry) ||
		rec.AccountID != oauthtest.Subject(mailbox) {
		t.Errorf("token record: state %q account %q (id %q) refresh token set %v used links %v (link %q)", rec.State, rec.Account, rec.AccountID, !rec.RefreshToken.IsZero(), rec.UsedSignIns, made.Nonce)
	}
	if acct, ok := e.idp.Valid(rec.AccessToken.Reveal()); !ok || acct != mailbox {
		t.Errorf("the stored access token is not the provider's for %s", mailbox)
	}
	if st := e.broker.Status("client-a"); st.State != project.TokenOK || st.Account != mailbox {
		t.Errorf("broker status %+v", st)
	}
	if got := e.testedProjects(); len(got) != 1 || got[0] != "client-a" {
		t.Errorf("TestAuth calls %v", got)
	}

	// The link is used up: here, and on another replica that never saw it.
	if r := b.get(link); r.outcome() != signin.OutcomeLinkUsed || r.code != http.StatusGone {
		t.Errorf("the used link again: %d %s", r.code, r.outcome())
	}
	other := httptest.NewServer(e.newServer(envOptions{}).Handler())
	t.Cleanup(other.Close)
	if r := newBrowser(t).get(other.URL + "/signin?" + url.Values{"l": {mustQuery(t, link, "l")}}.Encode()); r.outcome() != signin.OutcomeLinkUsed {
		t.Errorf("the used link on another replica: %d %s", r.code, r.outcome())
	}
	// This process remembers the link even when the record no longer holds its nonce.
	rec.UsedSignIns = nil
	if _, err := e.st.PutToken(t.Context(), "client-a", rec); err != nil {
		t.Fatal(err)
	}
	if r := b.get(link); r.outcome() != signin.OutcomeLinkUsed {
		t.Errorf("the used link, its nonce gone from the record: %d %s", r.code, r.outcome())
	}
	// Replaying the callback finds no cookie.
	if r := b.get(callback); r.outcome() != signin.OutcomeStateMismatch {
		t.Errorf("replayed callback: %s", r.outcome())
	}
	if n := e.idp.RequestsOf("authorization_code"); n != 1 {
		t.Errorf("%d code exchanges, want 1", n)
	}
	e.neverShown(landing.body, done.body)
	for _, s := range []string{q.Get("state"), mustQuery(t, link, "l"), mustQuery(t, callback, "code")} {
		if strings.Contains(e.logs.String(), s) {
			t.Error("the log shows a state, link or code")
		}
	}
}

func mustQuery(t *testing.T, u, key string) string {
	t.Helper()
	p, err := url.Parse(u)
	if err != nil {
		t.Fatal(err)
	}
	return p.Query().Get(key)
}

// A link used twice in parallel (two tabs): the first sign-in to complete uses it up.
func TestTwoTabsOneLink(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOptions{})
	link, _ := e.link(time.Hour)
	b := newBrowser(t)
	first, second := b.press(link), b.press(link)
	if first.Query().Get("state") == second.Query().Get("state") {
		t.Fatal("two sign-ins share a state")
	}
	cb1, cb2 := b.authorize(first), b.authorize(second)
	if r := b.get(cb2); r.outcome() != signin.OutcomeSignedIn {
		t.Fatalf("second tab: %s\n%s", r.outcome(), r.body)
	}
	if r := b.get(cb1); r.outcome() != signin.OutcomeLinkUsed {
		t.Fatalf("first tab after the second completed: %s", r.outcome())
	}
	if n := e.idp.RequestsOf("authorization_code"); n != 1 {
		t.Errorf("%d code exchanges, want 1", n)
	}
}

func TestWrongAccount(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOptions{})
	link, _ := e.link(time.Hour)
	b := newBrowser(t)
	auth := b.press(link)
	// The person signs in as someone else at the provider.
	q := auth.Query()
	q.Set("login_hint", "someone.else@client.example")
	auth.RawQuery = q.Encode()
	r := b.get(b.authorize(auth))
	if r.code != http.StatusForbidden || r.outcome() != signin.OutcomeWrongAccount {
		t.Fatalf("wrong account: %d %s\n%s", r.code, r.outcome(), r.body)
	}
	if r.text("account") != "someone.else@client.example" || r.text("mailbox") != mailbox {
		t.Errorf("the page names account %q and mailbox %q", r.text("account"), r.text("mailbox"))
	}
	if !strings.Contains(r.body, "535 5.7.3") || !strings.Contains(r.body, "Nothing was saved") {
		t.Errorf("the page does not explain:\n%s", r.body)
	}
	e.noToken()
	if got := e.testedProjects(); len(got) != 0 {
		t.Errorf("TestAuth called: %v", got)
	}
	// The link still works for the right account.
	if got := b.get(b.authorize(b.press(link))); got.outcome() != signin.OutcomeSignedIn {
		t.Errorf("signing in as the right account afterwards: %s", got.outcome())
	}
}

// The mailbox comparison ignores case: the provider may spell it differently.
func TestAccountCaseInsensitive(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOptions{})
	link, _ := e.link(time.Hour)
	b := newBrowser(t)
	auth := b.press(link)
	q := auth.Query()
	q.Set("login_hint", strings.ToUpper(mailbox))
	auth.RawQuery = q.Encode()
	if r := b.get(b.authorize(auth)); r.outcome() != signin.OutcomeSignedIn {
		t.Fatalf("%s\n%s", r.outcome(), r.body)
	}
}

func TestProviderError(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOptions{})
	link, _ := e.link(time.Hour)
	b := newBrowser(t)
	auth := b.press(link)
	cb := e.base + "/signin/callback?" + url.Values{
		"state": {auth.Query().Get("state")}, "error": {"access_denied"},
		"error_description": {"AADSTS65004: User declined to consent <script>alert(1)</script>"},
	}.Encode()
	r := b.get(cb)
	if r.code != http.StatusBadRequest || r.outcome() != signin.OutcomeProviderError {
		t.Fatalf("provider error: %d %s\n%s", r.code, r.outcome(), r.body)
	}
	if !strings.Contains(r.text("detail"), "access_denied: AADSTS65004: User declined to consent <script>") {
		t.Errorf("detail %q", r.text("detail"))
	}
	if strings.Contains(r.body, "<script>") {
		t.Error("the provider's words are not escaped")
	}
	if !strings.Contains(r.text("advice"), "declined") {
		t.Errorf("advice %q", r.text("advice"))
	}
	e.noToken()
	if n := e.idp.RequestsOf("authorization_code"); n != 0 {
		t.Errorf("%d code exchanges after an error", n)
	}
}

// The page tells a person who cancelled from a refusal by the identity provider, which the person
// could not have avoided (a provider refusing the scopes asked for, say).
func TestProviderRefusalIsNotACancel(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name, code, desc, title, advice string
	}{
		{"cancelled at oidc-provider", "access_denied", "End-User aborted interaction", "The sign-in was cancelled", "open the link again"},
		{"declined at Microsoft", "access_denied", "AADSTS65004: User declined to consent to access the app.", "The sign-in was cancelled", "open the link again"},
		{"refused by the provider", "access_denied", "requested scope is not allowed for this client", "The identity provider refused the sign-in", "you did nothing wrong"},
		{"invalid scope", "invalid_scope", "openid scope must be requested", "The identity provider refused the sign-in", "tell your Postern administrator"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			e := newEnv(t, envOptions{})
			link, _ := e.link(time.Hour)
			b := newBrowser(t)
			auth := b.press(link)
			r := b.get(e.base + "/signin/callback?" + url.Values{
				"state": {auth.Query().Get("state")}, "error": {tc.code}, "error_description": {tc.desc},
			}.Encode())
			if r.outcome() != signin.OutcomeProviderError {
				t.Fatalf("outcome %s\n%s", r.outcome(), r.body)
			}
			if got := r.text("title"); got != tc.title {
				t.Errorf("title %q, want %q", got, tc.title)
			}
			if !strings.Contains(r.text("advice"), tc.advice) {
				t.Errorf("advice %q lacks %q", r.text("advice"), tc.advice)
			}
		})
	}
}

func TestStateMismatch(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOptions{})
	link, _ := e.link(time.Hour)
	b := newBrowser(t)
	callback := b.authorize(b.press(link))
	cb, _ := url.Parse(callback)
	code, state := cb.Query().Get("code"), cb.Query().Get("state")
	at := func(v url.Values) string { return e.base + "/signin/callback?" + v.Encode() }
	tests := []struct {
		name    string
		browser *browser
		url     string
	}{
		{"another state", b, at(url.Values{"code": {code}, "state": {state + "x"}})},
		{"no state", b, at(url.Values{"code": {code}})},
		{"another browser", newBrowser(t), callback},
	}
	for _, tc := range tests {
		r := tc.browser.get(tc.url)
		if r.code != http.StatusBadRequest || r.outcome() != signin.OutcomeStateMismatch {
			t.Errorf("%s: %d %s", tc.name, r.code, r.outcome())
		}
	}
	e.noToken()
	if n := e.idp.RequestsOf("authorization_code"); n != 0 {
		t.Errorf("%d code exchanges without a matching state", n)
	}
	// The real browser still completes.
	if r := b.get(callback); r.outcome() != signin.OutcomeSignedIn {
		t.Errorf("the real callback: %s", r.outcome())
	}
}

func TestFlowExpires(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOptions{})
	link, _ := e.link(time.Hour)
	b := newBrowser(t)
	callback := b.authorize(b.press(link))
	e.clock.Advance(16 * time.Minute)
	r := b.get(callback)
	if r.outcome() != signin.OutcomeFlowExpired {
		t.Errorf("callback after 16 minutes: %s, want %s", r.outcome(), signin.OutcomeFlowExpired)
	}
	e.noToken()
}

func TestLinkPages(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOptions{})
	ctx := t.Context()
	now := e.clock.Now()
	sign := func(l signin.Link) string { return e.links.URL(e.links.Sign(l)) }
	valid := signin.Link{Project: "client-a", Mailbox: mailbox, Expiry: now.Add(time.Hour), Nonce: "n1"}

	basic := e.p
	basic.Name, basic.Senders = "basic-b", []string{"b@client.example"}
	basic.Auth = project.Auth{Type: project.AuthBasic, Username: "b@client.example", Password: secret.New("pw")}
	if _, err := e.st.PutProject(ctx, basic); err != nil {
		t.Fatal(err)
	}
	good, _ := e.link(time.Hour)

	tests := []struct {
		name    string
		url     string
		code    int
		outcome string
		says    string
	}{
		{"no link", e.base + "/signin", 400, signin.OutcomeLinkInvalid, "Copy the whole link"},
		{"tampered", strings.Replace(good, "l=", "l=x", 1), 400, signin.OutcomeLinkInvalid, "was changed"},
		{"expired", sign(signin.Link{Project: "client-a", Mailbox: mailbox, Expiry: now.Add(-time.Minute), Nonce: "n2"}), 410, signin.OutcomeLinkExpired, "postern authorize-link client-a"},
		{"unknown project", sign(signin.Link{Project: "gone", Mailbox: mailbox, Expiry: now.Add(time.Hour), Nonce: "n3"}), 404, signin.OutcomeProjectUnknown, "no project"},
		{"mailbox changed", sign(signin.Link{Project: "client-a", Mailbox: "old@client.example", Expiry: now.Add(time.Hour), Nonce: "n4"}), 410, signin.OutcomeMailboxChanged, "old@client.example"},
		{"not an oauth project", sign(signin.Link{Project: "basic-b", Mailbox: "b@client.example", Expiry: now.Add(time.Hour), Nonce: "n5"}), 409, signin.OutcomeNotEligible, "--auth oauth2"},
		{"valid", sign(valid), 200, signin.OutcomeLanding, "works once"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			b := newBrowser(t)
			r := b.get(tc.url)
			if r.code != tc.code || r.outcome() != tc.outcome || !strings.Contains(r.body, tc.says) {
				t.Fatalf("got %d %s, want %d %s saying %q\n%s", r.code, r.outcome(), tc.code, tc.outcome, tc.says, r.body)
			}
			// The button refuses the same links.
			l := mustQuery(t, tc.url, "l")
			if p := b.post(e.base+"/signin", url.Values{"l": {l}}); tc.outcome != signin.OutcomeLanding && p.outcome() != tc.outcome {
				t.Errorf("POST: %d %s", p.code, p.outcome())
			}
		})
	}
}

func TestExchangeFails(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOptions{})
	link, _ := e.link(time.Hour)
	b := newBrowser(t)
	callback := b.authorize(b.press(link))
	e.idp.Fail(1, oauthtest.Failure{Status: 400, Code: "invalid_grant", Description: "AADSTS54005: OAuth2 Authorization code was already redeemed"})
	r := b.get(callback)
	if r.code != http.StatusBadGateway || r.outcome() != signin.OutcomeExchangeFailed || !strings.Contains(r.text("detail"), "AADSTS54005") {
		t.Fatalf("%d %s %q", r.code, r.outcome(), r.text("detail"))
	}
	e.noToken()
}

// Without openid in the scopes the provider names no account: nothing is stored.
func TestNoIDToken(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOptions{project: func(p *project.Project) { p.Auth.OAuth.Scopes = []string{"offline_access"} }})
	link, _ := e.link(time.Hour)
	b := newBrowser(t)
	r := b.get(b.authorize(b.press(link)))
	if r.outcome() != signin.OutcomeAccountUnverified || !strings.Contains(r.text("detail"), "openid") {
		t.Fatalf("%s %q", r.outcome(), r.text("detail"))
	}
	e.noToken()
}

// The authorization request carries a nonce that the id_token must bring back: an id_token issued
// for another authorization request (a code injected from another sign-in) is refused.
func TestIDTokenOfAnotherSignIn(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOptions{})
	link, _ := e.link(time.Hour)
	b := newBrowser(t)
	auth := b.press(link)
	q := auth.Query()
	if len(q.Get("nonce")) < 20 {
		t.Fatalf("the authorization request has no random nonce: %q", q.Get("nonce"))
	}
	q.Set("nonce", "nonce-of-another-sign-in")
	auth.RawQuery = q.Encode()
	r := b.get(b.authorize(auth))
	if r.outcome() != signin.OutcomeAccountUnverified || !strings.Contains(r.text("detail"), "nonce") {
		t.Fatalf("%d %s %q", r.code, r.outcome(), r.text("detail"))
	}
	e.noToken()
	if got := b.get(b.authorize(b.press(link))); got.outcome() != signin.OutcomeSignedIn {
		t.Errorf("signing in with the sign-in's own nonce afterwards: %s", got.outcome())
	}
}

// After sign-in Postern signs in upstream over XOAUTH2 with the new token, through a real pool.
func TestUpstreamCheck(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		xo      func(valid func(user, token string) bool) upstreamtest.XOAUTH2
		outcome string
		advice  string
	}{
		{"accepted", func(v func(string, string) bool) upstreamtest.XOAUTH2 { return upstreamtest.XOAUTH2{Check: v} },
			signin.OutcomeSignedIn, ""},
		{"smtp auth disabled", func(func(string, string) bool) upstreamtest.XOAUTH2 {
			return upstreamtest.XOAUTH2{Refusal: &smtp.SMTPError{Code: 535, EnhancedCode: smtp.EnhancedCode{5, 7, 139},
				Message: "Authentication unsuccessful, SmtpClientAuthentication is disabled for the Mailbox."}}
		}, signin.OutcomeUpstreamRefused, "an Exchange admin must enable SMTP AUTH for this mailbox"},
		{"token refused", func(func(string, string) bool) upstreamtest.XOAUTH2 { return upstreamtest.XOAUTH2{Direct: true} },
			signin.OutcomeUpstreamRefused, "SMTP.Send"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			e := newEnv(t, envOptions{
				testAuth: func(e *env) func(context.Context, project.Project) error {
					pools := upstream.NewPools(upstream.Options{LocalName: "postern.test"})
					t.Cleanup(func() { pools.Close() })
					return signin.UpstreamCheck(pools, credential.New(credential.Options{OAuth: e.broker}))
				},
			})
			valid := func(user, tok string) bool {
				acct, ok := e.idp.Valid(tok)
				return ok && user == mailbox && acct == mailbox
			}
			up := upstreamtest.NewServer(t, upstreamtest.Options{Mechanisms: map[string]upstreamtest.Mechanism{
				xoauth2.Mechanism: tc.xo(valid).Mechanism(),
			}})
			e.p.Upstream = up.Upstream()
			if _, err := e.st.PutProject(t.Context(), withVersion(t, e, e.p)); err != nil {
				t.Fatal(err)
			}
			link, _ := e.link(time.Hour)
			b := newBrowser(t)
			r := b.get(b.authorize(b.press(link)))
			if r.outcome() != tc.outcome {
				t.Fatalf("%s, want %s\n%s", r.outcome(), tc.outcome, r.body)
			}
			if !strings.Contains(r.text("advice"), tc.advice) {
				t.Errorf("advice %q does not say %q", r.text("advice"), tc.advice)
			}
			st := up.Stats()
			if tc.outcome == signin.OutcomeSignedIn && (st.Auths != 1 || st.Messages != 0) {
				t.Errorf("upstream stats %+v: want one AUTH and no mail", st)
			}
			if tc.outcome == signin.OutcomeUpstreamRefused {
				if st.AuthFailures != 1 || !strings.Contains(r.text("detail"), "535") {
					t.Errorf("upstream stats %+v, detail %q", st, r.text("detail"))
				}
				// Saved all the same: the refusal is the mail server's, not the sign-in's.
				if _, err := e.st.Token(t.Context(), "client-a"); err != nil {
					t.Errorf("token record: %v", err)
				}
			}
			e.neverShown(r.body)
		})
	}
}

func withVersion(t *testing.T, e *env, p project.Project) project.Project {
	t.Helper()
	cur, err := e.st.Project(t.Context(), p.Name)
	if err != nil {
		t.Fatal(err)
	}
	p.Version = cur.Version
	return p
}

// The sign-in pages work behind a reverse proxy that serves them under a path.
func TestPublicURLWithPath(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOptions{})
	srv, err := signin.New(signin.Options{Key: e.key, PublicURL: "https://postern.example.com/mail/", Projects: e.st, Tokens: e.st, Grants: e.broker})
	if err != nil {
		t.Fatal(err)
	}
	if srv.RedirectURL() != "https://postern.example.com/mail/signin/callback" {
		t.Errorf("redirect URL %q", srv.RedirectURL())
	}
	link, err := srv.Link(e.p, time.Hour)
	if err != nil || !strings.HasPrefix(link, "https://postern.example.com/mail/signin?l=") {
		t.Fatalf("link %q %v", link, err)
	}
	l := mustQuery(t, link, "l")
	req := httptest.NewRequest(http.MethodPost, "/signin", strings.NewReader(url.Values{"l": {l}}.Encode()))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	rec := httptest.NewRecorder()
	srv.Handler().ServeHTTP(rec, req)
	if rec.Code != http.StatusSeeOther {
		t.Fatalf("POST /signin: %d %s", rec.Code, rec.Body)
	}
	c := rec.Result().Cookies()
	if len(c) != 1 || c[0].Path != "/mail/signin/callback" || !c[0].Secure || !c[0].HttpOnly || c[0].SameSite != http.SameSiteLaxMode {
		t.Errorf("cookie %+v", c)
	}
	if got := mustQuery(t, rec.Header().Get("Location"), "redirect_uri"); got != "https://postern.example.com/mail/signin/callback" {
		t.Errorf("redirect_uri %q", got)
	}
}

func TestNewReportsEveryProblem(t *testing.T) {
	t.Parallel()
	_, err := signin.New(signin.Options{Key: []byte("short"), PublicURL: "nowhere"})
	if err == nil {
		t.Fatal("New accepted empty options")
	}
	for _, want := range []string{"Projects", "Tokens", "Grants", "key"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not mention %s", err, want)
		}
	}
}
