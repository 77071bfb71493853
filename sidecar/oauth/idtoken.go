package oauth

import (
	"context"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"

	"github.com/coreos/go-oidc/v3/oidc"
	"github.com/go-jose/go-jose/v4"
	"golang.org/x/oauth2"

	"github.com/postern/postern/sidecar/project"
)

// Claims are the id_token claims Postern reads besides those github.com/coreos/go-oidc checks
// (aud, exp, nbf).
type Claims struct {
	Issuer            string  `json:"iss"`
	Subject           string  `json:"sub"`
	Email             string  `json:"email"`
	EmailVerified     boolish `json:"email_verified"`
	PreferredUsername string  `json:"preferred_username"`
	UPN               string  `json:"upn"`
	// TenantID is Microsoft's "tid", ObjectID its "oid": the account's immutable identifier
	// across every application of the tenant.
	TenantID string `json:"tid"`
	ObjectID string `json:"oid"`
}

// boolish is a boolean claim that some providers send as the string "true".
type boolish bool

func (b *boolish) UnmarshalJSON(raw []byte) error {
	var v any
	if err := json.Unmarshal(raw, &v); err != nil {
		return err
	}
	switch x := v.(type) {
	case bool:
		*b = boolish(x)
	case string:
		*b = boolish(strings.EqualFold(x, "true"))
	default:
		*b = false
	}
	return nil
}

// Identity is the account an id_token names, read by the rules of its provider (Claims.Identity).
type Identity struct {
	// Mailbox is the account's mail address, compared with the project's mailbox.
	Mailbox string
	// ID is the account's immutable identifier: Microsoft's oid, else sub.
	ID string
	// TenantID is Microsoft's tid; empty for other providers.
	TenantID string
}

// Identity reads c by the rules of the provider named name:
//
//   - Microsoft: the mailbox is preferred_username, else upn. Never email: Entra ID lets it be
//     set to an address nobody verified. Their domain is one verified in the token's tenant (tid),
//     which checkClaims pins to the configured tenant id; CheckAccount pins it for tenants given
//     as a domain, "organizations" or "common". The ID is oid.
//   - Google and generic servers: the mailbox is email, and only with email_verified true. The ID
//     is sub.
func (c *Claims) Identity(name string) (Identity, error) {
	id := Identity{ID: strings.TrimSpace(c.Subject), TenantID: strings.TrimSpace(c.TenantID)}
	if name == Microsoft {
		if oid := strings.TrimSpace(c.ObjectID); oid != "" {
			id.ID = oid
		}
		for _, s := range []string{c.PreferredUsername, c.UPN} {
			if s = strings.TrimSpace(s); s != "" {
				id.Mailbox = s
				break
			}
		}
		if id.Mailbox == "" {
			return id, errors.New("the id_token names no account (no preferred_username or upn claim; the email claim is not trusted)")
		}
	} else {
		id.TenantID = ""
		email := strings.TrimSpace(c.Email)
		switch {
		case email == "":
			return id, errors.New("neither the id_token nor the userinfo endpoint names the account (no email claim: the scopes must include email, and the issuer must be set for Postern to find the userinfo endpoint)")
		case !bool(c.EmailVerified):
			return id, fmt.Errorf("the id_token's email %s is not verified (email_verified is not true)", email)
		}
		id.Mailbox = email
	}
	if id.ID == "" {
		return id, errors.New("the id_token has no sub claim")
	}
	return id, nil
}

// IDToken is a parsed, not yet verified, JWS compact id_token.
type IDToken struct {
	Alg, Kid string
	Claims   Claims
}

// maxIDToken bounds what ParseIDToken reads.
const maxIDToken = 64 << 10

// anyAlg is every signature algorithm ParseIDToken reads; verification admits RS256 only.
var anyAlg = []jose.SignatureAlgorithm{
	jose.RS256, jose.RS384, jose.RS512, jose.PS256, jose.PS384, jose.PS512,
	jose.ES256, jose.ES384, jose.ES512, jose.EdDSA,
}

// ParseIDToken splits and decodes a compact JWS id_token without verifying anything.
func ParseIDToken(raw string) (*IDToken, error) {
	if len(raw) > maxIDToken {
		return nil, errors.New("id_token is too large")
	}
	if strings.Count(raw, ".") != 2 {
		return nil, errors.New("id_token is not a compact JWS (three dot-separated parts)")
	}
	jws, err := jose.ParseSignedCompact(raw, anyAlg)
	if err != nil {
		return nil, fmt.Errorf("id_token: %w", err)
	}
	h := jws.Signatures[0].Header
	t := &IDToken{Alg: h.Algorithm, Kid: h.KeyID}
	if err := json.Unmarshal(jws.UnsafePayloadWithoutVerification(), &t.Claims); err != nil {
		return nil, fmt.Errorf("id_token claims: %v", jsonProblem(err))
	}
	return t, nil
}

// jsonProblem describes a decoding error without quoting the input.
func jsonProblem(err error) string {
	var se *json.SyntaxError
	var te *json.UnmarshalTypeError
	switch {
	case errors.As(err, &se):
		return fmt.Sprintf("not JSON (at offset %d)", se.Offset)
	case errors.As(err, &te):
		return fmt.Sprintf("claim %q has the wrong type", te.Field)
	}
	return err.Error()
}

func idTokenOf(tok *oauth2.Token) (string, error) {
	if tok == nil {
		return "", errors.New("no token")
	}
	raw, _ := tok.Extra("id_token").(string)
	if raw == "" {
		return "", errors.New("the token response has no id_token (is the openid scope requested?)")
	}
	return raw, nil
}

// Account returns the mailbox named by tok's id_token, WITHOUT verifying the id_token: use it only
// for display, or where the token came straight from the token endpoint over TLS and no more can
// be checked. Provider.Account verifies.
func Account(tok *oauth2.Token) (string, error) {
	raw, err := idTokenOf(tok)
	if err != nil {
		return "", err
	}
	t, err := ParseIDToken(raw)
	if err != nil {
		return "", err
	}
	for _, a := range []string{t.Claims.Email, t.Claims.PreferredUsername, t.Claims.UPN} {
		if a = strings.TrimSpace(a); a != "" {
			return a, nil
		}
	}
	return "", errors.New("the id_token names no account (no email, preferred_username or upn claim)")
}

// Account returns the mailbox of Identity.
func (p *Provider) Account(ctx context.Context, tok *oauth2.Token, opts ...VerifyOption) (string, error) {
	id, err := p.Identity(ctx, tok, opts...)
	return id.Mailbox, err
}

// VerifyOption adds a check to Identity.
type VerifyOption func(*verifyOptions)

type verifyOptions struct{ nonce string }

// WithNonce requires the id_token's nonce claim to be nonce: the one the sign-in's authorization
// request carried (NonceParam), so that an id_token of another sign-in is refused (OpenID Connect
// Core 3.1.3.7). An empty nonce checks nothing.
func WithNonce(nonce string) VerifyOption { return func(o *verifyOptions) { o.nonce = nonce } }

// NonceParam is the authorization request's nonce parameter, for AuthCodeURL.
func NonceParam(nonce string) oauth2.AuthCodeOption { return oidc.Nonce(nonce) }

// Identity returns the account named by tok's id_token after verifying it with
// github.com/coreos/go-oidc: the RS256 signature must verify with a key of the provider's JWKS
// (fetched once, and again when a key id is unknown), the audience must be the client id, the
// token must not be expired, nor before its nbf (with 5 minutes of clock skew); and the issuer
// must be the provider's (Microsoft: https://login.microsoftonline.com/{tid}/v2.0, with tid the
// configured tenant when that is a tenant id). A generic provider without an issuer gets the
// audience and expiry checks only. With WithNonce, the nonce claim must be the sign-in's. The
// claims are read as Claims.Identity says; compare the result with the project's mailbox and the
// previous sign-in with CheckAccount.
func (p *Provider) Identity(ctx context.Context, tok *oauth2.Token, opts ...VerifyOption) (Identity, error) {
	raw, err := idTokenOf(tok)
	if err != nil {
		return Identity{}, err
	}
	claims, err := p.VerifyIDToken(ctx, raw, opts...)
	if err != nil {
		return Identity{}, err
	}
	if p.Name != Microsoft && strings.TrimSpace(claims.Email) == "" && p.discoverable() {
		if err := p.userinfo(ctx, tok, claims); err != nil {
			return Identity{}, err
		}
	}
	return claims.Identity(p.Name)
}

// userinfo completes claims, whose id_token named no email, with the email and email_verified
// the issuer's userinfo endpoint answers for tok's access token (OpenID Connect Core 5.3). The
// answer must be for the id_token's subject (5.3.2), or it is ignored.
func (p *Provider) userinfo(ctx context.Context, tok *oauth2.Token, claims *Claims) error {
	d, err := p.discover(ctx)
	if err != nil {
		return err
	}
	u := d.UserInfoEndpoint()
	if u == "" {
		return nil // Identity says that no email came
	}
	if err := checkEndpoint(u); err != nil {
		return fmt.Errorf("the userinfo endpoint %w", err)
	}
	ui, err := d.UserInfo(p.oidcContext(ctx), oauth2.StaticTokenSource(&oauth2.Token{AccessToken: tok.AccessToken, TokenType: "Bearer"}))
	if err != nil {
		return fmt.Errorf("asking the userinfo endpoint %s for the account: %w", u, err)
	}
	if ui.Subject != claims.Subject {
		return fmt.Errorf("the userinfo endpoint %s answered for subject %q, not the id_token's %q", u, ui.Subject, claims.Subject)
	}
	claims.Email, claims.EmailVerified = ui.Email, boolish(ui.EmailVerified)
	return nil
}

// Ways a signed-in account can differ from the one a project expects (AccountError.Kind).
const (
	// OtherMailbox: the account's mailbox is not the project's.
	OtherMailbox = "other-mailbox"
	// OtherTenant: the mailbox signed in from another Microsoft tenant than before.
	OtherTenant = "other-tenant"
	// OtherAccount: the mailbox's name is the project's, but the account's immutable id is not
	// the one signed in before (the account was replaced, or a name was reused).
	OtherAccount = "other-account"
)

// AccountError says that another account signed in than the project expects.
type AccountError struct {
	// Kind is OtherMailbox, OtherTenant or OtherAccount.
	Kind string
	// Mailbox is the project's mailbox; Got is the account that signed in.
	Mailbox string
	Got     Identity
	// Want is the account of the previous sign-in (OtherTenant, OtherAccount).
	Want Identity
}

func (e *AccountError) Error() string {
	switch e.Kind {
	case OtherTenant:
		return fmt.Sprintf("%s signed in from tenant %s, but the mailbox signed in from tenant %s before", e.Got.Mailbox, e.Got.TenantID, e.Want.TenantID)
	case OtherAccount:
		return fmt.Sprintf("%s signed in as account %s, but the mailbox was signed in as account %s before", e.Got.Mailbox, e.Got.ID, e.Want.ID)
	}
	return fmt.Sprintf("%s signed in, but the project sends as %s", e.Got.Mailbox, e.Mailbox)
}

// CheckAccount decides whether id may sign in as the project's mailbox, given the token record
// of the previous sign-in (the zero Token when there is none):
//
//  1. The mailbox must be the project's, ignoring case.
//  2. When prev is a sign-in of the same mailbox that recorded them, the tenant (tid) and the
//     account's immutable id (oid or sub) must be the same again. A Microsoft tenant configured
//     as a domain, "organizations" or "common" is thereby pinned by the first sign-in: the tenant
//     id in the configuration pins it from the start, and is the better choice.
//
// It returns nil or an *AccountError.
func CheckAccount(id Identity, mailbox string, prev project.Token) error {
	if !strings.EqualFold(strings.TrimSpace(id.Mailbox), strings.TrimSpace(mailbox)) {
		return &AccountError{Kind: OtherMailbox, Mailbox: mailbox, Got: id}
	}
	if !strings.EqualFold(prev.Account, mailbox) {
		return nil
	}
	want := Identity{Mailbox: prev.Account, ID: prev.AccountID, TenantID: prev.TenantID}
	switch {
	case want.TenantID != "" && !strings.EqualFold(want.TenantID, id.TenantID):
		return &AccountError{Kind: OtherTenant, Mailbox: mailbox, Got: id, Want: want}
	case want.ID != "" && want.ID != id.ID:
		return &AccountError{Kind: OtherAccount, Mailbox: mailbox, Got: id, Want: want}
	}
	return nil
}

// VerifyIDToken checks raw as Identity describes and returns its claims.
func (p *Provider) VerifyIDToken(ctx context.Context, raw string, opts ...VerifyOption) (*Claims, error) {
	var o verifyOptions
	for _, opt := range opts {
		opt(&o)
	}
	if len(raw) > maxIDToken {
		return nil, errors.New("id_token is too large")
	}
	if strings.Count(raw, ".") != 2 {
		return nil, errors.New("id_token is not a compact JWS (three dot-separated parts)")
	}
	v, err := p.verifier(ctx)
	if err != nil {
		return nil, err
	}
	t, err := v.Verify(p.oidcContext(ctx), raw)
	var expired *oidc.TokenExpiredError
	switch {
	case errors.As(err, &expired) && expired.Expiry.IsZero():
		return nil, errors.New("id_token: no exp claim")
	case errors.As(err, &expired):
		return nil, fmt.Errorf("id_token: expired at %s", expired.Expiry.UTC().Format("2006-01-02T15:04:05Z"))
	case err != nil:
		return nil, fmt.Errorf("id_token: %w", err)
	}
	if o.nonce != "" && subtle.ConstantTimeCompare([]byte(t.Nonce), []byte(o.nonce)) != 1 {
		return nil, errors.New("id_token: its nonce is not the sign-in's (an id_token of another sign-in)")
	}
	var c Claims
	if err := t.Claims(&c); err != nil {
		return nil, fmt.Errorf("id_token claims: %v", jsonProblem(err))
	}
	if err := p.checkIssuer(&c); err != nil {
		return nil, fmt.Errorf("id_token: %w", err)
	}
	return &c, nil
}

// checkIssuer checks the iss claim, which go-oidc cannot: Microsoft's multi-tenant issuer names
// the token's own tenant (tid), pinned to the configured tenant when that is a tenant id.
func (p *Provider) checkIssuer(c *Claims) error {
	if p.Issuer == "" {
		return nil
	}
	want := p.Issuer
	if strings.Contains(want, "{tenantid}") {
		if c.TenantID == "" {
			return errors.New("no tid claim")
		}
		if guidRE.MatchString(p.Tenant) && !strings.EqualFold(c.TenantID, p.Tenant) {
			return fmt.Errorf("tenant %q is not the configured tenant %q", c.TenantID, p.Tenant)
		}
		want = strings.ReplaceAll(want, "{tenantid}", c.TenantID)
	}
	ok := c.Issuer == want
	if p.Name == Google && c.Issuer == "accounts.google.com" {
		ok = true // Google's documented alternative form
	}
	if !ok {
		return fmt.Errorf("issuer %q is not %q", c.Issuer, want)
	}
	return nil
}

// oidcState is what a Provider keeps of go-oidc between calls: the issuer's discovered
// configuration and the verifier with its cache of signing keys. Only successes are kept, so that
// a provider that was unreachable once is asked again.
type oidcState struct {
	mu       sync.Mutex
	disc     *oidc.Provider
	verifier *oidc.IDTokenVerifier
}

// discoverable reports whether the issuer publishes an OpenID configuration Postern can fetch:
// Microsoft's multi-tenant issuer is a template, not a URL.
func (p *Provider) discoverable() bool {
	return p.Issuer != "" && !strings.Contains(p.Issuer, "{")
}

// oidcContext carries p's HTTP client to go-oidc.
func (p *Provider) oidcContext(ctx context.Context) context.Context {
	return oidc.ClientContext(ctx, p.httpClient())
}

// discover reads the issuer's /.well-known/openid-configuration; its issuer must be p.Issuer.
func (p *Provider) discover(ctx context.Context) (*oidc.Provider, error) {
	p.ids.mu.Lock()
	defer p.ids.mu.Unlock()
	if p.ids.disc != nil {
		return p.ids.disc, nil
	}
	u := strings.TrimSuffix(p.Issuer, "/") + "/.well-known/openid-configuration"
	d, err := oidc.NewProvider(p.oidcContext(ctx), p.Issuer)
	if err != nil {
		return nil, fmt.Errorf("discovering the issuer's endpoints at %s: %w", u, err)
	}
	p.ids.disc = d
	return d, nil
}

// verifier returns the id_token verifier: RS256 signatures with the keys at p.JWKSURL, or at the
// jwks_uri the issuer's configuration names; no signature check without either.
func (p *Provider) verifier(ctx context.Context) (*oidc.IDTokenVerifier, error) {
	p.ids.mu.Lock()
	v := p.ids.verifier
	p.ids.mu.Unlock()
	if v != nil {
		return v, nil
	}
	cfg := &oidc.Config{
		ClientID:             p.Config.ClientID,
		SupportedSigningAlgs: []string{oidc.RS256},
		SkipIssuerCheck:      true, // checkIssuer
		Now:                  p.now,
	}
	var keys oidc.KeySet
	switch jwks := p.JWKSURL; {
	case jwks != "":
		keys = oidc.NewRemoteKeySet(oidc.ClientContext(context.Background(), p.httpClient()), jwks)
	case p.discoverable():
		d, err := p.discover(ctx)
		if err != nil {
			return nil, err
		}
		var meta struct {
			JWKSURI string `json:"jwks_uri"`
		}
		u := strings.TrimSuffix(p.Issuer, "/") + "/.well-known/openid-configuration"
		if err := d.Claims(&meta); err != nil || meta.JWKSURI == "" {
			return nil, fmt.Errorf("discovering the signing keys at %s: no jwks_uri", u)
		}
		if err := checkEndpoint(meta.JWKSURI); err != nil {
			return nil, fmt.Errorf("discovering the signing keys at %s: jwks_uri %w", u, err)
		}
		keys = oidc.NewRemoteKeySet(oidc.ClientContext(context.Background(), p.httpClient()), meta.JWKSURI)
	default:
		cfg.InsecureSkipSignatureCheck = true // no issuer: nothing to check the signature with
	}
	v = oidc.NewVerifier(p.Issuer, keys, cfg)
	p.ids.mu.Lock()
	defer p.ids.mu.Unlock()
	if p.ids.verifier == nil {
		p.ids.verifier = v
	}
	return p.ids.verifier, nil
}
