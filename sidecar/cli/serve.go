package cli

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"

	"github.com/postern/postern/sidecar"
	"github.com/postern/postern/sidecar/config"
)

const serveAbout = `
Run the sidecar: the socketmap Postfix asks which senders Postern serves, the LMTP (or SMTP) server
Postfix delivers their mail to, and the admin HTTP server.

SIGINT or SIGTERM stops it gracefully: the listeners stop accepting and their unix sockets are
removed, transactions in flight finish (within smtpd.data_timeout), then upstream connections close.

SIGHUP reads the configuration file again. log.level, reload_interval and limits.rate_wait change
at once; every other changed key needs a restart, and the log names each one. An invalid file
changes nothing: its problems are logged.

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
	serve := a.Serve
	if serve == nil {
		serve = sidecar.Serve
	}
	level := new(slog.LevelVar)
	level.Set(cfg.Log.SlogLevel())
	log := cfg.Log.NewLoggerVar(a.Stderr, level)
	if path == "" {
		log.Info("no configuration file, using the built-in defaults", "path", a.configPath())
	}
	reloads := make(chan *config.Config, 1)
	if a.NotifyReload != nil {
		hup := make(chan os.Signal, 1)
		a.NotifyReload(hup)
		go func() {
			for {
				select {
				case <-ctx.Done():
					return
				case <-hup:
				}
				log.Info("reloading the configuration", "path", path)
				next, _, ok := load()
				if !ok {
					log.Error("reloading the configuration failed: the file cannot be read; nothing changed", "path", path)
					continue
				}
				if errs := next.Validate(); len(errs) > 0 {
					log.Error("reloading the configuration failed: the file is not valid; nothing changed", "path", path, "problems", errors.Join(errs...).Error())
					continue
				}
				level.Set(next.Log.SlogLevel())
				select { // the newest configuration replaces one not yet taken
				case <-reloads:
				default:
				}
				reloads <- next
			}
		}()
	}
	if err := serve(ctx, cfg, log, reloads); err != nil && !errors.Is(err, context.Canceled) {
		log.Error("postern stopped", "err", err)
		return ExitFail
	}
	return ExitOK
}
