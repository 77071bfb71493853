package credential

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/emersion/go-sasl"

	"github.com/postern/postern/plugin"
	"github.com/postern/postern/sidecar/project"
	"github.com/postern/postern/sidecar/secret"
	"github.com/postern/postern/sidecar/upstream"
	"github.com/postern/postern/sidecar/xoauth2"
)

// pluginCacheFor is how long a credential without an expiry is reused before the provider is
// asked again; a refusal upstream asks again at once.
const pluginCacheFor = 5 * time.Minute

// Plugins is the source of projects with auth type plugin: it asks out-of-process credential
// providers (package plugin). Answers are cached until shortly before they expire, so a provider
// is asked once per credential, not once per message.
type Plugins struct {
	providers map[string]plugin.Provider
	log       *slog.Logger
	now       func() time.Time

	mu      sync.Mutex
	cache   map[string]pluginEntry
	renewed map[string][sha256.Size]byte // by project: the last credential renewed after a refusal
}

type pluginEntry struct {
	cred          plugin.Credential
	until         time.Time
	state, reason string
}

var (
	_ Source  = (*Plugins)(nil)
	_ Renewer = (*Plugins)(nil)
	_ Stater  = (*Plugins)(nil)
)

// NewPlugins returns the source over the started providers, by the name projects give in
// auth.plugin.provider. A nil log discards; a nil now is time.Now.
func NewPlugins(providers map[string]plugin.Provider, log *slog.Logger, now func() time.Time) *Plugins {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if now == nil {
		now = time.Now
	}
	return &Plugins{providers: providers, log: log, now: now, cache: map[string]pluginEntry{}, renewed: map[string][sha256.Size]byte{}}
}

// Credential returns p's cached credential, or asks its provider.
func (c *Plugins) Credential(ctx context.Context, p project.Project) (upstream.Auth, error) {
	return c.credential(ctx, p, false)
}

// Renew asks p's provider for a fresh credential (ForceRefresh) after the upstream refused
// refused, once per refused credential: when the cache holds another one already, that one is
// returned; a credential renewed once is returned as it is.
func (c *Plugins) Renew(ctx context.Context, p project.Project, refused upstream.Auth) (upstream.Auth, error) {
	id := sha256.Sum256([]byte(refused.Secret.Reveal()))
	now := c.now()
	c.mu.Lock()
	e, cached := c.cache[p.Name]
	if cached && e.state == "" && now.Before(e.until) {
		if a := pluginAuth(e.cred); !a.Secret.Equal(refused.Secret) {
			c.mu.Unlock()
			return a, nil
		}
	}
	if c.renewed[p.Name] == id {
		c.mu.Unlock()
		return refused, nil
	}
	c.renewed[p.Name] = id
	c.mu.Unlock()
	return c.credential(ctx, p, true)
}

func (c *Plugins) credential(ctx context.Context, p project.Project, force bool) (upstream.Auth, error) {
	pa := p.Auth.Plugin
	if pa == nil {
		return upstream.Auth{}, fmt.Errorf("project %q: auth type plugin without auth.plugin", p.Name)
	}
	prov, ok := c.providers[pa.Provider]
	if !ok {
		return upstream.Auth{}, fmt.Errorf("project %q: credential provider %q is not declared in credential_providers, or did not start", p.Name, pa.Provider)
	}
	now := c.now()
	c.mu.Lock()
	e, cached := c.cache[p.Name]
	c.mu.Unlock()
	if cached && !force && e.state == "" && now.Before(e.until) {
		return pluginAuth(e.cred), nil
	}
	cred, err := prov.Credential(ctx, plugin.Request{Project: p.Name, Username: p.Auth.Username, Config: pa.Config, ForceRefresh: force})
	var reauth *plugin.NeedsReauthError
	switch {
	case errors.As(err, &reauth):
		c.set(p.Name, pluginEntry{state: string(project.TokenNeedsReauth), reason: reauth.Reason})
		return upstream.Auth{}, &ReauthError{Reason: reauth.Reason}
	case err != nil:
		return upstream.Auth{}, fmt.Errorf("project %q: credential provider %q: %w", p.Name, pa.Provider, err)
	}
	until := now.Add(pluginCacheFor)
	if !cred.Expiry.IsZero() {
		until = cred.Expiry.Add(-time.Minute)
	}
	c.set(p.Name, pluginEntry{cred: cred, until: until})
	return pluginAuth(cred), nil
}

func (c *Plugins) set(name string, e pluginEntry) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.cache[name] = e
}

func pluginAuth(cred plugin.Credential) upstream.Auth {
	tok := secret.New(cred.Secret.Reveal())
	a := upstream.Auth{Mechanism: strings.ToUpper(cred.Mechanism), Username: cred.Username, Secret: tok}
	if a.Mechanism == xoauth2.Mechanism {
		user := cred.Username
		a.SASL = func() sasl.Client { return xoauth2.NewClient(user, tok) }
	}
	return a
}

// Rejected tells the provider the upstream refused its credential and forgets the cached one.
func (c *Plugins) Rejected(ctx context.Context, p project.Project, err error) {
	c.mu.Lock()
	e := c.cache[p.Name]
	delete(c.cache, p.Name)
	c.mu.Unlock()
	pa := p.Auth.Plugin
	if pa == nil {
		return
	}
	prov, ok := c.providers[pa.Provider]
	if !ok {
		return
	}
	reply := ""
	var ue *upstream.Error
	if errors.As(err, &ue) {
		reply = strings.TrimSpace(fmt.Sprintf("%d %s", ue.Code, ue.Message))
	}
	if rerr := prov.Rejected(ctx, plugin.RejectedRequest{Project: p.Name, Username: p.Auth.Username, Config: pa.Config, Mechanism: e.cred.Mechanism, Reply: reply}); rerr != nil {
		c.log.Warn("telling the credential provider of a refusal failed", "project", p.Name, "provider", pa.Provider, "err", rerr)
	}
}

// Accepted does nothing: a provider hears only of refusals.
func (c *Plugins) Accepted(context.Context, project.Project) {}

// State is the last known state of a plugin project's credential.
func (c *Plugins) State(_ context.Context, p project.Project) (project.TokenState, string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if e, ok := c.cache[p.Name]; ok && e.state != "" {
		return project.TokenState(e.state), e.reason
	}
	return project.TokenOK, ""
}
