package credential

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/postern/postern/plugin"
	"github.com/postern/postern/sidecar/project"
	"github.com/postern/postern/sidecar/upstream"
)

// countingProvider is a plugin.Provider in memory.
type countingProvider struct {
	mu       sync.Mutex
	calls    []plugin.Request
	rejected []plugin.RejectedRequest
	answer   func(plugin.Request) (plugin.Credential, error)
}

func (c *countingProvider) Credential(_ context.Context, r plugin.Request) (plugin.Credential, error) {
	c.mu.Lock()
	c.calls = append(c.calls, r)
	c.mu.Unlock()
	return c.answer(r)
}

func (c *countingProvider) Rejected(_ context.Context, r plugin.RejectedRequest) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.rejected = append(c.rejected, r)
	return nil
}

func pluginProject() project.Project {
	return project.Project{Name: "acme", Auth: project.Auth{Type: project.AuthPlugin, Username: "noreply@acme.example",
		Plugin: &project.PluginAuth{Provider: "vault-of-acme", Config: map[string]string{"path": "acme"}}}}
}

func TestPluginCredentialsCacheAndErrors(t *testing.T) {
	t.Parallel()
	now := time.Date(2026, 11, 1, 12, 0, 0, 0, time.UTC)
	prov := &countingProvider{answer: func(r plugin.Request) (plugin.Credential, error) {
		return plugin.Credential{Mechanism: "plain", Username: r.Username, Secret: plugin.NewSecret("pw-from-provider")}, nil
	}}
	c := NewPlugins(map[string]plugin.Provider{"vault-of-acme": prov}, nil, func() time.Time { return now })
	p := pluginProject()

	for range 3 {
		a, err := c.Credential(context.Background(), p)
		if err != nil || a.Mechanism != "PLAIN" || a.Username != "noreply@acme.example" || a.Secret.Reveal() != "pw-from-provider" {
			t.Fatalf("credential %+v, %v", a, err)
		}
	}
	if len(prov.calls) != 1 || prov.calls[0].Config["path"] != "acme" {
		t.Fatalf("provider asked %d times (%+v), want once", len(prov.calls), prov.calls)
	}
	now = now.Add(pluginCacheFor + time.Second)
	refused, _ := c.Credential(context.Background(), p)
	if _, err := c.Renew(context.Background(), p, refused); err != nil {
		t.Fatal(err)
	}
	if len(prov.calls) != 3 || !prov.calls[2].ForceRefresh {
		t.Fatalf("after expiry and force: %d calls %+v", len(prov.calls), prov.calls)
	}

	c.Rejected(context.Background(), p, &upstream.Error{Stage: upstream.StageAuth, Code: 535, Message: "5.7.3 Authentication unsuccessful"})
	if len(prov.rejected) != 1 || !strings.HasPrefix(prov.rejected[0].Reply, "535") {
		t.Fatalf("rejected: %+v", prov.rejected)
	}

	prov.answer = func(plugin.Request) (plugin.Credential, error) {
		return plugin.Credential{}, &plugin.NeedsReauthError{Reason: "certificate expired"}
	}
	_, err := c.Credential(context.Background(), p)
	if !errors.Is(err, ErrNeedsReauth) || Reason(err) != "certificate expired" {
		t.Fatalf("needs reauth: %v", err)
	}
	if st, why := c.State(context.Background(), p); st != project.TokenNeedsReauth || why != "certificate expired" {
		t.Fatalf("state %s %q", st, why)
	}
	prov.answer = func(plugin.Request) (plugin.Credential, error) {
		return plugin.Credential{}, &plugin.TemporaryError{Reason: "backend down"}
	}
	if _, err := c.Credential(context.Background(), p); err == nil || errors.Is(err, ErrNeedsReauth) {
		t.Fatalf("temporary: %v", err)
	}
	other := p
	other.Auth.Plugin = &project.PluginAuth{Provider: "undeclared"}
	if _, err := c.Credential(context.Background(), other); err == nil || !strings.Contains(err.Error(), "credential_providers") {
		t.Fatalf("undeclared provider: %v", err)
	}
}
