package cli

import (
	"context"
	"errors"
	"fmt"

	"github.com/spf13/cobra"

	"github.com/postern/postern/sidecar/store"
)

// projectEnableCommand is `postern project enable` (enabled set) or `postern project disable`.
func (a *App) projectEnableCommand(enabled bool) *cobra.Command {
	cmd := &cobra.Command{
		Use:               "disable NAME",
		Short:             "stop serving a project; its mail waits in Postfix's queue",
		Long:              "Stop serving a project. Postern answers its mail with a temporary failure, so the mail waits\nin Postfix's queue until the project is enabled again (or the queue lifetime ends).",
		Args:              exactArgs(1),
		ValidArgsFunction: a.completeProjects,
	}
	if enabled {
		cmd.Use, cmd.Short = "enable NAME", "serve a disabled project again"
		cmd.Long = "Serve a disabled project again; Postfix delivers the waiting mail at its next retry."
	}
	load := a.configFlag(cmd)
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		return a.setEnabled(cmd.Context(), load, args[0], enabled)
	}
	return cmd
}

func (a *App) setEnabled(ctx context.Context, load configLoader, name string, enabled bool) error {
	st, err := a.openProjectStore(ctx, load)
	if err != nil {
		return err
	}
	defer st.Close()
	p, err := st.Project(ctx, name)
	if err == nil && p.IsRemoved() {
		err = removedError(p)
	}
	if err != nil {
		return ExplainNotFound(err, name)
	}
	word := "disabled"
	if enabled {
		word = "enabled"
	}
	if p.Enabled == enabled {
		fmt.Fprintf(a.Stdout, "project %s is already %s\n", p.Name, word)
		return nil
	}
	p.Enabled = enabled
	v, err := st.PutProject(ctx, p)
	if errors.Is(err, store.ErrConflict) {
		return fmt.Errorf("project %s was changed by someone else meanwhile; run the command again", p.Name)
	}
	if err != nil {
		return err
	}
	fmt.Fprintf(a.Stdout, "%s project %s (version %d)\n", word, p.Name, v)
	return nil
}
