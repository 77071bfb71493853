package sidecar

import (
	"context"
	"log/slog"
	"runtime/debug"
	"time"

	"github.com/postern/postern/sidecar/config"
	"github.com/postern/postern/sidecar/directory"
	"github.com/postern/postern/sidecar/store"
)

// storeOpenWait is how long Run waits for Vault's sign-in before the first load of the projects.
const storeOpenWait = 2 * time.Second

// loadDirectory is step 1 of Serve after the store is opened (openServeStore): the directory of
// projects over st, loaded once. opened is closed when st is open.
func loadDirectory(ctx context.Context, cfg *config.Config, st store.Store, opened <-chan struct{}, log *slog.Logger) *directory.Directory {
	dir := directory.New(st, directory.Options{Interval: cfg.ReloadInterval, RemovedHold: cfg.Postfix.RemovedHold(), Logger: log.With("component", "directory")})
	// Signing in to Vault takes milliseconds when it answers: give it a moment, so that the first
	// load finds the store open. When it does not answer, serve anyway: lookups answer 4xx, mail
	// waits in Postfix's queue, and the directory tries again soon (directory.Options.RetryMin).
	select {
	case <-opened:
	case <-time.After(storeOpenWait):
	case <-ctx.Done():
	}
	// Decoding every project at start leaves garbage several times the projects' own size (100,000
	// projects: 110 MB kept, 600 MB decoded through): hand it back to the system once the first
	// load is done rather than hold it as resident memory until the runtime's scavenger gets to it.
	if err := dir.Load(ctx); err != nil {
		// Not fatal: mail for unknown projects gets 4xx until the store answers. The first load
		// that succeeds (Vault with very many projects takes several reloads) frees its garbage.
		log.Warn("loading projects failed; retrying in the background, mail waits meanwhile", "err", err)
		go func() {
			select {
			case <-dir.Loaded():
				debug.FreeOSMemory()
			case <-ctx.Done():
			}
		}()
	} else {
		debug.FreeOSMemory()
	}
	return dir
}
