package cli

import (
	"context"
	"fmt"

	"github.com/postern/postern/sidecar/config"
	"github.com/postern/postern/sidecar/store/vaultstore"
)

const vaultPolicyAbout = `
Print the Vault ACL policy for the configured KV v2 mount and prefix: by default the sidecar's
(read projects, read and write tokens, nothing else), with --admin the administrators' (who add and
change projects). Apply with: postern vault-policy | vault policy write postern-sidecar -`

func runVaultPolicy(_ context.Context, a *App, args []string) int {
	fs := a.newFlagSet("vault-policy", "", vaultPolicyAbout)
	load := a.configFlag(fs)
	adminPolicy := fs.Bool("admin", false, "print the administrators' policy instead of the sidecar's")
	if _, code, ok := a.parse(fs, args, 0, 0); !ok {
		return code
	}
	cfg, _, ok := load()
	if !ok {
		return ExitFail
	}
	fmt.Fprint(a.Stdout, VaultPolicy(cfg, *adminPolicy))
	return ExitOK
}

// VaultPolicy renders the sidecar's (or, with admin, the administrators') policy for cfg's Vault
// mount and prefix; the defaults when cfg has no Vault store.
func VaultPolicy(cfg *config.Config, admin bool) string {
	mount, prefix := config.DefaultVaultMount, config.DefaultVaultPrefix
	if v := cfg.Store.Vault; v != nil {
		mount, prefix = v.Mount, v.Prefix
	}
	if admin {
		return "# Postern administrators: add, change and remove projects.\n" + vaultstore.HCL(vaultstore.AdminPolicy(mount, prefix))
	}
	return "# Postern sidecar: read projects, read and write tokens, nothing else.\n" + vaultstore.HCL(vaultstore.SidecarPolicy(mount, prefix))
}
