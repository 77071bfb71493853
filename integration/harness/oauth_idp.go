package harness

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/postern/postern/sidecar/secret"
)

// IdP defaults, used when IdPOptions leaves a field empty.
const (
	// IdPDefaultClientID is the client registered when IdPOptions.Clients is empty.
	IdPDefaultClientID = "postern-test"
	// IdPDefaultRedirectURI is that client's redirect URI. Nothing listens there: SignIn stops at
	// the redirect and reads the code from it. (Port 2 because Chromium refuses to load "unsafe"
	// ports such as 1 and 9; browser tests register their real callback instead.)
	IdPDefaultRedirectURI = "http://127.0.0.1:2/oauth/callback"
	// IdPDefaultResource is the resource indicator of the SMTP resource server.
	IdPDefaultResource = "urn:postern:test:smtp"
	// IdPSMTPScope is the scope that grants SMTP access to the resource server.
	IdPSMTPScope = "smtp"
	// IdPScopes is what a mail client asks for: an id_token naming the mailbox, refresh tokens and
	// SMTP access.
	IdPScopes = "openid email profile offline_access smtp"
)

// IdPClient is an OAuth client registered with the IdP at start.
type IdPClient struct {
	// ID is the client_id.
	ID string
	// Secret is the client_secret; empty makes a public client (token_endpoint_auth_method none).
	Secret secret.Secret
	// RedirectURIs are the allowed redirect URIs.
	RedirectURIs []string
}

// IdPAccount is a user who can sign in.
type IdPAccount struct {
	// Login is the sign-in name and the account id (the `sub`), normally the mailbox.
	Login string
	// Password is checked by the sign-in form.
	Password secret.Secret
	// Email is the mailbox put in the id_token and in the access token's introspection response
	// (which Dovecot checks against the XOAUTH2 user). Empty means Login.
	Email string
}

// IdPOptions configures StartIdP. The zero value starts an IdP with one confidential client
// (IdPDefaultClient) and the accounts alice@client-a.test and mallory@client-a.test, both with the
// password "password".
type IdPOptions struct {
	// Clients are the registered clients; empty registers IdPDefaultClient().
	Clients []IdPClient
	// Accounts are the users; empty registers IdPDefaultAccounts().
	Accounts []IdPAccount
	// AccessTTL is the access token lifetime; zero means 5 minutes. Whole seconds.
	AccessTTL time.Duration
	// RefreshTTL is the refresh token (and grant) lifetime; zero means 14 days.
	RefreshTTL time.Duration
	// AccessTokenBits is the randomness of an (opaque) access token, which sets its length
	// (6 bits per character); zero means 256 bits (43 characters). 24000 gives 4000-character
	// tokens, the size Microsoft's are.
	AccessTokenBits int
	// Resource is the resource indicator of the SMTP resource server; empty means
	// IdPDefaultResource.
	Resource string
	// StartTimeout bounds the start; zero means 30 s.
	StartTimeout time.Duration
}

// IdPDefaultClient is the client registered when IdPOptions.Clients is empty.
func IdPDefaultClient() IdPClient {
	return IdPClient{
		ID:           IdPDefaultClientID,
		Secret:       secret.New("postern-test-secret"),
		RedirectURIs: []string{IdPDefaultRedirectURI},
	}
}

// IdPDefaultAccounts are the accounts registered when IdPOptions.Accounts is empty.
func IdPDefaultAccounts() []IdPAccount {
	return []IdPAccount{
		{Login: "alice@client-a.test", Password: secret.New("password")},
		{Login: "mallory@client-a.test", Password: secret.New("password")},
	}
}

// IdP is a running OAuth 2.0 authorization server (oidc-provider) on loopback.
type IdP struct {
	// Issuer is the issuer URL, http://127.0.0.1:PORT.
	Issuer string
	// AuthorizeURL, TokenURL, RevocationURL, IntrospectionURL and UserinfoURL are its endpoints.
	AuthorizeURL     string
	TokenURL         string
	RevocationURL    string
	IntrospectionURL string
	UserinfoURL      string
	// TestRevokeURL is the test-only admin route that revokes everything of one account.
	TestRevokeURL string
	// Resource is the SMTP resource server's indicator; access tokens are issued for it.
	Resource string
	// AccessTTL is the configured access token lifetime.
	AccessTTL time.Duration
	// Clients and Accounts are what was registered.
	Clients  []IdPClient
	Accounts []IdPAccount
	// IntrospectionClient is a client with no grants, registered for resource servers (Dovecot)
	// to authenticate to the introspection endpoint.
	IntrospectionClient IdPClient

	proc *Process
}

type idpConfigClient struct {
	ClientID          string   `json:"client_id"`
	ClientSecret      string   `json:"client_secret,omitempty"`
	RedirectURIs      []string `json:"redirect_uris"`
	IntrospectionOnly bool     `json:"introspection_only,omitempty"`
}

type idpConfigAccount struct {
	Login    string `json:"login"`
	Password string `json:"password"`
	Email    string `json:"email,omitempty"`
}

type idpConfig struct {
	Host            string             `json:"host"`
	Port            int                `json:"port"`
	AccessTTL       int                `json:"accessTTL"`
	RefreshTTL      int                `json:"refreshTTL"`
	OpaqueTokenBits int                `json:"opaqueTokenBits,omitempty"`
	Resource        string             `json:"resource"`
	TestRoutes      bool               `json:"testRoutes"`
	Clients         []idpConfigClient  `json:"clients"`
	Accounts        []idpConfigAccount `json:"accounts"`
}

type idpReady struct {
	Ready                 bool   `json:"ready"`
	Issuer                string `json:"issuer"`
	AuthorizationEndpoint string `json:"authorization_endpoint"`
	TokenEndpoint         string `json:"token_endpoint"`
	RevocationEndpoint    string `json:"revocation_endpoint"`
	IntrospectionEndpoint string `json:"introspection_endpoint"`
	UserinfoEndpoint      string `json:"userinfo_endpoint"`
	TestRevokeEndpoint    string `json:"test_revoke_endpoint"`
	Resource              string `json:"resource"`
}

// StartIdP starts integration/oauth/idp/server.mjs with node on 127.0.0.1 and a free port, and
// stops it when the test ends. Its log is shown if the test failed. It needs
// integration/oauth/install.sh to have run (node_modules present).
func StartIdP(t T, opts IdPOptions) *IdP {
	t.Helper()
	started := time.Now()

	idpDir := filepath.Join(oauthDir(t), "idp")
	if !requirePrereqs(t, SkipEnv, func() error { return checkIdP(idpDir) }) {
		return nil
	}
	node, err := exec.LookPath("node")
	if err != nil {
		t.Fatalf("%v", err)
	}

	if len(opts.Clients) == 0 {
		opts.Clients = []IdPClient{IdPDefaultClient()}
	}
	if len(opts.Accounts) == 0 {
		opts.Accounts = IdPDefaultAccounts()
	}
	if opts.AccessTTL <= 0 {
		opts.AccessTTL = 5 * time.Minute
	}
	if opts.RefreshTTL <= 0 {
		opts.RefreshTTL = 14 * 24 * time.Hour
	}
	if opts.Resource == "" {
		opts.Resource = IdPDefaultResource
	}
	if opts.StartTimeout <= 0 {
		opts.StartTimeout = 30 * time.Second
	}

	introspection := IdPClient{ID: "dovecot-introspection", Secret: secret.New(oauthRandomB64(24))}
	cfg := idpConfig{
		Host:            "127.0.0.1",
		AccessTTL:       oauthSeconds(opts.AccessTTL),
		RefreshTTL:      oauthSeconds(opts.RefreshTTL),
		OpaqueTokenBits: opts.AccessTokenBits,
		Resource:        opts.Resource,
		TestRoutes:      true,
	}
	for _, c := range opts.Clients {
		cfg.Clients = append(cfg.Clients, idpConfigClient{
			ClientID:     c.ID,
			ClientSecret: c.Secret.Reveal(),
			RedirectURIs: c.RedirectURIs,
		})
	}
	cfg.Clients = append(cfg.Clients, idpConfigClient{
		ClientID:          introspection.ID,
		ClientSecret:      introspection.Secret.Reveal(),
		RedirectURIs:      []string{},
		IntrospectionOnly: true,
	})
	for _, a := range opts.Accounts {
		cfg.Accounts = append(cfg.Accounts, idpConfigAccount{Login: a.Login, Password: a.Password.Reveal(), Email: a.Email})
	}

	dir, err := os.MkdirTemp("", "postern-idp-")
	if err != nil {
		t.Fatalf("creating IdP dir: %v", err)
	}
	t.Cleanup(func() {
		if !oauthKeep() {
			_ = os.RemoveAll(dir)
		}
	})
	cfgPath := filepath.Join(dir, "idp.json")
	raw, err := json.MarshalIndent(cfg, "", "  ")
	if err != nil {
		t.Fatalf("encoding IdP config: %v", err)
	}
	if err := os.WriteFile(cfgPath, raw, 0o600); err != nil {
		t.Fatalf("writing IdP config: %v", err)
	}

	// server.mjs prints one JSON line when it serves: its issuer and endpoints.
	proc, err := StartProcess(ProcessOptions{Name: "OAuth server", Path: node, Args: []string{"server.mjs", "--config", cfgPath},
		Dir: idpDir, Env: append(os.Environ(), "NODE_ENV=test"), LogFile: filepath.Join(dir, "idp.log"), Group: true,
		StopTimeout: 5 * time.Second})
	if err != nil {
		t.Fatalf("%v", err)
	}
	p := &IdP{
		Resource:            opts.Resource,
		AccessTTL:           time.Duration(cfg.AccessTTL) * time.Second,
		Clients:             opts.Clients,
		Accounts:            opts.Accounts,
		IntrospectionClient: introspection,
		proc:                proc,
	}
	proc.StopAtCleanup(t, nil)
	var ready idpReady
	ctx, cancel := context.WithTimeout(context.Background(), opts.StartTimeout)
	defer cancel()
	if err := proc.WaitReady(ctx, func() (bool, error) {
		for _, line := range strings.Split(proc.Log(), "\n") {
			if strings.HasPrefix(line, "{") && json.Unmarshal([]byte(line), &ready) == nil && ready.Ready {
				return true, nil
			}
		}
		return false, nil
	}); err != nil {
		t.Fatalf("%v", err)
	}
	p.Issuer = ready.Issuer
	p.AuthorizeURL = ready.AuthorizationEndpoint
	p.TokenURL = ready.TokenEndpoint
	p.RevocationURL = ready.RevocationEndpoint
	p.IntrospectionURL = ready.IntrospectionEndpoint
	p.UserinfoURL = ready.UserinfoEndpoint
	p.TestRevokeURL = ready.TestRevokeEndpoint
	t.Logf("IdP %s started in %s", p.Issuer, time.Since(started).Round(time.Millisecond))
	return p
}

// Stop ends the IdP process (SIGTERM to its process group, then SIGKILL after 5 s). Safe to call
// more than once.
func (p *IdP) Stop() { _ = p.proc.Stop() }

// Log returns what the IdP wrote so far (no token values).
func (p *IdP) Log() string { return p.proc.Log() }

// Account returns the registered account with that login.
func (p *IdP) Account(login string) (IdPAccount, bool) {
	for _, a := range p.Accounts {
		if a.Login == login {
			return a, true
		}
	}
	return IdPAccount{}, false
}

// Client returns the registered client with that id.
func (p *IdP) Client(id string) (IdPClient, bool) {
	for _, c := range p.Clients {
		if c.ID == id {
			return c, true
		}
	}
	return IdPClient{}, false
}

// IdPRevokeResult says what Revoke removed.
type IdPRevokeResult struct {
	Grants   int `json:"grants"`
	Sessions int `json:"sessions"`
}

// Revoke calls the test-only admin route: every grant of the account is revoked, with its refresh
// tokens, access tokens and authorization codes, and every sign-in session of the account ends.
// Refreshing then fails with invalid_grant, and the account must sign in again.
func (p *IdP) Revoke(ctx context.Context, account string) (IdPRevokeResult, error) {
	u := p.TestRevokeURL + "?account=" + url.QueryEscape(account)
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, u, nil)
	if err != nil {
		return IdPRevokeResult{}, fmt.Errorf("revoking grants of %s: %w", account, err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return IdPRevokeResult{}, fmt.Errorf("revoking grants of %s: %w", account, err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	if resp.StatusCode != http.StatusOK {
		return IdPRevokeResult{}, fmt.Errorf("revoking grants of %s: status %d: %s", account, resp.StatusCode, strings.TrimSpace(string(body)))
	}
	var out IdPRevokeResult
	if err := json.Unmarshal(body, &out); err != nil {
		return IdPRevokeResult{}, fmt.Errorf("revoking grants of %s: decoding %q: %w", account, body, err)
	}
	return out, nil
}

func oauthSeconds(d time.Duration) int {
	s := int((d + time.Second - 1) / time.Second)
	if s < 1 {
		return 1
	}
	return s
}
