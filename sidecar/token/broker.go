package token

import (
	"context"
	"crypto/sha256"
	"fmt"
	"time"

	"github.com/emersion/go-sasl"

	"github.com/postern/postern/sidecar/project"
	"github.com/postern/postern/sidecar/secret"
	"github.com/postern/postern/sidecar/upstream"
	"github.com/postern/postern/sidecar/xoauth2"
)

// Credential returns the project's upstream sign-in: XOAUTH2 with a valid access token. Errors
// match credential.ErrNeedsReauth (a person must sign in) or ErrUnavailable (try later).
func (b *Broker) Credential(ctx context.Context, p project.Project) (upstream.Auth, error) {
	if err := b.check(p); err != nil {
		return upstream.Auth{}, err
	}
	now := b.opts.Now()
	b.mu.Lock()
	e := b.entryLocked(p.Name)
	usable := e.loaded && e.state != project.TokenNeedsReauth // a dead grant's token is not used
	switch {
	case usable && b.fresh(e.tok, now):
		tok := e.tok
		b.mu.Unlock()
		return b.auth(p, tok), nil
	case usable && b.valid(e.tok, now):
		if e.flight == nil && !now.Before(e.retryAt) && !b.closed {
			b.startLocked(e, p, false)
		}
		tok := e.tok
		b.mu.Unlock()
		return b.auth(p, tok), nil
	}
	f, err := b.flightLocked(e, p, false)
	b.mu.Unlock()
	if err != nil {
		return upstream.Auth{}, err
	}
	return b.wait(ctx, p, f)
}

// Renew returns a sign-in with a token other than refused, the one the upstream has just refused
// (step 3 of the package comment): the cached token when it is another one already (a renewal
// for refused happened, or the cache moved on), else a new one from the identity provider. It
// refreshes once per refused token: concurrent callers refused with the same token share one
// refresh, and a token renewed once is never renewed again: Renew then returns refused itself,
// and the caller reports the refusal (Rejected).
func (b *Broker) Renew(ctx context.Context, p project.Project, refused upstream.Auth) (upstream.Auth, error) {
	if err := b.check(p); err != nil {
		return upstream.Auth{}, err
	}
	id := tokenID(refused.Secret)
	for range 2 {
		now := b.opts.Now()
		b.mu.Lock()
		e := b.entryLocked(p.Name)
		usable := e.loaded && e.state != project.TokenNeedsReauth
		switch {
		case usable && b.valid(e.tok, now) && !e.tok.AccessToken.Equal(refused.Secret):
			tok := e.tok
			b.mu.Unlock()
			return b.auth(p, tok), nil
		case e.flight == nil && e.renewed == id:
			b.mu.Unlock()
			b.log.Warn("the upstream refused a token that was renewed already: not renewing it again", "project", p.Name)
			return refused, nil
		}
		forced := e.flight == nil
		if forced {
			e.renewed = id
		}
		f, err := b.flightLocked(e, p, true)
		b.mu.Unlock()
		if err != nil {
			return upstream.Auth{}, err
		}
		a, err := b.wait(ctx, p, f)
		if err != nil || forced || !a.Secret.Equal(refused.Secret) {
			return a, err
		}
		// A refresh that was not for this refusal (ahead of expiry) gave the refused token back:
		// renew it now.
	}
	return refused, nil
}

// tokenID identifies an access token without keeping it.
func tokenID(s secret.Secret) [sha256.Size]byte { return sha256.Sum256([]byte(s.Reveal())) }

// check reports a project the broker cannot serve.
func (b *Broker) check(p project.Project) error {
	if p.Auth.Type != project.AuthOAuth2 || p.Auth.OAuth == nil {
		return fmt.Errorf("project %q: auth type %q is not oauth2", p.Name, p.Auth.Type)
	}
	if b.opts.Store == nil {
		return fmt.Errorf("project %q: the token broker has no store", p.Name)
	}
	return nil
}

// flightLocked returns the project's refresh in flight, starting one (forced or not) if none is;
// or the error to answer while refreshes back off. b.mu is held.
func (b *Broker) flightLocked(e *entry, p project.Project, force bool) (*flight, error) {
	if e.flight != nil {
		return e.flight, nil
	}
	if b.closed {
		return nil, fmt.Errorf("project %q: the token broker is closed: %w", p.Name, ErrUnavailable)
	}
	if b.opts.Now().Before(e.retryAt) && e.lastErr != nil {
		return nil, e.lastErr
	}
	b.startLocked(e, p, force)
	return e.flight, nil
}

// wait waits for the refresh f and returns its token.
func (b *Broker) wait(ctx context.Context, p project.Project, f *flight) (upstream.Auth, error) {
	b.waiting.Add(1)
	defer b.waiting.Add(-1)

	select {
	case <-f.done:
		if f.refreshed {
			b.waits.Add(1)
		}
	case <-ctx.Done():
		b.waits.Add(1)
		return upstream.Auth{}, fmt.Errorf("project %q: waiting for a token refresh: %w: %w", p.Name, ErrUnavailable, ctx.Err())
	}
	if f.err != nil {
		return upstream.Auth{}, f.err
	}
	return b.auth(p, f.tok), nil
}

func (b *Broker) auth(p project.Project, t project.Token) upstream.Auth {
	user := p.Auth.Username
	if user == "" {
		user = t.Account
	}
	tok := t.AccessToken
	return upstream.Auth{
		Mechanism: xoauth2.Mechanism,
		Username:  user,
		Secret:    tok,
		SASL:      func() sasl.Client { return xoauth2.NewClient(user, tok) },
	}
}

// startLocked starts the project's refresh; b.mu is held.
func (b *Broker) startLocked(e *entry, p project.Project, force bool) {
	f := &flight{done: make(chan struct{})}
	e.flight = f
	b.wg.Add(1)
	go func() {
		defer b.wg.Done()
		ctx, cancel := context.WithTimeout(b.ctx, b.opts.RefreshTimeout)
		defer cancel()
		e.io.Lock()
		res := b.refresh(ctx, e, p, force)
		b.apply(e, res)
		e.io.Unlock()
		b.mu.Lock()
		e.flight = nil
		b.mu.Unlock()
		f.tok, f.err, f.refreshed = res.tok, res.err, res.refreshed
		close(f.done)
	}()
}

type flight struct {
	done      chan struct{}
	tok       project.Token
	err       error
	refreshed bool // the identity provider was asked (not only the store read)
}

// valid: usable on the wire now: not expiring within a minute, or within half the margin when
// the margin is shorter (tokens that live only seconds, as in tests).
func (b *Broker) valid(t project.Token, now time.Time) bool {
	return !t.AccessToken.IsZero() && now.Add(min(minValidity, b.margin(t)/2)).Before(t.Expiry)
}

// fresh: valid and not due for a refresh.
func (b *Broker) fresh(t project.Token, now time.Time) bool {
	return b.valid(t, now) && now.Add(b.margin(t)).Before(t.Expiry)
}

// margin is how long before t's expiry it is refreshed: Options.Margin, but at most half of t's
// lifetime. Without the cap, a token living less than the margin would be due for a refresh from
// the moment it was obtained: refreshed on every delivery.
func (b *Broker) margin(t project.Token) time.Duration {
	m := b.opts.Margin
	if !t.UpdatedAt.IsZero() && t.UpdatedAt.Before(t.Expiry) {
		m = min(m, t.Expiry.Sub(t.UpdatedAt)/2)
	}
	return m
}
