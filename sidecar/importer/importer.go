// Package importer reads the settings and tokens of the tools people relay XOAUTH2 mail with
// today, and turns each account into a Postern project and, where a usable one exists, its token
// record. It reads files only: it writes nothing and talks to no server.
//
//  1. SASLXOAuth2 reads sasl-xoauth2 (github.com/tarickb/sasl-xoauth2): its JSON configuration
//     (/etc/sasl-xoauth2.conf), one JSON token file per account, and the Postfix tables that point
//     at those files (smtp_sasl_password_maps entries "[host]:port user:/path/to/token" or, for
//     sender-dependent authentication, "user@domain user:/path/to/token", and
//     sender_dependent_relayhost_maps for the host of each sender).
//  2. EmailOAuth2Proxy reads email-oauth2-proxy's INI file (github.com/simonrob/email-oauth2-proxy):
//     its [SMTP-port] server sections and one section per account. The tokens it caches there are
//     encrypted with the password each mail client uses with the proxy, which this package does not
//     have: such accounts come without a token and must be signed in again.
//  3. Every account becomes an Account: a project (auth oauth2, the provider guessed from the token
//     endpoint, the upstream from the tables), the token when there is one, and the steps the
//     mailbox owner still has to take. Bad input is an error naming the file and the line or
//     section.
//
// Secrets stay in secret.Secret from the moment they are read.
package importer

import (
	"fmt"
	"net/url"
	"regexp"
	"strings"

	"github.com/postern/postern/sidecar/oauth"
	"github.com/postern/postern/sidecar/project"
)

// Account is one imported mailbox.
type Account struct {
	// Source says where the account was found: a file, and the section or line within it.
	Source string
	// Project is the project to create, with its name set. It has not been validated against the
	// store (names and senders taken already).
	Project project.Project
	// Token is the grant to store for the project; nil when there is none that Postern can use.
	Token *project.Token
	// Todo lists what must still be done before the project can send, in the owner's words;
	// empty when the imported token will do.
	Todo []string
	// Notes are what was assumed or left out while importing.
	Notes []string
	// Skipped, when set, says why nothing is created for this account.
	Skipped string
}

// Error is a problem with one input, naming the file and where in it.
type Error struct {
	// File is the input file.
	File string
	// Where is "line N", "section [S]" or empty for the whole file.
	Where string
	// Err is the problem.
	Err error
}

func (e *Error) Error() string {
	if e.Where == "" {
		return fmt.Sprintf("%s: %v", e.File, e.Err)
	}
	return fmt.Sprintf("%s: %s: %v", e.File, e.Where, e.Err)
}

func (e *Error) Unwrap() error { return e.Err }

func errAt(file, where, format string, a ...any) *Error {
	return &Error{File: file, Where: where, Err: fmt.Errorf(format, a...)}
}

var nameJunk = regexp.MustCompile(`[^a-z0-9._-]+`)

// ProjectName derives a project name from a mailbox: "noreply@client.co.uk" becomes
// "noreply-at-client.co.uk".
func ProjectName(mailbox string) string {
	s := strings.ToLower(strings.TrimSpace(mailbox))
	s = strings.ReplaceAll(s, "@", "-at-")
	s = nameJunk.ReplaceAllString(s, "-")
	s = strings.TrimLeft(s, "._-")
	if len(s) > 63 {
		s = strings.TrimRight(s[:63], "._-")
	}
	if s == "" {
		s = "imported"
	}
	return s
}

// endpoint is what a token endpoint URL says about the provider.
type endpoint struct {
	provider, tenant string
	// host and port are the provider's SMTP submission server, for when no table names one.
	host string
	port int
}

// providerOf guesses the provider from a token endpoint. ok is false for endpoints that are
// neither Microsoft's nor Google's (the generic provider).
func providerOf(tokenURL string) (endpoint, bool) {
	u, err := url.Parse(strings.TrimSpace(tokenURL))
	if err != nil {
		return endpoint{}, false
	}
	host := strings.ToLower(u.Hostname())
	switch host {
	case "login.microsoftonline.com", "login.microsoftonline.us", "login.partner.microsoftonline.cn":
		// /{tenant}/oauth2/v2.0/token or /{tenant}/oauth2/token
		tenant, _, _ := strings.Cut(strings.TrimPrefix(u.Path, "/"), "/")
		if tenant == "" {
			tenant = "common"
		}
		return endpoint{provider: oauth.Microsoft, tenant: tenant, host: "smtp.office365.com", port: 587}, true
	case "login.live.com":
		return endpoint{provider: oauth.Microsoft, tenant: "consumers", host: "smtp-mail.outlook.com", port: 587}, true
	case "accounts.google.com", "oauth2.googleapis.com", "www.googleapis.com":
		return endpoint{provider: oauth.Google, host: "smtp.gmail.com", port: 587}, true
	}
	return endpoint{}, false
}

// upstream is an SMTP server with the TLS mode its port implies.
func upstream(host string, port int, implicit bool) project.Upstream {
	tls := project.TLSStartTLS
	if implicit || port == 465 {
		tls = project.TLSImplicit
	}
	return project.Upstream{Host: host, Port: port, TLS: tls}
}

// oauthProject is the project of an OAuth mailbox.
func oauthProject(mailbox string, senders []string, up project.Upstream, o *project.OAuth) project.Project {
	if len(senders) == 0 {
		senders = []string{mailbox}
	}
	return project.Project{
		Name:     ProjectName(mailbox),
		Enabled:  true,
		Senders:  project.NormalizeSenders(senders),
		Upstream: up,
		Auth:     project.Auth{Type: project.AuthOAuth2, Username: mailbox, OAuth: o},
	}
}
