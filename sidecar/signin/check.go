package signin

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/emersion/go-smtp"

	"github.com/postern/postern/sidecar/credential"
	"github.com/postern/postern/sidecar/project"
	"github.com/postern/postern/sidecar/upstream"
)

// Credentials is the one sign-in to an upstream: *credential.Manager.
type Credentials interface {
	Verify(ctx context.Context, p project.Project, attempt func(upstream.Auth) error) error
}

var _ Credentials = (*credential.Manager)(nil)

// UpstreamCheck returns a TestAuth: through creds (Verify: the new token is not renewed, and the
// outcome is reported to its source, so a project refused before shows healthy once this
// succeeds), it takes a connection to
// p's upstream from pools, signed in with the credential the project has now (after a sign-in, the
// new access token), and closes it again without sending mail.
//
// Give it Pools of its own, made with the sidecar's upstream.Options: a pooled connection that
// signed in earlier would be handed out without a new AUTH and prove nothing, so every checked
// connection is discarded rather than released, and a pool used only for checks never holds one.
func UpstreamCheck(pools *upstream.Pools, creds Credentials) func(context.Context, project.Project) error {
	return func(ctx context.Context, p project.Project) error {
		return creds.Verify(ctx, p, func(a upstream.Auth) error {
			c, err := pools.Acquire(ctx, p, a)
			if err != nil {
				return err
			}
			c.Discard()
			return nil
		})
	}
}

// Advice says what to do about a failed upstream sign-in (from UpstreamCheck, or from a
// delivery), for the person who reads it; "" when there is nothing more specific to say than the
// upstream's own words.
func Advice(p project.Project, err error) string {
	if err == nil {
		return ""
	}
	if errors.Is(err, credential.ErrNeedsReauth) {
		return "The identity provider no longer accepts the grant: the mailbox owner must sign in again."
	}
	var ue *upstream.Error
	if !errors.As(err, &ue) {
		return ""
	}
	mailbox := p.Auth.Username
	text := strings.ToLower(ue.Message)
	switch ue.Stage {
	case upstream.StageConnect, upstream.StageTLS, upstream.StageGreeting, upstream.StageEHLO:
		return fmt.Sprintf("Postern could not reach the mail server %s: check the project's upstream host, port and TLS mode, and that this host may connect there.", ue.Addr)
	case upstream.StagePool:
		if errors.Is(err, upstream.ErrDown) {
			return fmt.Sprintf("Postern could not reach the mail server %s a moment ago and waits before trying again: check the project's upstream host, port and TLS mode.", ue.Addr)
		}
		return ""
	case upstream.StageAuth:
	default:
		return ""
	}
	switch {
	case ue.Enhanced == smtp.EnhancedCode{5, 7, 139} || strings.Contains(text, "smtpclientauthentication"):
		return fmt.Sprintf("SMTP AUTH is turned off for this mailbox or for the whole organisation, which blocks OAuth too: "+
			"an Exchange admin must enable SMTP AUTH for this mailbox (Microsoft 365 admin center: Users, %s, Mail, "+
			"Manage email apps, Authenticated SMTP; or Set-CASMailbox -Identity %s -SmtpClientAuthenticationDisabled $false), "+
			"and for the organisation if it is off there (Set-TransportConfig -SmtpClientAuthenticationDisabled $false).", mailbox, mailbox)
	case ue.Enhanced == smtp.EnhancedCode{5, 7, 30}:
		return "The server refuses basic authentication: switch the project to OAuth (postern project update " + p.Name + " --auth oauth2 ...)."
	case ue.Enhanced == smtp.EnhancedCode{5, 7, 3}:
		return "Exchange Online refused the token. The usual causes: SMTP AUTH is turned off for the mailbox " +
			"(an Exchange admin enables it: Set-CASMailbox -Identity " + mailbox + " -SmtpClientAuthenticationDisabled $false), " +
			"the app registration lacks the delegated permission SMTP.Send (https://outlook.office.com/SMTP.Send) or admin consent for it, " +
			"or the token belongs to another account than " + mailbox + "."
	case ue.Code == 534 || ue.Enhanced == smtp.EnhancedCode{5, 7, 8} || ue.Enhanced == smtp.EnhancedCode{5, 7, 9} || ue.Enhanced == smtp.EnhancedCode{5, 7, 14}:
		return "The server refused the token. For Gmail: the OAuth scope must be https://mail.google.com/, and a Workspace admin " +
			"must allow the app (Admin console, Security, API controls). Otherwise check that the token is issued for this mail server."
	case ue.Code == 0 && strings.Contains(text, "offers no auth"):
		return "The server offered no AUTH: check the project's TLS mode (Exchange Online offers AUTH only after STARTTLS on port 587)."
	case ue.Code == 0 && strings.Contains(text, "does not offer auth"):
		return "The server does not offer XOAUTH2: it cannot take OAuth sign-ins, or only after STARTTLS."
	}
	return ""
}
