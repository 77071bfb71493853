package cli

import (
	"context"
	"slices"
	"strings"
	"time"

	"github.com/spf13/cobra"
)

// completionTimeout bounds the store read behind a completion: a shell waits for it.
const completionTimeout = 2 * time.Second

// completeProjects completes a command's project NAME argument (one) from the embedded store of
// the configuration --config names. Only the embedded store is read, and only when it exists: a
// completion never creates a store, and never waits on Vault over the network.
func (a *App) completeProjects(cmd *cobra.Command, args []string, toComplete string) ([]cobra.Completion, cobra.ShellCompDirective) {
	if len(args) > 0 {
		return nil, cobra.ShellCompDirectiveNoFileComp
	}
	return a.projectNames(cmd, toComplete), cobra.ShellCompDirectiveNoFileComp
}

// completeProjectList completes any number of project names (check).
func (a *App) completeProjectList(cmd *cobra.Command, args []string, toComplete string) ([]cobra.Completion, cobra.ShellCompDirective) {
	var out []cobra.Completion
	for _, n := range a.projectNames(cmd, toComplete) {
		if !slices.Contains(args, n) {
			out = append(out, n)
		}
	}
	return out, cobra.ShellCompDirectiveNoFileComp
}

func (a *App) projectNames(cmd *cobra.Command, prefix string) []cobra.Completion {
	path := a.configPath()
	if f := cmd.Flags().Lookup("config"); f != nil {
		path = f.Value.String()
	}
	cfg, _, err := a.loadConfig(path, cmd.Flags().Changed("config"))
	if err != nil || cfg.Store.File == nil || cfg.Store.Vault != nil {
		return nil
	}
	ctx, cancel := context.WithTimeout(cmd.Context(), completionTimeout)
	defer cancel()
	st, err := a.openStoreMode(ctx, cfg, fileMaybe)
	if err != nil || st == nil {
		return nil
	}
	defer st.Close()
	all, err := st.Projects(ctx)
	if err != nil {
		return nil
	}
	var names []cobra.Completion
	for _, p := range all {
		if strings.HasPrefix(p.Name, prefix) {
			names = append(names, p.Name)
		}
	}
	return names
}
