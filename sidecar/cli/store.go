package cli

import (
	"context"
	"log/slog"

	"github.com/postern/postern/sidecar"
	"github.com/postern/postern/sidecar/config"
	"github.com/postern/postern/sidecar/store"
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
