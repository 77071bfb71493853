package sidecar

import (
	"context"
	"log/slog"

	"github.com/postern/postern/sidecar/config"
	"github.com/postern/postern/sidecar/project"
	"github.com/postern/postern/sidecar/signin"
	"github.com/postern/postern/sidecar/store"
	"github.com/postern/postern/sidecar/token"
	"github.com/postern/postern/sidecar/upstream"
)

// Parts are what every command builds from the configuration, once and the same way: `postern
// serve` (Run), `check`, `send-test` and `authorize` all sign in to an upstream through them.
type Parts struct {
	// Store holds the projects and the token records. Parts does not close it.
	Store store.Store
	// Broker is the OAuth token broker over Store.
	Broker *token.Broker
	// Credentials hands each project's sign-in to the source for its auth type.
	Credentials *credentials
	// Pools are the upstream connections deliveries use.
	Pools *upstream.Pools

	// checks are pools of their own for sign-in checks, so that a check always opens a new
	// connection and signs in with the credential it is given.
	checks      *upstream.Pools
	closeCreds  func()
	closedPools bool
}

// NewParts builds the parts over st: the credential sources (basic, the OAuth token broker, the
// declared credential providers, which start here) and the upstream pools. Close stops them; st
// stays open.
func NewParts(ctx context.Context, cfg *config.Config, st store.Store, log *slog.Logger) *Parts {
	creds, closeCreds := newCredentials(ctx, cfg, st, log)
	return &Parts{
		Store:       st,
		Broker:      creds.broker,
		Credentials: creds,
		Pools:       upstream.NewPools(UpstreamOptions(cfg, log.With("component", "upstream"))),
		checks:      upstream.NewPools(UpstreamOptions(cfg, log.With("component", "signin"))),
		closeCreds:  closeCreds,
	}
}

// ClosePools closes the upstream connections (QUIT to each); Run calls it after the transactions
// in flight have finished, before the rest.
func (p *Parts) ClosePools() error {
	if p.closedPools {
		return nil
	}
	p.closedPools = true
	err := p.Pools.Close()
	p.checks.Close()
	return err
}

// Close closes the upstream connections, stops the credential providers and the token broker.
func (p *Parts) Close() {
	_ = p.ClosePools()
	p.closeCreds()
}

// SignInCheck signs in to p's upstream on a new connection with the credential the project has
// now (after a sign-in, the new access token) and closes the connection without sending mail.
func (p *Parts) SignInCheck(ctx context.Context, pr project.Project) error {
	return signin.UpstreamCheck(p.checks, p.Credentials)(ctx, pr)
}
