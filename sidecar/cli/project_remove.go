package cli

import (
	"context"
	"fmt"
	"time"

	"github.com/spf13/cobra"

	"github.com/postern/postern/sidecar/config"
	"github.com/postern/postern/sidecar/mailq"
	"github.com/postern/postern/sidecar/project"
	"github.com/postern/postern/sidecar/route"
	"github.com/postern/postern/sidecar/store"
)

const removeAbout = `
Remove a project. Its credentials are deleted at once (the password or client secret, and the
OAuth tokens), but a tombstone with its senders stays in the store: Postern keeps answering the
mail of those senders with a temporary failure (451 4.7.0), so that mail Postfix already holds for
the project stays in Postfix's queue instead of leaving through Postfix's default transport. That
mail leaves when the project is added again ('postern project add NAME ...'), or returns to its
senders when Postfix's queue lifetime ends (postfix.queue_lifetime in Postern's configuration,
Postfix's maximal_queue_lifetime: 5 days by default). After the queue lifetime plus
postfix.backoff_time, the tombstone answers for nothing any more.

remove prints how many messages Postfix still holds for the project's senders (postqueue -j, with
postfix.config_directory), when postqueue runs on this host.

With --purge, or with 'postern project purge NAME', the project is deleted for good: its senders are
no longer Postern's, and mail Postfix still holds for them leaves through Postfix's other
transports (or bounces) at its next retry.`

func (a *App) projectRemoveCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:               "remove NAME",
		Short:             "remove a project; its queued mail keeps waiting (see -h)",
		Long:              removeAbout,
		Args:              exactArgs(1),
		ValidArgsFunction: a.completeProjects,
	}
	load := a.configFlag(cmd)
	purge := cmd.Flags().Bool("purge", false, "delete the project for good, now (as 'postern project purge')")
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		return a.projectRemove(cmd.Context(), load, args[0], *purge)
	}
	return cmd
}

func (a *App) projectRemove(ctx context.Context, load configLoader, name string, purge bool) error {
	cfg, st, err := a.openConfigStore(ctx, load)
	if err != nil {
		return err
	}
	defer st.Close()
	if purge {
		return a.purge(ctx, cfg, st, name)
	}
	old, err := st.Project(ctx, name)
	if err != nil {
		return ExplainNotFound(err, name)
	}
	tomb, err := store.Remove(ctx, st, st, name, time.Now())
	if err != nil {
		return ExplainNotFound(err, name)
	}
	until := tomb.HeldUntil(cfg.Postfix.RemovedHold()).Local().Format(time.RFC1123)
	if old.IsRemoved() {
		fmt.Fprintf(a.Stdout, "project %s was removed already, at %s; its senders' mail is deferred until %s\n",
			name, tomb.Removed.Local().Format(time.RFC1123), until)
	} else {
		fmt.Fprintf(a.Stdout, "removed project %s: its credentials are deleted; its senders' mail is deferred until %s\n", name, until)
	}
	fmt.Fprintf(a.Stdout, "%s\n", queuedFor(ctx, cfg, tomb))
	fmt.Fprintf(a.Stdout, "to let that mail flow again: postern project add %s ...; to give up on it: postern project purge %s\n", name, name)
	return nil
}

const purgeAbout = `
Delete a project for good, removed or not, with its token record. Its senders are no longer
Postern's: mail Postfix still holds for them leaves through Postfix's other transports (or
bounces) at its next retry. 'postern project remove' keeps that mail waiting instead.`

func (a *App) projectPurgeCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:               "purge NAME",
		Short:             "delete a removed project for good",
		Long:              purgeAbout,
		Args:              exactArgs(1),
		ValidArgsFunction: a.completeProjects,
	}
	load := a.configFlag(cmd)
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		cfg, st, err := a.openConfigStore(cmd.Context(), load)
		if err != nil {
			return err
		}
		defer st.Close()
		return a.purge(cmd.Context(), cfg, st, args[0])
	}
	return cmd
}

func (a *App) purge(ctx context.Context, cfg *config.Config, st store.Store, name string) error {
	p, err := st.Project(ctx, name)
	if err == nil {
		err = st.DeleteProject(ctx, name)
	}
	if err != nil {
		return ExplainNotFound(err, name)
	}
	fmt.Fprintf(a.Stdout, "purged project %s\n", name)
	fmt.Fprintf(a.Stdout, "%s\n", queuedFor(ctx, cfg, p))
	return nil
}

// queuedFor says how many messages the local Postfix holds for p's senders.
func queuedFor(ctx context.Context, cfg *config.Config, p project.Project) string {
	msgs, err := mailq.List(ctx, mailq.Options{Postqueue: cfg.Postfix.Postqueue, ConfigDir: cfg.Postfix.ConfigDirectory})
	if err != nil {
		return fmt.Sprintf("could not count the mail Postfix holds for it: %v", err)
	}
	p.Removed = time.Time{}
	table, _ := route.New([]project.Project{p})
	n := mailq.Count(msgs, func(sender string) bool { _, ok := table.Lookup(sender); return ok })
	dir := cfg.Postfix.ConfigDirectory
	if dir == "" {
		dir = "the default instance"
	}
	return fmt.Sprintf("Postfix (%s) holds %d message(s) from its senders", dir, n)
}
