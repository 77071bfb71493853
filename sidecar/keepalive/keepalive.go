// Package keepalive keeps idle OAuth grants alive. A refresh token that is never redeemed dies
// of inactivity (Microsoft: after 90 days), and a project that sends no mail never refreshes its
// access token, so a quiet client would find its mailbox signed out on the day it sends again.
//
// The flow:
//
//  1. Run sweeps the projects every Options.Every (default 1h), each wait jittered by up to a
//     tenth either way, so that replicas sharing a store do not sweep in step.
//  2. A project is due (Sweep) when it is not removed, signs in with OAuth and a refresh token
//     (authorization code or device code; client credentials have none), its token record is in
//     state ok, and the record was last written (UpdatedAt) at least Options.Interval ago, less a
//     jitter of up to a tenth of it that is fixed per project, so that projects signed in
//     together are not refreshed together. The record is shared by every replica: a refresh by
//     any of them, for a delivery or to keep the grant alive, restarts every replica's count.
//  3. Due projects are refreshed through the token broker (Refresher: token.Broker.Refresh), the
//     same single refresh per project, claim and check-and-set write as for a delivery, at most
//     Options.Concurrency at once.
//  4. Each refresh is logged with the project; a failure is logged and tried again at the next
//     sweep, and a grant that needs a person to sign in again is logged as such (the broker has
//     recorded it for the status page).
package keepalive

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"log/slog"
	"math/rand/v2"
	"sync"
	"time"

	"github.com/postern/postern/sidecar/credential"
	"github.com/postern/postern/sidecar/oauth"
	"github.com/postern/postern/sidecar/project"
	"github.com/postern/postern/sidecar/token"
)

// Tokens reads token records (store.Tokens).
type Tokens interface {
	Token(ctx context.Context, name string) (project.Token, error)
}

// Refresher redeems a project's refresh token now (*token.Broker). refreshed reports whether the
// identity provider was asked (false: another replica's newer token was taken).
type Refresher interface {
	Refresh(ctx context.Context, p project.Project) (refreshed bool, err error)
}

var _ Refresher = (*token.Broker)(nil)

// Defaults of Options.
const (
	DefaultInterval    = 7 * 24 * time.Hour
	DefaultEvery       = time.Hour
	DefaultConcurrency = 4
	// refreshTimeout bounds one project's keep-alive refresh.
	refreshTimeout = time.Minute
)

// Options configure a Keeper. Projects, Tokens and Refresher are required.
type Options struct {
	// Projects returns the projects as they are now (*directory.Directory.Projects).
	Projects func() []project.Project
	// Tokens reads the token records, for when each was last written.
	Tokens Tokens
	// Refresher refreshes a due project.
	Refresher Refresher
	// Interval is how long a grant may stay unused before it is refreshed (tokens.keepalive_interval).
	// Default DefaultInterval.
	Interval time.Duration
	// Every is how often the projects are swept. Default DefaultEvery.
	Every time.Duration
	// Concurrency bounds the refreshes running at once. Default DefaultConcurrency.
	Concurrency int
	// Now is the clock; nil means time.Now.
	Now func() time.Time
	// Logger receives what each sweep did. Nil discards.
	Logger *slog.Logger
}

// Keeper refreshes idle grants.
type Keeper struct {
	opts Options
	log  *slog.Logger
}

// New checks opts and returns a Keeper, or every problem at once.
func New(opts Options) (*Keeper, error) {
	var errs []error
	if opts.Projects == nil {
		errs = append(errs, errors.New("keepalive: Projects is required"))
	}
	if opts.Tokens == nil {
		errs = append(errs, errors.New("keepalive: Tokens is required"))
	}
	if opts.Refresher == nil {
		errs = append(errs, errors.New("keepalive: Refresher is required"))
	}
	if opts.Interval < 0 || opts.Every < 0 || opts.Concurrency < 0 {
		errs = append(errs, errors.New("keepalive: Interval, Every and Concurrency must not be negative"))
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	if opts.Interval == 0 {
		opts.Interval = DefaultInterval
	}
	if opts.Every == 0 {
		opts.Every = DefaultEvery
	}
	if opts.Concurrency == 0 {
		opts.Concurrency = DefaultConcurrency
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	return &Keeper{opts: opts, log: opts.Logger}, nil
}

// Run sweeps every Options.Every, jittered, until ctx ends.
func (k *Keeper) Run(ctx context.Context) {
	for {
		wait := time.Duration(float64(k.opts.Every) * (0.9 + 0.2*rand.Float64()))
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
		k.Sweep(ctx)
	}
}

// Result is what one sweep did.
type Result struct {
	// Due counts the projects whose grant had been idle for the interval.
	Due int
	// Refreshed counts those whose refresh token was redeemed (or that took another replica's
	// newer token); Failed those whose refresh failed.
	Refreshed, Failed int
}

// Sweep refreshes every due project (step 2 of the package comment) and returns what it did.
func (k *Keeper) Sweep(ctx context.Context) Result {
	now := k.opts.Now()
	var due []project.Project
	for _, p := range k.opts.Projects() {
		if !refreshable(p) {
			continue
		}
		t, err := k.opts.Tokens.Token(ctx, p.Name)
		if err != nil {
			// Not signed in, or the store is not answering: nothing to keep alive now.
			continue
		}
		if t.State != project.TokenOK || t.RefreshToken.IsZero() || t.UpdatedAt.IsZero() {
			continue
		}
		if idle := now.Sub(t.UpdatedAt); idle >= k.opts.Interval-k.jitter(p.Name) {
			due = append(due, p)
		}
	}
	var res Result
	res.Due = len(due)
	if len(due) == 0 {
		return res
	}
	var mu sync.Mutex
	var wg sync.WaitGroup
	sem := make(chan struct{}, k.opts.Concurrency)
	for _, p := range due {
		select {
		case sem <- struct{}{}:
		case <-ctx.Done():
			wg.Wait()
			return res
		}
		wg.Go(func() {
			defer func() { <-sem }()
			err := k.refresh(ctx, p)
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				res.Failed++
			} else {
				res.Refreshed++
			}
		})
	}
	wg.Wait()
	k.log.Info("kept idle OAuth grants alive", "due", res.Due, "refreshed", res.Refreshed, "failed", res.Failed)
	return res
}

func (k *Keeper) refresh(ctx context.Context, p project.Project) error {
	ctx, cancel := context.WithTimeout(ctx, refreshTimeout)
	defer cancel()
	log := k.log.With("project", p.Name)
	refreshed, err := k.opts.Refresher.Refresh(ctx, p)
	switch {
	case errors.Is(err, credential.ErrNeedsReauth):
		log.Warn("keep-alive: the grant needs the mailbox owner to sign in again", "err", err)
	case err != nil:
		log.Warn("keep-alive refresh failed; trying again at the next sweep", "err", err)
	case refreshed:
		log.Info("keep-alive: refreshed an idle grant", "idle_for_at_least", k.opts.Interval-k.jitter(p.Name))
	default:
		log.Info("keep-alive: another replica refreshed the grant meanwhile")
	}
	if err != nil {
		return fmt.Errorf("project %s: %w", p.Name, err)
	}
	return nil
}

// jitter is how much earlier than Interval the project is due: up to a tenth of it, fixed per
// project.
func (k *Keeper) jitter(name string) time.Duration {
	h := fnv.New64a()
	h.Write([]byte(name))
	return time.Duration(h.Sum64() % uint64(k.opts.Interval/10+1))
}

// refreshable reports whether p holds a grant with a refresh token that can die of inactivity.
func refreshable(p project.Project) bool {
	if p.IsRemoved() || p.Auth.Type != project.AuthOAuth2 || p.Auth.OAuth == nil {
		return false
	}
	return p.Auth.OAuth.Grant != oauth.GrantClientCredentials
}
