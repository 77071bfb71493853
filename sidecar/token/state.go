package token

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/postern/postern/sidecar/project"
	"github.com/postern/postern/sidecar/store"
)

// Rejected records that the upstream refused the project's token (after Renew), with the
// upstream's words; Status shows it until Accepted or a new sign-in.
func (b *Broker) Rejected(_ context.Context, p project.Project, err error) {
	text := "the upstream refused the token"
	if err != nil {
		text = err.Error()
	}
	b.mu.Lock()
	e := b.entryLocked(p.Name)
	e.rejected, e.rejectedAt, e.rejectedErr = text, b.opts.Now(), err
	b.mu.Unlock()
	b.log.Warn("the upstream refused the project's access token: mail is deferred", "project", p.Name, "err", text)
}

// Accepted clears a recorded refusal once the upstream accepts the project's token again.
func (b *Broker) Accepted(_ context.Context, p project.Project) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if e := b.entries[p.Name]; e != nil && e.rejected != "" {
		e.rejected, e.rejectedAt, e.rejectedErr = "", time.Time{}, nil
		b.log.Info("the upstream accepts the project's access token again", "project", p.Name)
	}
}

// State is the project's credential state as the milter and the status page see it: what the
// broker knows, after one store read the first time (Observe; a failed read leaves it unknown).
func (b *Broker) State(ctx context.Context, p project.Project) (project.TokenState, string) {
	_ = b.Observe(ctx, p)
	s := b.Status(p.Name)
	return s.State, s.Reason
}

// ProjectStatus is what the status page and metrics show of one project. It holds no token.
type ProjectStatus struct {
	// State is ok, needs_reauth, or empty before anything is known.
	State project.TokenState
	// Reason is why State is needs_reauth, in the provider's words.
	Reason string
	// Account is the signed-in mailbox.
	Account string
	// Expiry of the cached access token.
	Expiry time.Time
	// LastRefresh is when a token was last obtained or adopted.
	LastRefresh time.Time
	// LastError is the last refresh failure, LastErrorAt its time, RetryAt when the next attempt may
	// be made; all cleared by a success.
	LastError   string
	LastErrorAt time.Time
	RetryAt     time.Time
	// Rejected is the upstream's refusal of the token, if any, RejectedAt its time and RejectedErr
	// the error itself (an *upstream.Error), for package advice.
	Rejected    string
	RejectedAt  time.Time
	RejectedErr error
	// PendingWrite says a rotated token is held in memory because the store could not be written.
	PendingWrite bool
	// Refreshing says a refresh is in flight.
	Refreshing bool
}

// Healthy reports whether the project's credential works as far as Postern knows.
func (s ProjectStatus) Healthy() bool {
	return s.State != project.TokenNeedsReauth && s.Rejected == ""
}

// Status returns the project's status.
func (b *Broker) Status(name string) ProjectStatus {
	b.mu.Lock()
	defer b.mu.Unlock()
	e := b.entries[name]
	if e == nil {
		return ProjectStatus{}
	}
	s := ProjectStatus{
		State: e.state, Reason: e.reason,
		LastRefresh: e.lastRefresh, LastErrorAt: e.lastErrAt, RetryAt: e.retryAt,
		Rejected: e.rejected, RejectedAt: e.rejectedAt, RejectedErr: e.rejectedErr,
		PendingWrite: e.pending, Refreshing: e.flight != nil,
	}
	if e.loaded {
		s.Account, s.Expiry = e.tok.Account, e.tok.Expiry
	}
	if e.lastErr != nil {
		s.LastError = e.lastErr.Error()
	}
	return s
}

// PendingWrites returns the number of projects whose rotated token waits to be written.
func (b *Broker) PendingWrites() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	n := 0
	for _, e := range b.entries {
		if e.pending {
			n++
		}
	}
	return n
}

// Observe reads a project's stored token record into the cache when nothing is known of it yet,
// without asking the identity provider, so that the status page and the milter know a stored
// needs_reauth (or a project never signed in) from the start, not only after a delivery tried.
func (b *Broker) Observe(ctx context.Context, p project.Project) error {
	if p.Auth.Type != project.AuthOAuth2 || b.opts.Store == nil {
		return nil
	}
	b.mu.Lock()
	e := b.entryLocked(p.Name)
	known := e.loaded || e.flight != nil || e.state != ""
	b.mu.Unlock()
	if known {
		return nil
	}
	e.io.Lock()
	defer e.io.Unlock()
	t, err := b.opts.Store.Token(ctx, p.Name)
	notSignedIn := errors.Is(err, store.ErrNotFound)
	if err != nil && !notSignedIn {
		return fmt.Errorf("reading the token record of project %q: %w", p.Name, err)
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if e.loaded || e.flight != nil || e.state != "" {
		return nil
	}
	switch {
	case notSignedIn:
		e.state, e.reason = project.TokenNeedsReauth, "the mailbox has not been signed in yet"
	case t.State == project.TokenNeedsReauth:
		// Not loaded: the next Credential goes through the store and answers needs_reauth.
		e.state, e.reason = project.TokenNeedsReauth, t.Reason
	default:
		e.state = project.TokenOK
		e.tok, e.loaded = t, true
	}
	return nil
}

// RefreshWaits returns how many Credential calls have waited for the identity provider: their
// token was expired or refused upstream. Refreshes ahead of expiry keep this at zero; reading a
// token from the store after a start does not count.
func (b *Broker) RefreshWaits() int64 { return b.waits.Load() }

// Waiting returns how many Credential calls are waiting for the identity provider now.
func (b *Broker) Waiting() int64 { return b.waiting.Load() }
