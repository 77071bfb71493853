package sidecar

import (
	"context"
	"log/slog"
	"time"

	"github.com/postern/postern/sidecar/cli"
	"github.com/postern/postern/sidecar/config"
	"github.com/postern/postern/sidecar/credential"
	"github.com/postern/postern/sidecar/project"
	"github.com/postern/postern/sidecar/smtpd"
	"github.com/postern/postern/sidecar/store"
	"github.com/postern/postern/sidecar/token"
	"github.com/postern/postern/sidecar/upstream"
)

// credentials hands each project's sign-in to the source for its auth type: the project's own
// username and password for basic auth, the token broker for OAuth.
type credentials struct {
	basic   credential.Basic
	broker  *token.Broker
	plugins *pluginCredentials
}

var _ smtpd.Credentials = (*credentials)(nil)

// newCredentials makes the credentials of the projects in st: their passwords, the OAuth token
// broker and the declared credential providers. close stops the broker and the providers.
func newCredentials(ctx context.Context, cfg *config.Config, st store.Store, log *slog.Logger) (c *credentials, close func()) {
	broker := token.New(token.Options{Store: st, Instance: cfg.Instance, Margin: cfg.Tokens.RefreshMargin, HTTPClient: cli.OAuthHTTPClient(cfg), Logger: log.With("component", "token")})
	providers, closeProviders := openProviders(ctx, cfg.CredentialProviders, log.With("component", "plugin"))
	c = &credentials{
		basic:   credential.Basic{Logger: log.With("component", "credential")},
		broker:  broker,
		plugins: &pluginCredentials{providers: providers, log: log.With("component", "plugin"), now: time.Now, cache: map[string]pluginEntry{}},
	}
	return c, func() {
		closeProviders()
		broker.Close()
	}
}

func (c *credentials) source(p project.Project) smtpd.Credentials {
	switch p.Auth.Type {
	case project.AuthOAuth2:
		return c.broker
	case project.AuthPlugin:
		return c.plugins
	}
	return c.basic
}

func (c *credentials) Credential(ctx context.Context, p project.Project, force bool) (upstream.Auth, error) {
	return c.source(p).Credential(ctx, p, force)
}

func (c *credentials) Rejected(ctx context.Context, p project.Project, err error) {
	c.source(p).Rejected(ctx, p, err)
}

// State is the credential's health as the milter and status page see it.
func (c *credentials) State(p project.Project) (project.TokenState, string) {
	switch p.Auth.Type {
	case project.AuthPlugin:
		return c.plugins.State(p)
	case project.AuthOAuth2:
	default:
		return project.TokenOK, ""
	}
	ctx, cancel := context.WithTimeout(context.Background(), observeTimeout)
	defer cancel()
	_ = c.broker.Observe(ctx, p) // a store read the first time only; a failure leaves the state unknown
	s := c.broker.Status(p.Name)
	return s.State, s.Reason
}

// observeTimeout bounds the one store read that teaches the broker a project's stored state.
const observeTimeout = 5 * time.Second
