package cli

import (
	"fmt"
	"log/slog"
	"strings"

	"github.com/spf13/cobra"

	"github.com/postern/postern/sidecar"
	"github.com/postern/postern/sidecar/config"
)

const checkAbout = `
Check that Postern can deliver for each enabled project (or the projects named): read the projects
from the store, get each project's credential as a delivery would (an OAuth token that is due is
refreshed and written back), and sign in upstream on a new connection. Each failure says what to
do next. The exit code is 1 if any project failed. No mail is sent; postern send-test sends one.

Projects are checked several at a time, with a progress line on standard error and a deadline for
each step. With --json, standard output holds one JSON document: each project's result, the reason
of a failure and what to do next.`

func (a *App) checkCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:               "check [project ...]",
		Short:             "check that each project can get its credential and sign in upstream",
		Long:              checkAbout,
		Args:              rangeArgs(0, -1),
		ValidArgsFunction: a.completeProjectList,
	}
	load := a.configFlag(cmd)
	asJSON := jsonFlag(cmd, "each project's result")
	cmd.RunE = func(cmd *cobra.Command, names []string) error {
		cfg, log, err := a.loadForTool(load)
		if err != nil {
			return err
		}
		err = sidecar.Check(cmd.Context(), cfg, log, a.Stdout, sidecar.CheckOptions{Names: names, JSON: *asJSON, Progress: a.Stderr})
		if err != nil {
			return err
		}
		if !*asJSON {
			fmt.Fprintln(a.Stdout, "all checked projects can deliver")
		}
		return nil
	}
	return cmd
}

const sendTestAbout = `
Send one short test message through a project's upstream, directly (not through Postfix), from the
project's first sender address or --from, to --to, and print the upstream's reply. Use it to see
that a newly added project can sign in and send as its address before pointing mail at it.`

func (a *App) sendTestCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:               "send-test --to ADDRESS PROJECT",
		Short:             "send a test message through a project's upstream",
		Long:              sendTestAbout,
		Args:              exactArgs(1),
		ValidArgsFunction: a.completeProjects,
	}
	load := a.configFlag(cmd)
	to := cmd.Flags().String("to", "", "the recipient (required)")
	from := cmd.Flags().String("from", "", "the sender; default: the project's first sender address")
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		if *to == "" || !strings.Contains(*to, "@") {
			return usageErrorf("--to must be the recipient's address")
		}
		cfg, log, err := a.loadForTool(load)
		if err != nil {
			return err
		}
		return sidecar.SendTest(cmd.Context(), cfg, log, a.Stdout, sidecar.TestMessage{Project: args[0], From: *from, To: *to})
	}
	return cmd
}

// loadForTool loads and validates the configuration for a command that works with the store and
// the upstreams, with warnings and errors logged to stderr.
func (a *App) loadForTool(load configLoader) (*config.Config, *slog.Logger, error) {
	cfg, path, err := load()
	if err != nil {
		return nil, nil, err
	}
	if err := validate(cfg, path); err != nil {
		return nil, nil, err
	}
	log := slog.New(slog.NewTextHandler(a.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	return cfg, log, nil
}

// validate returns cfg's problems as one error, each prefixed with where the configuration came
// from (path; empty: the built-in defaults).
func validate(cfg *config.Config, path string) error {
	errs := cfg.Validate()
	if len(errs) == 0 {
		return nil
	}
	if path == "" {
		path = "built-in defaults"
	}
	return &problems{where: path, errs: errs}
}
