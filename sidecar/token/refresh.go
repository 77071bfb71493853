package token

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"golang.org/x/oauth2"

	"github.com/postern/postern/sidecar/backoff"
	"github.com/postern/postern/sidecar/credential"
	"github.com/postern/postern/sidecar/oauth"
	"github.com/postern/postern/sidecar/project"
	"github.com/postern/postern/sidecar/store"
)

// result is the outcome of one refresh.
type result struct {
	tok       project.Token
	retryAt   time.Time // with a token: do not start another refresh before this
	refreshed bool      // a token request succeeded (not only a store read)
	pending   bool      // tok could not be written
	kind      oauth.Kind
	reason    string
	err       error
}

// apply records a refresh's outcome in memory; e.io is held.
func (b *Broker) apply(e *entry, r result) {
	now := b.opts.Now()
	b.mu.Lock()
	defer b.mu.Unlock()
	switch {
	case r.err == nil:
		if r.refreshed || (e.loaded && !r.tok.AccessToken.Equal(e.tok.AccessToken)) {
			e.lastRefresh = now // a new token, not the first load of the stored one
		}
		e.tok, e.loaded = r.tok, true
		e.pending = r.pending
		e.failures, e.retryAt, e.lastErr = 0, r.retryAt, nil
		e.state, e.reason = project.TokenOK, ""
		if e.pending && !e.writer {
			e.writer = true
			b.wg.Add(1)
			go b.retryWrite(e)
		}
	case r.kind == oauth.NeedsReauth || r.kind == oauth.BadClient:
		e.state, e.reason = project.TokenNeedsReauth, r.reason
		e.lastErr, e.lastErrAt = r.err, now
		e.retryAt = now.Add(reauthRecheck)
	default:
		e.failures++
		e.lastErr, e.lastErrAt = r.err, now
		e.retryAt = now.Add(b.opts.Backoff.Delay(e.failures))
	}
}

func (b *Broker) reauth(name, reason string, kind oauth.Kind) result {
	return result{kind: kind, reason: reason, err: fmt.Errorf("project %q: %w", name, &credential.ReauthError{Reason: reason})}
}

func unavailable(name string, err error) result {
	return result{kind: oauth.Transient, err: fmt.Errorf("project %q: %w: %w", name, ErrUnavailable, err)}
}

// refresh runs steps 4-6 of the package comment; e.io is held. Each attempt reads the record
// (read), returns it when it settles the matter (settled), claims the refresh against other
// replicas (claim), asks the identity provider (request; a refusal goes to failed) and writes the
// new record (save). A write conflict starts another attempt, up to maxAttempts.
func (b *Broker) refresh(ctx context.Context, e *entry, p project.Project, force bool) result {
	b.mu.Lock()
	r := &refreshing{
		b: b, ctx: ctx, e: e, name: p.Name, log: b.log.With("project", p.Name), force: force,
		mem: e.tok, loaded: e.loaded, pending: e.pending,
		cc: p.Auth.OAuth.Grant == oauth.GrantClientCredentials,
	}
	b.mu.Unlock()
	cfg, err := b.opts.ConfigFor(p.Auth.OAuth)
	if err != nil {
		return b.reauth(r.name, "the project's OAuth settings are unusable: "+err.Error(), oauth.BadClient)
	}
	r.flushPending()

	for attempt := 1; ; attempt++ {
		now := b.opts.Now()
		rec, fromMemory, res, done := r.read()
		if done {
			return res
		}
		if res, done := r.settled(rec, fromMemory, now); done {
			return res
		}
		if !fromMemory && !r.cc {
			var next step
			rec, next, res = r.claim(rec, now, attempt)
			switch next {
			case stepDone:
				return res
			case stepAgain:
				continue
			case stepWait:
				attempt--
				continue
			}
		}
		tok, err := b.request(ctx, cfg, r.cc, rec)
		if err != nil {
			if res, again := r.failed(rec, fromMemory, err, now, attempt); !again {
				return res
			}
			continue
		}
		return r.save(rec, tok, now)
	}
}

// refreshing is one refresh of one project, run by Broker.refresh.
type refreshing struct {
	b     *Broker
	ctx   context.Context
	e     *entry
	name  string
	log   *slog.Logger
	force bool // Renew: the cached token was refused, so it is not fresh whatever its expiry
	cc    bool // the client credentials grant: no refresh token, no claim

	mem     project.Token // the cached record when the refresh started
	loaded  bool          // mem was loaded
	pending bool          // mem is not in the store yet
}

// step says how an attempt of refresh goes on.
type step int

const (
	stepOn    step = iota // go on to the token request
	stepAgain             // read the record again: another attempt
	stepWait              // read the record again after a wait, not counted as an attempt
	stepDone              // the refresh ends with the result given
)

// flushPending writes a rotated token that waits for the store first, so that the record read
// next is ours.
func (r *refreshing) flushPending() {
	if !r.pending {
		return
	}
	b := r.b
	wctx, cancel := context.WithTimeout(r.ctx, b.opts.StoreTimeout)
	cur, werr := b.write(wctx, r.name, r.mem)
	cancel()
	if werr == nil {
		b.mu.Lock()
		r.e.tok, r.e.pending, r.mem = cur, false, cur
		b.mu.Unlock()
		r.pending = false
	}
}

// read returns the record to refresh from: the store's, or the cached one (fromMemory) while a
// write is pending or the store is unreachable. done reports that res ends the refresh.
func (r *refreshing) read() (rec project.Token, fromMemory bool, res result, done bool) {
	if r.pending {
		return r.mem, true, result{}, false
	}
	b := r.b
	rctx, cancel := context.WithTimeout(r.ctx, b.opts.StoreTimeout)
	rec, err := b.opts.Store.Token(rctx, r.name)
	cancel()
	switch {
	case errors.Is(err, store.ErrNotFound) && r.cc:
		return project.Token{}, false, result{}, false
	case errors.Is(err, store.ErrNotFound):
		return rec, false, b.reauth(r.name, "the mailbox has not been signed in yet", oauth.NeedsReauth), true
	case err != nil && r.loaded && (r.cc || !r.mem.RefreshToken.IsZero()):
		r.log.Warn("token store unreachable: refreshing from memory", "err", err)
		return r.mem, true, result{}, false
	case err != nil:
		return rec, false, unavailable(r.name, fmt.Errorf("reading the token record: %w", err)), true
	}
	return rec, false, result{}, false
}

// settled returns the outcome when rec makes a token request needless: the grant needs a new
// sign-in, or rec holds a fresh token (one other than the refused one, after Renew).
func (r *refreshing) settled(rec project.Token, fromMemory bool, now time.Time) (result, bool) {
	if rec.State == project.TokenNeedsReauth {
		return r.b.reauth(r.name, rec.Reason, oauth.NeedsReauth), true
	}
	if r.b.fresh(rec, now) && (!r.force || !rec.AccessToken.Equal(r.mem.AccessToken)) {
		return result{tok: rec, pending: fromMemory && r.pending}, true
	}
	return result{}, false
}

// claim claims the refresh in the store (RefreshingBy, RefreshingUntil) with a check-and-set
// write, so that no two replicas redeem one refresh token. Under another replica's claim it keeps
// a valid token, or waits for the other's record. It returns rec as now stored.
func (r *refreshing) claim(rec project.Token, now time.Time, attempt int) (project.Token, step, result) {
	b := r.b
	if rec.RefreshingBy != "" && rec.RefreshingBy != b.opts.Instance && now.Before(rec.RefreshingUntil) {
		// Another replica is redeeming the refresh token: never redeem it too.
		// Look again soon: the other's refresh usually lands within a second.
		again := now.Add(claimRecheck)
		if rec.RefreshingUntil.Before(again) {
			again = rec.RefreshingUntil
		}
		switch {
		case b.valid(rec, now) && !(r.force && rec.AccessToken.Equal(r.mem.AccessToken)):
			return rec, stepDone, result{tok: rec, retryAt: again}
		case r.loaded && b.valid(r.mem, now) && !r.force:
			return rec, stepDone, result{tok: r.mem, retryAt: again}
		}
		if !backoff.Sleep(r.ctx, claimPoll) {
			return rec, stepDone, unavailable(r.name, fmt.Errorf("waiting for %s to refresh the token: %w", rec.RefreshingBy, r.ctx.Err()))
		}
		return rec, stepWait, result{}
	}
	claim := rec
	claim.RefreshingBy, claim.RefreshingUntil = b.opts.Instance, now.Add(b.opts.RefreshTimeout)
	wctx, cancel := context.WithTimeout(r.ctx, b.opts.StoreTimeout)
	v, werr := b.opts.Store.PutToken(wctx, r.name, claim)
	cancel()
	switch {
	case errors.Is(werr, store.ErrConflict) && attempt < maxAttempts:
		return rec, stepAgain, result{} // someone else wrote meanwhile: look again
	case werr != nil:
		r.log.Warn("could not claim the refresh in the store; refreshing unclaimed", "err", werr)
	default:
		rec.Version = v
		rec.RefreshingBy, rec.RefreshingUntil = claim.RefreshingBy, claim.RefreshingUntil
	}
	return rec, stepOn, result{}
}

// failed handles a refused or failed token request: a dead grant or client is recorded as
// needs_reauth in the store (again reports a write conflict: read the record again); anything
// else gives the claim up and backs off.
func (r *refreshing) failed(rec project.Token, fromMemory bool, err error, now time.Time, attempt int) (res result, again bool) {
	b := r.b
	kind := oauth.Classify(err)
	reason := oauth.Reason(err)
	switch kind {
	case oauth.NeedsReauth, oauth.BadClient:
		if kind == oauth.BadClient {
			reason = "the OAuth client is refused (check the client secret and the app registration; an administrator must fix it): " + reason
		}
		r.log.Error("the identity provider refused the grant: a new sign-in is needed", "kind", kind.String(), "reason", reason)
		if fromMemory {
			return b.reauth(r.name, reason, kind), false
		}
		marked := rec
		marked.RefreshingBy, marked.RefreshingUntil = "", time.Time{}
		marked.State, marked.Reason = project.TokenNeedsReauth, reason
		marked.RefreshedBy, marked.UpdatedAt = b.opts.Instance, now
		wctx, cancel := context.WithTimeout(r.ctx, b.opts.StoreTimeout)
		_, werr := b.opts.Store.PutToken(wctx, r.name, marked)
		cancel()
		if errors.Is(werr, store.ErrConflict) && attempt < maxAttempts {
			return result{}, true // someone else wrote meanwhile: look again
		}
		if werr != nil {
			r.log.Warn("could not record needs_reauth in the store", "err", werr)
		}
		return b.reauth(r.name, reason, kind), false
	default:
		r.log.Warn("refreshing the access token failed: backing off", "kind", kind.String(), "reason", reason)
		if !fromMemory && rec.RefreshingBy == b.opts.Instance {
			// Give the claim up, so another replica need not wait for it to lapse.
			released := rec
			released.RefreshingBy, released.RefreshingUntil = "", time.Time{}
			wctx, cancel := context.WithTimeout(r.ctx, b.opts.StoreTimeout)
			_, _ = b.opts.Store.PutToken(wctx, r.name, released)
			cancel()
		}
		return unavailable(r.name, fmt.Errorf("refreshing the access token: %w", err)), false
	}
}

// save writes the record of the new token tok, obtained from rec, with a check-and-set; a newer
// valid token found on a conflict is adopted instead. When the store cannot be written the new
// token is kept in memory, pending (step 5).
func (r *refreshing) save(rec project.Token, tok *oauth2.Token, now time.Time) result {
	b := r.b
	next := project.Token{
		AccessToken:  secretOf(tok.AccessToken),
		TokenType:    tok.TokenType,
		Expiry:       b.expiry(tok, now),
		RefreshToken: rec.RefreshToken,
		Account:      rec.Account,
		AccountID:    rec.AccountID,
		TenantID:     rec.TenantID,
		SignInNonce:  rec.SignInNonce,
		UsedSignIns:  rec.UsedSignIns,
		State:        project.TokenOK,
		RefreshedBy:  b.opts.Instance,
		UpdatedAt:    now,
		Version:      rec.Version,
	}
	rotated := tok.RefreshToken != "" && tok.RefreshToken != rec.RefreshToken.Reveal()
	if tok.RefreshToken != "" {
		next.RefreshToken = secretOf(tok.RefreshToken)
	}
	if next.Account == "" {
		next.Account, _ = oauth.Account(tok)
	}
	wctx, cancel := context.WithTimeout(r.ctx, b.opts.StoreTimeout)
	cur, werr := b.write(wctx, r.name, next)
	cancel()
	if werr != nil {
		r.log.Error("could not write the refreshed token to the store: keeping it in memory and retrying", "err", werr, "rotated", rotated)
		return result{tok: next, refreshed: true, pending: true}
	}
	r.log.Info("refreshed the access token", "expiry", cur.Expiry, "rotated", rotated, "adopted_other", !cur.AccessToken.Equal(next.AccessToken))
	return result{tok: cur, refreshed: true}
}

// request asks the token endpoint for a new token.
func (b *Broker) request(ctx context.Context, cfg *oauth2.Config, cc bool, rec project.Token) (*oauth2.Token, error) {
	ctx = oauth.WithHTTPClient(ctx, b.opts.HTTPClient)
	if cc {
		return oauth.ClientCredentials(ctx, cfg)
	}
	return oauth.Refresh(ctx, cfg, rec.RefreshToken)
}

// expiry takes the lifetime from expires_in against the broker's clock.
func (b *Broker) expiry(tok *oauth2.Token, now time.Time) time.Time {
	switch {
	case tok.ExpiresIn > 0:
		return now.Add(time.Duration(tok.ExpiresIn) * time.Second)
	case !tok.Expiry.IsZero():
		return tok.Expiry
	}
	return now.Add(defaultLifetime)
}
