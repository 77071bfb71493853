// Package token owns the credentials of OAuth projects: the token broker keeps each project's
// access token in memory, refreshes it ahead of expiry, writes every rotated refresh token back to
// the store before using the new access token, and tracks whether a person must sign in again.
//
// How Credential serves one delivery:
//
//  1. A cached access token that is valid and not within Margin of expiry is returned at once: no
//     store read, no identity-provider call.
//  2. Within Margin, the still-valid token is returned at once and one refresh starts in the
//     background (one at a time per project). No delivery waits on a refresh.
//  3. Expired or missing: callers wait for a refresh; concurrent callers share one. Renew, after
//     the upstream refused a token, refreshes once per refused token: callers refused with the same
//     token share one refresh, a caller refused with a token already replaced gets the new one, and
//     a token that was renewed once is never renewed again.
//  4. A refresh reads the store record first. If another replica already wrote a newer valid
//     token, that one is used. If another replica has claimed the refresh (RefreshingBy, until
//     RefreshingUntil), this one keeps its valid token, or waits for the other's record, and never
//     redeems the refresh token itself. Otherwise it claims the refresh with a check-and-set
//     write, then the refresh token (or client credentials) goes to the token endpoint, and the new record — with the new refresh token — is written with a
//     check-and-set on the version read. On a conflict the record is read again: a valid newer
//     token there wins, else the write is retried on the new version. Only then is the new access
//     token cached and handed out.
//  5. If the store cannot be written the new token is kept in memory and the write is retried in
//     the background until it lands: a rotated refresh token is never dropped.
//  6. Failures: a revoked or expired grant (oauth.NeedsReauth) or a bad client secret
//     (oauth.BadClient) writes state needs_reauth with the provider's reason, keeps the refresh
//     token, and returns an error matching credential.ErrNeedsReauth. Anything else backs off,
//     keeps serving the current token while it is valid, and fails (ErrUnavailable) only when no
//     valid token exists.
//
// Rejected records an upstream's refusal of a token for Status, and Accepted clears it when the
// upstream takes the project's token again; Store saves a new grant from the sign-in callback and
// clears needs_reauth. The broker is the OAuth source of package credential, which calls Renew,
// Rejected and Accepted.
package token

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/emersion/go-sasl"
	"golang.org/x/oauth2"

	"github.com/postern/postern/sidecar/credential"
	"github.com/postern/postern/sidecar/oauth"
	"github.com/postern/postern/sidecar/project"
	"github.com/postern/postern/sidecar/secret"
	"github.com/postern/postern/sidecar/store"
	"github.com/postern/postern/sidecar/upstream"
	"github.com/postern/postern/sidecar/xoauth2"
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

// ErrUnavailable is matched by Credential's errors when no valid access token exists and none could
// be had for a reason that should pass (identity provider or store unreachable, backing off).
var ErrUnavailable = errors.New("no valid access token")

// Backoff is the one source of retry delays: Min after the first failure, doubling up to Max.
type Backoff struct {
	Min, Max time.Duration
}

// Delay is the wait after the given number of consecutive failures (1 or more).
func (b Backoff) Delay(failures int) time.Duration {
	if b.Min <= 0 {
		b.Min = time.Second
	}
	if b.Max < b.Min {
		b.Max = max(b.Min, 5*time.Minute)
	}
	d := b.Min
	for i := 1; i < failures && d < b.Max; i++ {
		d *= 2
	}
	return min(d, b.Max)
}

// Options configures a Broker. Store is required; every other zero value is a safe default.
type Options struct {
	// Store holds the token records.
	Store Store
	// Logger receives refreshes and failures (never a token). Nil discards.
	Logger *slog.Logger
	// Now is the clock; nil means time.Now.
	Now func() time.Time
	// Margin is how long before expiry a token is refreshed; zero means 10 minutes. For a token
	// that lives less than twice the margin, half its lifetime is used instead (lifetime: from the
	// record's UpdatedAt, when it was obtained, to its Expiry), so that a short-lived token is not
	// refreshed on every delivery.
	Margin time.Duration
	// Instance names this process in the records it writes (RefreshedBy).
	Instance string
	// HTTPClient makes the token requests; nil means http.DefaultClient.
	HTTPClient *http.Client
	// Backoff spaces retries of failed refreshes and of pending writes; zero means 1 s to 5 min.
	Backoff Backoff
	// ConfigFor derives a project's OAuth client; nil means oauth.ConfigFor without a redirect URL.
	ConfigFor func(*project.OAuth) (*oauth2.Config, error)
	// RefreshTimeout bounds one refresh (store read, token request, store write); zero means 30 s.
	RefreshTimeout time.Duration
	// StoreTimeout bounds each store call of a refresh (the read, each write), so that a store
	// that does not answer leaves time to refresh from memory and keep the new token pending;
	// zero means a third of RefreshTimeout.
	StoreTimeout time.Duration
}

const (
	// minValidity: a token expiring sooner than this is not handed out.
	minValidity = time.Minute
	// reauthRecheck spaces store re-reads of a project that needs re-authorisation.
	reauthRecheck = 30 * time.Second
	// defaultLifetime is assumed for a token response without expires_in.
	defaultLifetime = time.Hour
	// maxAttempts bounds the re-reads of one refresh after write conflicts.
	maxAttempts = 5
	// claimPoll is how often a replica waiting for another's refresh reads the record again.
	claimPoll = 250 * time.Millisecond
	// claimRecheck is how soon a replica that kept its token under another's claim looks again.
	claimRecheck = time.Second
)

// Broker is the credential source of OAuth projects. It is safe for concurrent use.
type Broker struct {
	opts   Options
	log    *slog.Logger
	ctx    context.Context // background work; cancelled by Close
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu      sync.Mutex
	closed  bool
	entries map[string]*entry

	waits   atomic.Int64 // Credential calls that waited for a refresh
	waiting atomic.Int64 // Credential calls waiting for a refresh now
}

// RefreshWaits returns how many Credential calls have waited for the identity provider: their
// token was expired or refused upstream. Refreshes ahead of expiry keep this at zero; reading a
// token from the store after a start does not count.
func (b *Broker) RefreshWaits() int64 { return b.waits.Load() }

// Waiting returns how many Credential calls are waiting for the identity provider now.
func (b *Broker) Waiting() int64 { return b.waiting.Load() }

// entry is one project's state. Fields are guarded by Broker.mu; io serialises the store writes
// of refreshes, pending-write retries and Store for the project.
type entry struct {
	name string
	io   sync.Mutex

	tok     project.Token // the current record, Version as last read or written
	loaded  bool
	pending bool // tok is not in the store yet
	writer  bool // a pending-write retry loop runs

	flight      *flight
	lastRefresh time.Time
	failures    int
	retryAt     time.Time
	lastErr     error
	lastErrAt   time.Time
	state       project.TokenState
	reason      string
	rejected    string
	rejectedAt  time.Time
	rejectedErr error
	// renewed identifies the last token Renew refreshed for (tokenID), so that no token is
	// renewed twice.
	renewed [sha256.Size]byte
}

type flight struct {
	done      chan struct{}
	tok       project.Token
	err       error
	refreshed bool // the identity provider was asked (not only the store read)
}

// New returns a broker. Call Close to stop its background work.
func New(opts Options) *Broker {
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.Margin <= 0 {
		opts.Margin = 10 * time.Minute
	}
	if opts.Backoff.Min <= 0 {
		opts.Backoff.Min = time.Second
	}
	if opts.Backoff.Max <= 0 {
		opts.Backoff.Max = 5 * time.Minute
	}
	if opts.ConfigFor == nil {
		opts.ConfigFor = func(o *project.OAuth) (*oauth2.Config, error) { return oauth.ConfigFor(o, "") }
	}
	if opts.RefreshTimeout <= 0 {
		opts.RefreshTimeout = 30 * time.Second
	}
	if opts.StoreTimeout <= 0 {
		opts.StoreTimeout = opts.RefreshTimeout / 3
	}
	ctx, cancel := context.WithCancel(context.Background())
	return &Broker{opts: opts, log: opts.Logger, ctx: ctx, cancel: cancel, entries: make(map[string]*entry)}
}

// Close stops background refreshes and write retries and waits for them. Rotated tokens whose
// write is still pending are logged, by project, as not written.
func (b *Broker) Close() {
	b.mu.Lock()
	b.closed = true
	b.mu.Unlock()
	b.cancel()
	b.wg.Wait()
	b.mu.Lock()
	defer b.mu.Unlock()
	for _, e := range b.entries {
		if e.pending {
			b.log.Error("closing with a rotated token not written to the store: the project may need a new sign-in", "project", e.name)
		}
	}
}

func (b *Broker) entryLocked(name string) *entry {
	e := b.entries[name]
	if e == nil {
		e = &entry{name: name}
		b.entries[name] = e
	}
	return e
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

// refresh runs steps 4-6 of the package comment; e.io is held.
func (b *Broker) refresh(ctx context.Context, e *entry, p project.Project, force bool) result {
	name := p.Name
	log := b.log.With("project", name)
	b.mu.Lock()
	mem, loaded, pending := e.tok, e.loaded, e.pending
	b.mu.Unlock()
	cc := p.Auth.OAuth.Grant == oauth.GrantClientCredentials

	cfg, err := b.opts.ConfigFor(p.Auth.OAuth)
	if err != nil {
		return b.reauth(name, "the project's OAuth settings are unusable: "+err.Error(), oauth.BadClient)
	}

	if pending {
		// A rotated token waits for the store: write it first, so the record read below is ours.
		wctx, cancel := context.WithTimeout(ctx, b.opts.StoreTimeout)
		cur, werr := b.write(wctx, name, mem)
		cancel()
		if werr == nil {
			b.mu.Lock()
			e.tok, e.pending, mem = cur, false, cur
			b.mu.Unlock()
			pending = false
		}
	}

	for attempt := 1; ; attempt++ {
		now := b.opts.Now()
		var rec project.Token
		fromMemory := false
		if pending {
			rec, fromMemory = mem, true
		} else {
			rctx, cancel := context.WithTimeout(ctx, b.opts.StoreTimeout)
			rec, err = b.opts.Store.Token(rctx, name)
			cancel()
			switch {
			case errors.Is(err, store.ErrNotFound) && cc:
				rec = project.Token{}
			case errors.Is(err, store.ErrNotFound):
				return b.reauth(name, "the mailbox has not been signed in yet", oauth.NeedsReauth)
			case err != nil && loaded && (cc || !mem.RefreshToken.IsZero()):
				log.Warn("token store unreachable: refreshing from memory", "err", err)
				rec, fromMemory = mem, true
			case err != nil:
				return unavailable(name, fmt.Errorf("reading the token record: %w", err))
			}
		}

		if rec.State == project.TokenNeedsReauth {
			return b.reauth(name, rec.Reason, oauth.NeedsReauth)
		}
		if b.fresh(rec, now) && (!force || !rec.AccessToken.Equal(mem.AccessToken)) {
			return result{tok: rec, pending: fromMemory && pending}
		}

		if !fromMemory && !cc {
			if rec.RefreshingBy != "" && rec.RefreshingBy != b.opts.Instance && now.Before(rec.RefreshingUntil) {
				// Another replica is redeeming the refresh token: never redeem it too.
				// Look again soon: the other's refresh usually lands within a second.
				again := now.Add(claimRecheck)
				if rec.RefreshingUntil.Before(again) {
					again = rec.RefreshingUntil
				}
				switch {
				case b.valid(rec, now) && !(force && rec.AccessToken.Equal(mem.AccessToken)):
					return result{tok: rec, retryAt: again}
				case loaded && b.valid(mem, now) && !force:
					return result{tok: mem, retryAt: again}
				}
				select {
				case <-ctx.Done():
					return unavailable(name, fmt.Errorf("waiting for %s to refresh the token: %w", rec.RefreshingBy, ctx.Err()))
				case <-time.After(claimPoll):
				}
				attempt--
				continue
			}
			claim := rec
			claim.RefreshingBy, claim.RefreshingUntil = b.opts.Instance, now.Add(b.opts.RefreshTimeout)
			wctx, cancel := context.WithTimeout(ctx, b.opts.StoreTimeout)
			v, werr := b.opts.Store.PutToken(wctx, name, claim)
			cancel()
			switch {
			case errors.Is(werr, store.ErrConflict) && attempt < maxAttempts:
				continue // someone else wrote meanwhile: look again
			case werr != nil:
				log.Warn("could not claim the refresh in the store; refreshing unclaimed", "err", werr)
			default:
				rec.Version = v
				rec.RefreshingBy, rec.RefreshingUntil = claim.RefreshingBy, claim.RefreshingUntil
			}
		}

		tok, err := b.request(ctx, cfg, cc, rec)
		if err != nil {
			kind := oauth.Classify(err)
			reason := oauth.Reason(err)
			switch kind {
			case oauth.NeedsReauth, oauth.BadClient:
				if kind == oauth.BadClient {
					reason = "the OAuth client is refused (check the client secret and the app registration; an administrator must fix it): " + reason
				}
				log.Error("the identity provider refused the grant: a new sign-in is needed", "kind", kind.String(), "reason", reason)
				if fromMemory {
					return b.reauth(name, reason, kind)
				}
				marked := rec
				marked.RefreshingBy, marked.RefreshingUntil = "", time.Time{}
				marked.State, marked.Reason = project.TokenNeedsReauth, reason
				marked.RefreshedBy, marked.UpdatedAt = b.opts.Instance, now
				wctx, cancel := context.WithTimeout(ctx, b.opts.StoreTimeout)
				_, werr := b.opts.Store.PutToken(wctx, name, marked)
				cancel()
				if errors.Is(werr, store.ErrConflict) && attempt < maxAttempts {
					continue // someone else wrote meanwhile: look again
				}
				if werr != nil {
					log.Warn("could not record needs_reauth in the store", "err", werr)
				}
				return b.reauth(name, reason, kind)
			default:
				log.Warn("refreshing the access token failed: backing off", "kind", kind.String(), "reason", reason)
				if !fromMemory && rec.RefreshingBy == b.opts.Instance {
					// Give the claim up, so another replica need not wait for it to lapse.
					released := rec
					released.RefreshingBy, released.RefreshingUntil = "", time.Time{}
					wctx, cancel := context.WithTimeout(ctx, b.opts.StoreTimeout)
					_, _ = b.opts.Store.PutToken(wctx, name, released)
					cancel()
				}
				return unavailable(name, fmt.Errorf("refreshing the access token: %w", err))
			}
		}

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
		wctx, cancel := context.WithTimeout(ctx, b.opts.StoreTimeout)
		cur, werr := b.write(wctx, name, next)
		cancel()
		if werr != nil {
			log.Error("could not write the refreshed token to the store: keeping it in memory and retrying", "err", werr, "rotated", rotated)
			return result{tok: next, refreshed: true, pending: true}
		}
		log.Info("refreshed the access token", "expiry", cur.Expiry, "rotated", rotated, "adopted_other", !cur.AccessToken.Equal(next.AccessToken))
		return result{tok: cur, refreshed: true}
	}
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

func secretOf(s string) secret.Secret { return secret.New(s) }

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
