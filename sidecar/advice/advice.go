// Package advice is the one adviser: given what went wrong with a project (a typed error, or its
// state on the status page) and the project's auth type, it says what the operator must do next.
// `postern check`, `postern send-test`, `postern authorize`, the status page and the sign-in pages
// all ask it, so the same failure gets the same fix everywhere. Its texts are for the operator and
// never go into a reply to a submitting application (package reply).
//
// Status advises on a project's state on the status page, SignIn on how an OAuth mailbox gets
// signed in (by its grant).
//
// How Next decides, first match wins:
//
//  1. A credential that needs a person to sign in again (credential.ErrNeedsReauth): send the
//     mailbox owner a sign-in link.
//  2. The upstream refused the sign-in (upstream.Error at StageAuth): by the enhanced code first,
//     which names the cause whatever the credential (5.7.139: SMTP AUTH is off for the mailbox or
//     the tenant; 5.7.30: basic authentication is off); then by the auth type: an OAuth token
//     (Exchange 5.7.3: SMTP.Send, consent, the mailbox signed in; Gmail: the scope) or a
//     password (update it).
//  3. The upstream offers no AUTH, or not the mechanism (upstream.ErrNoAuth,
//     upstream.ErrMechanismNotOffered): the TLS mode, or the mechanism.
//  4. The upstream cannot be reached (connect, TLS, greeting, EHLO, or down and waiting).
//  5. Anything else: "" (nothing to add to the error itself).
//
// Before these, the causes that name themselves: Microsoft Entra's AADSTS codes in a sign-in's
// error (consent, MFA, Conditional Access, an expired client secret), and the upstream replies
// and settings that have one known fix (432 4.3.2 connection limits, 5.7.60 SendAs, TLS versions
// refused, port 465 on Exchange Online).
package advice

import (
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/postern/postern/sidecar/credential"
	"github.com/postern/postern/sidecar/oauth"
	"github.com/postern/postern/sidecar/project"
	"github.com/postern/postern/sidecar/upstream"
)

// Next says what to do about err, a failed sign-in or delivery of project p, for the operator who
// reads it; "" when there is nothing more specific to say than err itself.
func Next(p project.Project, err error) string {
	if err == nil {
		return ""
	}
	if next := microsoftSignIn(p, err); next != "" {
		return next
	}
	if errors.Is(err, credential.ErrNeedsReauth) {
		return SignInAgain(p)
	}
	var ue *upstream.Error
	if !errors.As(err, &ue) {
		return ""
	}
	if next := knownReply(p, ue); next != "" {
		return next
	}
	switch {
	case errors.Is(err, upstream.ErrNoAuth):
		return "The server offered no AUTH: check the project's TLS mode (Exchange Online offers AUTH only after STARTTLS on port 587)."
	case errors.Is(err, upstream.ErrMechanismNotOffered) && p.Auth.Type == project.AuthOAuth2:
		return "The server does not offer XOAUTH2: it cannot take OAuth sign-ins, or only after STARTTLS."
	case errors.Is(err, upstream.ErrMechanismNotOffered):
		return "The server does not offer the project's AUTH mechanism: change it (postern project update " + p.Name + " --mechanism ...) or leave it to Postern."
	case ue.AuthFailed():
		return refused(p, ue)
	}
	switch ue.Stage {
	case upstream.StageConnect, upstream.StageGreeting, upstream.StageEHLO:
		return fmt.Sprintf("Postern could not reach the mail server %s: check the project's upstream host, port and TLS mode, and that this host may connect there.", ue.Addr)
	case upstream.StageTLS:
		return fmt.Sprintf("TLS with the mail server %s failed: check upstream.tls, the server name and the CA (postern project update %s --tls/--server-name/--ca-file)", ue.Addr, p.Name)
	case upstream.StagePool:
		if errors.Is(err, upstream.ErrDown) {
			return fmt.Sprintf("Postern could not reach the mail server %s a moment ago and waits before trying again: check the project's upstream host, port and TLS mode.", ue.Addr)
		}
	}
	return ""
}

// SignInAgain is what to do when the mailbox owner must sign in again.
func SignInAgain(p project.Project) string {
	how := SignIn(p, "")
	if how == "" {
		how = "postern authorize-link " + p.Name
	}
	return "The identity provider no longer accepts the grant: the mailbox owner must sign in again; " + how + "."
}

// SignIn says how an OAuth project's mailbox gets signed in, by its grant; "" for other projects.
// signInURL, when known, is the sign-in pages' base URL, for the redirect URI to register.
func SignIn(p project.Project, signInURL string) string {
	if p.Auth.Type != project.AuthOAuth2 || p.Auth.OAuth == nil {
		return ""
	}
	switch p.Auth.OAuth.Grant {
	case oauth.GrantClientCredentials:
		return fmt.Sprintf("check the app registration (no person signs in): postern authorize %s", p.Name)
	case oauth.GrantDeviceCode:
		return fmt.Sprintf("sign the mailbox in from a terminal: postern authorize --device %s", p.Name)
	}
	s := fmt.Sprintf("send the mailbox owner a sign-in link: postern authorize-link %s", p.Name)
	if signInURL != "" {
		s += fmt.Sprintf(" (the app registration's redirect URI must be %s/signin/callback)", signInURL)
	}
	return s
}

// Status-page states that Status advises on.
const (
	StateNeedsReauth  = "needs_reauth"
	StateUnhealthy    = "unhealthy"
	StateUpstreamDown = "upstream_down"
	StateDisabled     = "disabled"
	StateRemoved      = "removed"
	// StateQuotaPaused: the upstream reported a provider's sending quota; the project's mail is
	// deferred until the pause ends (package limits).
	StateQuotaPaused = "quota_paused"
	// StateClientSecretExpiring and StateClientSecretExpired: the app registration's client
	// secret expires soon, or has expired (project.OAuth.ClientSecretExpires; package health).
	StateClientSecretExpiring = "client_secret_expiring"
	StateClientSecretExpired  = "client_secret_expired"
)

// Status says what to do about project p in a status-page state; err is the failure behind it
// (the upstream's refusal, the last refresh error), nil if not known.
func Status(p project.Project, state string, err error) string {
	switch state {
	case StateNeedsReauth:
		if how := SignIn(p, ""); how != "" {
			return "the mailbox owner must sign in again: " + how
		}
		return "the mailbox owner must sign in again"
	case StateUnhealthy:
		if next := Next(p, err); next != "" {
			return next
		}
		return "token refresh is failing; Postern retries by itself"
	case StateUpstreamDown:
		return "Postern cannot reach the upstream; mail waits in Postfix's queue and is retried"
	case StateDisabled:
		return "postern project enable " + p.Name
	case StateQuotaPaused:
		return "nothing to do: mail waits in Postfix's queue and flows when the pause ends; if it recurs, lower the project's --messages-per-minute or --recipients-per-day, or ask the provider for a higher quota"
	case StateRemoved:
		return "postern project add " + p.Name + " ... to let its mail flow, or postern project purge " + p.Name
	case StateClientSecretExpiring, StateClientSecretExpired:
		return NewClientSecret(p)
	}
	return ""
}

// NewClientSecret is what to do about an OAuth project's client secret that expires soon or has
// expired: make a new one and give it to Postern with its expiry date.
func NewClientSecret(p project.Project) string {
	when := "expires"
	date := "(unknown)"
	if p.Auth.OAuth != nil && !p.Auth.OAuth.ClientSecretExpires.IsZero() {
		exp := p.Auth.OAuth.ClientSecretExpires.UTC()
		date = exp.Format(time.DateOnly)
		if !time.Now().Before(exp) {
			when = "expired"
		}
	}
	return fmt.Sprintf("the app registration's client secret %s on %s: create a new one in the provider's portal "+
		"(Microsoft Entra: App registrations, Certificates & secrets) and run postern project update %s --client-secret-stdin "+
		"--client-secret-expires YYYY-MM-DD (the new secret's expiry)", when, date, p.Name)
}

// refused is step 2 of the package comment.
func refused(p project.Project, ue *upstream.Error) string {
	mailbox := p.Auth.Username
	switch {
	case ue.Enhanced == smtp.EnhancedCode{5, 7, 139} || strings.Contains(strings.ToLower(ue.Message), "smtpclientauthentication"):
		// Microsoft's reply names the cause, in its code or (without one) in its text.
		return fmt.Sprintf("SMTP AUTH is turned off for this mailbox or for the whole organisation, which blocks OAuth too: "+
			"an Exchange admin must enable SMTP AUTH for this mailbox (Microsoft 365 admin center: Users, %s, Mail, "+
			"Manage email apps, Authenticated SMTP; or Set-CASMailbox -Identity %s -SmtpClientAuthenticationDisabled $false), "+
			"and for the organisation if it is off there (Set-TransportConfig -SmtpClientAuthenticationDisabled $false).", mailbox, mailbox)
	case ue.Enhanced == smtp.EnhancedCode{5, 7, 30}:
		return "The server refuses basic authentication: switch the project to OAuth (postern project update " + p.Name + " --auth oauth2 ...)."
	case p.Auth.Type == project.AuthPlugin && p.Auth.Plugin != nil:
		return "The server refused the credential of the credential provider " + p.Auth.Plugin.Provider + ", which has been told: check the provider's settings for project " + p.Name + "."
	case p.Auth.Type != project.AuthOAuth2:
		return "the upstream refused the username or password: postern project update " + p.Name + " --password-stdin"
	case ue.Enhanced == smtp.EnhancedCode{5, 7, 3}:
		return "Exchange Online refused the token. The usual causes: SMTP AUTH is turned off for the mailbox " +
			"(an Exchange admin enables it: Set-CASMailbox -Identity " + mailbox + " -SmtpClientAuthenticationDisabled $false), " +
			"the app registration lacks the delegated permission SMTP.Send (https://outlook.office.com/SMTP.Send) or admin consent for it, " +
			"or the token belongs to another account than " + mailbox + "."
	case ue.Code == 534 || ue.Enhanced == smtp.EnhancedCode{5, 7, 8} || ue.Enhanced == smtp.EnhancedCode{5, 7, 9} || ue.Enhanced == smtp.EnhancedCode{5, 7, 14}:
		return "The server refused the token. For Gmail: the OAuth scope must be https://mail.google.com/, and a Workspace admin " +
			"must allow the app (Admin console, Security, API controls). Otherwise check that the token is issued for this mail server."
	}
	return "the upstream refused the token: check that SMTP AUTH is enabled for the mailbox and that it is the mailbox signed in (" + mailbox + ")"
}

// aadstsAdvice is the fix for Microsoft Entra's error codes in a sign-in's error.
var aadstsAdvice = []struct {
	codes []string
	fix   string
}{
	{[]string{"AADSTS65001", "AADSTS65004", "AADSTS90094"}, "Microsoft Entra says nobody consented to the app's permissions: a tenant admin must grant admin consent to the app registration (Entra admin center: App registrations, %[2]s, API permissions, Grant admin consent), then the mailbox owner signs in again: %[1]s."},
	{[]string{"AADSTS50076", "AADSTS50079"}, "Microsoft Entra requires multi-factor authentication for this mailbox: the mailbox owner must sign in again, interactively, completing MFA: %[1]s."},
	{[]string{"AADSTS53003", "AADSTS53000", "AADSTS53001"}, "A Conditional Access policy blocked the sign-in: a tenant admin must let this app sign in for the mailbox (exclude the app registration %[2]s from the policy, or allow Postern's network or device), then the mailbox owner signs in again: %[1]s."},
	{[]string{"AADSTS7000222", "AADSTS7000215"}, "The app registration's client secret is expired or wrong: make a new one (Entra admin center: App registrations, %[2]s, Certificates & secrets) and give it to Postern: postern project update %[3]s --client-secret-stdin."},
}

// microsoftSignIn is the fix for an AADSTS code in err, or "".
func microsoftSignIn(p project.Project, err error) string {
	text := err.Error()
	if !strings.Contains(text, "AADSTS") {
		return ""
	}
	how := SignIn(p, "")
	if how == "" {
		how = "postern authorize-link " + p.Name
	}
	app := "the app"
	if p.Auth.OAuth != nil && p.Auth.OAuth.ClientID != "" {
		app = p.Auth.OAuth.ClientID
	}
	for _, a := range aadstsAdvice {
		for _, c := range a.codes {
			// AADSTS50076 must not match AADSTS500761: the code ends where the digits do.
			if i := strings.Index(text, c); i >= 0 && (i+len(c) == len(text) || text[i+len(c)] < '0' || text[i+len(c)] > '9') {
				return fmt.Sprintf(a.fix, how, app, p.Name)
			}
		}
	}
	return ""
}

// exchangeHost reports whether host is Exchange Online's SMTP submission host.
func exchangeHost(host string) bool {
	h := strings.ToLower(strings.TrimSuffix(host, "."))
	return h == "smtp.office365.com" || h == "smtp-mail.outlook.com" || strings.HasSuffix(h, ".mail.protection.outlook.com")
}

// knownReply is the fix for an upstream reply or failure that has one, or "".
func knownReply(p project.Project, ue *upstream.Error) string {
	msg := strings.ToLower(ue.Message)
	var cause string
	if ue.Err != nil {
		cause = strings.ToLower(ue.Err.Error())
	}
	switch {
	case ue.Code == 432 || ue.Enhanced == smtp.EnhancedCode{4, 3, 2} && (strings.Contains(msg, "concurrent connections limit") || strings.Contains(msg, "thread limit")):
		// Exchange Online: "432 4.3.2 STOREDRV.ClientSubmit; sender thread limit exceeded" (older)
		// and "432 4.3.2 Concurrent connections limit exceeded" (newer): the mailbox allows 3
		// connections at once, counted across every client that uses it.
		return fmt.Sprintf("Exchange Online allows 3 connections at once per mailbox, counted across every app that uses it: "+
			"keep the project at 3 or fewer (postern project update %s --max-connections 3, fewer if other apps send as %s), "+
			"and make sure no other Postern or app uses the mailbox more than it needs. The mail is retried.", p.Name, p.Auth.Username)
	case ue.Enhanced == smtp.EnhancedCode{5, 7, 60} || strings.Contains(msg, "sendasdenied"):
		return fmt.Sprintf("The mailbox %s may not send as this From address: an Exchange admin grants it Send As "+
			"(Add-RecipientPermission -Identity <the From address> -Trustee %s -AccessRights SendAs), or the application sends "+
			"from an address the mailbox owns (postern project update %s --send-as ... lists what Postern lets through).", p.Auth.Username, p.Auth.Username, p.Name)
	case p.Upstream.Port == 465 && exchangeHost(p.Upstream.Host) &&
		(ue.Stage == upstream.StageConnect || ue.Stage == upstream.StageTLS || ue.Stage == upstream.StageGreeting):
		return fmt.Sprintf("Exchange Online takes mail submission on port 587 with STARTTLS, not on port 465: "+
			"postern project update %s --port 587 --tls starttls", p.Name)
	case ue.Stage == upstream.StageTLS && (strings.Contains(cause, "protocol version") || strings.Contains(cause, "no supported versions") ||
		strings.Contains(cause, "unsupported protocol")):
		return fmt.Sprintf("The mail server %s and Postern share no TLS version: Postern speaks TLS 1.2 and 1.3 only, "+
			"and the server offers something older (or, more rarely, newer). Upgrade the server's TLS; Postern does not go below TLS 1.2.", ue.Addr)
	}
	return ""
}
