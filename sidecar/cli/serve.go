package cli

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"

	"github.com/spf13/cobra"

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
line, and the exit code is 1 if there is any; with --json as well, they are printed as JSON.`

func (a *App) serveCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "serve",
		Short: "run the sidecar, or check its configuration with --check-config",
		Long:  serveAbout,
		Args:  exactArgs(0),
	}
	load := a.configFlag(cmd)
	checkOnly := cmd.Flags().Bool("check-config", false, "check the configuration and exit")
	asJSON := cmd.Flags().Bool("json", false, "with --check-config: print the verdict and each problem as JSON, for scripts")
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		if *asJSON && !*checkOnly {
			return usageErrorf("--json is for --check-config")
		}
		return a.serve(cmd.Context(), load, *checkOnly, *asJSON)
	}
	return cmd
}

func (a *App) serve(ctx context.Context, load configLoader, checkOnly, asJSON bool) error {
	cfg, path, err := load()
	if checkOnly && asJSON {
		return a.checkConfigJSON(cfg, path, err)
	}
	if err != nil {
		return err
	}
	where := path
	if where == "" {
		where = "built-in defaults (" + a.configPath() + " does not exist)"
	}
	if errs := cfg.Validate(); len(errs) > 0 {
		return &problems{where: where, errs: errs}
	}
	if checkOnly {
		if path == "" {
			fmt.Fprintf(a.Stdout, "config OK (%s)\n", where)
		} else {
			fmt.Fprintln(a.Stdout, "config OK")
		}
		return nil
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
				next, _, err := load()
				if err != nil {
					log.Error("reloading the configuration failed: the file cannot be read; nothing changed", "path", path, "err", err)
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
		return fmt.Errorf("%w: %w", errReported, err)
	}
	return nil
}

// checkConfigJSON prints the verdict of `serve --check-config --json`: {"ok", "config" (the file;
// empty: the built-in defaults), "problems"}; an invalid configuration exits 1 all the same.
func (a *App) checkConfigJSON(cfg *config.Config, path string, loadErr error) error {
	out := struct {
		OK       bool     `json:"ok"`
		Config   string   `json:"config"`
		Problems []string `json:"problems"`
	}{Config: path, Problems: []string{}}
	var errs []error
	switch p, ok := asProblems(loadErr); {
	case ok:
		errs = p.errs
	case loadErr != nil:
		errs = []error{loadErr}
	default:
		errs = cfg.Validate()
	}
	for _, e := range errs {
		out.Problems = append(out.Problems, e.Error())
	}
	out.OK = len(errs) == 0
	if err := writeJSON(a.Stdout, out); err != nil {
		return err
	}
	if !out.OK {
		return fmt.Errorf("%w: %d problems in the configuration", errReported, len(errs))
	}
	return nil
}
