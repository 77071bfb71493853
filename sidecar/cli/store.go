package cli

import (
	"context"
	"errors"
	"fmt"

	"github.com/postern/postern/sidecar/config"
	"github.com/postern/postern/sidecar/store"
	"github.com/postern/postern/sidecar/store/filestore"
)

// OpenStore opens the store cfg.Store names. The file store is created (key file included) when it
// does not exist yet. The Vault store plugs in here as another case.
func OpenStore(ctx context.Context, cfg *config.Config) (store.Store, error) {
	switch {
	case cfg.Store.File != nil && cfg.Store.Vault != nil:
		return nil, errors.New("opening store: both store.file and store.vault are configured; use one")
	case cfg.Store.Vault != nil:
		return nil, errors.New("opening store: the vault store is not available in this build")
	case cfg.Store.File != nil:
		s, err := filestore.Open(ctx, filestore.Options{Path: cfg.Store.File.Path, KeyFile: cfg.Store.File.KeyFile, Create: true})
		if err != nil {
			return nil, fmt.Errorf("opening store: %w", err)
		}
		return s, nil
	}
	return nil, errors.New("opening store: no store is configured")
}
