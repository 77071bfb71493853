package advice_test

import (
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/emersion/go-smtp"

	"github.com/postern/postern/sidecar/advice"
	"github.com/postern/postern/sidecar/credential"
	"github.com/postern/postern/sidecar/project"
	"github.com/postern/postern/sidecar/upstream"
)

func oauthProject(name, mailbox string) project.Project {
	return project.Project{Name: name, Enabled: true, Senders: []string{mailbox},
		Auth: project.Auth{Type: project.AuthOAuth2, Username: mailbox, OAuth: &project.OAuth{Provider: "microsoft", ClientID: "cid"}}}
}

// TestNextByAuthType: the same refusal gets the fix for the project's credential. A password that
// is refused is updated; SMTP AUTH turned off for the tenant (5.7.139) is enabled, whatever the
// credential.
func TestNextByAuthType(t *testing.T) {
	t.Parallel()
	basic := project.Project{Name: "b", Auth: project.Auth{Type: project.AuthBasic, Username: "u@b.example"}}
	plug := project.Project{Name: "c", Auth: project.Auth{Type: project.AuthPlugin, Plugin: &project.PluginAuth{Provider: "vault-of-c"}}}
	oa := oauthProject("a", "u@a.example")
	refusal := func(enh smtp.EnhancedCode, msg string) error {
		return &upstream.Error{Stage: upstream.StageAuth, Code: 535, Enhanced: enh, Message: msg}
	}
	tests := []struct {
		name string
		p    project.Project
		err  error
		want string
	}{
		{"basic, wrong password", basic, refusal(smtp.EnhancedCode{5, 7, 8}, "Username and Password not accepted"), "postern project update b --password-stdin"},
		{"basic, smtp auth off", basic, refusal(smtp.EnhancedCode{5, 7, 139}, "SmtpClientAuthentication is disabled for the Tenant"), "Set-TransportConfig -SmtpClientAuthenticationDisabled $false"},
		{"oauth, smtp auth off", oa, refusal(smtp.EnhancedCode{5, 7, 139}, "SmtpClientAuthentication is disabled for the Tenant"), "Set-TransportConfig -SmtpClientAuthenticationDisabled $false"},
		{"oauth, gmail", oa, refusal(smtp.EnhancedCode{5, 7, 8}, "Username and Password not accepted"), "https://mail.google.com/"},
		{"plugin", plug, refusal(smtp.EnhancedCode{5, 7, 8}, "no"), "credential provider vault-of-c"},
		{"needs reauth", oa, &credential.ReauthError{Reason: "invalid_grant"}, "postern authorize-link a"},
	}
	for _, tc := range tests {
		if got := advice.Next(tc.p, tc.err); !strings.Contains(got, tc.want) {
			t.Errorf("%s: %q, want %q", tc.name, got, tc.want)
		}
	}
	if got := advice.Next(basic, refusal(smtp.EnhancedCode{5, 7, 8}, "x")); strings.Contains(got, "token") {
		t.Errorf("a password refusal is advised as a token's: %q", got)
	}
}

func TestStatus(t *testing.T) {
	t.Parallel()
	p := oauthProject("a", "u@a.example")
	refused := &upstream.Error{Stage: upstream.StageAuth, Code: 535, Enhanced: smtp.EnhancedCode{5, 7, 139}, Message: "SmtpClientAuthentication is disabled"}
	for state, want := range map[string]string{
		advice.StateNeedsReauth:  "postern authorize-link a",
		advice.StateUnhealthy:    "Set-CASMailbox",
		advice.StateUpstreamDown: "mail waits in Postfix's queue",
		advice.StateDisabled:     "postern project enable a",
	} {
		if got := advice.Status(p, state, refused); !strings.Contains(got, want) {
			t.Errorf("%s: %q, want %q", state, got, want)
		}
	}
	if got := advice.Status(p, advice.StateUnhealthy, errors.New("token endpoint unreachable")); !strings.Contains(got, "retries by itself") {
		t.Errorf("refresh failing: %q", got)
	}
}

func TestNext(t *testing.T) {
	t.Parallel()
	p := oauthProject("client-a", "noreply@client.example")
	auth := func(code int, enh smtp.EnhancedCode, msg string) error {
		return fmt.Errorf("checking: %w", &upstream.Error{Stage: upstream.StageAuth, Addr: "smtp.office365.com:587", Code: code, Enhanced: enh, Message: msg})
	}
	tests := []struct {
		name string
		err  error
		want string // "" means no advice
	}{
		{"nil", nil, ""},
		{"smtp auth disabled", auth(535, smtp.EnhancedCode{5, 7, 139}, "Authentication unsuccessful, SmtpClientAuthentication is disabled for the Tenant."),
			"Set-CASMailbox -Identity noreply@client.example -SmtpClientAuthenticationDisabled $false"},
		{"smtp auth disabled, text only", auth(535, smtp.EnhancedCode{}, "SmtpClientAuthentication is disabled for the Mailbox"), "an Exchange admin must enable SMTP AUTH"},
		{"exchange 5.7.3", auth(535, smtp.EnhancedCode{5, 7, 3}, "Authentication unsuccessful"), "SMTP.Send"},
		{"gmail 5.7.8", auth(535, smtp.EnhancedCode{5, 7, 8}, "Username and Password not accepted"), "https://mail.google.com/"},
		{"basic refused", auth(535, smtp.EnhancedCode{5, 7, 30}, "Basic authentication is not supported"), "--auth oauth2"},
		{"no auth offered", &upstream.Error{Stage: upstream.StageAuth, Err: fmt.Errorf("%w: check upstream.tls", upstream.ErrNoAuth)}, "STARTTLS"},
		{"xoauth2 not offered", &upstream.Error{Stage: upstream.StageAuth, Err: fmt.Errorf("%w XOAUTH2 (it offers PLAIN)", upstream.ErrMechanismNotOffered)}, "does not offer XOAUTH2"},
		{"token refused, no code", auth(535, smtp.EnhancedCode{}, "Authentication failed"), "SMTP AUTH is enabled for the mailbox"},
		{"unreachable", &upstream.Error{Stage: upstream.StageConnect, Addr: "smtp.client.example:587", Err: errors.New("connection refused")}, "could not reach the mail server smtp.client.example:587"},
		{"down", &upstream.Error{Stage: upstream.StagePool, Addr: "smtp.client.example:587", Err: upstream.ErrDown}, "waits before trying again"},
		{"busy", &upstream.Error{Stage: upstream.StagePool, Err: upstream.ErrBusy}, ""},
		{"needs reauth", fmt.Errorf("project x: %w", &credential.ReauthError{Reason: "invalid_grant"}), "sign in again"},
		{"other", errors.New("something"), ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			got := advice.Next(p, tc.err)
			if (tc.want == "") != (got == "") || !strings.Contains(got, tc.want) {
				t.Fatalf("Advice = %q, want %q", got, tc.want)
			}
		})
	}
}

// The causes that name themselves get their own fix.
func TestNextKnownCauses(t *testing.T) {
	t.Parallel()
	oa := oauthProject("a", "u@a.example")
	exo465 := project.Project{Name: "x", Upstream: project.Upstream{Host: "smtp.office365.com", Port: 465, TLS: project.TLSImplicit},
		Auth: project.Auth{Type: project.AuthBasic, Username: "u@x.example"}}
	reauth := func(reason string) error {
		return fmt.Errorf("getting the credential: %w", &credential.ReauthError{Reason: reason})
	}
	tests := []struct {
		name string
		p    project.Project
		err  error
		want string
	}{
		{"432 sender thread limit", oa, &upstream.Error{Stage: upstream.StageMail, Code: 432, Enhanced: smtp.EnhancedCode{4, 3, 2}, Message: "STOREDRV.ClientSubmit; sender thread limit exceeded"}, "--max-connections 3"},
		{"432 concurrent connections", oa, &upstream.Error{Stage: upstream.StageAuth, Code: 432, Enhanced: smtp.EnhancedCode{4, 3, 2}, Message: "Concurrent connections limit exceeded. Visit https://aka.ms/concurrent_sending"}, "--max-connections 3"},
		{"5.7.60 SendAs", oa, &upstream.Error{Stage: upstream.StageData, Code: 550, Enhanced: smtp.EnhancedCode{5, 7, 60}, Message: "SMTP; Client does not have permissions to send as this sender"}, "-AccessRights SendAs"},
		{"consent", oa, reauth("invalid_grant: AADSTS65001: The user or administrator has not consented"), "Grant admin consent"},
		{"mfa", oa, reauth("invalid_grant: AADSTS50076: Due to a configuration change ... you must use multi-factor authentication"), "multi-factor authentication"},
		{"conditional access", oa, reauth("invalid_grant: AADSTS53003: Access has been blocked by Conditional Access policies"), "Conditional Access policy"},
		{"expired secret", oa, errors.New("refreshing the token: invalid_client: AADSTS7000222: The provided client secret keys for app 'cid' are expired"), "--client-secret-stdin"},
		{"tls version", oa, &upstream.Error{Stage: upstream.StageTLS, Addr: "old.example:587", Err: errors.New("tls: server selected unsupported protocol version 301")}, "no TLS version"},
		{"port 465 on exchange", exo465, &upstream.Error{Stage: upstream.StageTLS, Addr: "smtp.office365.com:465", Err: errors.New("i/o timeout")}, "--port 587 --tls starttls"},
	}
	for _, tc := range tests {
		if got := advice.Next(tc.p, tc.err); !strings.Contains(got, tc.want) {
			t.Errorf("%s: %q, want %q", tc.name, got, tc.want)
		}
	}
	// AADSTS500761 is not AADSTS50076.
	if got := advice.Next(oa, reauth("AADSTS500761: something else")); strings.Contains(got, "multi-factor") {
		t.Errorf("AADSTS500761 advised as MFA: %q", got)
	}
}
