package cli

import (
	"context"
	"errors"
	"fmt"

	"github.com/postern/postern/sidecar"
)

const serveAbout = `
Run the sidecar: the socketmap Postfix asks which senders Postern serves, the LMTP (or SMTP) server
Postfix delivers their mail to, and the admin HTTP server. SIGINT or SIGTERM stops it.

With --check-config, only load and validate the configuration: every problem is printed, one per
line, and the exit code is 1 if there is any.`

func runServe(ctx context.Context, a *App, args []string) int {
	fs := a.newFlagSet("serve", "", serveAbout)
	load := a.configFlag(fs)
	checkOnly := fs.Bool("check-config", false, "check the configuration and exit")
	if _, code, ok := a.parse(fs, args, 0, 0); !ok {
		return code
	}
	cfg, path, ok := load()
	if !ok {
		return ExitFail
	}
	where := path
	if where == "" {
		where = "built-in defaults (" + a.configPath() + " does not exist)"
	}
	if errs := cfg.Validate(); len(errs) > 0 {
		a.printProblems(where, errs)
		return ExitFail
	}
	if *checkOnly {
		if path == "" {
			fmt.Fprintf(a.Stdout, "config OK (%s)\n", where)
		} else {
			fmt.Fprintln(a.Stdout, "config OK")
		}
		return ExitOK
	}
	log := cfg.Log.NewLogger(a.Stderr)
	if path == "" {
		log.Info("no configuration file, using the built-in defaults", "path", a.configPath())
	}
	serve := a.Serve
	if serve == nil {
		serve = sidecar.Run
	}
	if err := serve(ctx, cfg, log); err != nil && !errors.Is(err, context.Canceled) {
		log.Error("postern stopped", "err", err)
		return ExitFail
	}
	return ExitOK
}
