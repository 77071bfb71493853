// Package oauthtest is an OAuth 2.0 / OpenID Connect identity provider for tests, served over
// loopback by net/http/httptest and speaking the real protocol: form-encoded POSTs to the token
// endpoint, JSON replies, RFC 6749 error bodies, PKCE S256, RFC 8628 device codes, RS256-signed
// id_tokens with a JWKS and discovery document, and RFC 7009 revocation.
//
// How a test uses it:
//
//  1. New starts the server; OAuth and Config describe it as a generic provider.
//  2. Grant (or a real sign-in through AuthURL/Exchange, or the device flow with ApproveDevice)
//     gives a refresh token. Every refresh returns a new refresh token unless
//     Options.KeepRefreshTokens is set; with Options.ReuseDetection replaying an old one revokes
//     the whole grant.
//  3. The test steers it: Revoke a grant (refreshes then get invalid_grant), Fail the next requests
//     with a status and error code, SetDelay, or Block token requests until released. Requests
//     counts token requests, and Valid checks an access token the way an SMTP server would.
package oauthtest

import (
	"crypto"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"math/big"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/oauth2"

	"github.com/postern/postern/sidecar/project"
	"github.com/postern/postern/sidecar/secret"
)

// Options configures the server. The zero value is a public client "postern-test" with one-hour
// access tokens and rotating refresh tokens.
type Options struct {
	// ClientID is the registered client; empty means "postern-test".
	ClientID string
	// ClientSecret, when set, must accompany every token request (in the body or a Basic header).
	ClientSecret string
	// Lifetime of access tokens; zero means one hour.
	Lifetime time.Duration
	// KeepRefreshTokens answers refreshes without a new refresh token (Google's way).
	KeepRefreshTokens bool
	// ReuseDetection revokes a grant when a refresh token it already rotated away is used again.
	ReuseDetection bool
	// AccessTokenSize is the length of issued access tokens; zero means 64.
	AccessTokenSize int
	// Account signs in at the authorization endpoint when no login_hint is given; empty means
	// "user@example.com".
	Account string
	// IDClaims, when set, gives claims that override or add to the id_token issued for account
	// (by default email, email_verified true, preferred_username and a sub derived from the
	// account); a nil value removes a claim.
	IDClaims func(account string) map[string]any
	// UserinfoClaims, when set, overrides or adds to what the userinfo endpoint answers for
	// account (by default sub, email and email_verified true); a nil value removes a claim.
	UserinfoClaims func(account string) map[string]any
	// DeviceInterval is the device flow's polling interval in seconds; zero means 1.
	DeviceInterval int
	// Now is the clock for expiry checks and id_token dates; nil means time.Now.
	Now func() time.Time
}

// Server is a running fake identity provider.
type Server struct {
	// URL is the base URL and the issuer.
	URL string
	// Endpoints.
	AuthURL, TokenURL, DeviceURL, RevocationURL, JWKSURL, UserinfoURL string
	// ClientID and ClientSecret are the registered client's.
	ClientID, ClientSecret string

	opts Options
	srv  *httptest.Server
	key  *rsa.PrivateKey
	kid  string

	mu       sync.Mutex
	grants   []*grant
	refresh  map[string]*refreshEntry
	access   map[string]accessEntry
	codes    map[string]*codeEntry
	devices  map[string]*deviceEntry
	requests map[string]int
	total    int
	failures []Failure
	delay    time.Duration
	gate     *gate
	lastAuth url.Values
}

type grant struct {
	account string
	scope   string
	revoked string // the invalid_grant description once revoked
	nonce   string // the authorization request's nonce, for the first id_token only
}

type refreshEntry struct {
	grant   *grant
	current bool
}

type accessEntry struct {
	account string
	expiry  time.Time
}

type codeEntry struct {
	account, redirect, challenge, method, scope, nonce string
}

type deviceEntry struct {
	userCode string
	scope    string
	account  string
	denied   bool
	slowDown int
	expiry   time.Time
}

type gate struct {
	arrived chan struct{}
	release chan struct{}
}

// Failure is an injected token-endpoint failure.
type Failure struct {
	// Status is the HTTP status, e.g. 500, 400 or 429.
	Status int
	// Code and Description make the RFC 6749 error body; an empty Code sends a plain-text body.
	Code, Description string
}

// New starts a server on loopback; it stops when the test ends.
func New(t testing.TB, opts Options) *Server {
	t.Helper()
	if opts.ClientID == "" {
		opts.ClientID = "postern-test"
	}
	if opts.Lifetime == 0 {
		opts.Lifetime = time.Hour
	}
	if opts.AccessTokenSize == 0 {
		opts.AccessTokenSize = 64
	}
	if opts.Account == "" {
		opts.Account = "user@example.com"
	}
	if opts.DeviceInterval == 0 {
		opts.DeviceInterval = 1
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatalf("generating the signing key: %v", err)
	}
	s := &Server{
		ClientID:     opts.ClientID,
		ClientSecret: opts.ClientSecret,
		opts:         opts,
		key:          key,
		kid:          "test-key-1",
		refresh:      make(map[string]*refreshEntry),
		access:       make(map[string]accessEntry),
		codes:        make(map[string]*codeEntry),
		devices:      make(map[string]*deviceEntry),
		requests:     make(map[string]int),
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /authorize", s.authorize)
	mux.HandleFunc("POST /token", s.token)
	mux.HandleFunc("POST /devicecode", s.deviceCode)
	mux.HandleFunc("POST /revoke", s.revoke)
	mux.HandleFunc("GET /jwks", s.jwks)
	mux.HandleFunc("GET /userinfo", s.userinfo)
	mux.HandleFunc("GET /.well-known/openid-configuration", s.discovery)
	s.srv = httptest.NewServer(mux)
	t.Cleanup(func() {
		s.mu.Lock()
		if s.gate != nil {
			close(s.gate.release)
			s.gate = nil
		}
		s.mu.Unlock()
		s.srv.Close()
	})
	s.URL = s.srv.URL
	s.AuthURL = s.URL + "/authorize"
	s.TokenURL = s.URL + "/token"
	s.DeviceURL = s.URL + "/devicecode"
	s.RevocationURL = s.URL + "/revoke"
	s.JWKSURL = s.URL + "/jwks"
	s.UserinfoURL = s.URL + "/userinfo"
	return s
}

// OAuth returns generic-provider settings for this server, with the given grant ("" for
// authorization code) and scopes.
func (s *Server) OAuth(grant string, scopes ...string) *project.OAuth {
	return &project.OAuth{
		Provider:      "generic",
		Grant:         grant,
		ClientID:      s.ClientID,
		ClientSecret:  secret.New(s.ClientSecret),
		Scopes:        scopes,
		AuthURL:       s.AuthURL,
		TokenURL:      s.TokenURL,
		DeviceURL:     s.DeviceURL,
		RevocationURL: s.RevocationURL,
		Issuer:        s.URL,
	}
}

// Config returns an oauth2.Config for this server.
func (s *Server) Config(scopes ...string) *oauth2.Config {
	return &oauth2.Config{
		ClientID:     s.ClientID,
		ClientSecret: s.ClientSecret,
		Scopes:       scopes,
		Endpoint: oauth2.Endpoint{
			AuthURL: s.AuthURL, TokenURL: s.TokenURL, DeviceAuthURL: s.DeviceURL,
			AuthStyle: oauth2.AuthStyleInParams,
		},
	}
}

// Grant records a completed sign-in of account and returns its tokens, as a token response would
// (without counting a request). The scope is "openid email offline_access".
func (s *Server) Grant(account string) *oauth2.Token {
	s.mu.Lock()
	defer s.mu.Unlock()
	g := &grant{account: account, scope: "openid email offline_access"}
	s.grants = append(s.grants, g)
	body := s.issueLocked(g, true)
	tok := &oauth2.Token{
		AccessToken:  body["access_token"].(string),
		TokenType:    "Bearer",
		RefreshToken: body["refresh_token"].(string),
		ExpiresIn:    int64(s.opts.Lifetime / time.Second),
		Expiry:       s.opts.Now().Add(s.opts.Lifetime),
	}
	return tok.WithExtra(body)
}

// Revoke revokes every grant of account: its refresh tokens then get invalid_grant with
// description ("" means Microsoft's AADSTS70000 text). Access tokens already issued stay valid.
func (s *Server) Revoke(account, description string) {
	if description == "" {
		description = "AADSTS70000: The provided value for the input parameter 'refresh_token' or 'assertion' is not valid."
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, g := range s.grants {
		if g.account == account {
			g.revoked = description
		}
	}
}

// Requests returns the number of token-endpoint requests so far.
func (s *Server) Requests() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.total
}

// RequestsOf returns the number of token-endpoint requests with grant_type g ("refresh_token",
// "authorization_code", "client_credentials", "urn:ietf:params:oauth:grant-type:device_code").
func (s *Server) RequestsOf(g string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.requests[g]
}

// Fail makes the next n token requests fail with f.
func (s *Server) Fail(n int, f Failure) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for range n {
		s.failures = append(s.failures, f)
	}
}

// SetDelay delays every token response by d.
func (s *Server) SetDelay(d time.Duration) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.delay = d
}

// Block holds every token request until release is called (or the client gives up). Each held
// request sends on arrived as it comes in.
func (s *Server) Block() (arrived <-chan struct{}, release func()) {
	g := &gate{arrived: make(chan struct{}, 1024), release: make(chan struct{})}
	s.mu.Lock()
	s.gate = g
	s.mu.Unlock()
	var once sync.Once
	return g.arrived, func() {
		once.Do(func() {
			s.mu.Lock()
			if s.gate == g {
				s.gate = nil
				close(g.release)
			}
			s.mu.Unlock()
		})
	}
}

// Valid reports whether accessToken was issued here and has not expired, and for which account.
func (s *Server) Valid(accessToken string) (account string, ok bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	a, ok := s.access[accessToken]
	if !ok || !s.opts.Now().Before(a.expiry) {
		return "", false
	}
	return a.account, true
}

// LastAuthorize returns the query of the last authorization request.
func (s *Server) LastAuthorize() url.Values {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.lastAuth
}

// ApproveDevice signs account in for the device flow whose user code is userCode.
func (s *Server) ApproveDevice(userCode, account string) bool {
	return s.device(userCode, account, false, 0)
}

// DenyDevice refuses the device flow whose user code is userCode (access_denied).
func (s *Server) DenyDevice(userCode string) bool { return s.device(userCode, "", true, 0) }

// SlowDown makes the next n polls of the device flow get slow_down.
func (s *Server) SlowDown(userCode string, n int) bool { return s.device(userCode, "", false, n) }

func (s *Server) device(userCode, account string, deny bool, slow int) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, d := range s.devices {
		if d.userCode == userCode {
			if account != "" {
				d.account = account
			}
			d.denied = d.denied || deny
			d.slowDown += slow
			return true
		}
	}
	return false
}

func random(prefix string, n int) string {
	b := make([]byte, (n*3)/4+3)
	_, _ = rand.Read(b)
	s := prefix + base64.RawURLEncoding.EncodeToString(b)
	if len(s) > n && n > len(prefix)+8 {
		s = s[:n]
	}
	return s
}

// issueLocked mints tokens for g: the JSON body of a token response.
func (s *Server) issueLocked(g *grant, withRefresh bool) map[string]any {
	now := s.opts.Now()
	at := random("at-", s.opts.AccessTokenSize)
	s.access[at] = accessEntry{account: g.account, expiry: now.Add(s.opts.Lifetime)}
	body := map[string]any{
		"access_token": at,
		"token_type":   "Bearer",
		"expires_in":   int(s.opts.Lifetime / time.Second),
		"scope":        g.scope,
	}
	if withRefresh {
		rt := random("rt-", 48)
		s.refresh[rt] = &refreshEntry{grant: g, current: true}
		body["refresh_token"] = rt
	}
	if strings.Contains(" "+g.scope+" ", " openid ") {
		claims := map[string]any{"email": g.account, "email_verified": true, "preferred_username": g.account, "sub": Subject(g.account)}
		if g.nonce != "" {
			claims["nonce"], g.nonce = g.nonce, "" // OpenID Connect Core 3.1.3.6: the request's nonce
		}
		if s.opts.IDClaims != nil {
			for k, v := range s.opts.IDClaims(g.account) {
				claims[k] = v
			}
		}
		body["id_token"] = s.IDToken(claims)
	}
	return body
}

// Subject is the sub claim the server gives account by default.
func Subject(account string) string { return "sub-" + strings.ToLower(account) }

// IDToken signs an id_token for this server's client with extra claims over the defaults
// (iss, aud, sub, iat, exp one hour on); an extra claim with a nil value is left out.
func (s *Server) IDToken(extra map[string]any) string {
	now := s.opts.Now()
	claims := map[string]any{
		"iss": s.URL, "aud": s.ClientID, "sub": "subject-1",
		"iat": now.Unix(), "exp": now.Add(time.Hour).Unix(),
	}
	for k, v := range extra {
		if v == nil {
			delete(claims, k)
			continue
		}
		claims[k] = v
	}
	return s.Sign(map[string]any{"alg": "RS256", "kid": s.kid, "typ": "JWT"}, claims)
}

// Sign makes a compact JWS of header and claims with the server's key (RS256 whatever the header
// says), for tests of id_token verification.
func (s *Server) Sign(header, claims map[string]any) string {
	hb, _ := json.Marshal(header)
	cb, _ := json.Marshal(claims)
	signed := base64.RawURLEncoding.EncodeToString(hb) + "." + base64.RawURLEncoding.EncodeToString(cb)
	sum := sha256.Sum256([]byte(signed))
	sig, _ := rsa.SignPKCS1v15(rand.Reader, s.key, crypto.SHA256, sum[:])
	return signed + "." + base64.RawURLEncoding.EncodeToString(sig)
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json;charset=UTF-8")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

func writeError(w http.ResponseWriter, status int, code, description string) {
	if status == http.StatusUnauthorized {
		w.Header().Set("WWW-Authenticate", `Basic realm="token"`)
	}
	writeJSON(w, status, map[string]string{"error": code, "error_description": description})
}

func (s *Server) authorize(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	s.mu.Lock()
	s.lastAuth = q
	s.mu.Unlock()
	redirect := q.Get("redirect_uri")
	ru, err := url.Parse(redirect)
	if err != nil || redirect == "" || q.Get("client_id") != s.ClientID {
		http.Error(w, "unknown client or redirect_uri", http.StatusBadRequest)
		return
	}
	v := ru.Query()
	v.Set("state", q.Get("state"))
	if q.Get("response_type") != "code" {
		v.Set("error", "unsupported_response_type")
		ru.RawQuery = v.Encode()
		http.Redirect(w, r, ru.String(), http.StatusFound)
		return
	}
	account := q.Get("login_hint")
	if account == "" {
		account = s.opts.Account
	}
	code := random("code-", 32)
	s.mu.Lock()
	s.codes[code] = &codeEntry{account: account, redirect: redirect, challenge: q.Get("code_challenge"),
		method: q.Get("code_challenge_method"), scope: q.Get("scope"), nonce: q.Get("nonce")}
	s.mu.Unlock()
	v.Set("code", code)
	ru.RawQuery = v.Encode()
	http.Redirect(w, r, ru.String(), http.StatusFound)
}

// clientOK checks the client's credentials in r (form already parsed).
func (s *Server) clientOK(w http.ResponseWriter, r *http.Request) bool {
	id, sec, basic := r.BasicAuth()
	if basic {
		id, _ = url.QueryUnescape(id)
		sec, _ = url.QueryUnescape(sec)
	} else {
		id, sec = r.PostForm.Get("client_id"), r.PostForm.Get("client_secret")
	}
	if id != s.ClientID {
		writeError(w, http.StatusBadRequest, "unauthorized_client", "AADSTS700016: Application with identifier '"+id+"' was not found in the directory.")
		return false
	}
	if s.ClientSecret != "" && sec != s.ClientSecret {
		writeError(w, http.StatusUnauthorized, "invalid_client", "AADSTS7000215: Invalid client secret provided.")
		return false
	}
	return true
}

func (s *Server) token(w http.ResponseWriter, r *http.Request) {
	if err := r.ParseForm(); err != nil || !strings.HasPrefix(r.Header.Get("Content-Type"), "application/x-www-form-urlencoded") {
		writeError(w, http.StatusBadRequest, "invalid_request", "the body must be application/x-www-form-urlencoded")
		return
	}
	gt := r.PostForm.Get("grant_type")

	s.mu.Lock()
	s.total++
	s.requests[gt]++
	delay, g := s.delay, s.gate
	var fail *Failure
	if len(s.failures) > 0 {
		f := s.failures[0]
		s.failures = s.failures[1:]
		fail = &f
	}
	s.mu.Unlock()

	if g != nil {
		g.arrived <- struct{}{}
		select {
		case <-g.release:
		case <-r.Context().Done():
			return
		}
	}
	if delay > 0 {
		select {
		case <-time.After(delay):
		case <-r.Context().Done():
			return
		}
	}
	if fail != nil {
		if fail.Code == "" {
			http.Error(w, http.StatusText(fail.Status), fail.Status)
			return
		}
		writeError(w, fail.Status, fail.Code, fail.Description)
		return
	}
	if !s.clientOK(w, r) {
		return
	}
	switch gt {
	case "refresh_token":
		s.refreshGrant(w, r)
	case "authorization_code":
		s.codeGrant(w, r)
	case "urn:ietf:params:oauth:grant-type:device_code":
		s.deviceGrant(w, r)
	case "client_credentials":
		if s.ClientSecret == "" {
			writeError(w, http.StatusBadRequest, "unauthorized_client", "a public client cannot use client_credentials")
			return
		}
		s.mu.Lock()
		body := s.issueLocked(&grant{account: s.ClientID, scope: r.PostForm.Get("scope")}, false)
		s.mu.Unlock()
		writeJSON(w, http.StatusOK, body)
	default:
		writeError(w, http.StatusBadRequest, "unsupported_grant_type", "grant_type "+gt+" is not supported")
	}
}

func (s *Server) refreshGrant(w http.ResponseWriter, r *http.Request) {
	rt := r.PostForm.Get("refresh_token")
	s.mu.Lock()
	defer s.mu.Unlock()
	e, ok := s.refresh[rt]
	switch {
	case !ok:
		writeError(w, http.StatusBadRequest, "invalid_grant", "AADSTS9002313: Invalid request. The refresh token is unknown.")
		return
	case e.grant.revoked != "":
		writeError(w, http.StatusBadRequest, "invalid_grant", e.grant.revoked)
		return
	case !e.current && s.opts.ReuseDetection:
		e.grant.revoked = "AADSTS70000: a rotated refresh token was used again; the grant is revoked"
		writeError(w, http.StatusBadRequest, "invalid_grant", e.grant.revoked)
		return
	}
	rotate := !s.opts.KeepRefreshTokens
	body := s.issueLocked(e.grant, rotate)
	if rotate {
		e.current = false
	}
	writeJSON(w, http.StatusOK, body)
}

func (s *Server) codeGrant(w http.ResponseWriter, r *http.Request) {
	code := r.PostForm.Get("code")
	s.mu.Lock()
	defer s.mu.Unlock()
	c, ok := s.codes[code]
	delete(s.codes, code)
	if !ok {
		writeError(w, http.StatusBadRequest, "invalid_grant", "the authorization code is unknown or was used")
		return
	}
	if r.PostForm.Get("redirect_uri") != c.redirect {
		writeError(w, http.StatusBadRequest, "invalid_grant", "redirect_uri does not match the authorization request")
		return
	}
	if c.challenge != "" {
		v := r.PostForm.Get("code_verifier")
		sum := sha256.Sum256([]byte(v))
		if c.method != "S256" || v == "" || base64.RawURLEncoding.EncodeToString(sum[:]) != c.challenge {
			writeError(w, http.StatusBadRequest, "invalid_grant", "PKCE verification failed")
			return
		}
	}
	g := &grant{account: c.account, scope: c.scope, nonce: c.nonce}
	s.grants = append(s.grants, g)
	writeJSON(w, http.StatusOK, s.issueLocked(g, true))
}

func (s *Server) deviceCode(w http.ResponseWriter, r *http.Request) {
	if err := r.ParseForm(); err != nil || r.PostForm.Get("client_id") != s.ClientID {
		writeError(w, http.StatusBadRequest, "invalid_client", "unknown client")
		return
	}
	dc := random("dc-", 32)
	uc := strings.ToUpper(random("", 12)[:8])
	s.mu.Lock()
	s.devices[dc] = &deviceEntry{userCode: uc, scope: r.PostForm.Get("scope"), expiry: s.opts.Now().Add(15 * time.Minute)}
	s.mu.Unlock()
	writeJSON(w, http.StatusOK, map[string]any{
		"device_code": dc, "user_code": uc, "verification_uri": s.URL + "/device",
		"expires_in": 900, "interval": s.opts.DeviceInterval,
	})
}

func (s *Server) deviceGrant(w http.ResponseWriter, r *http.Request) {
	dc := r.PostForm.Get("device_code")
	s.mu.Lock()
	defer s.mu.Unlock()
	d, ok := s.devices[dc]
	switch {
	case !ok:
		writeError(w, http.StatusBadRequest, "invalid_grant", "unknown device code")
	case d.denied:
		delete(s.devices, dc)
		writeError(w, http.StatusBadRequest, "access_denied", "the user declined")
	case !s.opts.Now().Before(d.expiry):
		writeError(w, http.StatusBadRequest, "expired_token", "the device code expired")
	case d.slowDown > 0:
		d.slowDown--
		writeError(w, http.StatusBadRequest, "slow_down", "polling too fast")
	case d.account == "":
		writeError(w, http.StatusBadRequest, "authorization_pending", "waiting for the user")
	default:
		delete(s.devices, dc)
		g := &grant{account: d.account, scope: d.scope}
		s.grants = append(s.grants, g)
		writeJSON(w, http.StatusOK, s.issueLocked(g, true))
	}
}

func (s *Server) revoke(w http.ResponseWriter, r *http.Request) {
	if err := r.ParseForm(); err != nil {
		writeError(w, http.StatusBadRequest, "invalid_request", "bad form")
		return
	}
	if !s.clientOK(w, r) {
		return
	}
	tok := r.PostForm.Get("token")
	s.mu.Lock()
	defer s.mu.Unlock()
	if e, ok := s.refresh[tok]; ok {
		e.grant.revoked = "the grant was revoked"
	}
	delete(s.access, tok)
	w.WriteHeader(http.StatusOK) // RFC 7009: 200 whether or not the token was known
}

func (s *Server) jwks(w http.ResponseWriter, _ *http.Request) {
	pub := s.key.PublicKey
	writeJSON(w, http.StatusOK, map[string]any{"keys": []map[string]string{{
		"kty": "RSA", "use": "sig", "alg": "RS256", "kid": s.kid,
		"n": base64.RawURLEncoding.EncodeToString(pub.N.Bytes()),
		"e": base64.RawURLEncoding.EncodeToString(big.NewInt(int64(pub.E)).Bytes()),
	}}})
}

// userinfo is OpenID Connect's UserInfo endpoint: the claims of the account a valid access token
// (Authorization: Bearer) belongs to.
func (s *Server) userinfo(w http.ResponseWriter, r *http.Request) {
	scheme, tok, _ := strings.Cut(r.Header.Get("Authorization"), " ")
	account, ok := s.Valid(tok)
	if !strings.EqualFold(scheme, "Bearer") || !ok {
		w.Header().Set("WWW-Authenticate", `Bearer error="invalid_token"`)
		writeJSON(w, http.StatusUnauthorized, map[string]any{"error": "invalid_token"})
		return
	}
	claims := map[string]any{"sub": Subject(account), "email": account, "email_verified": true}
	if s.opts.UserinfoClaims != nil {
		for k, v := range s.opts.UserinfoClaims(account) {
			if v == nil {
				delete(claims, k)
				continue
			}
			claims[k] = v
		}
	}
	writeJSON(w, http.StatusOK, claims)
}

func (s *Server) discovery(w http.ResponseWriter, _ *http.Request) {
	writeJSON(w, http.StatusOK, map[string]any{
		"issuer": s.URL, "authorization_endpoint": s.AuthURL, "token_endpoint": s.TokenURL,
		"device_authorization_endpoint": s.DeviceURL, "revocation_endpoint": s.RevocationURL,
		"jwks_uri": s.JWKSURL, "userinfo_endpoint": s.UserinfoURL, "id_token_signing_alg_values_supported": []string{"RS256"},
	})
}
