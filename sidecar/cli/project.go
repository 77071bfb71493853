package cli

import (
	"context"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"slices"
	"sort"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/postern/postern/sidecar/advice"
	"github.com/postern/postern/sidecar/config"
	"github.com/postern/postern/sidecar/mailq"
	"github.com/postern/postern/sidecar/oauth"
	"github.com/postern/postern/sidecar/project"
	"github.com/postern/postern/sidecar/route"
	"github.com/postern/postern/sidecar/secret"
	"github.com/postern/postern/sidecar/store"
	"github.com/postern/postern/sidecar/store/boltstore"
)

// maxPasswordBytes bounds what --password-stdin reads.
const maxPasswordBytes = 64 << 10

// subcommand is a command of a group (project, import, store).
type subcommand = command

func projectCommands() []subcommand {
	return []subcommand{
		{"add", "add a project", runProjectAdd},
		{"update", "change some settings of a project", runProjectUpdate},
		{"list", "list the projects", runProjectList},
		{"show", "show one project (secrets as [set] or [not set])", runProjectShow},
		{"remove", "remove a project; its queued mail keeps waiting (see -h)", runProjectRemove},
		{"purge", "delete a removed project for good", runProjectPurge},
		{"disable", "stop serving a project; its mail waits in Postfix's queue", runProjectDisable},
		{"enable", "serve a disabled project again", runProjectEnable},
	}
}

func runProject(ctx context.Context, a *App, args []string) int {
	return a.runGroup(ctx, "project", "command", projectCommands(), printProjectUsage, args)
}

func printProjectUsage(w io.Writer) {
	fmt.Fprint(w, `Usage: postern project <command> [arguments]

A project is one client organisation's sending mailbox: the envelope senders routed through it, the
upstream mail server it delivers to and how Postern signs in there.

Commands:
`)
	for _, c := range projectCommands() {
		fmt.Fprintf(w, "  %-8s %s\n", c.name, c.summary)
	}
	fmt.Fprint(w, "\nRun 'postern project <command> -h' for its flags.\n")
}

// stringList is a repeatable flag; each value may also hold several items separated by commas.
type stringList []string

func (l *stringList) String() string { return strings.Join(*l, ",") }

func (l *stringList) Set(v string) error {
	for _, item := range strings.Split(v, ",") {
		if item = strings.TrimSpace(item); item != "" {
			*l = append(*l, item)
		}
	}
	return nil
}

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

	// Credential provider settings (--auth plugin).
	pluginProvider string
	pluginConfig   stringList
}

// oauthFlags are the flags that only an OAuth project takes.
var oauthFlags = []string{
	"provider", "tenant", "client-id", "client-secret-stdin", "client-secret-prompt", "scopes", "grant",
	"auth-url", "token-url", "device-url", "revocation-url", "issuer",
}

func (f *projectFlags) register(fs *flagSet, update bool) {
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
func (f *projectFlags) apply(fs *flagSet, p *project.Project, isNew bool) []error {
	var errs []error
	given := map[string]bool{}
	fs.Visit(func(fl *flag.Flag) { given[fl.Name] = true })
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

// nextStep says how an OAuth project's mailbox gets signed in (package advice).
func nextStep(p project.Project, signInURL string) string { return advice.SignIn(p, signInURL) }

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

// openProjectStore loads the configuration and opens its store, printing what went wrong.
func (a *App) openProjectStore(ctx context.Context, load func() (*config.Config, string, bool)) (store.Store, bool) {
	_, st, ok := a.openConfigStore(ctx, load)
	return st, ok
}

// openConfigStore is openProjectStore returning the configuration too.
func (a *App) openConfigStore(ctx context.Context, load func() (*config.Config, string, bool)) (*config.Config, store.Store, bool) {
	return a.openConfigStoreMode(ctx, load, fileOpen)
}

// openConfigStoreMode is openConfigStore with the embedded store's missing-store rule given: mode
// fileCreate creates an embedded store where neither of its files exists, and says so on standard
// error. For fileMaybe, a missing embedded store (boltstore.ErrNotExist) is not an error: st is
// then nil, and fileCreate makes it once the caller is about to write. The store's own events (a
// migration of the old file format) go to standard error.
func (a *App) openConfigStoreMode(ctx context.Context, load func() (*config.Config, string, bool), mode int) (*config.Config, store.Store, bool) {
	cfg, _, ok := load()
	if !ok {
		return nil, nil, false
	}
	st, ok := a.openStoreMode(ctx, cfg, mode)
	return cfg, st, ok
}

func (a *App) openStoreMode(ctx context.Context, cfg *config.Config, mode int) (store.Store, bool) {
	if a.OpenStore != nil {
		st, err := a.OpenStore(ctx, cfg)
		if err != nil {
			fmt.Fprintf(a.Stderr, "postern: %v\n", err)
			return nil, false
		}
		return st, true
	}
	st, created, err := openStore(ctx, cfg, a.storeLogger(), mode)
	if mode == fileMaybe && errors.Is(err, boltstore.ErrNotExist) {
		return nil, true
	}
	if err != nil {
		fmt.Fprintf(a.Stderr, "postern: %v\n", err)
		return nil, false
	}
	if created {
		fmt.Fprintf(a.Stderr, "postern: created a new, empty store %s with its key file %s (as `postern init` would); back the key file up: the store cannot be read without it\n",
			cfg.Store.File.Path, cfg.Store.File.KeyFile)
	}
	return st, true
}

const addAbout = `
Add a project: a client organisation's mailbox, the envelope senders Postfix routes through it, and
the upstream server Postern delivers their mail to.

For basic authentication the password is asked on the terminal without echo, or read from standard
input with --password-stdin:

  printf '%s' "$PASSWORD" | postern project add client-a --sender noreply@client.co.uk \
      --host smtp.client.co.uk --username noreply@client.co.uk --password-stdin

For OAuth 2.0 (XOAUTH2), --username is the mailbox that signs in, and the app registration at the
identity provider is given with --provider, --client-id and the like; a client secret is read like a
password, with --client-secret-stdin or --client-secret-prompt:

  printf '%s' "$SECRET" | postern project add client-b --sender noreply@client-b.com \
      --host smtp.office365.com --username noreply@client-b.com --auth oauth2 \
      --provider microsoft --tenant client-b.com --client-id 0b6f... --client-secret-stdin

The mailbox is then signed in once: 'postern authorize-link', 'postern authorize --device', or for
--grant client_credentials no sign-in at all ('postern authorize' checks the registration).

Default scopes, when --scopes is not given: microsoft "https://outlook.office.com/SMTP.Send
offline_access openid email profile" (client_credentials: "https://outlook.office365.com/.default");
google "https://mail.google.com/ openid email"; generic "openid email offline_access" (add the
server's mail scope with --scopes if it has one). With --provider generic, give --issuer: the
id_token is then verified with the issuer's keys, and when it does not name the mailbox (standard
OpenID providers put email at the userinfo endpoint), the userinfo endpoint from the issuer's
/.well-known/openid-configuration is asked.

Upstream limits per mailbox (--messages-per-minute, --recipients-per-day, --max-connections,
--max-recipients): a limit left at 0 is the provider's default, by --provider or host. Microsoft
(smtp.office365.com): 30 messages a minute, 10,000 recipients a day, 3 connections, 500 recipients
a message. Google (smtp.gmail.com): 100 recipients a message. Others: 3 connections, no other
limit. Replicas sharing the store split every limit (limits.replicas); postern project show shows them.

Access tokens are refreshed tokens.refresh_margin (default 10m) before they expire, but at most half
their lifetime before: a token living 50 seconds is used for 25 seconds, not refreshed on every
delivery.

Nothing is written unless every setting is valid; all problems are listed at once.`

func runProjectAdd(ctx context.Context, a *App, args []string) int {
	fs := a.newFlagSet("project add", "NAME", addAbout)
	load := a.configFlag(fs)
	var f projectFlags
	f.register(fs, false)
	pos, code, ok := a.parse(fs, args, 1, 1)
	if !ok {
		return code
	}
	p := project.Project{Name: pos[0], Enabled: true}
	problems := f.apply(fs, &p, true)

	// The first project may make the file store, where neither of its files exists: st is nil
	// until every setting is checked.
	cfg, st, ok := a.openConfigStoreMode(ctx, load, fileMaybe)
	if !ok {
		return ExitFail
	}
	var all []project.Project
	if st != nil {
		defer st.Close()
		var err error
		if all, err = st.Projects(ctx); err != nil {
			fmt.Fprintf(a.Stderr, "postern project add: %v\n", err)
			return ExitFail
		}
	}
	for _, o := range all {
		if o.Name != p.Name {
			continue
		}
		if !o.IsRemoved() {
			fmt.Fprintf(a.Stderr, "postern project add: project %s exists: change it with 'postern project update %s'\n", p.Name, p.Name)
			return ExitFail
		}
		// Adding a removed project again replaces its tombstone: its queued mail flows again.
		p.Version = o.Version
	}
	problems = append(problems, project.SenderConflicts(p, all)...)
	newSecret := f.secretStdin || f.secretPrompt
	problems = append(problems, oauthProblems(p, newSecret)...)

	needPassword := p.Auth.Type == project.AuthBasic
	if !a.checkProject(p, needPassword, problems) {
		return ExitFail
	}
	if needPassword {
		pw, err := a.password(f.passwordStdin, fmt.Sprintf("Password of %s at %s: ", p.Auth.Username, p.Upstream.Host))
		if err != nil {
			fmt.Fprintf(a.Stderr, "postern project add: %v; nothing was changed\n", err)
			return ExitFail
		}
		p.Auth.Password = pw
	} else if f.passwordStdin {
		fmt.Fprintf(a.Stderr, "postern project add: --password-stdin: the project signs in with %s, without a password\n", p.Auth.Type)
		return ExitFail
	}
	if newSecret {
		sec, err := a.clientSecret(f.secretStdin, p.Auth.OAuth.ClientID)
		if err != nil {
			fmt.Fprintf(a.Stderr, "postern project add: %v; nothing was changed\n", err)
			return ExitFail
		}
		p.Auth.OAuth.ClientSecret = sec
	}
	if st == nil {
		if st, ok = a.openStoreMode(ctx, cfg, fileCreate); !ok {
			return ExitFail
		}
		defer st.Close()
	}
	v, err := st.PutProject(ctx, p)
	if errors.Is(err, store.ErrConflict) {
		fmt.Fprintf(a.Stderr, "postern project add: project %s was changed by someone else meanwhile; nothing was changed, run the command again\n", p.Name)
		return ExitFail
	}
	if err != nil {
		fmt.Fprintf(a.Stderr, "postern project add: %v\n", err)
		return ExitFail
	}
	fmt.Fprintf(a.Stdout, "added project %s (version %d)\n", p.Name, v)
	if step := nextStep(p, cfg.SignInURL()); step != "" {
		fmt.Fprintf(a.Stdout, "next: %s\n", step)
	}
	return ExitOK
}

const updateAbout = `
Change the settings of a project: only the flags given change. --sender and --send-as replace their
lists. To change the password:

  postern project update client-a --password-stdin      (the password on standard input)
  postern project update client-a --password-prompt     (asked on the terminal)

To move a project from basic authentication to OAuth 2.0, and back, without touching Postfix:

  printf '%s' "$SECRET" | postern project update client-a --auth oauth2 --provider microsoft \
      --tenant client.co.uk --client-id 0b6f... --client-secret-stdin
  printf '%s' "$PASSWORD" | postern project update client-a --auth basic --password-stdin

Switching to oauth2 drops the password; switching back drops the OAuth settings. An OAuth project's
mailbox must then be signed in (see 'postern authorize'); its mail waits in Postfix's queue meanwhile.

Nothing is written unless every setting is valid; all problems are listed at once.`

func runProjectUpdate(ctx context.Context, a *App, args []string) int {
	fs := a.newFlagSet("project update", "NAME", updateAbout)
	load := a.configFlag(fs)
	var f projectFlags
	f.register(fs, true)
	pos, code, ok := a.parse(fs, args, 1, 1)
	if !ok {
		return code
	}
	name := pos[0]
	cfg, st, ok := a.openConfigStore(ctx, load)
	if !ok {
		return ExitFail
	}
	defer st.Close()
	p, err := st.Project(ctx, name)
	if err == nil && p.IsRemoved() {
		err = removedError(p)
	}
	if err != nil {
		fmt.Fprintf(a.Stderr, "postern project update: %v\n", ExplainNotFound(err, name))
		return ExitFail
	}
	wasOAuth := p.Auth.Type == project.AuthOAuth2
	problems := f.apply(fs, &p, false)
	all, err := st.Projects(ctx)
	if err != nil {
		fmt.Fprintf(a.Stderr, "postern project update: %v\n", err)
		return ExitFail
	}
	problems = append(problems, project.SenderConflicts(p, all)...)

	newPassword := f.passwordStdin || f.passwordPrompt
	if newPassword && p.Auth.Type != project.AuthBasic {
		problems = append(problems, fmt.Errorf("a password is set only for basic authentication, and project %s uses %s", name, p.Auth.Type))
	}
	noPassword := p.Auth.Type == project.AuthBasic && p.Auth.Password.IsZero() && !newPassword
	if noPassword {
		problems = append(problems, errors.New("auth.password is empty: give one with --password-stdin or --password-prompt"))
	}
	newSecret := f.secretStdin || f.secretPrompt
	problems = append(problems, oauthProblems(p, newSecret)...)
	if !a.checkProject(p, newPassword || noPassword, problems) {
		return ExitFail
	}
	if newPassword {
		pw, err := a.password(f.passwordStdin, fmt.Sprintf("New password of %s at %s: ", p.Auth.Username, p.Upstream.Host))
		if err != nil {
			fmt.Fprintf(a.Stderr, "postern project update: %v; nothing was changed\n", err)
			return ExitFail
		}
		p.Auth.Password = pw
	}
	if newSecret {
		sec, err := a.clientSecret(f.secretStdin, p.Auth.OAuth.ClientID)
		if err != nil {
			fmt.Fprintf(a.Stderr, "postern project update: %v; nothing was changed\n", err)
			return ExitFail
		}
		p.Auth.OAuth.ClientSecret = sec
	}
	if st == nil {
		if st, ok = a.openStoreMode(ctx, cfg, fileCreate); !ok {
			return ExitFail
		}
		defer st.Close()
	}
	v, err := st.PutProject(ctx, p)
	if errors.Is(err, store.ErrConflict) {
		fmt.Fprintf(a.Stderr, "postern project update: project %s was changed by someone else meanwhile; nothing was changed, run the command again\n", name)
		return ExitFail
	}
	if err != nil {
		fmt.Fprintf(a.Stderr, "postern project update: %v\n", err)
		return ExitFail
	}
	fmt.Fprintf(a.Stdout, "updated project %s (version %d)\n", name, v)
	oauthChanged := false
	fs.Visit(func(fl *flag.Flag) { oauthChanged = oauthChanged || slices.Contains(oauthFlags, fl.Name) })
	if step := nextStep(p, cfg.SignInURL()); step != "" && (!wasOAuth || oauthChanged) {
		fmt.Fprintf(a.Stdout, "next: %s\n", step)
	}
	return ExitOK
}

// checkProject validates p, together with the problems found earlier, and prints all of them.
// When skipPassword is set (a password is still to be read, or its absence was reported already),
// an empty password is not reported.
func (a *App) checkProject(p project.Project, skipPassword bool, problems []error) bool {
	check := p
	if skipPassword {
		check.Auth.Password = secret.New("to be read")
	}
	problems = append(problems, check.Validate()...)
	if len(problems) == 0 {
		return true
	}
	fmt.Fprintf(a.Stderr, "project %s is not valid; nothing was changed:\n", p.Name)
	for _, err := range problems {
		fmt.Fprintf(a.Stderr, "  %v\n", err)
	}
	return false
}

// password reads a password from standard input, or from the terminal (twice, to catch typing
// mistakes).
func (a *App) password(fromStdin bool, prompt string) (secret.Secret, error) {
	return a.readSecret(fromStdin, "password", "--password-stdin", prompt)
}

// clientSecret reads an OAuth client secret as password reads a password.
func (a *App) clientSecret(fromStdin bool, clientID string) (secret.Secret, error) {
	return a.readSecret(fromStdin, "client secret", "--client-secret-stdin", fmt.Sprintf("Client secret of the app %s: ", clientID))
}

// readSecret reads the secret called what from standard input, or from the terminal (twice);
// stdinFlag is the flag that reads it from standard input.
func (a *App) readSecret(fromStdin bool, what, stdinFlag, prompt string) (secret.Secret, error) {
	if fromStdin {
		b, err := io.ReadAll(io.LimitReader(a.Stdin, maxPasswordBytes+1))
		if err != nil {
			return secret.Secret{}, fmt.Errorf("reading the %s from standard input: %w", what, err)
		}
		if len(b) > maxPasswordBytes {
			return secret.Secret{}, fmt.Errorf("standard input holds more than a %s", what)
		}
		pw := strings.TrimSuffix(strings.TrimSuffix(string(b), "\n"), "\r")
		if pw == "" {
			return secret.Secret{}, fmt.Errorf("no %s on standard input", what)
		}
		return secret.New(pw), nil
	}
	if a.ReadPassword == nil {
		return secret.Secret{}, fmt.Errorf("no terminal to ask for the %s: pipe it in with %s", what, stdinFlag)
	}
	pw, err := a.ReadPassword(prompt)
	if err != nil {
		return secret.Secret{}, err
	}
	if pw == "" {
		return secret.Secret{}, fmt.Errorf("the %s is empty", what)
	}
	again, err := a.ReadPassword("Repeat the " + what + ": ")
	if err != nil {
		return secret.Secret{}, err
	}
	if again != pw {
		return secret.Secret{}, fmt.Errorf("the %ss differ", what)
	}
	return secret.New(pw), nil
}

// ExplainNotFound says how to list the projects when err is store.ErrNotFound for project name.
func ExplainNotFound(err error, name string) error {
	if errors.Is(err, store.ErrNotFound) {
		return fmt.Errorf("no project named %s ('postern project list' shows them)", name)
	}
	return err
}

func runProjectList(ctx context.Context, a *App, args []string) int {
	fs := a.newFlagSet("project list", "", "List the projects: name, whether enabled (or when removed), how they sign in, upstream,\nsenders, and for OAuth projects the state of their token.")
	load := a.configFlag(fs)
	if _, code, ok := a.parse(fs, args, 0, 0); !ok {
		return code
	}
	cfg, st, ok := a.openConfigStore(ctx, load)
	if !ok {
		return ExitFail
	}
	defer st.Close()
	all, err := st.Projects(ctx)
	if err != nil {
		fmt.Fprintf(a.Stderr, "postern project list: %v\n", err)
		return ExitFail
	}
	if len(all) == 0 {
		fmt.Fprintln(a.Stdout, "no projects yet: add one with 'postern project add'")
		return ExitOK
	}
	tw := tabwriter.NewWriter(a.Stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "NAME\tENABLED\tAUTH\tUPSTREAM\tSENDERS\tTOKEN")
	for _, p := range all {
		if p.IsRemoved() {
			state := "removed " + p.Removed.Format(time.DateOnly)
			if !time.Now().Before(p.HeldUntil(cfg.Postfix.RemovedHold())) {
				state += " (expired: purge it)"
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s %s\t%s\t%s\n", p.Name, state, "-",
				p.Upstream.Address(), p.Upstream.TLS, strings.Join(p.Senders, ", "), "-")
			continue
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s %s\t%s\t%s\n", p.Name, yesNo(p.Enabled), p.Auth.Type,
			p.Upstream.Address(), p.Upstream.TLS, strings.Join(p.Senders, ", "), tokenState(ctx, st, p))
	}
	if err := tw.Flush(); err != nil {
		return ExitFail
	}
	return ExitOK
}

// tokenState is the TOKEN column: the state of an OAuth project's token, "-" for other projects.
func tokenState(ctx context.Context, st store.Tokens, p project.Project) string {
	if p.Auth.Type != project.AuthOAuth2 {
		return "-"
	}
	t, err := st.Token(ctx, p.Name)
	switch {
	case errors.Is(err, store.ErrNotFound):
		return "not signed in"
	case err != nil:
		return "unreadable"
	}
	return string(t.State)
}

func yesNo(b bool) string {
	if b {
		return "yes"
	}
	return "no"
}

func runProjectShow(ctx context.Context, a *App, args []string) int {
	fs := a.newFlagSet("project show", "NAME", "Show every setting of a project. Secrets show as [set] or [not set], never their value.")
	load := a.configFlag(fs)
	asJSON := fs.Bool("json", false, "print JSON for machines (secrets redacted the same way)")
	pos, code, ok := a.parse(fs, args, 1, 1)
	if !ok {
		return code
	}
	st, ok := a.openProjectStore(ctx, load)
	if !ok {
		return ExitFail
	}
	defer st.Close()
	p, err := st.Project(ctx, pos[0])
	if err != nil {
		fmt.Fprintf(a.Stderr, "postern project show: %v\n", ExplainNotFound(err, pos[0]))
		return ExitFail
	}
	var tok *project.Token
	if p.Auth.Type == project.AuthOAuth2 {
		t, err := st.Token(ctx, p.Name)
		switch {
		case err == nil:
			tok = &t
		case !errors.Is(err, store.ErrNotFound):
			fmt.Fprintf(a.Stderr, "postern project show: %v\n", err)
			return ExitFail
		}
	}
	if *asJSON {
		b, err := showJSON(p, tok)
		if err != nil {
			fmt.Fprintf(a.Stderr, "postern project show: %v\n", err)
			return ExitFail
		}
		a.Stdout.Write(append(b, '\n'))
		return ExitOK
	}
	showText(a.Stdout, p, tok)
	return ExitOK
}

func showText(w io.Writer, p project.Project, tok *project.Token) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	row := func(k, v string) { fmt.Fprintf(tw, "%s:\t%s\n", k, v) }
	orDefault := func(v, def string) string {
		if v == "" {
			return def
		}
		return v
	}
	limit := func(n int64, none string) string {
		if n == 0 {
			return none
		}
		return strconv.FormatInt(n, 10)
	}
	row("name", p.Name)
	if p.IsRemoved() {
		row("removed", p.Removed.Format(time.RFC3339)+" (its senders' mail is deferred; 'postern project purge "+p.Name+"' deletes it)")
		row("senders", strings.Join(p.Senders, ", "))
		tw.Flush()
		return
	}
	row("enabled", yesNo(p.Enabled))
	row("version", strconv.Itoa(p.Version))
	row("senders", strings.Join(p.Senders, ", "))
	row("send as", orDefault(strings.Join(p.SendAs, ", "), "(the senders)"))
	u := p.Upstream
	row("upstream", u.Address())
	row("tls", string(u.TLS))
	row("server name", orDefault(u.ServerName, "(the host)"))
	if u.CAPEM == "" {
		row("trusted CAs", "the system's")
	} else {
		row("trusted CAs", "from --ca-file")
	}
	if u.InsecureSkipVerify {
		row("verify certificate", "NO (insecure-skip-verify)")
	} else {
		row("verify certificate", "yes")
	}
	row("auth", string(p.Auth.Type))
	row("username", p.Auth.Username)
	switch p.Auth.Type {
	case project.AuthBasic:
		row("password", project.SecretMark(p.Auth.Password))
		row("mechanism", orDefault(p.Auth.Mechanism, "(the server's, PLAIN first)"))
	case project.AuthPlugin:
		if pa := p.Auth.Plugin; pa != nil {
			row("credential provider", pa.Provider)
			keys := make([]string, 0, len(pa.Config))
			for k := range pa.Config {
				keys = append(keys, k)
			}
			sort.Strings(keys)
			for _, k := range keys {
				row("provider config "+k, pa.Config[k])
			}
		}
	case project.AuthOAuth2:
		if o := p.Auth.OAuth; o != nil {
			row("oauth provider", o.Provider)
			if o.Tenant != "" {
				row("oauth tenant", o.Tenant)
			}
			row("oauth grant", orDefault(o.Grant, "authorization_code"))
			row("oauth client id", o.ClientID)
			row("oauth client secret", project.SecretMark(o.ClientSecret))
			row("oauth scopes", orDefault(strings.Join(o.Scopes, " "), "(the provider's)"))
			for _, e := range []struct{ k, v string }{{"oauth auth url", o.AuthURL}, {"oauth token url", o.TokenURL}, {"oauth device url", o.DeviceURL}, {"oauth revocation url", o.RevocationURL}, {"oauth issuer", o.Issuer}} {
				if e.v != "" {
					row(e.k, e.v)
				}
			}
		}
		if tok == nil {
			row("token", "none: the mailbox is not signed in")
		} else {
			state := string(tok.State)
			if tok.Reason != "" {
				state += " (" + tok.Reason + ")"
			}
			row("token state", state)
			row("token account", tok.Account)
			row("access token", project.SecretMark(tok.AccessToken))
			if !tok.Expiry.IsZero() {
				row("access token expiry", tok.Expiry.Format(time.RFC3339))
			}
			row("refresh token", project.SecretMark(tok.RefreshToken))
			row("refreshed by", tok.RefreshedBy)
			if !tok.UpdatedAt.IsZero() {
				row("token updated", tok.UpdatedAt.Format(time.RFC3339))
			}
		}
		if tok == nil || tok.State == project.TokenNeedsReauth {
			if step := nextStep(p, ""); step != "" {
				row("next step", step)
			}
		}
	}
	own, l := p.Limits, p.EffectiveLimits()
	provider, _ := project.ProviderLimits(p)
	from := func(mine int) string {
		if mine == 0 && provider != "" {
			return " (" + provider + " default)"
		}
		return ""
	}
	conns := strconv.Itoa(l.Connections())
	if l.MaxConnections == 0 {
		conns += " (default)"
	} else {
		conns += from(own.MaxConnections)
	}
	row("max connections", conns)
	row("messages per minute", limit(int64(l.MessagesPerMinute), "no limit")+from(own.MessagesPerMinute))
	row("recipients per day", limit(int64(l.RecipientsPerDay), "no limit")+from(own.RecipientsPerDay))
	row("max recipients", limit(int64(l.MaxRecipients), "the global limit")+from(own.MaxRecipients))
	row("max message bytes", limit(l.MaxMessageBytes, "the global limit"))
	tw.Flush()
}

// showJSON is the project as project.PublicMap shows it and, for OAuth projects, the token record
// redacted the same way.
func showJSON(p project.Project, tok *project.Token) ([]byte, error) {
	obj, err := project.PublicMap(p)
	if err != nil {
		return nil, err
	}
	if p.Auth.Type == project.AuthOAuth2 {
		obj["token"] = nil
		if tok != nil {
			if obj["token"], err = project.PublicTokenMap(*tok); err != nil {
				return nil, err
			}
		}
	}
	return json.MarshalIndent(obj, "", "  ")
}

const removeAbout = `
Remove a project. Its credentials are deleted at once (the password or client secret, and the
OAuth tokens), but a tombstone with its senders stays in the store: Postern keeps answering the
mail of those senders with a temporary failure (451 4.7.0), so that mail Postfix already holds for
the project stays in Postfix's queue instead of leaving through Postfix's default transport. That
mail leaves when the project is added again ('postern project add NAME ...'), or returns to its
senders when Postfix's queue lifetime ends (postfix.queue_lifetime in Postern's configuration,
Postfix's maximal_queue_lifetime: 5 days by default). After the queue lifetime plus
postfix.backoff_time, the tombstone answers for nothing any more.

remove prints how many messages Postfix still holds for the project's senders (postqueue -j, with
postfix.config_directory), when postqueue runs on this host.

With --purge, or with 'postern project purge NAME', the project is deleted for good: its senders are
no longer Postern's, and mail Postfix still holds for them leaves through Postfix's other
transports (or bounces) at its next retry.`

func runProjectRemove(ctx context.Context, a *App, args []string) int {
	fs := a.newFlagSet("project remove", "NAME", removeAbout)
	load := a.configFlag(fs)
	purge := fs.Bool("purge", false, "delete the project for good, now (as 'postern project purge')")
	pos, code, ok := a.parse(fs, args, 1, 1)
	if !ok {
		return code
	}
	cfg, st, ok := a.openConfigStore(ctx, load)
	if !ok {
		return ExitFail
	}
	defer st.Close()
	name := pos[0]
	if *purge {
		return a.purge(ctx, cfg, st, name, "project remove")
	}
	old, err := st.Project(ctx, name)
	if err != nil {
		fmt.Fprintf(a.Stderr, "postern project remove: %v\n", ExplainNotFound(err, name))
		return ExitFail
	}
	tomb, err := store.Remove(ctx, st, st, name, time.Now())
	if err != nil {
		fmt.Fprintf(a.Stderr, "postern project remove: %v\n", ExplainNotFound(err, name))
		return ExitFail
	}
	until := tomb.HeldUntil(cfg.Postfix.RemovedHold()).Local().Format(time.RFC1123)
	if old.IsRemoved() {
		fmt.Fprintf(a.Stdout, "project %s was removed already, at %s; its senders' mail is deferred until %s\n",
			name, tomb.Removed.Local().Format(time.RFC1123), until)
	} else {
		fmt.Fprintf(a.Stdout, "removed project %s: its credentials are deleted; its senders' mail is deferred until %s\n", name, until)
	}
	fmt.Fprintf(a.Stdout, "%s\n", queuedFor(ctx, cfg, tomb))
	fmt.Fprintf(a.Stdout, "to let that mail flow again: postern project add %s ...; to give up on it: postern project purge %s\n", name, name)
	return ExitOK
}

func runProjectPurge(ctx context.Context, a *App, args []string) int {
	fs := a.newFlagSet("project purge", "NAME", "Delete a project for good, removed or not, with its token record. Its senders are no longer\nPostern's: mail Postfix still holds for them leaves through Postfix's other transports (or\nbounces) at its next retry. 'postern project remove' keeps that mail waiting instead.")
	load := a.configFlag(fs)
	pos, code, ok := a.parse(fs, args, 1, 1)
	if !ok {
		return code
	}
	cfg, st, ok := a.openConfigStore(ctx, load)
	if !ok {
		return ExitFail
	}
	defer st.Close()
	return a.purge(ctx, cfg, st, pos[0], "project purge")
}

func (a *App) purge(ctx context.Context, cfg *config.Config, st store.Store, name, cmd string) int {
	p, err := st.Project(ctx, name)
	if err == nil {
		err = st.DeleteProject(ctx, name)
	}
	if err != nil {
		fmt.Fprintf(a.Stderr, "postern %s: %v\n", cmd, ExplainNotFound(err, name))
		return ExitFail
	}
	fmt.Fprintf(a.Stdout, "purged project %s\n", name)
	fmt.Fprintf(a.Stdout, "%s\n", queuedFor(ctx, cfg, p))
	return ExitOK
}

// queuedFor says how many messages the local Postfix holds for p's senders.
func queuedFor(ctx context.Context, cfg *config.Config, p project.Project) string {
	msgs, err := mailq.List(ctx, mailq.Options{Postqueue: cfg.Postfix.Postqueue, ConfigDir: cfg.Postfix.ConfigDirectory})
	if err != nil {
		return fmt.Sprintf("could not count the mail Postfix holds for it: %v", err)
	}
	p.Removed = time.Time{}
	table, _ := route.New([]project.Project{p})
	n := mailq.Count(msgs, func(sender string) bool { _, ok := table.Lookup(sender); return ok })
	dir := cfg.Postfix.ConfigDirectory
	if dir == "" {
		dir = "the default instance"
	}
	return fmt.Sprintf("Postfix (%s) holds %d message(s) from its senders", dir, n)
}

// removedError says what to do with a removed project instead of changing it.
func removedError(p project.Project) error {
	return fmt.Errorf("project %s was removed at %s: add it again with 'postern project add %s ...', or delete it for good with 'postern project purge %s'",
		p.Name, p.Removed.Local().Format(time.RFC1123), p.Name, p.Name)
}

func runProjectDisable(ctx context.Context, a *App, args []string) int {
	return a.setEnabled(ctx, args, false, "project disable", "Stop serving a project. Postern answers its mail with a temporary failure, so the mail waits\nin Postfix's queue until the project is enabled again (or the queue lifetime ends).")
}

func runProjectEnable(ctx context.Context, a *App, args []string) int {
	return a.setEnabled(ctx, args, true, "project enable", "Serve a disabled project again; Postfix delivers the waiting mail at its next retry.")
}

func (a *App) setEnabled(ctx context.Context, args []string, enabled bool, name, about string) int {
	fs := a.newFlagSet(name, "NAME", about)
	load := a.configFlag(fs)
	pos, code, ok := a.parse(fs, args, 1, 1)
	if !ok {
		return code
	}
	st, ok := a.openProjectStore(ctx, load)
	if !ok {
		return ExitFail
	}
	defer st.Close()
	p, err := st.Project(ctx, pos[0])
	if err == nil && p.IsRemoved() {
		err = removedError(p)
	}
	if err != nil {
		fmt.Fprintf(a.Stderr, "postern %s: %v\n", name, ExplainNotFound(err, pos[0]))
		return ExitFail
	}
	word := "disabled"
	if enabled {
		word = "enabled"
	}
	if p.Enabled == enabled {
		fmt.Fprintf(a.Stdout, "project %s is already %s\n", p.Name, word)
		return ExitOK
	}
	p.Enabled = enabled
	v, err := st.PutProject(ctx, p)
	if errors.Is(err, store.ErrConflict) {
		fmt.Fprintf(a.Stderr, "postern %s: project %s was changed by someone else meanwhile; run the command again\n", name, p.Name)
		return ExitFail
	}
	if err != nil {
		fmt.Fprintf(a.Stderr, "postern %s: %v\n", name, err)
		return ExitFail
	}
	fmt.Fprintf(a.Stdout, "%s project %s (version %d)\n", word, p.Name, v)
	return ExitOK
}
