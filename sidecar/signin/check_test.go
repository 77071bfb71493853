package signin_test

import (
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/emersion/go-smtp"

	"github.com/postern/postern/sidecar/credential"
	"github.com/postern/postern/sidecar/signin"
	"github.com/postern/postern/sidecar/upstream"
)

func TestAdvice(t *testing.T) {
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
		{"no auth offered", auth(0, smtp.EnhancedCode{}, "the upstream offers no AUTH: check upstream.tls"), "STARTTLS"},
		{"unreachable", &upstream.Error{Stage: upstream.StageConnect, Addr: "smtp.client.example:587", Err: errors.New("connection refused")}, "could not reach the mail server smtp.client.example:587"},
		{"down", &upstream.Error{Stage: upstream.StagePool, Addr: "smtp.client.example:587", Err: upstream.ErrDown}, "waits before trying again"},
		{"busy", &upstream.Error{Stage: upstream.StagePool, Err: upstream.ErrBusy}, ""},
		{"needs reauth", fmt.Errorf("project x: %w", &credential.ReauthError{Reason: "invalid_grant"}), "sign in again"},
		{"other", errors.New("something"), ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			got := signin.Advice(p, tc.err)
			if (tc.want == "") != (got == "") || !strings.Contains(got, tc.want) {
				t.Fatalf("Advice = %q, want %q", got, tc.want)
			}
		})
	}
}
