package credential

import (
	"bytes"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"testing"

	"github.com/postern/postern/sidecar/project"
	"github.com/postern/postern/sidecar/secret"
)

func TestReauthError(t *testing.T) {
	t.Parallel()
	err := fmt.Errorf("project %q: %w", "a", &ReauthError{Reason: "invalid_grant: AADSTS700082 refresh token expired"})
	if !errors.Is(err, ErrNeedsReauth) {
		t.Fatal("a wrapped ReauthError does not match ErrNeedsReauth")
	}
	if got := Reason(err); got != "invalid_grant: AADSTS700082 refresh token expired" {
		t.Fatalf("Reason = %q", got)
	}
	plain := fmt.Errorf("consent revoked: %w", ErrNeedsReauth)
	if got := Reason(plain); got != "consent revoked: needs re-authorisation" {
		t.Fatalf("Reason of a plain wrap = %q", got)
	}
}

func TestBasic(t *testing.T) {
	t.Parallel()
	const password = "pw-never-logged-7f3a"
	var logs bytes.Buffer
	b := Basic{Logger: slog.New(slog.NewTextHandler(&logs, nil))}
	tests := []struct {
		name    string
		auth    project.Auth
		wantErr bool
		user    string
	}{
		{"basic", project.Auth{Type: project.AuthBasic, Username: "u@a.example", Password: secret.New(password), Mechanism: "LOGIN"}, false, "u@a.example"},
		{"none", project.Auth{Type: project.AuthNone}, false, ""},
		{"oauth2 is not basic's job", project.Auth{Type: project.AuthOAuth2, Username: "u@a.example"}, true, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p := project.Project{Name: "a", Auth: tc.auth}
			a, err := b.Credential(t.Context(), p)
			if (err != nil) != tc.wantErr {
				t.Fatalf("err = %v", err)
			}
			if a.Username != tc.user || a.Secret.Reveal() != tc.auth.Password.Reveal() || a.Mechanism != tc.auth.Mechanism && !tc.wantErr {
				t.Fatalf("Credential = %+v", a)
			}
			b.Rejected(t.Context(), p, errors.New("535 5.7.8 Authentication credentials invalid"))
		})
	}
	if strings.Contains(logs.String(), password) {
		t.Fatalf("the password reached the log: %s", logs.String())
	}
	if !strings.Contains(logs.String(), "535 5.7.8") {
		t.Fatalf("the upstream's text is missing from the log: %s", logs.String())
	}
	Basic{}.Rejected(t.Context(), project.Project{}, errors.New("x")) // a nil logger is fine
}
