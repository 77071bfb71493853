package oauth_test

import (
	"context"
	"errors"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/oauth2"

	"github.com/postern/postern/sidecar/oauth"
	"github.com/postern/postern/sidecar/oauth/oauthtest"
	"github.com/postern/postern/sidecar/project"
	"github.com/postern/postern/sidecar/secret"
)

func TestConfigFor(t *testing.T) {
	t.Parallel()
	ms := "https://login.microsoftonline.com/contoso.onmicrosoft.com/oauth2/v2.0/"
	tests := []struct {
		name     string
		o        project.OAuth
		wantErr  string
		auth     string
		token    string
		device   string
		scopes   []string
		style    oauth2.AuthStyle
		urlHas   []string
		urlLacks []string
	}{
		{
			name:   "microsoft delegated",
			o:      project.OAuth{Provider: "microsoft", Tenant: "contoso.onmicrosoft.com", ClientID: "cid"},
			auth:   ms + "authorize",
			token:  ms + "token",
			device: ms + "devicecode",
			scopes: []string{"https://outlook.office.com/SMTP.Send", "offline_access", "openid", "email", "profile"},
			style:  oauth2.AuthStyleInParams,
			urlHas: []string{"code_challenge_method=S256", "state=st", "redirect_uri="},
		},
		{
			name:   "microsoft app-only",
			o:      project.OAuth{Provider: "microsoft", Tenant: "contoso.onmicrosoft.com", ClientID: "cid", ClientSecret: secret.New("s"), Grant: "client_credentials"},
			auth:   ms + "authorize",
			token:  ms + "token",
			device: ms + "devicecode",
			scopes: []string{"https://outlook.office365.com/.default"},
			style:  oauth2.AuthStyleInParams,
		},
		{
			name:    "microsoft app-only refuses common",
			o:       project.OAuth{Provider: "microsoft", Tenant: "common", ClientID: "cid", ClientSecret: secret.New("s"), Grant: "client_credentials"},
			wantErr: "tenant's own id",
		},
		{
			name:    "microsoft app-only needs a secret",
			o:       project.OAuth{Provider: "microsoft", Tenant: "contoso.onmicrosoft.com", ClientID: "cid", Grant: "client_credentials"},
			wantErr: "client secret",
		},
		{
			name:    "microsoft without tenant",
			o:       project.OAuth{Provider: "microsoft", ClientID: "cid"},
			wantErr: "tenant is empty",
		},
		{
			name:    "microsoft tenant with a slash",
			o:       project.OAuth{Provider: "microsoft", Tenant: "a/b", ClientID: "cid"},
			wantErr: "not a tenant",
		},
		{
			name:   "microsoft explicit scopes",
			o:      project.OAuth{Provider: "microsoft", Tenant: "organizations", ClientID: "cid", Scopes: []string{"https://outlook.office.com/SMTP.Send", "offline_access"}},
			auth:   "https://login.microsoftonline.com/organizations/oauth2/v2.0/authorize",
			token:  "https://login.microsoftonline.com/organizations/oauth2/v2.0/token",
			device: "https://login.microsoftonline.com/organizations/oauth2/v2.0/devicecode",
			scopes: []string{"https://outlook.office.com/SMTP.Send", "offline_access"},
			style:  oauth2.AuthStyleInParams,
		},
		{
			name:   "google",
			o:      project.OAuth{Provider: "google", ClientID: "cid", ClientSecret: secret.New("s")},
			auth:   "https://accounts.google.com/o/oauth2/auth",
			token:  "https://oauth2.googleapis.com/token",
			scopes: []string{"https://mail.google.com/", "openid", "email"},
			style:  oauth2.AuthStyleInParams,
			urlHas: []string{"access_type=offline", "prompt=consent", "code_challenge="},
		},
		{
			name:    "google has no device flow for gmail",
			o:       project.OAuth{Provider: "google", ClientID: "cid", Grant: "device_code"},
			wantErr: "no device flow",
		},
		{
			name:    "google has no client credentials",
			o:       project.OAuth{Provider: "google", ClientID: "cid", Grant: "client_credentials"},
			wantErr: "no client credentials",
		},
		{
			name:     "generic",
			o:        project.OAuth{Provider: "generic", ClientID: "cid", AuthURL: "https://idp.example/a", TokenURL: "https://idp.example/t", DeviceURL: "https://idp.example/d", Scopes: []string{"smtp"}},
			auth:     "https://idp.example/a",
			token:    "https://idp.example/t",
			device:   "https://idp.example/d",
			scopes:   []string{"smtp"},
			style:    oauth2.AuthStyleInParams,
			urlLacks: []string{"access_type", "prompt"},
		},
		{
			name:   "generic confidential client uses basic auth, with OpenID's scopes by default",
			o:      project.OAuth{Provider: "generic", ClientID: "cid", ClientSecret: secret.New("s"), AuthURL: "https://idp.example/a", TokenURL: "https://idp.example/t"},
			auth:   "https://idp.example/a",
			token:  "https://idp.example/t",
			style:  oauth2.AuthStyleInHeader,
			scopes: []string{"openid", "email", "offline_access"},
		},
		{
			name:  "generic client credentials get no default scopes",
			o:     project.OAuth{Provider: "generic", ClientID: "cid", ClientSecret: secret.New("s"), TokenURL: "https://idp.example/t", Grant: "client_credentials"},
			token: "https://idp.example/t",
			style: oauth2.AuthStyleInHeader,
		},
		{
			name:    "generic device without device_url",
			o:       project.OAuth{Provider: "generic", ClientID: "cid", TokenURL: "https://idp.example/t", Grant: "device_code"},
			wantErr: "needs device_url",
		},
		{
			name:    "generic code without auth_url",
			o:       project.OAuth{Provider: "generic", ClientID: "cid", TokenURL: "https://idp.example/t"},
			wantErr: "needs auth_url",
		},
		{
			name:   "generic on loopback over http",
			o:      project.OAuth{Provider: "generic", ClientID: "cid", AuthURL: "http://localhost:8080/a", TokenURL: "http://127.0.0.1:8080/t", DeviceURL: "http://[::1]:8080/d", Issuer: "http://127.0.0.2"},
			auth:   "http://localhost:8080/a",
			token:  "http://127.0.0.1:8080/t",
			device: "http://[::1]:8080/d",
			style:  oauth2.AuthStyleInParams,
			scopes: []string{"openid", "email", "offline_access"},
		},
		{
			name:    "generic http token_url",
			o:       project.OAuth{Provider: "generic", ClientID: "cid", AuthURL: "https://idp.example/a", TokenURL: "http://idp.example/t"},
			wantErr: "token_url: \"http://idp.example/t\": use https",
		},
		{
			name:    "generic http auth_url",
			o:       project.OAuth{Provider: "generic", ClientID: "cid", AuthURL: "http://idp.example/a", TokenURL: "https://idp.example/t"},
			wantErr: "auth_url: \"http://idp.example/a\": use https",
		},
		{
			name:    "generic http device_url",
			o:       project.OAuth{Provider: "generic", ClientID: "cid", DeviceURL: "http://idp.example/d", TokenURL: "https://idp.example/t", Grant: "device_code"},
			wantErr: "device_url",
		},
		{
			name:    "generic http revocation_url",
			o:       project.OAuth{Provider: "generic", ClientID: "cid", AuthURL: "https://idp.example/a", TokenURL: "https://idp.example/t", RevocationURL: "http://idp.example/r"},
			wantErr: "revocation_url",
		},
		{
			name:    "generic http issuer",
			o:       project.OAuth{Provider: "generic", ClientID: "cid", AuthURL: "https://idp.example/a", TokenURL: "https://idp.example/t", Issuer: "http://idp.example"},
			wantErr: "issuer",
		},
		{
			name:    "generic host that only starts with 127.",
			o:       project.OAuth{Provider: "generic", ClientID: "cid", AuthURL: "https://idp.example/a", TokenURL: "http://127.evil.example/t"},
			wantErr: "use https",
		},
		{
			name:    "generic host that only starts with localhost",
			o:       project.OAuth{Provider: "generic", ClientID: "cid", AuthURL: "http://localhost.evil.example/a", TokenURL: "https://idp.example/t"},
			wantErr: "use https",
		},
		{
			name:    "generic token_url with another scheme",
			o:       project.OAuth{Provider: "generic", ClientID: "cid", AuthURL: "https://idp.example/a", TokenURL: "ftp://idp.example/t"},
			wantErr: "use https",
		},
		{
			name:    "generic relative token_url",
			o:       project.OAuth{Provider: "generic", ClientID: "cid", AuthURL: "https://idp.example/a", TokenURL: "/t"},
			wantErr: "not an absolute URL",
		},
		{
			name:    "generic without token_url",
			o:       project.OAuth{Provider: "generic", ClientID: "cid"},
			wantErr: "token_url is empty",
		},
		{
			name:    "unknown provider",
			o:       project.OAuth{Provider: "yahoo", ClientID: "cid"},
			wantErr: "use microsoft, google or generic",
		},
		{
			name:    "unknown grant",
			o:       project.OAuth{Provider: "google", ClientID: "cid", Grant: "password"},
			wantErr: "grant \"password\"",
		},
		{
			name:    "no client id",
			o:       project.OAuth{Provider: "google"},
			wantErr: "client_id is empty",
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			cfg, err := oauth.ConfigFor(&tc.o, "https://postern.example/callback")
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err = %v, want one containing %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			ep := cfg.Endpoint
			if ep.AuthURL != tc.auth || ep.TokenURL != tc.token || ep.DeviceAuthURL != tc.device {
				t.Fatalf("endpoint = %+v", ep)
			}
			if ep.AuthStyle != tc.style {
				t.Fatalf("auth style = %v, want %v", ep.AuthStyle, tc.style)
			}
			if !slices.Equal(cfg.Scopes, tc.scopes) {
				t.Fatalf("scopes = %q, want %q", cfg.Scopes, tc.scopes)
			}
			if cfg.ClientID != "cid" || cfg.ClientSecret != tc.o.ClientSecret.Reveal() || cfg.RedirectURL != "https://postern.example/callback" {
				t.Fatalf("client = %q, redirect %q", cfg.ClientID, cfg.RedirectURL)
			}
			p, err := oauth.NewProvider(&tc.o, oauth.Options{RedirectURL: "https://postern.example/callback"})
			if err != nil {
				t.Fatal(err)
			}
			u := p.AuthCodeURL("st", oauth.NewVerifier())
			for _, s := range tc.urlHas {
				if !strings.Contains(u, s) {
					t.Errorf("auth URL %s lacks %q", u, s)
				}
			}
			for _, s := range tc.urlLacks {
				if strings.Contains(u, s) {
					t.Errorf("auth URL %s has %q", u, s)
				}
			}
		})
	}
}

func noRedirect() *http.Client {
	return &http.Client{
		Timeout:       10 * time.Second,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
}

// signIn follows the authorization URL to the fake and returns the callback's query.
func signIn(t *testing.T, authURL string) url.Values {
	t.Helper()
	resp, err := noRedirect().Get(authURL)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusFound {
		t.Fatalf("authorize answered %s", resp.Status)
	}
	loc, err := url.Parse(resp.Header.Get("Location"))
	if err != nil {
		t.Fatal(err)
	}
	return loc.Query()
}

func TestAuthorizationCode(t *testing.T) {
	t.Parallel()
	idp := oauthtest.New(t, oauthtest.Options{ClientSecret: "shh"})
	p, err := oauth.NewProvider(idp.OAuth("", "openid", "email", "offline_access"), oauth.Options{RedirectURL: "http://127.0.0.1/callback"})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()

	t.Run("pkce and state round trip", func(t *testing.T) {
		t.Parallel()
		state, verifier := oauth.NewState(), oauth.NewVerifier()
		cb := signIn(t, p.AuthCodeURL(state, verifier, oauth.LoginHint("mailbox@client.example")))
		if cb.Get("state") != state {
			t.Fatalf("state = %q, want %q", cb.Get("state"), state)
		}
		tok, err := p.Exchange(ctx, cb.Get("code"), verifier)
		if err != nil {
			t.Fatal(err)
		}
		if tok.RefreshToken == "" || tok.AccessToken == "" {
			t.Fatal("no refresh or access token")
		}
		acct, err := p.Account(ctx, tok)
		if err != nil || acct != "mailbox@client.example" {
			t.Fatalf("Account = %q, %v", acct, err)
		}
		if a, _ := oauth.Account(tok); a != acct {
			t.Fatalf("unverified Account = %q", a)
		}
	})
	t.Run("wrong verifier", func(t *testing.T) {
		t.Parallel()
		cb := signIn(t, p.AuthCodeURL(oauth.NewState(), oauth.NewVerifier()))
		_, err := p.Exchange(ctx, cb.Get("code"), oauth.NewVerifier())
		var re *oauth2.RetrieveError
		if !errors.As(err, &re) || re.ErrorCode != "invalid_grant" {
			t.Fatalf("err = %v, want invalid_grant", err)
		}
	})
}

func TestDeviceFlow(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	tests := []struct {
		name     string
		setup    func(idp *oauthtest.Server, userCode string)
		onPoll   func(idp *oauthtest.Server, userCode string, ev oauth.DevicePoll)
		wantPoll []oauth.DevicePoll
		wantKind oauth.Kind // Unknown: success expected
	}{
		{
			name: "pending then signed in",
			onPoll: func(idp *oauthtest.Server, uc string, ev oauth.DevicePoll) {
				idp.ApproveDevice(uc, "dev@client.example")
			},
			wantPoll: []oauth.DevicePoll{{Attempt: 1, Code: "authorization_pending", Interval: time.Second}},
		},
		{
			name:  "slow_down adds five seconds",
			setup: func(idp *oauthtest.Server, uc string) { idp.SlowDown(uc, 1) },
			onPoll: func(idp *oauthtest.Server, uc string, ev oauth.DevicePoll) {
				idp.ApproveDevice(uc, "dev@client.example")
			},
			wantPoll: []oauth.DevicePoll{{Attempt: 1, Code: "slow_down", Interval: 6 * time.Second}},
		},
		{
			name:     "declined",
			setup:    func(idp *oauthtest.Server, uc string) { idp.DenyDevice(uc) },
			wantKind: oauth.NeedsReauth,
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			idp := oauthtest.New(t, oauthtest.Options{})
			p, err := oauth.NewProvider(idp.OAuth("device_code", "openid", "email", "offline_access"), oauth.Options{})
			if err != nil {
				t.Fatal(err)
			}
			da, err := p.DeviceAuth(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if da.UserCode == "" || da.VerificationURI == "" || da.Interval != 1 {
				t.Fatalf("device auth = %+v", da)
			}
			if tc.setup != nil {
				tc.setup(idp, da.UserCode)
			}
			var mu sync.Mutex
			var polls []oauth.DevicePoll
			start := time.Now()
			tok, err := p.DeviceToken(ctx, da, func(ev oauth.DevicePoll) {
				mu.Lock()
				polls = append(polls, ev)
				mu.Unlock()
				if tc.onPoll != nil {
					tc.onPoll(idp, da.UserCode, ev)
				}
			})
			if tc.wantKind != oauth.Unknown {
				if k := oauth.Classify(err); k != tc.wantKind {
					t.Fatalf("err = %v (%v), want %v", err, k, tc.wantKind)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if a, err := p.Account(ctx, tok); err != nil || a != "dev@client.example" {
				t.Fatalf("Account = %q, %v", a, err)
			}
			mu.Lock()
			defer mu.Unlock()
			if !slices.Equal(polls, tc.wantPoll) {
				t.Fatalf("polls = %+v, want %+v", polls, tc.wantPoll)
			}
			// The wait after slow_down really was longer: the last interval passed before success.
			if min := tc.wantPoll[len(tc.wantPoll)-1].Interval; time.Since(start) < min {
				t.Fatalf("signed in after %v, before the %v interval", time.Since(start), min)
			}
			if got := idp.RequestsOf("urn:ietf:params:oauth:grant-type:device_code"); got != len(tc.wantPoll)+1 {
				t.Fatalf("%d polls reached the server, want %d", got, len(tc.wantPoll)+1)
			}
		})
	}
}

func TestClientCredentialsAndRefresh(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	idp := oauthtest.New(t, oauthtest.Options{ClientSecret: "shh"})
	p, err := oauth.NewProvider(idp.OAuth("client_credentials", "smtp"), oauth.Options{})
	if err != nil {
		t.Fatal(err)
	}
	tok, err := p.ClientCredentials(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if tok.RefreshToken != "" {
		t.Fatal("client credentials gave a refresh token")
	}
	if _, ok := idp.Valid(tok.AccessToken); !ok {
		t.Fatal("access token not valid at the server")
	}

	g := idp.Grant("a@client.example")
	next, err := p.Refresh(ctx, secret.New(g.RefreshToken))
	if err != nil {
		t.Fatal(err)
	}
	if next.RefreshToken == "" || next.RefreshToken == g.RefreshToken {
		t.Fatal("refresh token not rotated")
	}
	if _, err := p.Refresh(ctx, secret.Secret{}); err == nil {
		t.Fatal("refresh without a refresh token succeeded")
	}
	if err := p.Revoke(ctx, secret.New(next.RefreshToken), "refresh_token"); err != nil {
		t.Fatal(err)
	}
	_, err = p.Refresh(ctx, secret.New(next.RefreshToken))
	if oauth.Classify(err) != oauth.NeedsReauth {
		t.Fatalf("refresh after revocation: %v", err)
	}

	bad := idp.OAuth("client_credentials", "smtp")
	bad.ClientSecret = secret.New("wrong")
	pb, _ := oauth.NewProvider(bad, oauth.Options{})
	_, err = pb.ClientCredentials(ctx)
	if oauth.Classify(err) != oauth.BadClient || !strings.Contains(oauth.Reason(err), "AADSTS7000215") {
		t.Fatalf("wrong secret: %v (%v)", err, oauth.Classify(err))
	}
	if strings.Contains(err.Error(), "wrong") {
		t.Fatal("the client secret appears in the error")
	}
}

func TestVerifyIDToken(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	idp := oauthtest.New(t, oauthtest.Options{})
	other := oauthtest.New(t, oauthtest.Options{})
	p, err := oauth.NewProvider(idp.OAuth("", "openid"), oauth.Options{})
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	claims := func(over map[string]any) map[string]any {
		c := map[string]any{"iss": idp.URL, "aud": idp.ClientID, "exp": now.Add(time.Hour).Unix(), "sub": "s-1", "email": "a@client.example", "email_verified": true}
		for k, v := range over {
			if v == nil {
				delete(c, k)
			} else {
				c[k] = v
			}
		}
		return c
	}
	rs256 := map[string]any{"alg": "RS256", "kid": "test-key-1"}
	tests := []struct {
		name    string
		raw     string
		want    string
		wantErr string
	}{
		{"good", idp.Sign(rs256, claims(nil)), "a@client.example", ""},
		{"audience list", idp.Sign(rs256, claims(map[string]any{"aud": []string{"x", idp.ClientID}})), "a@client.example", ""},
		{"email_verified as a string", idp.Sign(rs256, claims(map[string]any{"email_verified": "true"})), "a@client.example", ""},
		{"email not verified", idp.Sign(rs256, claims(map[string]any{"email_verified": false})), "", "not verified"},
		{"email_verified missing", idp.Sign(rs256, claims(map[string]any{"email_verified": nil})), "", "not verified"},
		{"unverified email and a preferred_username", idp.Sign(rs256, claims(map[string]any{"email_verified": nil, "preferred_username": "a@client.example"})), "", "not verified"},
		// Without email in the id_token the userinfo endpoint is asked, with the access token "x",
		// which it refuses.
		{"preferred_username is no mailbox off Microsoft", idp.Sign(rs256, claims(map[string]any{"email": nil, "preferred_username": "p@client.example"})), "", "userinfo endpoint"},
		{"upn is no mailbox off Microsoft", idp.Sign(rs256, claims(map[string]any{"email": nil, "upn": "u@client.example"})), "", "userinfo endpoint"},
		{"no sub", idp.Sign(rs256, claims(map[string]any{"sub": nil})), "", "no sub"},
		{"no account claim", idp.Sign(rs256, claims(map[string]any{"email": nil})), "", "userinfo endpoint"},
		{"other audience", idp.Sign(rs256, claims(map[string]any{"aud": "someone-else"})), "", "audience"},
		{"expired", idp.Sign(rs256, claims(map[string]any{"exp": now.Add(-time.Hour).Unix()})), "", "expired"},
		{"no exp", idp.Sign(rs256, claims(map[string]any{"exp": nil})), "", "no exp"},
		{"not yet valid", idp.Sign(rs256, claims(map[string]any{"nbf": now.Add(time.Hour).Unix()})), "", "before the nbf"},
		{"other issuer", idp.Sign(rs256, claims(map[string]any{"iss": "https://evil.example"})), "", "issuer"},
		{"signed by another key", other.Sign(rs256, claims(nil)), "", "failed to verify id token signature"},
		{"alg none", idp.Sign(map[string]any{"alg": "none", "kid": "test-key-1"}, claims(nil)), "", `unexpected signature algorithm "none"`},
		{"unknown kid", idp.Sign(map[string]any{"alg": "RS256", "kid": "nope"}, claims(nil)), "", "failed to verify id token signature"},
		{"garbage", "a.b", "", "compact JWS"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			tok := (&oauth2.Token{AccessToken: "x"}).WithExtra(map[string]any{"id_token": tc.raw})
			got, err := p.Account(ctx, tok)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("Account = %q, %v; want an error containing %q", got, err, tc.wantErr)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Fatalf("Account = %q, %v; want %q", got, err, tc.want)
			}
		})
	}
	// WithNonce: the id_token must carry the sign-in's nonce.
	for _, tc := range []struct {
		name, nonce string
		claim       any
		wantErr     bool
	}{
		{"same nonce", "n-1", "n-1", false},
		{"another nonce", "n-1", "n-2", true},
		{"no nonce claim", "n-1", nil, true},
		{"no nonce asked", "", "n-2", false},
	} {
		tok := (&oauth2.Token{AccessToken: "x"}).WithExtra(map[string]any{"id_token": idp.Sign(rs256, claims(map[string]any{"nonce": tc.claim}))})
		_, err := p.Account(ctx, tok, oauth.WithNonce(tc.nonce))
		if tc.wantErr != (err != nil) || err != nil && !strings.Contains(err.Error(), "nonce") {
			t.Errorf("%s: Account = %v, want error %v", tc.name, err, tc.wantErr)
		}
	}
	if _, err := oauth.Account(&oauth2.Token{AccessToken: "x"}); err == nil || !strings.Contains(err.Error(), "no id_token") {
		t.Fatalf("Account without id_token: %v", err)
	}
}

func FuzzParseIDToken(f *testing.F) {
	f.Add("eyJhbGciOiJSUzI1NiJ9.eyJpc3MiOiJ4IiwiYXVkIjpbImEiXSwiZXhwIjoxfQ.c2ln")
	f.Add("a.b.c")
	f.Add("..")
	f.Fuzz(func(t *testing.T, raw string) {
		tok, err := oauth.ParseIDToken(raw)
		if err != nil {
			if strings.Contains(err.Error(), raw) && len(raw) > 8 {
				t.Fatalf("error %q quotes the token", err)
			}
			return
		}
		for _, prov := range []string{oauth.Microsoft, oauth.Google, oauth.Generic} {
			if id, err := tok.Claims.Identity(prov); err == nil && (id.Mailbox == "" || id.ID == "") {
				t.Fatalf("%s: identity %+v without a mailbox or id", prov, id)
			}
		}
	})
}

// A standard OpenID provider may name the account at its userinfo endpoint only: the account is
// read there, for the id_token's subject, with the same email_verified rule.
func TestIdentityFromUserinfo(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	const account = "a@client.example"
	tests := []struct {
		name    string
		claims  map[string]any // of the userinfo answer, over the defaults
		issuer  bool
		want    string
		wantErr string
	}{
		{"email at userinfo", nil, true, account, ""},
		{"unverified email at userinfo", map[string]any{"email_verified": false}, true, "", "not verified"},
		{"userinfo for another subject", map[string]any{"sub": "someone-else"}, true, "", "answered for subject"},
		{"no issuer, no userinfo", nil, false, "", "names the account"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			idp := oauthtest.New(t, oauthtest.Options{
				IDClaims:       func(string) map[string]any { return map[string]any{"email": nil, "email_verified": nil} },
				UserinfoClaims: func(string) map[string]any { return tc.claims },
			})
			o := idp.OAuth("", "openid", "email")
			if !tc.issuer {
				o.Issuer = ""
			}
			p, err := oauth.NewProvider(o, oauth.Options{})
			if err != nil {
				t.Fatal(err)
			}
			g := idp.Grant(account)
			tok := (&oauth2.Token{AccessToken: g.AccessToken}).WithExtra(map[string]any{
				"id_token": idp.IDToken(map[string]any{"sub": oauthtest.Subject(account)}),
			})
			got, err := p.Account(ctx, tok)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("Account = %q, %v; want an error containing %q", got, err, tc.wantErr)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Fatalf("Account = %q, %v; want %q", got, err, tc.want)
			}
		})
	}
}

// Every request of the id_token check (discovery, keys, userinfo) goes through Options.HTTPClient,
// which is how an operator's outbound proxy is honoured.
func TestIdentityThroughHTTPClient(t *testing.T) {
	t.Parallel()
	const account = "a@client.example"
	idp := oauthtest.New(t, oauthtest.Options{
		IDClaims: func(string) map[string]any { return map[string]any{"email": nil, "email_verified": nil} },
	})
	var mu sync.Mutex
	var paths []string
	client := &http.Client{Transport: roundTripFunc(func(r *http.Request) (*http.Response, error) {
		mu.Lock()
		paths = append(paths, r.URL.Path)
		mu.Unlock()
		return http.DefaultTransport.RoundTrip(r)
	})}
	p, err := oauth.NewProvider(idp.OAuth("", "openid", "email"), oauth.Options{HTTPClient: client})
	if err != nil {
		t.Fatal(err)
	}
	g := idp.Grant(account)
	tok := (&oauth2.Token{AccessToken: g.AccessToken}).WithExtra(map[string]any{
		"id_token": idp.IDToken(map[string]any{"sub": oauthtest.Subject(account)}),
	})
	if got, err := p.Account(context.Background(), tok); err != nil || got != account {
		t.Fatalf("Account = %q, %v; want %q", got, err, account)
	}
	mu.Lock()
	defer mu.Unlock()
	for _, want := range []string{"/.well-known/openid-configuration", "/jwks", "/userinfo"} {
		if !slices.Contains(paths, want) {
			t.Errorf("%s was not asked through the configured HTTP client (asked: %v)", want, paths)
		}
	}
}

type roundTripFunc func(*http.Request) (*http.Response, error)

func (f roundTripFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }
