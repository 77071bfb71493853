// Package credential owns the one sign-in to an upstream: which credential a project signs in with,
// when to renew it, and what the credential's source hears of the upstream's answer. Every caller
// goes through Manager.SignIn: delivery (smtpd), `postern check`, `postern send-test` and the
// sign-in page's test after an authorisation; the milter reads Manager.State.
//
// The flow of one sign-in (Manager.SignIn):
//
//  1. The source is chosen by the project's auth type: Basic for basic and none (the project's own
//     username and password), the OAuth token broker (package token) for oauth2, the credential
//     providers (Plugins, over package plugin) for plugin.
//  2. The source gives the credential (Source.Credential). An error matching ErrNeedsReauth means
//     a person must sign the mailbox in again; the caller defers the mail with it.
//  3. The caller's attempt signs in upstream with it (an upstream connection from the pools).
//  4. If the upstream refuses the credential and the source can renew it (Renewer: OAuth, plugins),
//     the source is asked for another one than the refused one, once per refused credential: the
//     token broker refreshes once for callers refused with the same token and never twice for the
//     same token. With another credential the attempt is made once more.
//  5. A refusal that stands is reported to the source (Source.Rejected), which marks the project
//     unhealthy with the upstream's words; the caller defers the mail (451 4.7.0). An accepted
//     sign-in is reported too (Source.Accepted), which clears that mark: a project refused once
//     shows healthy again as soon as the upstream takes its credential.
package credential

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/postern/postern/sidecar/project"
	"github.com/postern/postern/sidecar/upstream"
)

// Source gives the credentials of the projects of one auth type.
type Source interface {
	// Credential returns what p signs in upstream with. An error matching ErrNeedsReauth means a
	// person must sign in again.
	Credential(ctx context.Context, p project.Project) (upstream.Auth, error)
	// Rejected reports that the upstream refused p's credential for good (after a renewal where
	// the source can renew), with the upstream's error.
	Rejected(ctx context.Context, p project.Project, err error)
	// Accepted reports that the upstream accepted p's credential.
	Accepted(ctx context.Context, p project.Project)
}

// Renewer is a Source whose credentials can be renewed after the upstream refused one.
type Renewer interface {
	// Renew returns a credential other than refused, which the upstream has just refused, or
	// refused itself when it was renewed once already (it is never renewed twice).
	Renew(ctx context.Context, p project.Project, refused upstream.Auth) (upstream.Auth, error)
}

// Stater is a Source that knows the health of a project's credential.
type Stater interface {
	// State is ok, needs_reauth (with the reason, in the provider's words), or empty when unknown.
	State(ctx context.Context, p project.Project) (project.TokenState, string)
}

// Options configure a Manager. A nil source leaves its auth type without credentials (an error
// for its projects), except Basic, which defaults to Basic{Logger}.
type Options struct {
	// Basic serves auth types basic and none.
	Basic Source
	// OAuth serves auth type oauth2: the token broker (*token.Broker).
	OAuth Source
	// Plugin serves auth type plugin (*Plugins).
	Plugin Source
	// Logger receives renewals. Nil discards.
	Logger *slog.Logger
}

// Manager is the one way to sign in to an upstream: see the package comment.
type Manager struct {
	sources map[project.AuthType]Source
	log     *slog.Logger
}

// New returns a Manager over the sources in o.
func New(o Options) *Manager {
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.Basic == nil {
		o.Basic = Basic{Logger: o.Logger}
	}
	m := &Manager{log: o.Logger, sources: map[project.AuthType]Source{
		project.AuthBasic: o.Basic,
		project.AuthNone:  o.Basic,
		"":                o.Basic,
	}}
	if o.OAuth != nil {
		m.sources[project.AuthOAuth2] = o.OAuth
	}
	if o.Plugin != nil {
		m.sources[project.AuthPlugin] = o.Plugin
	}
	return m
}

// ErrNoSource is matched by SignIn's error for a project whose auth type has no source here.
var ErrNoSource = errors.New("no credential source for the auth type")

// SignIn signs p in upstream: it gets p's credential and calls attempt with it, renews the
// credential once where the upstream refused it and the source can renew it, and reports the
// outcome to the source (steps 1-5 of the package comment). It returns attempt's last error, or
// the source's error wrapped as "getting the credential: ...".
func (m *Manager) SignIn(ctx context.Context, p project.Project, attempt func(upstream.Auth) error) error {
	return m.signIn(ctx, p, attempt, true)
}

// Verify is SignIn without the renewal (step 4), for a credential just issued by a sign-in (the
// sign-in page's test, `postern authorize`): a refusal of a new token is about the mailbox or the
// app registration, not the token, and a renewal would only spend a refresh. The outcome is
// reported to the source as by SignIn.
func (m *Manager) Verify(ctx context.Context, p project.Project, attempt func(upstream.Auth) error) error {
	return m.signIn(ctx, p, attempt, false)
}

func (m *Manager) signIn(ctx context.Context, p project.Project, attempt func(upstream.Auth) error, renew bool) error {
	src, ok := m.sources[p.Auth.Type]
	if !ok {
		return fmt.Errorf("getting the credential: project %q, auth type %q: %w", p.Name, p.Auth.Type, ErrNoSource)
	}
	auth, err := src.Credential(ctx, p)
	if err != nil {
		return fmt.Errorf("getting the credential: %w", err)
	}
	err = attempt(auth)
	if r, ok := src.(Renewer); ok && renew && Refused(err) {
		m.log.Info("the upstream refused the credential: trying a fresh one", "project", p.Name, "err", err)
		fresh, rerr := r.Renew(ctx, p, auth)
		if rerr != nil {
			return fmt.Errorf("getting a fresh credential: %w", rerr)
		}
		if !fresh.Secret.Equal(auth.Secret) {
			err = attempt(fresh)
		}
	}
	switch {
	case err == nil:
		src.Accepted(ctx, p)
	case Refused(err):
		src.Rejected(ctx, p, err)
	}
	return err
}

// State is the health of p's credential as the milter and the status page see it: ok for sources
// that keep none.
func (m *Manager) State(p project.Project) (project.TokenState, string) {
	st, ok := m.sources[p.Auth.Type].(Stater)
	if !ok {
		return project.TokenOK, ""
	}
	ctx, cancel := context.WithTimeout(context.Background(), observeTimeout)
	defer cancel()
	return st.State(ctx, p)
}

// observeTimeout bounds the one store read that teaches a source a project's stored state.
const observeTimeout = 5 * time.Second

// Refused reports whether err is the upstream's refusal of a credential (535 and its kin).
func Refused(err error) bool {
	var ue *upstream.Error
	return errors.As(err, &ue) && ue.AuthFailed()
}

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

var _ Source = Basic{}

// Credential returns the project's username and password (auth type basic), or the empty Auth
// (auth type none). A password cannot be renewed: Basic is no Renewer.
func (b Basic) Credential(_ context.Context, p project.Project) (upstream.Auth, error) {
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
		"project", p.Name, "username", p.Auth.Username, "err", err)
}

// Accepted does nothing: Basic keeps no state.
func (Basic) Accepted(context.Context, project.Project) {}
