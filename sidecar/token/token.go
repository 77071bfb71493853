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
//
// The files follow the steps: token.go holds the options and the broker's state, broker.go
// serves Credential and Renew from the cache (steps 1-3), refresh.go runs one refresh (steps 4
// and 6), write.go writes records back (the check-and-set, pending writes of step 5, Store) and
// state.go answers what the status page, the milter and metrics ask.
package token

import (
	"context"
	"crypto/sha256"
	"errors"
	"log/slog"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/oauth2"

	"github.com/postern/postern/sidecar/backoff"
	"github.com/postern/postern/sidecar/oauth"
	"github.com/postern/postern/sidecar/project"
)

// DefaultMargin is the refresh margin of the zero Options, and the configuration's default
// (tokens.refresh_margin). Microsoft's high-volume service refuses tokens close to expiry.
const DefaultMargin = 10 * time.Minute

// ErrUnavailable is matched by Credential's errors when no valid access token exists and none could
// be had for a reason that should pass (identity provider or store unreachable, backing off).
var ErrUnavailable = errors.New("no valid access token")

// Backoff spaces retries: Min after the first failure, doubling up to Max. It is the sidecar's
// one backoff (package backoff).
type Backoff = backoff.Doubling

// Options configures a Broker. Store is required; every other zero value is a safe default.
type Options struct {
	// Store holds the token records.
	Store Store
	// Logger receives refreshes and failures (never a token). Nil discards.
	Logger *slog.Logger
	// Now is the clock; nil means time.Now.
	Now func() time.Time
	// Margin is how long before expiry a token is refreshed; zero means DefaultMargin. For a token
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

// New returns a broker. Call Close to stop its background work.
func New(opts Options) *Broker {
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.Margin <= 0 {
		opts.Margin = DefaultMargin
	}
	if opts.Backoff.Min <= 0 {
		opts.Backoff.Min = backoff.DefaultMin
	}
	if opts.Backoff.Max <= 0 {
		opts.Backoff.Max = backoff.DefaultMax
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
