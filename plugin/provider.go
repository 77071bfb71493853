package plugin

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"time"
)

// Provider is what a credential provider implements. Postern calls it for every project whose
// auth.type is "plugin": once per credential it needs (its broker caches the result until Expiry),
// and once more with ForceRefresh after the upstream server rejected the last one.
//
// Both methods may be called concurrently for different projects. They must honour ctx: Postern
// cancels it when Postfix gives up waiting, and its deadline crosses the process boundary.
type Provider interface {
	// Credential returns the credential for req.Project. Return a *NeedsReauthError when a person
	// must act before it can work again, a *TemporaryError (or any other error) when asking again
	// later may succeed.
	Credential(ctx context.Context, req Request) (Credential, error)
	// Rejected tells the provider that the upstream refused the credential it returned last for
	// req.Project, so it can drop what it cached. Return a *NeedsReauthError when asking again is
	// pointless.
	Rejected(ctx context.Context, req RejectedRequest) error
}

// Mechanisms a credential may use.
const (
	MechanismPlain   = "PLAIN"
	MechanismLogin   = "LOGIN"
	MechanismXOAuth2 = "XOAUTH2"
)

// Request asks for the credential of one project.
type Request struct {
	// Project is the project's name in Postern.
	Project string
	// Username is the mailbox Postern signs in as (the project's auth.username).
	Username string
	// Config holds the provider-specific settings from the project record. It may be nil.
	Config map[string]string
	// ForceRefresh is set when a cached credential must not be returned: the last one was
	// rejected upstream.
	ForceRefresh bool
}

// Credential is what Postern signs in upstream with.
type Credential struct {
	// Mechanism is MechanismPlain, MechanismLogin or MechanismXOAuth2.
	Mechanism string
	// Username is the name to sign in with. A provider may leave it empty: the host fills in the
	// request's Username.
	Username string
	// Secret is the password (PLAIN, LOGIN) or the access token (XOAUTH2).
	Secret Secret
	// Expiry is when Secret stops working; the zero time means it does not expire.
	Expiry time.Time
}

// RejectedRequest reports that the upstream server refused a project's credential.
type RejectedRequest struct {
	// Project is the project's name in Postern.
	Project string
	// Username is the mailbox Postern signed in as.
	Username string
	// Config holds the provider-specific settings from the project record. It may be nil.
	Config map[string]string
	// Mechanism is the mechanism of the refused credential.
	Mechanism string
	// Reply is the upstream's reply, e.g. "535 5.7.3 Authentication unsuccessful".
	Reply string
}

// NeedsReauthError says a person must act (sign in again, renew a certificate, grant consent)
// before the project's credential works again. Postern keeps the project's mail queued, raises an
// alert and shows Reason. It crosses the process boundary intact: the host returns a
// *NeedsReauthError with the same Reason.
type NeedsReauthError struct {
	// Reason is shown to operators; it must never contain a secret.
	Reason string
}

func (e *NeedsReauthError) Error() string {
	return "credential needs re-authorisation: " + e.Reason
}

// TemporaryError says the provider cannot answer now but may later (its backend is unreachable,
// a rate limit). Postern keeps the mail queued and asks again. It crosses the process boundary
// intact. Any other error a provider returns arrives at the host as a *TemporaryError carrying
// the error's text.
type TemporaryError struct {
	// Reason is logged; it must never contain a secret.
	Reason string
}

func (e *TemporaryError) Error() string {
	return "credential temporarily unavailable: " + e.Reason
}

// IsNeedsReauth reports whether err says a person must act.
func IsNeedsReauth(err error) bool {
	var e *NeedsReauthError
	return errors.As(err, &e)
}

const redacted = "[redacted]"

// Secret is a password or token that redacts itself in fmt, slog, JSON and text encodings. The
// only way to the value is Reveal. (This package stands apart from Postern's sidecar, so it has
// its own copy of the sidecar's secret type; convert with secret.New(s.Reveal()).)
type Secret struct{ v string }

// NewSecret wraps s.
func NewSecret(s string) Secret { return Secret{v: s} }

// Reveal returns the value. Call it only where the value leaves the process on purpose.
func (s Secret) Reveal() string { return s.v }

// IsZero reports whether the secret is empty.
func (s Secret) IsZero() bool { return s.v == "" }

// String implements fmt.Stringer and redacts.
func (s Secret) String() string {
	if s.v == "" {
		return ""
	}
	return redacted
}

// GoString implements fmt.GoStringer, so %#v redacts too.
func (s Secret) GoString() string { return s.String() }

// LogValue implements slog.LogValuer and redacts.
func (s Secret) LogValue() slog.Value { return slog.StringValue(s.String()) }

// MarshalJSON redacts.
func (s Secret) MarshalJSON() ([]byte, error) { return json.Marshal(s.String()) }

// MarshalText redacts.
func (s Secret) MarshalText() ([]byte, error) { return []byte(s.String()), nil }

var (
	_ slog.LogValuer = Secret{}
	_ json.Marshaler = Secret{}
)
