package importer

import (
	"errors"
	"fmt"
	"sort"
	"strconv"
	"strings"
	"time"

	"gopkg.in/ini.v1"

	"github.com/postern/postern/sidecar/oauth"
	"github.com/postern/postern/sidecar/project"
	"github.com/postern/postern/sidecar/secret"
)

// fernetPrefix starts every Fernet token (version byte 0x80, base64url): how email-oauth2-proxy's
// encrypted values look.
const fernetPrefix = "gAAAAA"

// smtpServer is one [SMTP-port] section of email-oauth2-proxy.
type smtpServer struct {
	section  string
	host     string
	port     int
	implicit bool
}

// EmailOAuth2Proxy turns the accounts of an email-oauth2-proxy configuration (emailproxy.config)
// into accounts. file names the configuration in errors.
func EmailOAuth2Proxy(file string, b []byte) ([]Account, error) {
	cfg, err := ini.LoadSources(ini.LoadOptions{
		AllowPythonMultilineValues: true,
		IgnoreInlineComment:        true,
		InsensitiveKeys:            true,
		ChildSectionDelimiter:      "\x00",
		KeyValueDelimiters:         "=:",
	}, b)
	if err != nil {
		return nil, errAt(file, "", "not an INI file: %v", err)
	}
	var errs []error
	var servers []smtpServer
	for _, sec := range cfg.Sections() {
		name := sec.Name()
		kind, portText, ok := strings.Cut(name, "-")
		if !ok || !strings.EqualFold(kind, "SMTP") {
			continue
		}
		if _, err := strconv.Atoi(portText); err != nil {
			continue
		}
		where := "section [" + name + "]"
		host := strings.TrimSpace(sec.Key("server_address").String())
		port, err := strconv.Atoi(strings.TrimSpace(sec.Key("server_port").String()))
		switch {
		case host == "":
			errs = append(errs, errAt(file, where, "server_address is empty"))
			continue
		case err != nil || port <= 0 || port > 65535:
			errs = append(errs, errAt(file, where, "server_port %q is not a TCP port", sec.Key("server_port").String()))
			continue
		}
		starttls, err := parseBool(sec.Key("starttls").String())
		if err != nil {
			errs = append(errs, errAt(file, where, "starttls: %v", err))
			continue
		}
		servers = append(servers, smtpServer{section: name, host: strings.ToLower(host), port: port, implicit: !starttls})
	}

	var out []Account
	for _, sec := range cfg.Sections() {
		name := strings.TrimSpace(sec.Name())
		if !strings.Contains(name, "@") {
			continue
		}
		a, err := proxyAccount(file, sec, servers)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		out = append(out, a)
	}
	if len(out) == 0 && len(errs) == 0 {
		errs = append(errs, errAt(file, "", "no account sections ([user@domain]): is this email-oauth2-proxy's configuration?"))
	}
	return out, errors.Join(errs...)
}

// parseBool reads a boolean as Python's configparser does.
func parseBool(s string) (bool, error) {
	switch strings.ToLower(strings.TrimSpace(s)) {
	case "", "0", "no", "false", "off":
		return false, nil
	case "1", "yes", "true", "on":
		return true, nil
	}
	return false, fmt.Errorf("%q is not a boolean", s)
}

func proxyAccount(file string, sec *ini.Section, servers []smtpServer) (Account, error) {
	mailbox := strings.TrimSpace(sec.Name())
	where := "section [" + mailbox + "]"
	a := Account{Source: file + " " + where}
	get := func(k string) string { return strings.TrimSpace(sec.Key(k).String()) }
	if strings.HasPrefix(mailbox, "@") {
		a.Skipped = "a catch-all account for a whole domain: add each mailbox with 'postern project add'"
		return a, nil
	}
	if err := checkAddressPattern(mailbox); err != nil {
		return a, errAt(file, where, "the section name is not a mail address")
	}
	tokenURL := get("token_url")
	if tokenURL == "" {
		return a, errAt(file, where, "token_url is empty")
	}
	clientID := get("client_id")
	if clientID == "" {
		return a, errAt(file, where, "client_id is empty")
	}
	o := &project.OAuth{ClientID: clientID, ClientSecret: secret.New(get("client_secret"))}
	switch flow := strings.ToLower(get("oauth2_flow")); flow {
	case "", "authorization_code":
	case "device":
		o.Grant = oauth.GrantDeviceCode
	case "client_credentials":
		o.Grant = oauth.GrantClientCredentials
	default:
		a.Skipped = fmt.Sprintf("oauth2_flow %s is not one Postern signs in with: add this mailbox with 'postern project add'", flow)
		return a, nil
	}
	ep, known := providerOf(tokenURL)
	if known {
		o.Provider, o.Tenant = ep.provider, ep.tenant
	} else {
		o.Provider, o.TokenURL, o.AuthURL = oauth.Generic, tokenURL, get("permission_url")
		o.Scopes = strings.Fields(get("oauth2_scope"))
		if o.AuthURL == "" && o.Grant == "" {
			return a, errAt(file, where, "permission_url is empty")
		}
	}

	up, note, err := pickServer(servers, ep, known)
	if err != nil {
		return a, errAt(file, where, "%v", err)
	}
	if note != "" {
		a.Notes = append(a.Notes, note)
	}
	a.Project = oauthProject(mailbox, nil, up, o)

	if o.ClientSecret.IsZero() && get("client_secret_encrypted") != "" {
		a.Todo = append(a.Todo, fmt.Sprintf("the client secret is encrypted in the proxy's file: give it with 'postern project update %s --client-secret-stdin'", a.Project.Name))
	}
	if o.Grant == oauth.GrantClientCredentials {
		return a, nil
	}
	refresh := get("refresh_token")
	switch {
	case refresh == "":
		a.Todo = append(a.Todo, "the proxy holds no token for this account: the mailbox must be signed in")
	case get("token_salt") != "" || strings.HasPrefix(refresh, fernetPrefix):
		a.Todo = append(a.Todo, "the proxy's tokens are encrypted with the password the mail client uses with it, which Postern does not have: the mailbox must be signed in")
	default:
		t := &project.Token{RefreshToken: secret.New(refresh), AccessToken: secret.New(get("access_token")),
			TokenType: "Bearer", Account: mailbox, State: project.TokenOK}
		if e := get("access_token_expiry"); e != "" {
			n, err := strconv.ParseInt(e, 10, 64)
			if err != nil || n < 0 || n > 1<<40 {
				return a, errAt(file, where, "access_token_expiry %q is not a time in seconds since 1970", e)
			}
			t.Expiry = time.Unix(n, 0).UTC()
		}
		a.Token = t
	}
	return a, nil
}

// pickServer chooses the SMTP server of an account: the one server section, or the one at the
// provider, or the provider's own server.
func pickServer(servers []smtpServer, ep endpoint, known bool) (project.Upstream, string, error) {
	if len(servers) == 1 {
		s := servers[0]
		return upstream(s.host, s.port, s.implicit), "", nil
	}
	if known {
		var at []smtpServer
		for _, s := range servers {
			if sameProvider(s.host, ep.provider) {
				at = append(at, s)
			}
		}
		sort.SliceStable(at, func(i, j int) bool { return !at[i].implicit && at[j].implicit }) // STARTTLS on 587 first
		if len(at) > 0 {
			s := at[0]
			return upstream(s.host, s.port, s.implicit), "", nil
		}
		return upstream(ep.host, ep.port, false), fmt.Sprintf("no [SMTP-...] section for %s: the provider's server %s:%d", ep.provider, ep.host, ep.port), nil
	}
	if len(servers) == 0 {
		return project.Upstream{}, "", errors.New("no [SMTP-...] server section names the mail server")
	}
	return project.Upstream{}, "", fmt.Errorf("%d [SMTP-...] server sections and a token_url of an unknown provider: which server is this mailbox's? Add it with 'postern project add'", len(servers))
}

func sameProvider(host, provider string) bool {
	switch provider {
	case oauth.Microsoft:
		return strings.HasSuffix(host, ".office365.com") || strings.HasSuffix(host, ".outlook.com")
	case oauth.Google:
		return strings.HasSuffix(host, ".gmail.com") || strings.HasSuffix(host, ".googlemail.com") || strings.HasSuffix(host, ".google.com")
	}
	return false
}

// checkAddressPattern accepts what project.Validate accepts as a sender.
func checkAddressPattern(s string) error {
	p := project.Project{Senders: []string{s}}
	for _, err := range p.Validate() {
		if strings.HasPrefix(err.Error(), "senders:") {
			return err
		}
	}
	return nil
}
