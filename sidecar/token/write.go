package token

import (
	"context"
	"errors"
	"fmt"
	"time"

	"golang.org/x/oauth2"

	"github.com/postern/postern/sidecar/project"
	"github.com/postern/postern/sidecar/secret"
	"github.com/postern/postern/sidecar/store"
)

// Store is where token records live: store.Tokens, over Vault or the embedded file store.
type Store interface {
	// Token returns the record with its Version set, or store.ErrNotFound.
	Token(ctx context.Context, name string) (project.Token, error)
	// PutToken writes t if the stored version is still t.Version (0: must not exist yet) and
	// returns the new version, or store.ErrConflict.
	PutToken(ctx context.Context, name string, t project.Token) (int, error)
}

var _ Store = store.Tokens(nil)

// write stores t with a check-and-set on t.Version. On a conflict it re-reads: a record with a
// valid token not due for refresh (another replica's) is returned instead of t; otherwise t is
// written over the new version. It returns the record now current.
func (b *Broker) write(ctx context.Context, name string, t project.Token) (project.Token, error) {
	for range maxAttempts {
		v, err := b.opts.Store.PutToken(ctx, name, t)
		if err == nil {
			t.Version = v
			return t, nil
		}
		if !errors.Is(err, store.ErrConflict) {
			return t, fmt.Errorf("writing the token record of project %q: %w", name, err)
		}
		cur, err := b.opts.Store.Token(ctx, name)
		switch {
		case errors.Is(err, store.ErrNotFound):
			t.Version = 0
			continue
		case err != nil:
			return t, fmt.Errorf("re-reading the token record of project %q after a conflict: %w", name, err)
		}
		if cur.State != project.TokenNeedsReauth && b.fresh(cur, b.opts.Now()) {
			return cur, nil
		}
		t.Version = cur.Version
		t.KeepSignIns(cur, b.opts.Now())
	}
	return t, fmt.Errorf("writing the token record of project %q: %w %d times", name, store.ErrConflict, maxAttempts)
}

// retryWrite writes the entry's pending record until it lands or the broker closes.
func (b *Broker) retryWrite(e *entry) {
	defer b.wg.Done()
	for failures := 1; ; failures++ {
		t := time.NewTimer(b.opts.Backoff.Delay(failures))
		select {
		case <-b.ctx.Done():
			t.Stop()
			b.mu.Lock()
			e.writer = false
			b.mu.Unlock()
			return
		case <-t.C:
		}
		e.io.Lock()
		b.mu.Lock()
		pending, tok := e.pending, e.tok
		b.mu.Unlock()
		var err error
		if pending {
			ctx, cancel := context.WithTimeout(b.ctx, b.opts.RefreshTimeout)
			var cur project.Token
			cur, err = b.write(ctx, e.name, tok)
			cancel()
			if err == nil {
				b.mu.Lock()
				e.tok, e.pending = cur, false
				b.mu.Unlock()
				b.log.Info("wrote the pending token record", "project", e.name, "attempts", failures)
			} else {
				b.log.Warn("the pending token record still cannot be written", "project", e.name, "err", err)
			}
		}
		b.mu.Lock()
		done := !e.pending
		if done {
			e.writer = false
		}
		b.mu.Unlock()
		e.io.Unlock()
		if done {
			return
		}
	}
}

// SignIn describes a completed sign-in for Store.
type SignIn struct {
	// Account is the signed-in mailbox; AccountID and TenantID identify its account
	// (oauth.Identity).
	Account, AccountID, TenantID string
	// Nonce, when set, is the nonce of the sign-in link used, valid until LinkExpiry: Store
	// records it in the same check-and-set write as the grant, and refuses with ErrLinkUsed when
	// the record lists it already.
	Nonce      string
	LinkExpiry time.Time
}

// ErrLinkUsed is Store's refusal of a sign-in whose link was used already, here or on another
// replica: nothing was stored.
var ErrLinkUsed = errors.New("the sign-in link was used already")

// Store saves a new grant from a sign-in (state ok, needs_reauth cleared) over whatever record
// exists, keeping the record's used sign-in links. If the store cannot be written the grant is
// kept in memory, written when it can be, and the error says so. A sign-in through a link whose
// nonce the record lists already is refused with ErrLinkUsed, so of two sign-ins with one link,
// on any replicas, at most one grant is stored.
func (b *Broker) Store(ctx context.Context, p project.Project, tok *oauth2.Token, in SignIn) error {
	account := in.Account
	if b.opts.Store == nil {
		return fmt.Errorf("project %q: the token broker has no store", p.Name)
	}
	if tok == nil || tok.AccessToken == "" {
		return fmt.Errorf("project %q: storing a sign-in: no access token", p.Name)
	}
	now := b.opts.Now()
	rec := project.Token{
		AccessToken:  secretOf(tok.AccessToken),
		TokenType:    tok.TokenType,
		Expiry:       b.expiry(tok, now),
		RefreshToken: secretOf(tok.RefreshToken),
		Account:      account,
		AccountID:    in.AccountID,
		TenantID:     in.TenantID,
		State:        project.TokenOK,
		RefreshedBy:  b.opts.Instance,
		UpdatedAt:    now,
	}
	if in.Nonce != "" {
		rec.UseSignIn(in.Nonce, in.LinkExpiry, now)
	}
	b.mu.Lock()
	e := b.entryLocked(p.Name)
	b.mu.Unlock()
	e.io.Lock()
	defer e.io.Unlock()

	// over bases rec on cur: the version to check, and the used links to keep.
	over := func(cur project.Token) error {
		if cur.SignInUsed(in.Nonce) {
			return ErrLinkUsed
		}
		rec.Version = cur.Version
		rec.KeepSignIns(cur, now)
		return nil
	}
	err := func() error {
		cur, err := b.opts.Store.Token(ctx, p.Name)
		switch {
		case errors.Is(err, store.ErrNotFound):
		case err != nil:
			return err
		default:
			if err := over(cur); err != nil {
				return err
			}
		}
		for range maxAttempts {
			v, err := b.opts.Store.PutToken(ctx, p.Name, rec)
			if err == nil {
				rec.Version = v
				return nil
			}
			if !errors.Is(err, store.ErrConflict) {
				return err
			}
			cur, err := b.opts.Store.Token(ctx, p.Name)
			if err != nil && !errors.Is(err, store.ErrNotFound) {
				return err
			}
			if err := over(cur); err != nil {
				return err
			}
		}
		return store.ErrConflict
	}()
	if errors.Is(err, ErrLinkUsed) {
		b.log.Warn("refused a sign-in: its link was used already", "project", p.Name, "account", account)
		return fmt.Errorf("project %q: %w", p.Name, err)
	}

	b.mu.Lock()
	e.tok, e.loaded, e.pending = rec, true, err != nil
	e.lastRefresh = now
	e.failures, e.retryAt, e.lastErr = 0, time.Time{}, nil
	e.state, e.reason = project.TokenOK, ""
	e.rejected, e.rejectedAt = "", time.Time{}
	if e.pending && !e.writer && !b.closed {
		e.writer = true
		b.wg.Add(1)
		go b.retryWrite(e)
	}
	b.mu.Unlock()
	if err != nil {
		b.log.Error("could not write the new sign-in to the store: keeping it in memory and retrying", "project", p.Name, "err", err)
		return fmt.Errorf("project %q: storing the sign-in of %s: %w (kept in memory; the write is retried)", p.Name, account, err)
	}
	b.log.Info("stored a new sign-in", "project", p.Name, "account", account, "expiry", rec.Expiry)
	return nil
}

func secretOf(s string) secret.Secret { return secret.New(s) }
