package harness

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"html"
	"io"
	"net/http"
	"net/http/cookiejar"
	"net/url"
	"regexp"
	"strings"
	"time"

	"github.com/postern/postern/sidecar/secret"
)

// IdPTokens is a token endpoint response.
type IdPTokens struct {
	AccessToken  secret.Secret
	RefreshToken secret.Secret
	IDToken      secret.Secret
	TokenType    string
	Scope        string
	// ExpiresIn is the access token's lifetime as the server said (expires_in).
	ExpiresIn time.Duration
	// Expiry is when the access token expires: receipt time plus ExpiresIn.
	Expiry time.Time
	// Email is the id_token's email claim (not verified here), empty without an id_token.
	Email string
}

// IdPTokenError is an OAuth error response from the token or revocation endpoint.
type IdPTokenError struct {
	Status      int
	Code        string // e.g. invalid_grant
	Description string
}

func (e *IdPTokenError) Error() string {
	return fmt.Sprintf("oauth error %s (status %d): %s", e.Code, e.Status, e.Description)
}

// IdPIsInvalidGrant reports whether err is an invalid_grant answer.
func IdPIsInvalidGrant(err error) bool {
	var te *IdPTokenError
	return errors.As(err, &te) && te.Code == "invalid_grant"
}

// IdPSignInOptions configures SignIn.
type IdPSignInOptions struct {
	// ClientID names a registered client; empty means the first one.
	ClientID string
	// RedirectURI must be one of the client's; empty means its first.
	RedirectURI string
	// Scope is the requested scope; empty means IdPScopes.
	Scope string
	// Login and Password are typed into the sign-in form.
	Login    string
	Password secret.Secret
	// Prompt is sent as the prompt parameter when set (e.g. "consent").
	Prompt string
}

var (
	oauthFormAction = regexp.MustCompile(`<form id="([a-z-]+)" method="post" action="([^"]+)"`)
	oauthPageError  = regexp.MustCompile(`<p id="error">([^<]*)</p>`)
)

// SignIn runs the authorization code flow with PKCE S256 the way a browser would, with plain HTTP
// requests and a cookie jar: it opens the authorization URL, fills in the sign-in form, allows the
// consent form, reads the code from the redirect and exchanges it at the token endpoint.
func (p *IdP) SignIn(ctx context.Context, opts IdPSignInOptions) (IdPTokens, error) {
	client, err := p.pickClient(opts.ClientID)
	if err != nil {
		return IdPTokens{}, err
	}
	redirect := opts.RedirectURI
	if redirect == "" && len(client.RedirectURIs) > 0 {
		redirect = client.RedirectURIs[0]
	}
	scope := opts.Scope
	if scope == "" {
		scope = IdPScopes
	}

	verifier := oauthRandomB64(32)
	sum := sha256.Sum256([]byte(verifier))
	state := oauthRandomB64(16)
	q := url.Values{
		"response_type":         {"code"},
		"client_id":             {client.ID},
		"redirect_uri":          {redirect},
		"scope":                 {scope},
		"state":                 {state},
		"code_challenge":        {base64.RawURLEncoding.EncodeToString(sum[:])},
		"code_challenge_method": {"S256"},
		"login_hint":            {opts.Login},
	}
	if opts.Prompt != "" {
		q.Set("prompt", opts.Prompt)
	}

	jar, err := cookiejar.New(nil)
	if err != nil {
		return IdPTokens{}, fmt.Errorf("cookie jar: %w", err)
	}
	browser := &http.Client{
		Jar:     jar,
		Timeout: 30 * time.Second,
		CheckRedirect: func(req *http.Request, via []*http.Request) error {
			if strings.HasPrefix(req.URL.String(), redirect) {
				return http.ErrUseLastResponse
			}
			if len(via) > 10 {
				return errors.New("too many redirects")
			}
			return nil
		},
	}

	req, err := http.NewRequestWithContext(ctx, http.MethodGet, p.AuthorizeURL+"?"+q.Encode(), nil)
	if err != nil {
		return IdPTokens{}, fmt.Errorf("authorization request: %w", err)
	}
	resp, err := browser.Do(req)
	if err != nil {
		return IdPTokens{}, fmt.Errorf("opening authorization URL: %w", err)
	}
	for step := 0; ; step++ {
		if step > 5 {
			resp.Body.Close()
			return IdPTokens{}, errors.New("sign-in did not finish after 5 pages")
		}
		if loc := resp.Header.Get("Location"); resp.StatusCode/100 == 3 && strings.HasPrefix(loc, redirect) {
			resp.Body.Close()
			return p.redeem(ctx, client, redirect, loc, state, verifier)
		}
		body, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
		resp.Body.Close()
		if err != nil {
			return IdPTokens{}, fmt.Errorf("reading sign-in page: %w", err)
		}
		page := string(body)
		form := oauthFormAction.FindStringSubmatch(page)
		if form == nil {
			msg := ""
			if m := oauthPageError.FindStringSubmatch(page); m != nil {
				msg = html.UnescapeString(m[1])
			}
			return IdPTokens{}, fmt.Errorf("sign-in page without a form (status %d): %s", resp.StatusCode, msg)
		}
		action, err := resp.Request.URL.Parse(html.UnescapeString(form[2]))
		if err != nil {
			return IdPTokens{}, fmt.Errorf("form action %q: %w", form[2], err)
		}
		var fields url.Values
		switch form[1] {
		case "login-form":
			if m := oauthPageError.FindStringSubmatch(page); m != nil {
				return IdPTokens{}, fmt.Errorf("sign-in refused for %s: %s", opts.Login, html.UnescapeString(m[1]))
			}
			fields = url.Values{"login": {opts.Login}, "password": {opts.Password.Reveal()}, "submit": {"login"}}
		case "consent-form":
			fields = url.Values{"submit": {"allow"}}
		default:
			return IdPTokens{}, fmt.Errorf("unexpected form %q", form[1])
		}
		post, err := http.NewRequestWithContext(ctx, http.MethodPost, action.String(), strings.NewReader(fields.Encode()))
		if err != nil {
			return IdPTokens{}, fmt.Errorf("posting %s: %w", form[1], err)
		}
		post.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		resp, err = browser.Do(post)
		if err != nil {
			return IdPTokens{}, fmt.Errorf("posting %s: %w", form[1], err)
		}
	}
}

func (p *IdP) redeem(ctx context.Context, client IdPClient, redirect, location, state, verifier string) (IdPTokens, error) {
	u, err := url.Parse(location)
	if err != nil {
		return IdPTokens{}, fmt.Errorf("parsing redirect: %w", err)
	}
	q := u.Query()
	if e := q.Get("error"); e != "" {
		return IdPTokens{}, &IdPTokenError{Code: e, Description: q.Get("error_description")}
	}
	if q.Get("state") != state {
		return IdPTokens{}, errors.New("redirect carries the wrong state")
	}
	if iss := q.Get("iss"); iss != "" && iss != p.Issuer {
		return IdPTokens{}, fmt.Errorf("redirect names issuer %q, want %q", iss, p.Issuer)
	}
	return p.tokenRequest(ctx, client, url.Values{
		"grant_type":    {"authorization_code"},
		"code":          {q.Get("code")},
		"redirect_uri":  {redirect},
		"code_verifier": {verifier},
	})
}

// Refresh redeems a refresh token. With rotation, the answer carries a new refresh token and the
// presented one is spent: presenting it again fails with invalid_grant and revokes the grant.
func (p *IdP) Refresh(ctx context.Context, clientID string, refreshToken secret.Secret) (IdPTokens, error) {
	client, err := p.pickClient(clientID)
	if err != nil {
		return IdPTokens{}, err
	}
	return p.tokenRequest(ctx, client, url.Values{
		"grant_type":    {"refresh_token"},
		"refresh_token": {refreshToken.Reveal()},
	})
}

// RevokeToken calls the standard revocation endpoint (RFC 7009) for a refresh or access token.
// oidc-provider revokes the whole grant when a refresh token is revoked.
func (p *IdP) RevokeToken(ctx context.Context, clientID string, token secret.Secret, hint string) error {
	client, err := p.pickClient(clientID)
	if err != nil {
		return err
	}
	form := url.Values{"token": {token.Reveal()}}
	if hint != "" {
		form.Set("token_type_hint", hint)
	}
	resp, err := p.postForm(ctx, p.RevocationURL, client, form)
	if err != nil {
		return fmt.Errorf("revoking token: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return oauthErrorFrom(resp)
	}
	return nil
}

// IdPIntrospection is the part of an introspection response tests look at.
type IdPIntrospection struct {
	Active   bool   `json:"active"`
	Sub      string `json:"sub"`
	Email    string `json:"email"`
	ClientID string `json:"client_id"`
	Scope    string `json:"scope"`
	Aud      any    `json:"aud"`
	Exp      int64  `json:"exp"`
}

// Introspect asks the introspection endpoint about a token, authenticated as the introspection
// client (as Dovecot is).
func (p *IdP) Introspect(ctx context.Context, token secret.Secret) (IdPIntrospection, error) {
	resp, err := p.postForm(ctx, p.IntrospectionURL, p.IntrospectionClient, url.Values{"token": {token.Reveal()}})
	if err != nil {
		return IdPIntrospection{}, fmt.Errorf("introspecting token: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return IdPIntrospection{}, oauthErrorFrom(resp)
	}
	var out IdPIntrospection
	if err := json.NewDecoder(resp.Body).Decode(&out); err != nil {
		return IdPIntrospection{}, fmt.Errorf("decoding introspection response: %w", err)
	}
	return out, nil
}

func (p *IdP) tokenRequest(ctx context.Context, client IdPClient, form url.Values) (IdPTokens, error) {
	resp, err := p.postForm(ctx, p.TokenURL, client, form)
	if err != nil {
		return IdPTokens{}, fmt.Errorf("token request (%s): %w", form.Get("grant_type"), err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return IdPTokens{}, oauthErrorFrom(resp)
	}
	var raw struct {
		AccessToken  string `json:"access_token"`
		RefreshToken string `json:"refresh_token"`
		IDToken      string `json:"id_token"`
		TokenType    string `json:"token_type"`
		Scope        string `json:"scope"`
		ExpiresIn    int    `json:"expires_in"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&raw); err != nil {
		return IdPTokens{}, fmt.Errorf("decoding token response: %w", err)
	}
	out := IdPTokens{
		AccessToken:  secret.New(raw.AccessToken),
		RefreshToken: secret.New(raw.RefreshToken),
		IDToken:      secret.New(raw.IDToken),
		TokenType:    raw.TokenType,
		Scope:        raw.Scope,
		ExpiresIn:    time.Duration(raw.ExpiresIn) * time.Second,
		Expiry:       time.Now().Add(time.Duration(raw.ExpiresIn) * time.Second),
	}
	if raw.IDToken != "" {
		email, err := oauthIDTokenEmail(raw.IDToken)
		if err != nil {
			return IdPTokens{}, err
		}
		out.Email = email
	}
	return out, nil
}

func (p *IdP) postForm(ctx context.Context, endpoint string, client IdPClient, form url.Values) (*http.Response, error) {
	if client.Secret.IsZero() {
		form.Set("client_id", client.ID)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, endpoint, strings.NewReader(form.Encode()))
	if err != nil {
		return nil, err
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set("Accept", "application/json")
	if !client.Secret.IsZero() {
		req.SetBasicAuth(url.QueryEscape(client.ID), url.QueryEscape(client.Secret.Reveal()))
	}
	return http.DefaultClient.Do(req)
}

func (p *IdP) pickClient(id string) (IdPClient, error) {
	if id == "" && len(p.Clients) > 0 {
		return p.Clients[0], nil
	}
	if c, ok := p.Client(id); ok {
		return c, nil
	}
	return IdPClient{}, fmt.Errorf("client %q is not registered", id)
}

func oauthErrorFrom(resp *http.Response) error {
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	var e struct {
		Error       string `json:"error"`
		Description string `json:"error_description"`
	}
	if err := json.Unmarshal(body, &e); err != nil || e.Error == "" {
		return &IdPTokenError{Status: resp.StatusCode, Code: "http_error", Description: fmt.Sprintf("unexpected status %d", resp.StatusCode)}
	}
	return &IdPTokenError{Status: resp.StatusCode, Code: e.Error, Description: e.Description}
}

// oauthIDTokenEmail reads the email claim of an id_token without verifying its signature.
func oauthIDTokenEmail(idToken string) (string, error) {
	parts := strings.Split(idToken, ".")
	if len(parts) != 3 {
		return "", errors.New("id_token is not a JWS")
	}
	payload, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil {
		return "", fmt.Errorf("decoding id_token payload: %w", err)
	}
	var claims struct {
		Email string `json:"email"`
	}
	if err := json.Unmarshal(payload, &claims); err != nil {
		return "", fmt.Errorf("decoding id_token claims: %w", err)
	}
	return claims.Email, nil
}

func oauthRandomB64(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return base64.RawURLEncoding.EncodeToString(b)
}
