package cli

import (
	"fmt"

	"github.com/spf13/cobra"

	"github.com/postern/postern/sidecar/config"
	"github.com/postern/postern/sidecar/store/vaultstore"
)

const vaultPolicyAbout = `
Print the Vault ACL policy for the configured KV v2 mount and prefix: by default the sidecar's
(read projects, read and write tokens, nothing else), with --admin the administrators' (who add and
change projects). Apply with: postern vault-policy | vault policy write postern-sidecar -`

func (a *App) vaultPolicyCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "vault-policy",
		Short: "print the Vault policies for the sidecar and for administrators",
		Long:  vaultPolicyAbout,
		Args:  exactArgs(0),
	}
	load := a.configFlag(cmd)
	adminPolicy := cmd.Flags().Bool("admin", false, "print the administrators' policy instead of the sidecar's")
	cmd.RunE = func(*cobra.Command, []string) error {
		cfg, _, err := load()
		if err != nil {
			return err
		}
		_, err = fmt.Fprint(a.Stdout, VaultPolicy(cfg, *adminPolicy))
		return err
	}
	return cmd
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
