package token

import (
	"context"
	"fmt"

	"github.com/postern/postern/sidecar/project"
)

// Refresh redeems the project's refresh token now, whatever its access token's expiry, so that an
// idle grant is used before the identity provider's inactivity expiry (package keepalive). It
// goes through the project's one refresh like any other: a refresh in flight is joined instead,
// and a token that another replica wrote since this one last read it is taken as it is (that
// replica's refresh used the grant). It reports whether the identity provider was asked, and
// fails like Credential: credential.ErrNeedsReauth or ErrUnavailable.
func (b *Broker) Refresh(ctx context.Context, p project.Project) (refreshed bool, err error) {
	if err := b.check(p); err != nil {
		return false, err
	}
	// The forced refresh below compares the stored token with the one in memory: load it first.
	b.mu.Lock()
	e := b.entryLocked(p.Name)
	loaded, last := e.loaded, e.lastRefresh
	b.mu.Unlock()
	if !loaded {
		if _, err := b.Credential(ctx, p); err != nil {
			return false, err
		}
		b.mu.Lock()
		renewed := !e.lastRefresh.Equal(last)
		b.mu.Unlock()
		if renewed {
			return true, nil // the stored token had expired: loading it refreshed it
		}
	}
	b.mu.Lock()
	f, err := b.flightLocked(e, p, true)
	b.mu.Unlock()
	if err != nil {
		return false, err
	}
	select {
	case <-f.done:
	case <-ctx.Done():
		return false, fmt.Errorf("project %q: waiting for a token refresh: %w: %w", p.Name, ErrUnavailable, ctx.Err())
	}
	return f.refreshed, f.err
}
