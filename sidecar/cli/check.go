package cli

import (
	"context"
	"fmt"
	"log/slog"
	"strings"

	"github.com/postern/postern/sidecar"
	"github.com/postern/postern/sidecar/config"
)

const checkAbout = `
Check that Postern can deliver for each enabled project (or the projects named): read the projects
from the store, get each project's credential as a delivery would (an OAuth token that is due is
refreshed and written back), and sign in upstream on a new connection. Each failure says what to
do next. The exit code is 1 if any project failed. No mail is sent; postern send-test sends one.`

func runCheck(ctx context.Context, a *App, args []string) int {
	fs := a.newFlagSet("check", "[project ...]", checkAbout)
	load := a.configFlag(fs)
	asJSON := fs.Bool("json", false, "write the results as one JSON document")
	names, code, ok := a.parse(fs, args, 0, -1)
	if !ok {
		return code
	}
	cfg, log, ok := a.loadForTool(load)
	if !ok {
		return ExitFail
	}
	if err := sidecar.Check(ctx, cfg, log, a.Stdout, sidecar.CheckOptions{Names: names, JSON: *asJSON, Progress: a.Stderr}); err != nil {
		fmt.Fprintf(a.Stderr, "postern check: %v\n", err)
		return ExitFail
	}
	if !*asJSON {
		fmt.Fprintln(a.Stdout, "all checked projects can deliver")
	}
	return ExitOK
}

const sendTestAbout = `
Send one short test message through a project's upstream, directly (not through Postfix), from the
project's first sender address or --from, to --to, and print the upstream's reply. Use it to see
that a newly added project can sign in and send as its address before pointing mail at it.`

func runSendTest(ctx context.Context, a *App, args []string) int {
	fs := a.newFlagSet("send-test", "--to <address> <project>", sendTestAbout)
	load := a.configFlag(fs)
	to := fs.String("to", "", "the recipient (required)")
	from := fs.String("from", "", "the sender; default: the project's first sender address")
	rest, code, ok := a.parse(fs, args, 1, 1)
	if !ok {
		return code
	}
	if *to == "" || !strings.Contains(*to, "@") {
		fmt.Fprintln(a.Stderr, "postern send-test: --to must be the recipient's address")
		return ExitUsage
	}
	cfg, log, ok := a.loadForTool(load)
	if !ok {
		return ExitFail
	}
	if err := sidecar.SendTest(ctx, cfg, log, a.Stdout, sidecar.TestMessage{Project: rest[0], From: *from, To: *to}); err != nil {
		fmt.Fprintf(a.Stderr, "postern send-test: %v\n", err)
		return ExitFail
	}
	return ExitOK
}

// loadForTool loads and validates the configuration for a command that works with the store and
// the upstreams, with warnings and errors logged to stderr.
func (a *App) loadForTool(load func() (*config.Config, string, bool)) (*config.Config, *slog.Logger, bool) {
	cfg, path, ok := load()
	if !ok {
		return nil, nil, false
	}
	if errs := cfg.Validate(); len(errs) > 0 {
		where := path
		if where == "" {
			where = "built-in defaults"
		}
		a.printProblems(where, errs)
		return nil, nil, false
	}
	log := slog.New(slog.NewTextHandler(a.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	return cfg, log, true
}
