package sidecar

import (
	"context"
	"errors"
	"fmt"
	"log/slog"

	"github.com/postern/postern/sidecar/buildinfo"
	"github.com/postern/postern/sidecar/config"
)

// Run is Serve without reloads.
func Run(ctx context.Context, cfg *config.Config, log *slog.Logger) error {
	return Serve(ctx, cfg, log, nil)
}

// Serve is `postern serve`: it opens the store, loads the projects, starts every configured
// listener and serves until ctx ends. Shutdown is ordered: the lookup and milter listeners and the
// mail listeners stop accepting (their unix sockets are removed), transactions in flight finish
// (bounded by smtpd.data_timeout), then the upstream connections close, then the store.
//
// Each configuration received from reloads (a SIGHUP; see reload.go) is applied as far as it can
// be while running; the log names what needs a restart.
//
// The steps, each in its own file:
//
//  1. open the store and load the projects into the directory (serve_store.go);
//  2. build the parts (NewParts, parts.go);
//  3. build the servers: the sign-in pages, the mail server, the lookups, the milter, the admin
//     listener with its status page, API and metrics (serve_admin.go, serve_listen.go,
//     status.go);
//  4. open every configured listener (serve_listen.go);
//  5. serve, apply reloads, and shut down in order when ctx ends (serve_shutdown.go).
func Serve(ctx context.Context, cfg *config.Config, log *slog.Logger, reloads <-chan *config.Config) error {
	if errs := cfg.Validate(); len(errs) > 0 {
		return fmt.Errorf("invalid configuration: %w", errors.Join(errs...))
	}
	build := buildinfo.Get()
	log.Info("starting postern", "version", build.Version, "revision", build.Revision, "go", build.GoVersion)
	st, opened, err := openServeStore(ctx, cfg, log.With("component", "store"))
	if err != nil {
		return err
	}
	defer st.Close()
	dir := loadDirectory(ctx, cfg, st, opened, log)
	parts := NewParts(ctx, cfg, st, log)
	defer parts.Close()
	ph, err := newProjectHealth(cfg, dir, log.With("component", "health"))
	if err != nil {
		return err
	}

	signInRoutes, err := signInPages(cfg, parts, ph, log)
	if err != nil {
		return err
	}
	mail, err := newMailServer(cfg, dir, parts, ph, log)
	if err != nil {
		return err
	}
	ls, err := newListeners(cfg, &collector{dir: dir, pools: parts.Pools, broker: parts.Broker, mail: mail}, log)
	if err != nil {
		return err
	}
	mil, err := newMilter(cfg, dir, parts, ph, log)
	if err != nil {
		return err
	}
	adm, signInServer, err := newAdmin(cfg, build, dir, parts, ph, ls.coll, signInRoutes, log)
	if err != nil {
		return err
	}

	lookups := newLookups(cfg, dir, log)
	errs := []error{
		ls.open("lmtp", cfg.Listen.LMTP, ls.max.LMTP, mail.ServeLMTP),
		ls.open("smtp", cfg.Listen.SMTP, ls.max.SMTP, mail.ServeSMTP),
		ls.open("socketmap", cfg.Listen.Socketmap, ls.max.Socketmap, lookups.Serve),
		ls.open("admin", cfg.Listen.Admin, ls.max.Admin, adm.Serve),
		ls.open("signin", cfg.Listen.SignIn, ls.max.Admin, signInServer.Serve),
	}
	if mil != nil {
		errs = append(errs, ls.open("milter", cfg.Listen.Milter, ls.max.Milter, mil.Serve))
	}
	if err := errors.Join(errs...); err != nil {
		return err
	}
	return serveUntilDone(ctx, cfg, log, reloads, build.Version, dir, mail, parts, ph, ls.servers)
}
