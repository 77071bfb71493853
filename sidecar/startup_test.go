package sidecar

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/postern/postern/sidecar/config"
	"github.com/postern/postern/sidecar/store/storetest"
	"github.com/postern/postern/sidecar/store/vaultstore"
	"github.com/postern/postern/vault"
	"github.com/postern/postern/vault/vaulttest"
)

// TestRunLoadsAsSoonAsVaultOpens starts `postern serve` on a Vault store with a reload interval
// of an hour: the projects are loaded once Vault answers, not an interval later, both when Vault
// answers at once (the first load succeeds) and when it answers only after Postern started serving.
func TestRunLoadsAsSoonAsVaultOpens(t *testing.T) {
	t.Parallel()
	for _, down := range []bool{false, true} {
		t.Run(fmt.Sprintf("vault down at start %v", down), func(t *testing.T) {
			t.Parallel()
			srv := vaulttest.New(t, vaulttest.Options{})
			vc, err := vault.New(t.Context(), vault.Options{Address: srv.URL, Auth: vault.Auth{Token: vault.Secret(srv.RootToken)}})
			if err != nil {
				t.Fatal(err)
			}
			admin, err := vaultstore.New(vc, vaultstore.Options{})
			if err != nil {
				t.Fatal(err)
			}
			if _, err := admin.PutProject(t.Context(), storetest.BasicProject("client-a")); err != nil {
				t.Fatal(err)
			}
			if down {
				srv.SetMode(vaulttest.Dropping)
			}

			dir, err := os.MkdirTemp("", "postern-start-") // short: unix socket paths are limited
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { os.RemoveAll(dir) })
			tokenFile := filepath.Join(dir, "vault-token")
			if err := os.WriteFile(tokenFile, []byte(srv.RootToken+"\n"), 0o600); err != nil {
				t.Fatal(err)
			}
			addr := freeAddr(t)
			cfg, err := config.Parse(fmt.Appendf(nil, `instance: start
listen:
  lmtp: %[1]s/lmtp.sock
  socketmap: %[1]s/socketmap.sock
  admin: %[2]s
  socket_group: ""
store:
  vault: {address: %[3]s, auth: {token_file: %[4]s}}
reload_interval: 1h
admin: {read_token_file: %[1]s/read.token}
`, dir, addr, srv.URL, tokenFile))
			if err != nil {
				t.Fatal(err)
			}
			logs := &lockedBuffer{}
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan error, 1)
			go func() { done <- Run(ctx, cfg, slog.New(slog.NewTextHandler(logs, nil))) }()
			t.Cleanup(func() {
				cancel()
				select {
				case <-done:
				case <-time.After(20 * time.Second):
					t.Error("Run did not return after cancel")
				}
			})

			if down {
				waitUntil(t, "Postern to serve while Vault is down", func() bool {
					return strings.Contains(logs.String(), "loading projects failed")
				})
				if code := get(addr, "/readyz"); code == 200 {
					t.Fatal("/readyz = 200 with no project loaded")
				}
				srv.SetMode(vaulttest.Up)
			}
			waitUntil(t, "the project to be loaded", func() bool { return get(addr, "/readyz") == 200 })
			if !down && strings.Contains(logs.String(), "loading projects failed") {
				t.Fatalf("the first load did not wait for the sign-in to Vault:\n%s", logs.String())
			}
		})
	}
}
