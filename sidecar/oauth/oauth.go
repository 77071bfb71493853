// Package oauth owns Postern's side of OAuth 2.0 with the identity providers that run mailboxes:
// Microsoft Entra ID (Exchange Online), Google (Gmail) and any standard ("generic") server. It turns
// a project's project.OAuth into an oauth2.Config and runs the grants on top of
// golang.org/x/oauth2; it keeps no state of its own.
//
// How a mailbox gets signed in and kept signed in:
//
//  1. NewProvider (or ConfigFor) derives the endpoints, scopes and authorization-URL parameters from
//     the provider name: Microsoft's per-tenant v2.0 endpoints with the SMTP.Send scope, Google's
//     endpoints with https://mail.google.com/ and access_type=offline + prompt=consent (so a refresh
//     token is issued), or the explicit URLs of a generic server, with the scopes
//     "openid email offline_access" unless others are configured.
//  2. A person signs in once, through one of the grants: authorization code with PKCE S256 and a
//     state (AuthCodeURL, then Exchange at the callback), or the device code (DeviceAuth, then
//     DeviceToken, which polls with RFC 8628's authorization_pending / slow_down rules and reports
//     progress). Unattended projects use client credentials (ClientCredentials) and have no person.
//  3. Identity names the account that signed in after verifying the id_token with
//     github.com/coreos/go-oidc (signature against the issuer's keys, aud, exp, nbf; iss and the sign-in's nonce here): for Microsoft its preferred_username (or upn), oid and
//     tid; for others its email, only when email_verified, and sub. A standard OpenID provider
//     may leave email out of the id_token and serve it at its userinfo endpoint (discovered from
//     the issuer): it is read there, for the same sub, by the same rule. CheckAccount compares it with
//     the project's mailbox and with the account of the previous sign-in.
//  4. From then on the token broker (sidecar/token) calls Refresh ahead of expiry, and Classify tells
//     it whether a failure needs a person (NeedsReauth), an administrator (BadClient), or only time
//     (Transient).
package oauth

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"regexp"
	"strings"
	"time"

	"golang.org/x/oauth2"
	"golang.org/x/oauth2/endpoints"

	"github.com/postern/postern/sidecar/project"
)

// Provider names.
const (
	Microsoft = "microsoft"
	Google    = "google"
	Generic   = "generic"
)

// Grant names.
const (
	GrantAuthorizationCode = "authorization_code"
	GrantDeviceCode        = "device_code"
	GrantClientCredentials = "client_credentials"
)

// Scopes of the providers.
const (
	// MicrosoftSMTPSend is the delegated permission to send through SMTP AUTH.
	MicrosoftSMTPSend = "https://outlook.office.com/SMTP.Send"
	// MicrosoftAppOnly is the scope of an app-only (client credentials) token for SMTP.SendAsApp.
	MicrosoftAppOnly = "https://outlook.office365.com/.default"
	// GoogleMail is the only scope Gmail accepts for SMTP.
	GoogleMail = "https://mail.google.com/"
)

// GenericScopes are the default scopes of a generic (standard OpenID Connect) sign-in: an id_token
// (openid), the account's address (email, in the id_token or at the userinfo endpoint) and a
// refresh token (offline_access). Mail scopes of the server, if it has any, must be configured.
var GenericScopes = []string{"openid", "email", "offline_access"}

// MicrosoftDelegatedScopes are the default scopes of a Microsoft sign-in: SMTP.Send, a refresh
// token, and an id_token naming the account.
var MicrosoftDelegatedScopes = []string{MicrosoftSMTPSend, "offline_access", "openid", "email", "profile"}

// GoogleScopes are the default scopes of a Google sign-in: Gmail, and an id_token naming the account.
var GoogleScopes = []string{GoogleMail, "openid", "email"}

const microsoftLogin = "https://login.microsoftonline.com/"

// microsoftTenantIssuer is the issuer of Microsoft v2.0 id_tokens; {tenantid} is the token's tid.
const microsoftTenantIssuer = microsoftLogin + "{tenantid}/v2.0"

// Provider is one project's OAuth 2.0 client at its identity provider.
type Provider struct {
	// Name is Microsoft, Google or Generic.
	Name string
	// Grant is the grant the project signs in with (GrantAuthorizationCode when not configured).
	Grant string
	// Config holds the endpoints, the client id and secret, the scopes and the redirect URL.
	Config *oauth2.Config
	// AuthParams are added to every authorization URL.
	AuthParams []oauth2.AuthCodeOption
	// Issuer is the expected "iss" of id_tokens; Microsoft's holds {tenantid}, replaced by the
	// token's "tid". Empty: iss is not checked and signatures cannot be (no keys to fetch).
	Issuer string
	// JWKSURL is where the id_token signing keys are published. Empty with an Issuer: discovered
	// from the issuer's /.well-known/openid-configuration.
	JWKSURL string
	// RevocationURL is the RFC 7009 revocation endpoint; empty when the provider has none
	// (Microsoft).
	RevocationURL string
	// Tenant is the Microsoft tenant configured for the project.
	Tenant string
	// HTTPClient makes every request to the provider; nil means http.DefaultClient.
	HTTPClient *http.Client
	// Now is the clock for id_token checks; nil means time.Now.
	Now func() time.Time

	ids oidcState // the issuer's configuration and keys, fetched once (idtoken.go)
}

// Options are what NewProvider needs besides the project's settings.
type Options struct {
	// RedirectURL is the sign-in callback, for the authorization code grant.
	RedirectURL string
	// HTTPClient makes every request to the provider; nil means http.DefaultClient.
	HTTPClient *http.Client
	// Now is the clock for id_token checks; nil means time.Now.
	Now func() time.Time
}

// ConfigFor returns the oauth2.Config of o: what the token broker refreshes with.
func ConfigFor(o *project.OAuth, redirectURL string) (*oauth2.Config, error) {
	p, err := NewProvider(o, Options{RedirectURL: redirectURL})
	if err != nil {
		return nil, err
	}
	return p.Config, nil
}

var guidRE = regexp.MustCompile(`^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$`)

// NewProvider derives the client of o. It fails, naming the setting, when the provider cannot do
// what o asks: an unknown provider or grant, Google's device flow, app-only tokens from a
// multi-tenant Microsoft endpoint, or a generic server without the endpoint its grant needs.
func NewProvider(o *project.OAuth, opts Options) (*Provider, error) {
	if o == nil {
		return nil, fmt.Errorf("oauth settings are missing")
	}
	grant := o.Grant
	if grant == "" {
		grant = GrantAuthorizationCode
	}
	switch grant {
	case GrantAuthorizationCode, GrantDeviceCode, GrantClientCredentials:
	default:
		return nil, fmt.Errorf("oauth grant %q: use %s, %s or %s", o.Grant, GrantAuthorizationCode, GrantDeviceCode, GrantClientCredentials)
	}
	if o.ClientID == "" {
		return nil, fmt.Errorf("oauth client_id is empty")
	}
	p := &Provider{
		Name:       o.Provider,
		Grant:      grant,
		Tenant:     o.Tenant,
		Issuer:     o.Issuer,
		HTTPClient: opts.HTTPClient,
		Now:        opts.Now,
		Config: &oauth2.Config{
			ClientID:     o.ClientID,
			ClientSecret: o.ClientSecret.Reveal(),
			RedirectURL:  opts.RedirectURL,
			Scopes:       append([]string(nil), o.Scopes...),
		},
	}
	switch o.Provider {
	case Microsoft:
		if err := p.microsoft(o); err != nil {
			return nil, err
		}
	case Google:
		if err := p.google(); err != nil {
			return nil, err
		}
	case Generic:
		if err := p.generic(o); err != nil {
			return nil, err
		}
	default:
		return nil, fmt.Errorf("oauth provider %q: use %s, %s or %s", o.Provider, Microsoft, Google, Generic)
	}
	return p, nil
}

func (p *Provider) microsoft(o *project.OAuth) error {
	tenant := strings.TrimSpace(o.Tenant)
	if tenant == "" {
		return fmt.Errorf("microsoft oauth: tenant is empty (a tenant id or domain, or \"organizations\")")
	}
	if strings.ContainsAny(tenant, "/?#%@ ") {
		return fmt.Errorf("microsoft oauth: tenant %q is not a tenant id or domain", tenant)
	}
	base := microsoftLogin + url.PathEscape(tenant) + "/oauth2/v2.0/"
	p.Config.Endpoint = oauth2.Endpoint{
		AuthURL:       base + "authorize",
		TokenURL:      base + "token",
		DeviceAuthURL: base + "devicecode",
		AuthStyle:     oauth2.AuthStyleInParams,
	}
	if p.Grant == GrantClientCredentials {
		switch strings.ToLower(tenant) {
		case "common", "organizations", "consumers":
			return fmt.Errorf("microsoft oauth: client_credentials needs the tenant's own id or domain, not %q", tenant)
		}
		if p.Config.ClientSecret == "" {
			return fmt.Errorf("microsoft oauth: client_credentials needs a client secret")
		}
		if len(p.Config.Scopes) == 0 {
			p.Config.Scopes = []string{MicrosoftAppOnly}
		}
	} else if len(p.Config.Scopes) == 0 {
		p.Config.Scopes = append([]string(nil), MicrosoftDelegatedScopes...)
	}
	if p.Issuer == "" {
		p.Issuer = microsoftTenantIssuer
	}
	p.JWKSURL = microsoftLogin + url.PathEscape(tenant) + "/discovery/v2.0/keys"
	return nil
}

func (p *Provider) google() error {
	switch p.Grant {
	case GrantDeviceCode:
		return fmt.Errorf("google oauth: Google offers no device flow for the Gmail scope %s: use grant %s", GoogleMail, GrantAuthorizationCode)
	case GrantClientCredentials:
		return fmt.Errorf("google oauth: Gmail has no client credentials grant: use grant %s", GrantAuthorizationCode)
	}
	ep := endpoints.Google
	ep.DeviceAuthURL = ""
	ep.AuthStyle = oauth2.AuthStyleInParams
	p.Config.Endpoint = ep
	if len(p.Config.Scopes) == 0 {
		p.Config.Scopes = append([]string(nil), GoogleScopes...)
	}
	p.AuthParams = []oauth2.AuthCodeOption{oauth2.AccessTypeOffline, oauth2.SetAuthURLParam("prompt", "consent")}
	if p.Issuer == "" {
		p.Issuer = "https://accounts.google.com"
	}
	p.JWKSURL = "https://www.googleapis.com/oauth2/v3/certs"
	p.RevocationURL = "https://oauth2.googleapis.com/revoke"
	return nil
}

func (p *Provider) generic(o *project.OAuth) error {
	if o.TokenURL == "" {
		return fmt.Errorf("generic oauth: token_url is empty")
	}
	switch {
	case p.Grant == GrantAuthorizationCode && o.AuthURL == "":
		return fmt.Errorf("generic oauth: grant %s needs auth_url", p.Grant)
	case p.Grant == GrantDeviceCode && o.DeviceURL == "":
		return fmt.Errorf("generic oauth: grant %s needs device_url", p.Grant)
	}
	// A definite style: x/oauth2's auto-detection repeats every failed request in the other style,
	// which doubles device-flow polls (breaking slow_down) and failed refreshes. RFC 6749 §2.3.1
	// obliges servers to accept HTTP Basic from confidential clients; public clients send their
	// client_id in the body.
	style := oauth2.AuthStyleInHeader
	if p.Config.ClientSecret == "" {
		style = oauth2.AuthStyleInParams
	}
	for _, u := range []struct{ key, value string }{
		{"token_url", o.TokenURL}, {"auth_url", o.AuthURL}, {"device_url", o.DeviceURL},
		{"revocation_url", o.RevocationURL}, {"issuer", o.Issuer},
	} {
		if err := checkEndpoint(u.value); err != nil {
			return fmt.Errorf("generic oauth: %s: %w", u.key, err)
		}
	}
	p.Config.Endpoint = oauth2.Endpoint{AuthURL: o.AuthURL, TokenURL: o.TokenURL, DeviceAuthURL: o.DeviceURL, AuthStyle: style}
	if len(p.Config.Scopes) == 0 && p.Grant != GrantClientCredentials {
		p.Config.Scopes = append([]string(nil), GenericScopes...)
	}
	p.RevocationURL = o.RevocationURL
	return nil
}

// checkEndpoint refuses an identity provider's URL that a network attacker could read or change:
// anything but https, except http to a loopback host (a provider on this machine, or a test).
// Empty is allowed: the caller decides which URLs are required.
func checkEndpoint(raw string) error {
	if raw == "" {
		return nil
	}
	u, err := url.Parse(raw)
	if err != nil || u.Host == "" || u.User != nil {
		return fmt.Errorf("%q is not an absolute URL without credentials", raw)
	}
	switch {
	case u.Scheme == "https":
		return nil
	case u.Scheme == "http" && IsLoopbackHost(u.Hostname()):
		return nil
	}
	return fmt.Errorf("%q: use https (http only to localhost or a loopback address)", raw)
}

// IsLoopbackHost reports whether host (without a port) is "localhost" or a loopback IP address.
// A name that merely starts with "127." is not.
func IsLoopbackHost(host string) bool {
	if strings.EqualFold(host, "localhost") {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// ctx carries p's HTTP client to golang.org/x/oauth2.
func (p *Provider) ctx(ctx context.Context) context.Context {
	return WithHTTPClient(ctx, p.HTTPClient)
}

func (p *Provider) now() time.Time {
	if p.Now != nil {
		return p.Now()
	}
	return time.Now()
}

func (p *Provider) httpClient() *http.Client {
	if p.HTTPClient != nil {
		return p.HTTPClient
	}
	return http.DefaultClient
}

// WithHTTPClient returns ctx carrying c for golang.org/x/oauth2's requests (nil: ctx unchanged).
func WithHTTPClient(ctx context.Context, c *http.Client) context.Context {
	if c == nil {
		return ctx
	}
	return context.WithValue(ctx, oauth2.HTTPClient, c)
}
