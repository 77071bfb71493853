// Package credential owns what the LMTP/SMTP server signs in upstream with, seen from the server's
// side: the error that means "a person must sign in again", and the credential source for projects
// that need no token broker (basic AUTH, or no AUTH at all).
//
// The flow for one transaction:
//
//  1. The server asks a credential source for the project's credential (force false).
//  2. If the upstream refuses it and the credential can be renewed (OAuth), the server asks again
//     with force true and tries once more.
//  3. If the upstream still refuses it, the server reports the refusal with Rejected, so the source
//     can mark the project unhealthy with the upstream's words, and defers the mail (451 4.7.0).
//  4. A source that knows a person must sign in again returns an error matching ErrNeedsReauth;
//     the mail is deferred with the reason, and flows once the mailbox owner has signed in.
package credential

import (
	"context"
	"errors"
	"fmt"
	"log/slog"

	"github.com/postern/postern/sidecar/project"
	"github.com/postern/postern/sidecar/upstream"
)

// ErrNeedsReauth is matched (errors.Is) by every error meaning a person must sign the project's
// mailbox in again before its mail can flow.
var ErrNeedsReauth = errors.New("needs re-authorisation")

// ReauthError says why a project needs re-authorisation. It matches ErrNeedsReauth.
type ReauthError struct {
	// Reason is the provider's or the store's explanation, safe to show (never a token).
	Reason string
}

func (e *ReauthError) Error() string { return "needs re-authorisation: " + e.Reason }

// Is makes errors.Is(err, ErrNeedsReauth) true.
func (e *ReauthError) Is(target error) bool { return target == ErrNeedsReauth }

// Reason returns the reason carried by a *ReauthError in err's chain, or err's text when err only
// wraps ErrNeedsReauth.
func Reason(err error) string {
	var re *ReauthError
	if errors.As(err, &re) {
		return re.Reason
	}
	return err.Error()
}

// Basic is the credential source for projects with auth type basic or none. It holds no state: the
// password comes from the project record, so a changed password takes effect with the next reload
// of the projects.
type Basic struct {
	// Logger receives refusals. Nil discards.
	Logger *slog.Logger
}

// Credential returns the project's username and password (auth type basic), or the empty Auth
// (auth type none). force changes nothing: a password cannot be refreshed.
func (b Basic) Credential(_ context.Context, p project.Project, _ bool) (upstream.Auth, error) {
	switch p.Auth.Type {
	case project.AuthBasic:
		return upstream.Auth{Mechanism: p.Auth.Mechanism, Username: p.Auth.Username, Secret: p.Auth.Password}, nil
	case project.AuthNone:
		return upstream.Auth{}, nil
	}
	return upstream.Auth{}, fmt.Errorf("project %q: auth type %q needs the token broker, not the basic credential source", p.Name, p.Auth.Type)
}

// Rejected logs the upstream's refusal of a project's password.
func (b Basic) Rejected(_ context.Context, p project.Project, err error) {
	log := b.Logger
	if log == nil {
		return
	}
	log.Warn("the upstream refused the project's password: mail is deferred until it is corrected",
		"project", p.Name, "username", p.Auth.Username, "error", err)
}
