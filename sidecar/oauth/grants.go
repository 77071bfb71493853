package oauth

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/oauth2"
	"golang.org/x/oauth2/clientcredentials"

	"github.com/postern/postern/sidecar/secret"
)

// NewState returns a random state for an authorization request (256 bits, URL-safe).
func NewState() string {
	b := make([]byte, 32)
	_, _ = rand.Read(b)
	return base64.RawURLEncoding.EncodeToString(b)
}

// NewVerifier returns a PKCE code verifier (RFC 7636).
func NewVerifier() string { return oauth2.GenerateVerifier() }

// LoginHint pre-fills the account on the provider's sign-in page.
func LoginHint(mailbox string) oauth2.AuthCodeOption {
	return oauth2.SetAuthURLParam("login_hint", mailbox)
}

// AuthCodeURL returns the URL a person signs in at, with the PKCE S256 challenge of verifier, the
// state the callback must return, and the provider's own parameters (Google: access_type=offline,
// prompt=consent).
func (p *Provider) AuthCodeURL(state, verifier string, opts ...oauth2.AuthCodeOption) string {
	all := append([]oauth2.AuthCodeOption{oauth2.S256ChallengeOption(verifier)}, p.AuthParams...)
	return p.Config.AuthCodeURL(state, append(all, opts...)...)
}

// Exchange trades the code the callback received for a token, proving possession of verifier.
func (p *Provider) Exchange(ctx context.Context, code, verifier string) (*oauth2.Token, error) {
	tok, err := p.Config.Exchange(p.ctx(ctx), code, oauth2.VerifierOption(verifier))
	if err != nil {
		return nil, fmt.Errorf("exchanging the authorization code at %s: %w", p.Config.Endpoint.TokenURL, err)
	}
	return tok, nil
}

// DeviceAuth starts the device flow (RFC 8628): show the person the response's VerificationURI and
// UserCode, then call DeviceToken.
func (p *Provider) DeviceAuth(ctx context.Context) (*oauth2.DeviceAuthResponse, error) {
	if p.Config.Endpoint.DeviceAuthURL == "" {
		return nil, fmt.Errorf("the %s provider has no device authorization endpoint", p.Name)
	}
	da, err := p.Config.DeviceAuth(p.ctx(ctx))
	if err != nil {
		return nil, fmt.Errorf("starting the device flow at %s: %w", p.Config.Endpoint.DeviceAuthURL, err)
	}
	return da, nil
}

// DevicePoll is one unsuccessful poll of the device flow.
type DevicePoll struct {
	// Attempt counts polls, from 1.
	Attempt int
	// Code is the server's answer: "authorization_pending" or "slow_down".
	Code string
	// Interval is the wait before the next poll (5 s longer after each slow_down).
	Interval time.Duration
}

// DeviceToken polls until the person has signed in, the code expires, or ctx ends. progress, if not
// nil, is called after every poll that says "not yet", so a terminal can show that it is waiting.
func (p *Provider) DeviceToken(ctx context.Context, da *oauth2.DeviceAuthResponse, progress func(DevicePoll)) (*oauth2.Token, error) {
	interval := time.Duration(da.Interval) * time.Second
	if interval <= 0 {
		interval = 5 * time.Second
	}
	c := *p.httpClient()
	base := c.Transport
	if base == nil {
		base = http.DefaultTransport
	}
	c.Transport = &pollWatcher{base: base, tokenURL: p.Config.Endpoint.TokenURL, interval: interval, progress: progress}
	tok, err := p.Config.DeviceAccessToken(WithHTTPClient(ctx, &c), da)
	if err != nil {
		return nil, fmt.Errorf("waiting for the device sign-in at %s: %w", p.Config.Endpoint.TokenURL, err)
	}
	return tok, nil
}

// pollWatcher reports the device flow's "not yet" answers, which x/oauth2's DeviceAccessToken
// consumes silently.
type pollWatcher struct {
	base     http.RoundTripper
	tokenURL string
	progress func(DevicePoll)

	mu       sync.Mutex
	attempt  int
	interval time.Duration
}

func (w *pollWatcher) RoundTrip(req *http.Request) (*http.Response, error) {
	resp, err := w.base.RoundTrip(req)
	if err != nil || req.URL.String() != w.tokenURL || resp.StatusCode < 400 {
		return resp, err
	}
	body, rerr := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	resp.Body.Close()
	resp.Body = io.NopCloser(bytes.NewReader(body))
	if rerr != nil {
		return resp, nil
	}
	var e struct {
		Error string `json:"error"`
	}
	if json.Unmarshal(body, &e) != nil {
		if v, perr := url.ParseQuery(string(body)); perr == nil {
			e.Error = v.Get("error")
		}
	}
	if e.Error != "authorization_pending" && e.Error != "slow_down" {
		return resp, nil
	}
	w.mu.Lock()
	w.attempt++
	if e.Error == "slow_down" {
		w.interval += 5 * time.Second
	}
	ev := DevicePoll{Attempt: w.attempt, Code: e.Error, Interval: w.interval}
	w.mu.Unlock()
	if w.progress != nil {
		w.progress(ev)
	}
	return resp, nil
}

// ClientCredentials gets an app-only token (no person, no refresh token).
func (p *Provider) ClientCredentials(ctx context.Context) (*oauth2.Token, error) {
	return ClientCredentials(p.ctx(ctx), p.Config)
}

// Refresh trades a refresh token for a new access token, and usually a new refresh token.
func (p *Provider) Refresh(ctx context.Context, refreshToken secret.Secret) (*oauth2.Token, error) {
	return Refresh(p.ctx(ctx), p.Config, refreshToken)
}

// Refresh trades refreshToken for a new token at cfg's token endpoint. When the server rotates
// the refresh token the result holds the new one; when it does not, the old one. The HTTP client
// comes from ctx (WithHTTPClient).
func Refresh(ctx context.Context, cfg *oauth2.Config, refreshToken secret.Secret) (*oauth2.Token, error) {
	if refreshToken.IsZero() {
		return nil, errors.New("no refresh token to refresh with")
	}
	tok, err := cfg.TokenSource(ctx, &oauth2.Token{RefreshToken: refreshToken.Reveal()}).Token()
	if err != nil {
		return nil, fmt.Errorf("refreshing at %s: %w", cfg.Endpoint.TokenURL, err)
	}
	return tok, nil
}

// ClientCredentials requests an app-only token from cfg's token endpoint with cfg's client id,
// secret and scopes. The HTTP client comes from ctx (WithHTTPClient).
func ClientCredentials(ctx context.Context, cfg *oauth2.Config) (*oauth2.Token, error) {
	cc := clientcredentials.Config{
		ClientID:     cfg.ClientID,
		ClientSecret: cfg.ClientSecret,
		TokenURL:     cfg.Endpoint.TokenURL,
		Scopes:       cfg.Scopes,
		AuthStyle:    cfg.Endpoint.AuthStyle,
	}
	tok, err := cc.Token(ctx)
	if err != nil {
		return nil, fmt.Errorf("requesting a client credentials token at %s: %w", cfg.Endpoint.TokenURL, err)
	}
	if tok.ExpiresIn == 0 {
		// clientcredentials drops the wire field; callers with their own clock need it.
		tok.ExpiresIn = expiresIn(tok.Extra("expires_in"))
	}
	return tok, nil
}

// expiresIn reads an "expires_in" extra field (a JSON number, a form value or a string).
func expiresIn(v any) int64 {
	switch n := v.(type) {
	case float64:
		return int64(n)
	case int64:
		return n
	case json.Number:
		i, _ := n.Int64()
		return i
	case string:
		i, _ := strconv.ParseInt(strings.TrimSpace(n), 10, 64)
		return i
	}
	return 0
}

// Revoke asks the provider to revoke a token (RFC 7009); hint is "refresh_token" or
// "access_token".
func (p *Provider) Revoke(ctx context.Context, token secret.Secret, hint string) error {
	if p.RevocationURL == "" {
		return fmt.Errorf("the %s provider has no revocation endpoint", p.Name)
	}
	v := url.Values{"token": {token.Reveal()}, "client_id": {p.Config.ClientID}}
	if hint != "" {
		v.Set("token_type_hint", hint)
	}
	if p.Config.ClientSecret != "" {
		v.Set("client_secret", p.Config.ClientSecret)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, p.RevocationURL, strings.NewReader(v.Encode()))
	if err != nil {
		return fmt.Errorf("revoking at %s: %w", p.RevocationURL, err)
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	resp, err := p.httpClient().Do(req)
	if err != nil {
		return fmt.Errorf("revoking at %s: %w", p.RevocationURL, err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 4<<10))
	if resp.StatusCode != http.StatusOK {
		var e struct {
			Error       string `json:"error"`
			Description string `json:"error_description"`
		}
		_ = json.Unmarshal(body, &e)
		return fmt.Errorf("revoking at %s: %s %s %s", p.RevocationURL, resp.Status, e.Error, e.Description)
	}
	return nil
}
