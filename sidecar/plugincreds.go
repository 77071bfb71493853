package sidecar

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/emersion/go-sasl"

	"github.com/postern/postern/plugin"
	"github.com/postern/postern/sidecar/config"
	"github.com/postern/postern/sidecar/credential"
	"github.com/postern/postern/sidecar/project"
	"github.com/postern/postern/sidecar/secret"
	"github.com/postern/postern/sidecar/smtpd"
	"github.com/postern/postern/sidecar/upstream"
	"github.com/postern/postern/sidecar/xoauth2"
)

// pluginCacheFor is how long a credential without an expiry is reused before the provider is
// asked again; a refusal upstream asks again at once.
const pluginCacheFor = 5 * time.Minute

// pluginCredentials asks out-of-process credential providers (package plugin) for the credentials
// of projects with auth type plugin. Answers are cached until shortly before they expire, so a
// provider is asked once per credential, not once per message.
type pluginCredentials struct {
	providers map[string]plugin.Provider
	log       *slog.Logger
	now       func() time.Time

	mu    sync.Mutex
	cache map[string]pluginEntry
}

type pluginEntry struct {
	cred          plugin.Credential
	until         time.Time
	state, reason string
}

var _ smtpd.Credentials = (*pluginCredentials)(nil)

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

func (c *pluginCredentials) Credential(ctx context.Context, p project.Project, force bool) (upstream.Auth, error) {
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
		return upstream.Auth{}, &credential.ReauthError{Reason: reauth.Reason}
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

func (c *pluginCredentials) set(name string, e pluginEntry) {
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
func (c *pluginCredentials) Rejected(ctx context.Context, p project.Project, err error) {
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

// State is the last known state of a plugin project's credential.
func (c *pluginCredentials) State(p project.Project) (project.TokenState, string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if e, ok := c.cache[p.Name]; ok && e.state != "" {
		return project.TokenState(e.state), e.reason
	}
	return project.TokenOK, ""
}
