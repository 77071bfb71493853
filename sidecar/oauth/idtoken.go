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
	PreferredUsername string   `json:"preferred_username"`
	UPN               string   `json:"upn"`
	// TenantID is Microsoft's "tid".
	TenantID string `json:"tid"`
}

// Account is the signed-in mailbox: email, else preferred_username, else upn.
func (c *Claims) Account() string {
	for _, s := range []string{c.Email, c.PreferredUsername, c.UPN} {
		if s = strings.TrimSpace(s); s != "" {
			return s
		}
	}
	return ""
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
	if a := t.Claims.Account(); a != "" {
		return a, nil
	}
	return "", errors.New("the id_token names no account (no email, preferred_username or upn claim)")
}

// Account returns the mailbox named by tok's id_token after verifying it: the audience must be
// the client id, the token must not be expired (5 minutes of clock skew allowed), the issuer must
// be the provider's (Microsoft: https://login.microsoftonline.com/{tid}/v2.0, with tid the
// configured tenant when that is a tenant id), and the RS256 signature must verify with a key from
// the provider's JWKS. A generic provider without an issuer gets the audience and expiry checks
// only.
func (p *Provider) Account(ctx context.Context, tok *oauth2.Token) (string, error) {
	raw, err := idTokenOf(tok)
	if err != nil {
		return "", err
	}
	claims, err := p.VerifyIDToken(ctx, raw)
	if err != nil {
		return "", err
	}
	if a := claims.Account(); a != "" {
		return a, nil
	}
	return "", errors.New("the id_token names no account (no email, preferred_username or upn claim)")
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

func (p *Provider) discoverJWKS(ctx context.Context) (string, error) {
	u := strings.TrimSuffix(p.Issuer, "/") + "/.well-known/openid-configuration"
	var d struct {
		Issuer  string `json:"issuer"`
		JWKSURI string `json:"jwks_uri"`
	}
	if err := p.getJSON(ctx, u, &d); err != nil {
		return "", fmt.Errorf("discovering the signing keys at %s: %w", u, err)
	}
	if d.Issuer != p.Issuer || d.JWKSURI == "" {
		return "", fmt.Errorf("discovering the signing keys at %s: issuer %q, jwks_uri %q", u, d.Issuer, d.JWKSURI)
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
