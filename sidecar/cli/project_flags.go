package cli

import (
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/spf13/pflag"

	"github.com/postern/postern/sidecar/oauth"
	"github.com/postern/postern/sidecar/project"
	"github.com/postern/postern/sidecar/secret"
)

// projectFlags are the settings flags of add and update.
type projectFlags struct {
	senders, sendAs                      stringList
	host, tls, serverName, caFile        string
	port                                 int
	auth, username, mechanism            string
	passwordStdin, passwordPrompt        bool
	insecure, disabled                   bool
	maxConns, perMinute, perDay, maxRcpt int
	maxBytes                             int64

	// OAuth 2.0 settings (--auth oauth2).
	provider, tenant, clientID, scopes, grant           string
	authURL, tokenURL, deviceURL, revocationURL, issuer string
	secretStdin, secretPrompt                           bool
	secretExpires                                       string

	// Credential provider settings (--auth plugin).
	pluginProvider string
	pluginConfig   stringList
}

// oauthFlags are the flags that only an OAuth project takes.
var oauthFlags = []string{
	"provider", "tenant", "client-id", "client-secret-stdin", "client-secret-prompt", "scopes", "grant",
	"auth-url", "token-url", "device-url", "revocation-url", "issuer", "client-secret-expires",
}

func (f *projectFlags) register(fs *pflag.FlagSet, update bool) {
	replaces := ""
	if update {
		replaces = " (replaces the list)"
	}
	fs.Var(&f.senders, "sender", "envelope sender `ADDRESS` or @domain routed through this project; repeat or separate with commas"+replaces)
	fs.Var(&f.sendAs, "send-as", "From `ADDRESS` or @domain the mailbox may send as; default: the senders"+replaces)
	fs.StringVar(&f.host, "host", "", "upstream mail server `HOST`")
	fs.IntVar(&f.port, "port", 0, "upstream `PORT` (default 587 for starttls, 465 for implicit, 25 for none)")
	fs.StringVar(&f.tls, "tls", string(project.TLSStartTLS), "upstream TLS `MODE`: starttls, implicit, or none (loopback upstreams only)")
	fs.StringVar(&f.caFile, "ca-file", "", "`PEM` file of CA certificates to trust for the upstream instead of the system's")
	fs.StringVar(&f.serverName, "server-name", "", "`NAME` the upstream's certificate must carry (default: the host)")
	fs.BoolVar(&f.insecure, "insecure-skip-verify", false, "do not verify the upstream's certificate (never in production)")
	fs.StringVar(&f.auth, "auth", string(project.AuthBasic), "how to sign in upstream: basic, oauth2, plugin (a credential provider), or none")
	fs.StringVar(&f.pluginProvider, "plugin-provider", "", "credential provider `NAME` from credential_providers in Postern's configuration (--auth plugin)")
	fs.Var(&f.pluginConfig, "plugin-config", "`KEY=VALUE` setting handed to the credential provider; repeat (--auth plugin; replaces the settings)")
	fs.StringVar(&f.username, "username", "", "`USER` to sign in as")
	fs.BoolVar(&f.passwordStdin, "password-stdin", false, "read the password from standard input")
	if update {
		fs.BoolVar(&f.passwordPrompt, "password-prompt", false, "ask for a new password on the terminal")
	}
	fs.StringVar(&f.mechanism, "mechanism", "", "force the SASL `MECHANISM`: PLAIN or LOGIN (default: what the server offers, PLAIN first)")
	fs.StringVar(&f.provider, "provider", "", "OAuth identity `PROVIDER`: microsoft, google or generic (--auth oauth2)")
	fs.StringVar(&f.tenant, "tenant", "", "Microsoft Entra `TENANT` id or domain (provider microsoft)")
	fs.StringVar(&f.clientID, "client-id", "", "OAuth client `ID` of the app registration")
	fs.BoolVar(&f.secretStdin, "client-secret-stdin", false, "read the OAuth client secret from standard input")
	fs.BoolVar(&f.secretPrompt, "client-secret-prompt", false, "ask for the OAuth client secret on the terminal")
	clears := ""
	if update {
		clears = "; empty clears it"
	}
	fs.StringVar(&f.secretExpires, "client-secret-expires", "", "`DATE` the app registration's client secret expires, YYYY-MM-DD or RFC 3339 (the provider's portal shows it); Postern warns tokens.client_secret_warning ahead"+clears)
	fs.StringVar(&f.scopes, "scopes", "", "OAuth `SCOPES`, separated by spaces or commas (default: the provider's; generic: openid email offline_access)")
	fs.StringVar(&f.grant, "grant", "", "OAuth `GRANT`: authorization_code (default), device_code or client_credentials")
	fs.StringVar(&f.authURL, "auth-url", "", "authorization endpoint `URL` (provider generic)")
	fs.StringVar(&f.tokenURL, "token-url", "", "token endpoint `URL` (provider generic)")
	fs.StringVar(&f.deviceURL, "device-url", "", "device authorization endpoint `URL` (provider generic)")
	fs.StringVar(&f.revocationURL, "revocation-url", "", "token revocation endpoint `URL` (provider generic)")
	fs.StringVar(&f.issuer, "issuer", "", "expected `ISSUER` of id_tokens (default: the provider's; generic: none checked)")
	fs.IntVar(&f.maxConns, "max-connections", 0, "concurrent upstream connections, `N` (0: the default of 3)")
	fs.IntVar(&f.perMinute, "messages-per-minute", 0, "messages per minute, `N` (0: no limit)")
	fs.IntVar(&f.perDay, "recipients-per-day", 0, "recipients per day, `N` (0: no limit)")
	fs.IntVar(&f.maxRcpt, "max-recipients", 0, "recipients per message, `N` (0: no limit of the project's own)")
	fs.Int64Var(&f.maxBytes, "max-message-bytes", 0, "largest message, `BYTES` (0: no limit of the project's own)")
	fs.BoolVar(&f.disabled, "disabled", false, "the project is disabled: its mail waits in Postfix's queue")
}

// defaultPort is the usual port of a TLS mode.
func defaultPort(m project.TLSMode) int {
	switch m {
	case project.TLSImplicit:
		return 465
	case project.TLSNone:
		return 25
	}
	return 587
}

// apply changes p as the flags that were given say (all of them for a new project) and returns the
// problems with the flags themselves. Passwords are not handled here.
func (f *projectFlags) apply(fs *pflag.FlagSet, p *project.Project, isNew bool) []error {
	var errs []error
	given := map[string]bool{}
	fs.Visit(func(fl *pflag.Flag) { given[fl.Name] = true })
	set := func(name string) bool { return isNew || given[name] }

	if set("sender") {
		p.Senders = project.NormalizeSenders(f.senders)
	}
	if set("send-as") {
		p.SendAs = project.NormalizeSenders(f.sendAs)
	}
	if set("host") {
		p.Upstream.Host = strings.TrimSpace(f.host)
	}
	if set("tls") {
		mode := project.TLSMode(strings.ToLower(f.tls))
		// The port follows the TLS mode while it is the old mode's usual port.
		if !given["port"] && (isNew || p.Upstream.Port == defaultPort(p.Upstream.TLS)) {
			p.Upstream.Port = defaultPort(mode)
		}
		p.Upstream.TLS = mode
	}
	if given["port"] {
		p.Upstream.Port = f.port
	}
	if set("server-name") {
		p.Upstream.ServerName = f.serverName
	}
	if set("insecure-skip-verify") {
		p.Upstream.InsecureSkipVerify = f.insecure
	}
	if set("ca-file") {
		p.Upstream.CAPEM = ""
		if f.caFile != "" {
			pemText, err := readCAFile(f.caFile)
			if err != nil {
				errs = append(errs, err)
			}
			p.Upstream.CAPEM = pemText
		}
	}
	if set("auth") {
		switch t := project.AuthType(strings.ToLower(f.auth)); t {
		case project.AuthBasic, project.AuthNone, project.AuthOAuth2, project.AuthPlugin:
			p.Auth.Type = t
		default:
			errs = append(errs, fmt.Errorf("--auth %q: use basic, oauth2, plugin or none", f.auth))
		}
	}
	if set("username") {
		p.Auth.Username = strings.TrimSpace(f.username)
	}
	if set("mechanism") {
		p.Auth.Mechanism = strings.ToUpper(f.mechanism)
	}
	errs = append(errs, f.applyOAuth(given, set, p)...)
	errs = append(errs, f.applyPlugin(given, set, p)...)
	if set("max-connections") {
		p.Limits.MaxConnections = f.maxConns
	}
	if set("messages-per-minute") {
		p.Limits.MessagesPerMinute = f.perMinute
	}
	if set("recipients-per-day") {
		p.Limits.RecipientsPerDay = f.perDay
	}
	if set("max-recipients") {
		p.Limits.MaxRecipients = f.maxRcpt
	}
	if set("max-message-bytes") {
		p.Limits.MaxMessageBytes = f.maxBytes
	}
	if set("disabled") {
		p.Enabled = !f.disabled
	}
	if f.passwordStdin && f.passwordPrompt {
		errs = append(errs, errors.New("--password-stdin and --password-prompt: give one"))
	}
	if f.secretStdin && f.secretPrompt {
		errs = append(errs, errors.New("--client-secret-stdin and --client-secret-prompt: give one"))
	}
	if f.secretStdin && f.passwordStdin {
		errs = append(errs, errors.New("--password-stdin and --client-secret-stdin: standard input holds one secret"))
	}
	return errs
}

// applyPlugin sets the credential provider of a plugin project, and refuses its flags for other
// projects. Switching to plugin drops the basic password.
func (f *projectFlags) applyPlugin(given map[string]bool, set func(string) bool, p *project.Project) []error {
	var errs []error
	if p.Auth.Type != project.AuthPlugin {
		for _, name := range []string{"plugin-provider", "plugin-config"} {
			if given[name] {
				errs = append(errs, fmt.Errorf("--%s is for projects with --auth plugin; project %s uses %s", name, p.Name, p.Auth.Type))
			}
		}
		p.Auth.Plugin = nil
		return errs
	}
	p.Auth.Password, p.Auth.Mechanism = secret.Secret{}, ""
	if p.Auth.Plugin == nil {
		p.Auth.Plugin = &project.PluginAuth{}
	}
	if set("plugin-provider") {
		p.Auth.Plugin.Provider = strings.TrimSpace(f.pluginProvider)
	}
	if set("plugin-config") {
		p.Auth.Plugin.Config = map[string]string{}
		for _, kv := range f.pluginConfig {
			k, v, ok := strings.Cut(kv, "=")
			if !ok || strings.TrimSpace(k) == "" {
				errs = append(errs, fmt.Errorf("--plugin-config %q: use KEY=VALUE", kv))
				continue
			}
			p.Auth.Plugin.Config[strings.TrimSpace(k)] = v
		}
	}
	return errs
}

// applyOAuth sets the OAuth settings of an oauth2 project from the flags, and refuses OAuth flags
// for other projects. Switching to oauth2 drops the basic password; switching away drops the OAuth
// settings, client secret included.
func (f *projectFlags) applyOAuth(given map[string]bool, set func(string) bool, p *project.Project) []error {
	var errs []error
	if p.Auth.Type != project.AuthOAuth2 {
		for _, name := range oauthFlags {
			if given[name] {
				errs = append(errs, fmt.Errorf("--%s is for OAuth projects (--auth oauth2); project %s uses %s", name, p.Name, p.Auth.Type))
			}
		}
		p.Auth.OAuth = nil
		return errs
	}
	if given["mechanism"] && p.Auth.Mechanism != "" {
		errs = append(errs, errors.New("--mechanism is for basic authentication; OAuth projects sign in with XOAUTH2"))
	}
	p.Auth.Password, p.Auth.Mechanism = secret.Secret{}, ""
	if p.Auth.OAuth == nil {
		p.Auth.OAuth = &project.OAuth{}
	}
	o := p.Auth.OAuth
	for _, v := range []struct {
		name  string
		field *string
		value string
	}{
		{"provider", &o.Provider, strings.ToLower(strings.TrimSpace(f.provider))},
		{"tenant", &o.Tenant, strings.TrimSpace(f.tenant)},
		{"client-id", &o.ClientID, strings.TrimSpace(f.clientID)},
		{"grant", &o.Grant, strings.ToLower(strings.TrimSpace(f.grant))},
		{"auth-url", &o.AuthURL, strings.TrimSpace(f.authURL)},
		{"token-url", &o.TokenURL, strings.TrimSpace(f.tokenURL)},
		{"device-url", &o.DeviceURL, strings.TrimSpace(f.deviceURL)},
		{"revocation-url", &o.RevocationURL, strings.TrimSpace(f.revocationURL)},
		{"issuer", &o.Issuer, strings.TrimSpace(f.issuer)},
	} {
		if set(v.name) {
			*v.field = v.value
		}
	}
	if set("client-secret-expires") {
		exp, err := parseExpiry(f.secretExpires)
		if err != nil {
			errs = append(errs, err)
		}
		o.ClientSecretExpires = exp
	}
	if set("scopes") {
		o.Scopes = strings.FieldsFunc(f.scopes, func(r rune) bool { return r == ',' || r == ' ' || r == '\t' })
	}
	// Settings the provider does not take: refused when given, dropped when left from another provider.
	if o.Provider != oauth.Microsoft && o.Tenant != "" {
		if given["tenant"] {
			errs = append(errs, fmt.Errorf("--tenant is for the microsoft provider, not %q", o.Provider))
		}
		o.Tenant = ""
	}
	if o.Provider != oauth.Generic {
		for _, e := range []struct {
			name  string
			field *string
		}{{"auth-url", &o.AuthURL}, {"token-url", &o.TokenURL}, {"device-url", &o.DeviceURL}, {"revocation-url", &o.RevocationURL}} {
			if *e.field == "" {
				continue
			}
			if given[e.name] {
				errs = append(errs, fmt.Errorf("--%s is for the generic provider: %s has its own endpoints", e.name, orQuoted(o.Provider)))
			}
			*e.field = ""
		}
	}
	return errs
}

// parseExpiry reads --client-secret-expires: a date (YYYY-MM-DD, the start of that day in UTC, as
// the secret may end any time that day) or an RFC 3339 time; "" is no date.
func parseExpiry(s string) (time.Time, error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return time.Time{}, nil
	}
	if d, err := time.Parse(time.DateOnly, s); err == nil {
		return d.UTC(), nil
	}
	t, err := time.Parse(time.RFC3339, s)
	if err != nil {
		return time.Time{}, fmt.Errorf("--client-secret-expires %q: use a date (2026-09-30) or an RFC 3339 time (2026-09-30T14:00:00Z)", s)
	}
	return t.UTC().Truncate(time.Second), nil
}

func orQuoted(s string) string {
	if s == "" {
		return "an unset provider"
	}
	return s
}

// oauthProblems are the problems oauth.NewProvider finds in an OAuth project (Google's lack of a
// device flow, client credentials without a secret or with a multi-tenant endpoint, a generic
// provider without the endpoint its grant needs), unless project.Validate found the OAuth settings
// wanting already. secretComing says a client secret is still to be read.
func oauthProblems(p project.Project, secretComing bool) []error {
	if p.Auth.Type != project.AuthOAuth2 || p.Auth.OAuth == nil {
		return nil
	}
	for _, err := range p.Validate() {
		if strings.HasPrefix(err.Error(), "auth.oauth") {
			return nil
		}
	}
	o := *p.Auth.OAuth
	if secretComing {
		o.ClientSecret = secret.New("to be read")
	}
	if _, err := oauth.NewProvider(&o, oauth.Options{}); err != nil {
		return []error{err}
	}
	return nil
}

// readCAFile reads a PEM file and checks that it holds at least one certificate.
func readCAFile(path string) (string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("--ca-file: %w", err)
	}
	n := 0
	for rest := b; ; {
		var block *pem.Block
		block, rest = pem.Decode(rest)
		if block == nil {
			break
		}
		if block.Type != "CERTIFICATE" {
			continue
		}
		if _, err := x509.ParseCertificate(block.Bytes); err != nil {
			return "", fmt.Errorf("--ca-file %s: %w", path, err)
		}
		n++
	}
	if n == 0 {
		return "", fmt.Errorf("--ca-file %s holds no PEM certificate", path)
	}
	return string(b), nil
}
