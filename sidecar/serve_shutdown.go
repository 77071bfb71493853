package sidecar

import (
	"context"
	"errors"
	"log/slog"
	"sync"

	"github.com/postern/postern/sidecar/config"
	"github.com/postern/postern/sidecar/directory"
	"github.com/postern/postern/sidecar/smtpd"
)

// serveUntilDone is step 5 of Serve: it runs the servers, the directory's reloads and the
// configuration reloads until ctx ends or a server fails, then shuts down in order: the servers
// stop accepting and finish what is in flight, then the upstream connections close. The store
// and the rest of the parts are closed by Serve's deferred calls after it returns.
func serveUntilDone(ctx context.Context, cfg *config.Config, log *slog.Logger, reloads <-chan *config.Config,
	version string, dir *directory.Directory, mail *smtpd.Server, parts *Parts, ph *projectHealth, servers []func(context.Context) error) error {
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	var wg sync.WaitGroup
	wg.Go(func() { _ = dir.Run(ctx) })
	wg.Go(func() { ph.run(ctx, dir, parts.Broker) })
	if keep := keepGrantsAlive(cfg, dir, parts.Store, parts.Broker, log.With("component", "keepalive")); keep != nil {
		wg.Go(func() { keep(ctx) })
	}
	wg.Go(func() { applyReloads(ctx, cfg, log, reloads, dir, mail) })
	for _, serve := range servers {
		wg.Go(func() {
			if err := serve(ctx); err != nil {
				log.Error("server stopped", "err", err)
				cancel(err)
			}
		})
	}
	log.Info("postern is serving", "version", version, "instance", cfg.Instance, "transport", cfg.Transport, "projects", len(dir.Projects()))
	<-ctx.Done()
	log.Info("shutting down: finishing transactions in flight")
	wg.Wait()
	if err := parts.ClosePools(); err != nil {
		log.Warn("closing upstream connections", "err", err)
	}
	if n := parts.Broker.PendingWrites(); n > 0 {
		log.Error("token writes still pending at shutdown; the next start refreshes again", "pending", n)
	}
	if cause := context.Cause(ctx); cause != nil && !errors.Is(cause, context.Canceled) {
		return cause
	}
	log.Info("stopped")
	return nil
}

// applyReloads applies each configuration from reloads to the running parts (see reload.go)
// until ctx ends.
func applyReloads(ctx context.Context, cfg *config.Config, log *slog.Logger, reloads <-chan *config.Config, dir *directory.Directory, mail *smtpd.Server) {
	running := *cfg
	for {
		select {
		case <-ctx.Done():
			return
		case next := <-reloads:
			changed, err := changedKeys(&running, next)
			if err != nil {
				log.Error("reloading the configuration", "err", err)
				continue
			}
			applied, restart := splitReload(changed)
			dir.SetInterval(next.ReloadInterval)
			mail.SetRateWait(next.Limits.RateWait)
			running.Log.Level, running.ReloadInterval, running.Limits.RateWait = next.Log.Level, next.ReloadInterval, next.Limits.RateWait
			logReload(log, applied, restart)
		}
	}
}
