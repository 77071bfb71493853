package plugin_test

import (
	"context"
	"errors"
	"log/slog"
	"os"
	"time"

	"github.com/postern/postern/plugin"
)

// corporateVault stands in for a provider's own backend.
type corporateVault struct{}

func (corporateVault) Credential(ctx context.Context, req plugin.Request) (plugin.Credential, error) {
	if req.Config["vault_path"] == "" {
		return plugin.Credential{}, &plugin.NeedsReauthError{Reason: "config has no vault_path"}
	}
	// Ask the backend here, honouring ctx.
	return plugin.Credential{
		Mechanism: plugin.MechanismXOAuth2,
		Secret:    plugin.NewSecret("token-from-the-backend"),
		Expiry:    time.Now().Add(time.Hour),
	}, nil
}

func (corporateVault) Rejected(ctx context.Context, req plugin.RejectedRequest) error {
	return nil // drop any cached token for req.Project here
}

// A provider binary's main: build the provider, then Serve. Nothing may be written to standard
// output.
func ExampleServe() {
	plugin.Serve(corporateVault{})
}

// The host side, as the sidecar runs it.
func ExampleOpen() {
	ctx := context.Background()
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	h, err := plugin.Open(ctx, plugin.HostOptions{
		Path:   "/usr/local/libexec/postern/postern-credential-example",
		SHA256: "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08", // sha256sum of the binary
		Env:    []string{"PATH=/usr/bin:/bin"},
		Logger: log,
	})
	if err != nil {
		log.Error("starting credential provider", "error", err)
		return
	}
	defer h.Close()

	cred, err := h.Credential(ctx, plugin.Request{
		Project:  "acme",
		Username: "noreply@acme.example",
		Config:   map[string]string{"file": "/etc/postern/credentials.json"},
	})
	var reauth *plugin.NeedsReauthError
	switch {
	case errors.As(err, &reauth):
		log.Warn("project needs re-authorisation", "project", "acme", "reason", reauth.Reason)
	case err != nil:
		log.Warn("credential temporarily unavailable", "project", "acme", "error", err)
	default:
		log.Info("credential", "mechanism", cred.Mechanism, "username", cred.Username, "secret", cred.Secret) // prints [redacted]
	}
}
