package cli

import (
	"context"
	"errors"
	"fmt"
	"log/slog"

	"github.com/postern/postern/sidecar"
	"github.com/postern/postern/sidecar/config"
	"github.com/postern/postern/sidecar/store"
	"github.com/postern/postern/sidecar/store/boltstore"
)

// OpenStore opens the store cfg.Store names: the embedded store (package boltstore) or Vault. It
// never creates a store: a missing database or key file is an error naming its paths and the fix
// (`postern init`, or restoring the files), so that a volume that did not mount never becomes a
// new, empty store.
func OpenStore(ctx context.Context, cfg *config.Config) (store.Store, error) {
	return OpenStoreLogged(ctx, cfg, nil)
}

// OpenStoreLogged is OpenStore with the store's own log going to l (nil discards it).
func OpenStoreLogged(ctx context.Context, cfg *config.Config, l *slog.Logger) (store.Store, error) {
	st, _, err := sidecar.OpenStore(ctx, cfg, l, sidecar.StoreOpen)
	return st, err
}

// How openStore treats a missing embedded store.
const (
	fileOpen   = iota // refuse
	fileCreate        // create it when neither file exists (the first `postern project add`)
	fileInit          // create it; refuse when either file exists (`postern init`)
	fileMaybe         // refuse, but let the caller tell "no store yet" (boltstore.ErrNotExist)
)

// openStore opens (or, as mode allows, creates) the configured store (sidecar.OpenStore); created
// reports a new embedded store.
func openStore(ctx context.Context, cfg *config.Config, l *slog.Logger, mode int) (store.Store, bool, error) {
	m := sidecar.StoreOpen
	switch mode {
	case fileCreate:
		m = sidecar.StoreCreate
	case fileInit:
		m = sidecar.StoreInit
	}
	return sidecar.OpenStore(ctx, cfg, l, m)
}

// openProjectStore loads the configuration and opens its store.
func (a *App) openProjectStore(ctx context.Context, load configLoader) (store.Store, error) {
	_, st, err := a.openConfigStore(ctx, load)
	return st, err
}

// openConfigStore is openProjectStore returning the configuration too.
func (a *App) openConfigStore(ctx context.Context, load configLoader) (*config.Config, store.Store, error) {
	return a.openConfigStoreMode(ctx, load, fileOpen)
}

// openConfigStoreMode is openConfigStore with the embedded store's missing-store rule given: mode
// fileCreate creates an embedded store where neither of its files exists, and says so on standard
// error. For fileMaybe, a missing embedded store (boltstore.ErrNotExist) is not an error: st is
// then nil, and fileCreate makes it once the caller is about to write. The store's own events (a
// migration of the old file format) go to standard error.
func (a *App) openConfigStoreMode(ctx context.Context, load configLoader, mode int) (*config.Config, store.Store, error) {
	cfg, _, err := load()
	if err != nil {
		return nil, nil, err
	}
	st, err := a.openStoreMode(ctx, cfg, mode)
	return cfg, st, err
}

func (a *App) openStoreMode(ctx context.Context, cfg *config.Config, mode int) (store.Store, error) {
	if a.OpenStore != nil {
		return a.OpenStore(ctx, cfg)
	}
	st, created, err := openStore(ctx, cfg, a.storeLogger(), mode)
	if mode == fileMaybe && errors.Is(err, boltstore.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	if created {
		fmt.Fprintf(a.Stderr, "postern: created a new, empty store %s with its key file %s (as `postern init` would); back the key file up: the store cannot be read without it\n",
			cfg.Store.File.Path, cfg.Store.File.KeyFile)
	}
	return st, nil
}
