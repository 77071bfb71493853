// Package project defines what Postern knows about one client organisation's sending mailbox: which
// envelope senders belong to it, which From addresses it may send as, which upstream server it
// delivers to, how it signs in there, and the limits that server imposes. It also defines the token
// record the sidecar keeps for OAuth projects.
//
// Projects are written by administrators (`postern project`, the admin API, or directly in Vault)
// and read by the sidecar. Tokens are written by the sidecar. Both are stored through the
// sidecar/store interface; Encode and Decode give the one storage form both backends use.
package project

import (
	"errors"
	"fmt"
	"net"
	"net/mail"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/postern/postern/sidecar/secret"
)

// TLSMode says how the connection to the upstream is secured.
type TLSMode string

const (
	// TLSStartTLS connects in plain text and requires STARTTLS before AUTH (port 587).
	TLSStartTLS TLSMode = "starttls"
	// TLSImplicit speaks TLS from the first byte (port 465).
	TLSImplicit TLSMode = "implicit"
	// TLSNone never encrypts. Only for upstreams on loopback; refused for any other host.
	TLSNone TLSMode = "none"
)

// AuthType says how Postern signs in upstream.
type AuthType string

const (
	// AuthBasic is SMTP AUTH PLAIN or LOGIN with a username and password.
	AuthBasic AuthType = "basic"
	// AuthOAuth2 is SMTP AUTH XOAUTH2 with an OAuth 2.0 access token.
	AuthOAuth2 AuthType = "oauth2"
	// AuthNone sends without AUTH (an upstream that trusts the connection).
	AuthNone AuthType = "none"
	// AuthPlugin asks an out-of-process credential provider (see package plugin) for the
	// credential: for secrets kept somewhere Postern does not know.
	AuthPlugin AuthType = "plugin"
)

// Project is one sending identity: a mailbox at a client organisation's mail server.
type Project struct {
	// Name identifies the project: lower case letters, digits, '-', '_' and '.'.
	Name string `json:"name"`
	// Enabled projects are served; a disabled one answers 4xx so its mail waits in Postfix's queue.
	Enabled bool `json:"enabled"`
	// Senders are the envelope senders routed through this project: full addresses
	// ("noreply@client.co.uk") or whole domains ("@client.co.uk").
	Senders []string `json:"senders"`
	// SendAs lists the From header addresses (or "@domain") the mailbox may send as.
	// Empty means the same as Senders.
	SendAs []string `json:"send_as,omitempty"`
	// Upstream is the client's mail server.
	Upstream Upstream `json:"upstream"`
	// Auth is how Postern signs in there.
	Auth Auth `json:"auth"`
	// Limits are the upstream's limits, enforced by Postern before the upstream has to.
	Limits Limits `json:"limits"`
	// Removed, when set, makes the record a tombstone: the project was removed at that time (see
	// Tombstone). Its senders keep being routed to Postern, which answers them with a temporary
	// failure, so that mail Postfix still holds for the project stays queued instead of leaving
	// through Postfix's default transport; after Postfix's queue lifetime the tombstone is
	// ignored, and `postern project purge` deletes it at once.
	Removed time.Time `json:"removed,omitzero"`

	// Version is the store's version of this record (set by the store, never stored).
	Version int `json:"-"`
}

// Upstream is where a project's mail goes.
type Upstream struct {
	Host string  `json:"host"`
	Port int     `json:"port"`
	TLS  TLSMode `json:"tls"`
	// ServerName is the name the certificate must carry; empty means Host.
	ServerName string `json:"server_name,omitempty"`
	// CAPEM holds extra trusted CA certificates (PEM). Empty means the system's roots.
	CAPEM string `json:"ca_pem,omitempty"`
	// InsecureSkipVerify turns certificate verification off. Never do this in production.
	InsecureSkipVerify bool `json:"insecure_skip_verify,omitempty"`
}

// Address is host:port.
func (u Upstream) Address() string { return net.JoinHostPort(u.Host, strconv.Itoa(u.Port)) }

// Auth is how a project signs in upstream.
type Auth struct {
	Type AuthType `json:"type"`
	// Username for basic auth; for OAuth the mailbox the token must belong to.
	Username string `json:"username,omitempty"`
	// Password for basic auth.
	Password secret.Secret `json:"-"`
	// Mechanism forces PLAIN or LOGIN for basic auth; empty picks what the server offers (PLAIN first).
	Mechanism string `json:"mechanism,omitempty"`

	// OAuth holds the OAuth 2.0 client settings when Type is AuthOAuth2.
	OAuth *OAuth `json:"oauth,omitempty"`
	// Plugin names the credential provider when Type is AuthPlugin.
	Plugin *PluginAuth `json:"plugin,omitempty"`
}

// PluginAuth names a credential provider declared in Postern's configuration
// (credential_providers) and the settings it gets for this project. A project record can only
// name a provider the operator declared: writing projects never makes Postern run a program.
type PluginAuth struct {
	Provider string `json:"provider"`
	// Config is passed to the provider as it is. It is not secret: secrets stay with the provider.
	Config map[string]string `json:"config,omitempty"`
}

// OAuth is an OAuth 2.0 client registration at an identity provider.
type OAuth struct {
	// Provider is "microsoft", "google" or "generic".
	Provider string `json:"provider"`
	// Tenant is the Microsoft Entra tenant (id or domain).
	Tenant string `json:"tenant,omitempty"`
	// Grant is "authorization_code" (default), "device_code" or "client_credentials".
	Grant        string        `json:"grant,omitempty"`
	ClientID     string        `json:"client_id"`
	ClientSecret secret.Secret `json:"-"`
	Scopes       []string      `json:"scopes,omitempty"`
	// Explicit endpoints for the generic provider (the others derive theirs).
	AuthURL       string `json:"auth_url,omitempty"`
	TokenURL      string `json:"token_url,omitempty"`
	DeviceURL     string `json:"device_url,omitempty"`
	RevocationURL string `json:"revocation_url,omitempty"`
	// Issuer, when set, is the expected "iss" of id_tokens.
	Issuer string `json:"issuer,omitempty"`
	// ClientSecretExpires, when set, is when the app registration's client secret expires (as
	// the provider's portal shows it). Postern warns ahead of it (package health); zero: unknown.
	ClientSecretExpires time.Time `json:"client_secret_expires,omitzero"`
}

// Limits are per-mailbox limits of the upstream. Zero means "no limit of Postern's own", except
// MaxConnections, whose zero means the default of 3 (Exchange Online's per-mailbox limit).
type Limits struct {
	MaxConnections    int   `json:"max_connections,omitempty"`
	MessagesPerMinute int   `json:"messages_per_minute,omitempty"`
	RecipientsPerDay  int   `json:"recipients_per_day,omitempty"`
	MaxRecipients     int   `json:"max_recipients,omitempty"`
	MaxMessageBytes   int64 `json:"max_message_bytes,omitempty"`
}

// DefaultMaxConnections is the number of concurrent upstream connections when none is configured.
const DefaultMaxConnections = 3

// Connections is the effective connection limit.
func (l Limits) Connections() int {
	if l.MaxConnections > 0 {
		return l.MaxConnections
	}
	return DefaultMaxConnections
}

var nameRE = regexp.MustCompile(`^[a-z0-9][a-z0-9._-]{0,62}$`)

// ValidName reports whether s can name a project (it becomes part of a Vault path).
func ValidName(s string) bool { return nameRE.MatchString(s) }

// NormalizeSender lower-cases the domain of an address or "@domain" pattern and trims blanks.
// Local parts keep their case, as SMTP says; routing compares them case-insensitively anyway.
func NormalizeSender(s string) string {
	s = strings.TrimSpace(s)
	at := strings.LastIndexByte(s, '@')
	if at < 0 {
		return s
	}
	return s[:at] + "@" + strings.ToLower(s[at+1:])
}

// IsRemoved reports whether p is a tombstone left by removing the project.
func (p Project) IsRemoved() bool { return !p.Removed.IsZero() }

// Tombstone is what stays of p once it is removed at the time at: its name, its senders and its
// upstream's address, disabled, with no credentials (the password and client secret are gone)
// and no limits. Version is kept, so that writing the tombstone is a check-and-set on the record
// that was read.
func Tombstone(p Project, at time.Time) Project {
	return Project{
		Name:     p.Name,
		Senders:  p.Senders,
		SendAs:   p.SendAs,
		Upstream: Upstream{Host: p.Upstream.Host, Port: p.Upstream.Port, TLS: p.Upstream.TLS},
		Auth:     Auth{Type: AuthNone},
		Removed:  at.UTC().Truncate(time.Second),
		Version:  p.Version,
	}
}

// HeldUntil is when the tombstone p stops answering for its senders, given how long Postfix may
// hold a message (hold): Removed + hold. Zero for a project that is not removed.
func (p Project) HeldUntil(hold time.Duration) time.Time {
	if !p.IsRemoved() {
		return time.Time{}
	}
	return p.Removed.Add(hold)
}

// Validate returns every problem with p at once. A tombstone is checked for its name and senders
// only.
func (p Project) Validate() []error {
	var errs []error
	add := func(format string, a ...any) { errs = append(errs, fmt.Errorf(format, a...)) }
	if !ValidName(p.Name) {
		add("name %q: use 1-63 lower case letters, digits, '.', '-' or '_'", p.Name)
	}
	if len(p.Senders) == 0 {
		add("senders: at least one address or @domain is needed")
	}
	for _, s := range p.Senders {
		if err := checkAddressPattern(s); err != nil {
			add("senders: %v", err)
		}
	}
	if p.IsRemoved() {
		return errs
	}
	for _, s := range p.SendAs {
		if err := checkAddressPattern(s); err != nil {
			add("send_as: %v", err)
		}
	}
	u := p.Upstream
	if u.Host == "" {
		add("upstream.host is empty")
	}
	if u.Port <= 0 || u.Port > 65535 {
		add("upstream.port %d is not a TCP port", u.Port)
	}
	switch u.TLS {
	case TLSStartTLS, TLSImplicit:
	case TLSNone:
		if !isLoopbackHost(u.Host) {
			add("upstream.tls none is allowed only for a loopback upstream, not %q: use starttls or implicit", u.Host)
		}
	default:
		add("upstream.tls %q: use starttls, implicit or none", u.TLS)
	}
	switch p.Auth.Type {
	case AuthBasic:
		if p.Auth.Username == "" {
			add("auth.username is empty")
		}
		if p.Auth.Password.IsZero() {
			add("auth.password is empty")
		}
		switch strings.ToUpper(p.Auth.Mechanism) {
		case "", "PLAIN", "LOGIN":
		default:
			add("auth.mechanism %q: use PLAIN or LOGIN", p.Auth.Mechanism)
		}
	case AuthOAuth2:
		if p.Auth.Username == "" {
			add("auth.username (the mailbox) is empty")
		}
		if p.Auth.OAuth == nil {
			add("auth.oauth is missing")
		} else {
			errs = append(errs, p.Auth.OAuth.validate()...)
		}
	case AuthNone:
	case AuthPlugin:
		if p.Auth.Plugin == nil || p.Auth.Plugin.Provider == "" {
			add("auth.plugin.provider is empty: name a credential provider from Postern's configuration")
		}
	default:
		add("auth.type %q: use basic, oauth2, plugin or none", p.Auth.Type)
	}
	if p.Limits.MaxConnections < 0 || p.Limits.MessagesPerMinute < 0 || p.Limits.RecipientsPerDay < 0 ||
		p.Limits.MaxRecipients < 0 || p.Limits.MaxMessageBytes < 0 {
		add("limits: negative values are not allowed")
	}
	return errs
}

func (o *OAuth) validate() []error {
	var errs []error
	switch o.Provider {
	case "microsoft":
		if o.Tenant == "" {
			errs = append(errs, errors.New("auth.oauth.tenant is empty (a tenant id or domain, or \"organizations\")"))
		}
	case "google":
	case "generic":
		if o.TokenURL == "" {
			errs = append(errs, errors.New("auth.oauth.token_url is empty (the generic provider needs its endpoints)"))
		}
	default:
		errs = append(errs, fmt.Errorf("auth.oauth.provider %q: use microsoft, google or generic", o.Provider))
	}
	switch o.Grant {
	case "", "authorization_code", "device_code", "client_credentials":
	default:
		errs = append(errs, fmt.Errorf("auth.oauth.grant %q: use authorization_code, device_code or client_credentials", o.Grant))
	}
	if o.ClientID == "" {
		errs = append(errs, errors.New("auth.oauth.client_id is empty"))
	}
	return errs
}

func checkAddressPattern(s string) error {
	if strings.HasPrefix(s, "@") {
		d := s[1:]
		if d == "" || strings.ContainsAny(d, "@ \t<>") || !strings.Contains(d, ".") {
			return fmt.Errorf("%q is not an @domain", s)
		}
		return nil
	}
	a, err := mail.ParseAddress(s)
	if err != nil || a.Address != s {
		return fmt.Errorf("%q is not a plain mail address", s)
	}
	return nil
}

// isLoopbackHost reports whether h is "localhost" or a loopback IP address; a name that merely
// starts with "127." is not.
func isLoopbackHost(h string) bool {
	if strings.EqualFold(h, "localhost") {
		return true
	}
	ip := net.ParseIP(strings.TrimSuffix(strings.TrimPrefix(h, "["), "]"))
	return ip != nil && ip.IsLoopback()
}

// SignInUsed reports whether the record lists the sign-in link with nonce as used.
func (t Token) SignInUsed(nonce string) bool {
	if nonce == "" {
		return false
	}
	_, ok := t.UsedSignIns[nonce]
	return ok || t.SignInNonce == nonce
}

// UseSignIn records the sign-in link with nonce as used until expiry, and drops the entries of
// links expired at now. It never changes the map t shares with a copy.
func (t *Token) UseSignIn(nonce string, expiry, now time.Time) {
	used := make(map[string]time.Time, len(t.UsedSignIns)+1)
	for n, exp := range t.UsedSignIns {
		if now.Before(exp) {
			used[n] = exp
		}
	}
	used[nonce] = expiry
	t.UsedSignIns = used
}

// KeepSignIns adds the used sign-in links of other that t lacks (unexpired at now), so that a
// write of t over other forgets none.
func (t *Token) KeepSignIns(other Token, now time.Time) {
	if t.SignInNonce == "" {
		t.SignInNonce = other.SignInNonce
	}
	for n, exp := range other.UsedSignIns {
		if _, ok := t.UsedSignIns[n]; !ok && now.Before(exp) {
			t.UseSignIn(n, exp, now)
		}
	}
}

// SendAsList is the effective list of From addresses and @domains the project may send as.
func (p Project) SendAsList() []string {
	if len(p.SendAs) > 0 {
		return p.SendAs
	}
	return p.Senders
}

// MaySendAs reports whether the From header address addr is allowed for the project.
func (p Project) MaySendAs(addr string) bool {
	addr = strings.ToLower(strings.TrimSpace(addr))
	at := strings.LastIndexByte(addr, '@')
	for _, s := range p.SendAsList() {
		s = strings.ToLower(s)
		if s == addr || (strings.HasPrefix(s, "@") && at >= 0 && s == addr[at:]) {
			return true
		}
	}
	return false
}

// TokenState is the health of an OAuth project's grant.
type TokenState string

const (
	// TokenOK means the refresh token works (as far as Postern knows).
	TokenOK TokenState = "ok"
	// TokenNeedsReauth means a person must sign the mailbox in again; mail waits meanwhile.
	TokenNeedsReauth TokenState = "needs_reauth"
)

// Token is the sidecar's record of an OAuth grant for one project.
type Token struct {
	AccessToken  secret.Secret `json:"-"`
	TokenType    string        `json:"token_type,omitempty"`
	Expiry       time.Time     `json:"expiry,omitzero"`
	RefreshToken secret.Secret `json:"-"`
	// Account is the signed-in mailbox the grant belongs to.
	Account string `json:"account,omitempty"`
	// AccountID is the immutable identifier of the signed-in account (Microsoft's oid, else the
	// id_token's sub), and TenantID its Microsoft tenant (tid). A later sign-in of the same
	// mailbox must come from the same account and tenant.
	AccountID string     `json:"account_id,omitempty"`
	TenantID  string     `json:"tenant_id,omitempty"`
	State     TokenState `json:"state"`
	// Reason says why State is needs_reauth, in the provider's words.
	Reason string `json:"reason,omitempty"`
	// RefreshedBy names the Postern instance that wrote this record last.
	RefreshedBy string    `json:"refreshed_by,omitempty"`
	UpdatedAt   time.Time `json:"updated_at,omitzero"`
	// SignInNonce is the nonce of the last sign-in link used, as records written before
	// UsedSignIns have it: that link stays used up.
	SignInNonce string `json:"signin_nonce,omitempty"`
	// UsedSignIns holds the nonce of every sign-in link used for the project, each with the
	// link's expiry, so that no replica, before or after a restart, accepts a used link again.
	// Entries are dropped once their link has expired (UseSignIn).
	UsedSignIns map[string]time.Time `json:"used_signins,omitempty"`
	// RefreshingBy and RefreshingUntil claim the next refresh for one Postern instance, so that
	// replicas sharing a store never redeem the same refresh token twice (servers with reuse
	// detection revoke the whole grant when that happens). A claim ends when the claimer writes
	// the new record, or at RefreshingUntil.
	RefreshingBy    string    `json:"refreshing_by,omitempty"`
	RefreshingUntil time.Time `json:"refreshing_until,omitzero"`

	// Version is the store's version of this record (set by the store, never stored).
	Version int `json:"-"`
}
