package sidecar

import (
	"context"
	"log/slog"

	"github.com/postern/postern/plugin"
	"github.com/postern/postern/sidecar/config"
	"github.com/postern/postern/sidecar/credential"
	"github.com/postern/postern/sidecar/limits"
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
	// Credentials is the one sign-in to an upstream, over the source for each auth type.
	Credentials *credential.Manager
	// Pools are the upstream connections deliveries use, each project's within Limits' share.
	Pools *upstream.Pools
	// Limits enforce this replica's share of every project's limits (limits.replicas).
	Limits *limits.Limiter

	// checks are pools of their own for sign-in checks, so that a check always opens a new
	// connection and signs in with the credential it is given.
	checks         *upstream.Pools
	closeProviders func()
	closedPools    bool
}

// NewParts builds the parts over st: the credential sources (basic, the OAuth token broker, the
// declared credential providers, which start here) and the upstream pools. Close stops them; st
// stays open.
func NewParts(ctx context.Context, cfg *config.Config, st store.Store, log *slog.Logger) *Parts {
	broker := token.New(token.Options{Store: st, Instance: cfg.Instance, Margin: cfg.Tokens.RefreshMargin, HTTPClient: OAuthHTTPClient(cfg), Logger: log.With("component", "token")})
	providers, closeProviders := openProviders(ctx, cfg.CredentialProviders, log.With("component", "plugin"))
	creds := credential.New(credential.Options{
		OAuth:  broker,
		Plugin: credential.NewPlugins(providers, log.With("component", "plugin"), nil),
		Logger: log.With("component", "credential"),
	})
	lim := limits.New(limits.Options{Replicas: cfg.Limits.Replicas, QuotaPause: cfg.Limits.QuotaPause})
	deliveries := UpstreamOptions(cfg, log.With("component", "upstream"))
	deliveries.Connections = lim.Connections
	return &Parts{
		Store:          st,
		Broker:         broker,
		Credentials:    creds,
		Limits:         lim,
		Pools:          upstream.NewPools(deliveries),
		checks:         upstream.NewPools(UpstreamOptions(cfg, log.With("component", "signin"))),
		closeProviders: closeProviders,
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
	p.closeProviders()
	p.Broker.Close()
}

// SignInCheck signs in to p's upstream on a new connection with the credential the project has
// now (after a sign-in, the new access token) and closes the connection without sending mail.
func (p *Parts) SignInCheck(ctx context.Context, pr project.Project) error {
	return signin.UpstreamCheck(p.checks, p.Credentials)(ctx, pr)
}

// openProviders starts every declared provider. A provider that cannot start is logged and left
// out: its projects' mail waits (4xx) rather than Postern refusing to serve everyone.
func openProviders(ctx context.Context, decl map[string]config.CredentialProvider, log *slog.Logger) (map[string]plugin.Provider, func()) {
	hosts := map[string]plugin.Provider{}
	var open []*plugin.Host
	for name, d := range decl {
		h, err := plugin.Open(ctx, plugin.HostOptions{
			Path: d.Path, SHA256: d.SHA256, Args: d.Args, Env: d.Env, StartTimeout: d.StartTimeout, CallTimeout: d.CallTimeout,
			Logger: log.With("provider", name),
		})
		if err != nil {
			log.Error("credential provider did not start; its projects' mail waits", "provider", name, "err", err)
			continue
		}
		hosts[name] = h
		open = append(open, h)
	}
	return hosts, func() {
		for _, h := range open {
			h.Close()
		}
	}
}
