package oauth

import (
	"context"
	"crypto"
	"crypto/rsa"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net/http"
	"strings"
	"time"

	"golang.org/x/oauth2"

	"github.com/postern/postern/sidecar/project"
)

// Claims are the id_token claims Postern reads.
type Claims struct {
	Issuer            string   `json:"iss"`
	Subject           string   `json:"sub"`
	Audience          audience `json:"aud"`
	Expiry            numDate  `json:"exp"`
	IssuedAt          numDate  `json:"iat"`
	NotBefore         numDate  `json:"nbf"`
	Email             string   `json:"email"`
	EmailVerified     boolish  `json:"email_verified"`
	PreferredUsername string   `json:"preferred_username"`
	UPN               string   `json:"upn"`
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
	signed   string // header.payload
	sig      []byte
}

type audience []string

func (a *audience) UnmarshalJSON(b []byte) error {
	var one string
	if json.Unmarshal(b, &one) == nil {
		*a = audience{one}
		return nil
	}
	var many []string
	if err := json.Unmarshal(b, &many); err != nil {
		return errors.New("aud is neither a string nor a list of strings")
	}
	*a = many
	return nil
}

type numDate struct{ time.Time }

func (d *numDate) UnmarshalJSON(b []byte) error {
	if string(b) == "null" {
		return nil
	}
	var n json.Number
	if err := json.Unmarshal(b, &n); err != nil {
		return errors.New("a date claim is not a number")
	}
	f, err := n.Float64()
	if err != nil || f < 0 || f > 1<<40 {
		return errors.New("a date claim is out of range")
	}
	d.Time = time.Unix(int64(f), 0).UTC()
	return nil
}

// maxIDToken bounds what ParseIDToken reads.
const maxIDToken = 64 << 10

// ParseIDToken splits and decodes a compact JWS id_token without verifying anything.
func ParseIDToken(raw string) (*IDToken, error) {
	if len(raw) > maxIDToken {
		return nil, errors.New("id_token is too large")
	}
	parts := strings.Split(raw, ".")
	if len(parts) != 3 {
		return nil, errors.New("id_token is not a compact JWS (three dot-separated parts)")
	}
	hb, err := base64.RawURLEncoding.DecodeString(parts[0])
	if err != nil {
		return nil, errors.New("id_token header is not base64url")
	}
	pb, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil {
		return nil, errors.New("id_token payload is not base64url")
	}
	sig, err := base64.RawURLEncoding.DecodeString(parts[2])
	if err != nil {
		return nil, errors.New("id_token signature is not base64url")
	}
	var h struct {
		Alg string `json:"alg"`
		Kid string `json:"kid"`
	}
	if err := json.Unmarshal(hb, &h); err != nil {
		return nil, errors.New("id_token header is not JSON")
	}
	t := &IDToken{Alg: h.Alg, Kid: h.Kid, signed: parts[0] + "." + parts[1], sig: sig}
	if err := json.Unmarshal(pb, &t.Claims); err != nil {
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
func (p *Provider) Account(ctx context.Context, tok *oauth2.Token) (string, error) {
	id, err := p.Identity(ctx, tok)
	return id.Mailbox, err
}

// Identity returns the account named by tok's id_token after verifying it: the audience must be
// the client id, the token must not be expired (5 minutes of clock skew allowed), the issuer must
// be the provider's (Microsoft: https://login.microsoftonline.com/{tid}/v2.0, with tid the
// configured tenant when that is a tenant id), and the RS256 signature must verify with a key from
// the provider's JWKS. A generic provider without an issuer gets the audience and expiry checks
// only. The claims are read as Claims.Identity says; compare the result with the project's
// mailbox and the previous sign-in with CheckAccount.
func (p *Provider) Identity(ctx context.Context, tok *oauth2.Token) (Identity, error) {
	raw, err := idTokenOf(tok)
	if err != nil {
		return Identity{}, err
	}
	claims, err := p.VerifyIDToken(ctx, raw)
	if err != nil {
		return Identity{}, err
	}
	if p.Name != Microsoft && strings.TrimSpace(claims.Email) == "" && p.Issuer != "" && !strings.Contains(p.Issuer, "{") {
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
	if d.Userinfo == "" {
		return nil // Identity says that no email came
	}
	if err := checkEndpoint(d.Userinfo); err != nil {
		return fmt.Errorf("the userinfo endpoint %w", err)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, d.Userinfo, nil)
	if err != nil {
		return err
	}
	req.Header.Set("Accept", "application/json")
	req.Header.Set("Authorization", "Bearer "+tok.AccessToken)
	resp, err := p.httpClient().Do(req)
	if err != nil {
		return fmt.Errorf("asking the userinfo endpoint %s: %w", d.Userinfo, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("asking the userinfo endpoint %s for the account: %s", d.Userinfo, resp.Status)
	}
	var ui struct {
		Subject       string  `json:"sub"`
		Email         string  `json:"email"`
		EmailVerified boolish `json:"email_verified"`
	}
	if err := json.NewDecoder(io.LimitReader(resp.Body, 1<<20)).Decode(&ui); err != nil {
		return fmt.Errorf("the userinfo endpoint %s: %s", d.Userinfo, jsonProblem(err))
	}
	if ui.Subject != claims.Subject {
		return fmt.Errorf("the userinfo endpoint %s answered for subject %q, not the id_token's %q", d.Userinfo, ui.Subject, claims.Subject)
	}
	claims.Email, claims.EmailVerified = ui.Email, ui.EmailVerified
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

// clockSkew is allowed between Postern's clock and the issuer's.
const clockSkew = 5 * time.Minute

// VerifyIDToken parses raw and checks it as Account describes, returning its claims.
func (p *Provider) VerifyIDToken(ctx context.Context, raw string) (*Claims, error) {
	t, err := ParseIDToken(raw)
	if err != nil {
		return nil, err
	}
	if err := p.checkClaims(&t.Claims); err != nil {
		return nil, fmt.Errorf("id_token: %w", err)
	}
	jwks := p.JWKSURL
	if jwks == "" && p.Issuer != "" && !strings.Contains(p.Issuer, "{") {
		if jwks, err = p.discoverJWKS(ctx); err != nil {
			return nil, err
		}
	}
	if jwks == "" {
		return &t.Claims, nil
	}
	keys, err := p.fetchKeys(ctx, jwks)
	if err != nil {
		return nil, err
	}
	if err := t.verify(keys); err != nil {
		return nil, fmt.Errorf("id_token: %w", err)
	}
	return &t.Claims, nil
}

func (p *Provider) checkClaims(c *Claims) error {
	now := p.now()
	aud := false
	for _, a := range c.Audience {
		aud = aud || a == p.Config.ClientID
	}
	if !aud {
		return fmt.Errorf("audience %q is not the client id %q", []string(c.Audience), p.Config.ClientID)
	}
	if c.Expiry.IsZero() {
		return errors.New("no exp claim")
	}
	if now.After(c.Expiry.Add(clockSkew)) {
		return fmt.Errorf("expired at %s", c.Expiry.Format(time.RFC3339))
	}
	if !c.NotBefore.IsZero() && now.Add(clockSkew).Before(c.NotBefore.Time) {
		return fmt.Errorf("not valid before %s", c.NotBefore.Format(time.RFC3339))
	}
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

func (p *Provider) getJSON(ctx context.Context, u string, v any) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return err
	}
	req.Header.Set("Accept", "application/json")
	resp, err := p.httpClient().Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s", resp.Status)
	}
	return json.NewDecoder(io.LimitReader(resp.Body, 1<<20)).Decode(v)
}

// discovery is what Postern reads of an issuer's /.well-known/openid-configuration.
type discovery struct {
	Issuer   string `json:"issuer"`
	JWKSURI  string `json:"jwks_uri"`
	Userinfo string `json:"userinfo_endpoint"`
}

// discover reads the issuer's OpenID configuration; its issuer must be p.Issuer.
func (p *Provider) discover(ctx context.Context) (discovery, error) {
	u := strings.TrimSuffix(p.Issuer, "/") + "/.well-known/openid-configuration"
	var d discovery
	if err := p.getJSON(ctx, u, &d); err != nil {
		return d, fmt.Errorf("discovering the issuer's endpoints at %s: %w", u, err)
	}
	if d.Issuer != p.Issuer {
		return d, fmt.Errorf("discovering the issuer's endpoints at %s: issuer %q is not %q", u, d.Issuer, p.Issuer)
	}
	return d, nil
}

func (p *Provider) discoverJWKS(ctx context.Context) (string, error) {
	d, err := p.discover(ctx)
	if err != nil {
		return "", err
	}
	u := strings.TrimSuffix(p.Issuer, "/") + "/.well-known/openid-configuration"
	if d.JWKSURI == "" {
		return "", fmt.Errorf("discovering the signing keys at %s: no jwks_uri", u)
	}
	if err := checkEndpoint(d.JWKSURI); err != nil {
		return "", fmt.Errorf("discovering the signing keys at %s: jwks_uri %w", u, err)
	}
	return d.JWKSURI, nil
}

type jwk struct {
	Kty string `json:"kty"`
	Kid string `json:"kid"`
	Use string `json:"use"`
	N   string `json:"n"`
	E   string `json:"e"`
}

func (p *Provider) fetchKeys(ctx context.Context, u string) (map[string]*rsa.PublicKey, error) {
	var set struct {
		Keys []jwk `json:"keys"`
	}
	if err := p.getJSON(ctx, u, &set); err != nil {
		return nil, fmt.Errorf("fetching the signing keys at %s: %w", u, err)
	}
	keys := make(map[string]*rsa.PublicKey)
	for _, k := range set.Keys {
		if k.Kty != "RSA" || (k.Use != "" && k.Use != "sig") {
			continue
		}
		n, err1 := base64.RawURLEncoding.DecodeString(k.N)
		e, err2 := base64.RawURLEncoding.DecodeString(k.E)
		if err1 != nil || err2 != nil || len(e) == 0 || len(e) > 4 {
			continue
		}
		keys[k.Kid] = &rsa.PublicKey{N: new(big.Int).SetBytes(n), E: int(new(big.Int).SetBytes(e).Int64())}
	}
	if len(keys) == 0 {
		return nil, fmt.Errorf("fetching the signing keys at %s: no RSA signing keys", u)
	}
	return keys, nil
}

func (t *IDToken) verify(keys map[string]*rsa.PublicKey) error {
	if t.Alg != "RS256" {
		return fmt.Errorf("signature algorithm %q is not RS256", t.Alg)
	}
	k := keys[t.Kid]
	if k == nil && t.Kid == "" && len(keys) == 1 {
		for _, only := range keys {
			k = only
		}
	}
	if k == nil {
		return fmt.Errorf("no signing key with kid %q", t.Kid)
	}
	sum := sha256.Sum256([]byte(t.signed))
	if err := rsa.VerifyPKCS1v15(k, crypto.SHA256, sum[:], t.sig); err != nil {
		return errors.New("signature does not verify")
	}
	return nil
}
