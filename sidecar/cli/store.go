package cli

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/postern/postern/sidecar/config"
	"github.com/postern/postern/sidecar/store"
	"github.com/postern/postern/sidecar/store/boltstore"
	"github.com/postern/postern/sidecar/store/vaultstore"
	"github.com/postern/postern/vault"
)

// VaultOpenTimeout bounds signing in to Vault when the caller's context has no deadline.
const VaultOpenTimeout = 20 * time.Second

// OpenStore opens the store cfg.Store names: the embedded store (package boltstore) or Vault. It
// never creates a store: a missing database or key file is an error naming its paths and the fix
// (`postern init`, or restoring the files), so that a volume that did not mount never becomes a
// new, empty store.
func OpenStore(ctx context.Context, cfg *config.Config) (store.Store, error) {
	return OpenStoreLogged(ctx, cfg, nil)
}

// OpenStoreLogged is OpenStore with the store's own log going to l (nil discards it).
func OpenStoreLogged(ctx context.Context, cfg *config.Config, l *slog.Logger) (store.Store, error) {
	st, _, err := openStore(ctx, cfg, l, fileOpen)
	return st, err
}

// How openStore treats a missing embedded store.
const (
	fileOpen   = iota // refuse
	fileCreate        // create it when neither file exists (the first `postern project add`)
	fileInit          // create it; refuse when either file exists (`postern init`)
	fileMaybe         // refuse, but let the caller tell "no store yet" (boltstore.ErrNotExist)
)

// openStore opens (or, as mode allows, creates) the configured store; created reports a new
// embedded store.
func openStore(ctx context.Context, cfg *config.Config, l *slog.Logger, mode int) (store.Store, bool, error) {
	switch {
	case cfg.Store.File != nil && cfg.Store.Vault != nil:
		return nil, false, errors.New("opening store: both store.file and store.vault are configured; use one")
	case cfg.Store.Vault != nil:
		v := cfg.Store.Vault
		if _, ok := ctx.Deadline(); !ok {
			// Signing in retries while Vault is unreachable; a command must not wait forever.
			var cancel context.CancelFunc
			ctx, cancel = context.WithTimeout(ctx, VaultOpenTimeout)
			defer cancel()
		}
		s, err := vaultstore.Open(ctx, VaultOptions(v, l), vaultstore.Options{Mount: v.Mount, Prefix: v.Prefix, FullScanInterval: v.FullScanInterval, Logger: l})
		if err != nil {
			return nil, false, fmt.Errorf("opening the Vault store at %s: %w (check store.vault.address or VAULT_ADDR, that Vault is unsealed, and the login settings)", v.Address, err)
		}
		return s, false, nil
	case cfg.Store.File != nil:
		if mode == fileInit {
			o := boltstore.Options{Path: cfg.Store.File.Path, KeyFile: cfg.Store.File.KeyFile, Logger: l}
			s, err := boltstore.Create(ctx, o)
			if err != nil {
				return nil, false, err // "creating store: ..."
			}
			return s, true, nil
		}
		s, err := OpenEmbedded(ctx, cfg.Store.File, l, mode == fileCreate)
		if err != nil {
			return nil, false, fmt.Errorf("opening store: %w", err)
		}
		return s, s.Created(), nil
	}
	return nil, false, errors.New("opening store: no store is configured")
}

// OpenEmbedded opens the embedded store (package boltstore) at f's paths. A data file in the format
// of the earlier single-file store (package filestore) is migrated on the way, once, the old file
// kept beside it with the suffix ".migrated" and its index file carried along; l hears of it. When
// neither the database nor its key file exists, create says whether to make them (Created then
// reports true) or to fail with boltstore.ErrNotExist; one without the other is always an error.
func OpenEmbedded(ctx context.Context, f *config.FileStore, l *slog.Logger, create bool) (*boltstore.Store, error) {
	return boltstore.Open(ctx, boltstore.Options{Path: f.Path, KeyFile: f.KeyFile, Create: create, Logger: l})
}

// VaultOptions maps the configuration's Vault section onto the client's options. Settings left
// empty fall back to Vault's standard environment (VAULT_ADDR, VAULT_TOKEN, VAULT_CACERT, ...).
func VaultOptions(v *config.VaultConfig, log *slog.Logger) vault.Options {
	o := vault.Options{Address: v.Address, CACert: v.CAFile, Mount: v.Mount, Timeout: v.Timeout, Logger: log}
	switch a := v.Auth; {
	case a.AppRole != nil:
		o.Auth = vault.Auth{Method: vault.MethodAppRole, MountPath: a.AppRole.Mount, RoleID: a.AppRole.RoleID, SecretIDFile: a.AppRole.SecretIDFile, SecretIDWrapped: a.AppRole.SecretIDWrapped}
	case a.Kubernetes != nil:
		o.Auth = vault.Auth{Method: vault.MethodKubernetes, MountPath: a.Kubernetes.Mount, Role: a.Kubernetes.Role, ServiceAccountTokenFile: a.Kubernetes.TokenFile}
	case a.TokenFile != "":
		o.Auth = vault.Auth{Method: vault.MethodTokenFile, TokenFile: a.TokenFile}
	default:
		o.Auth = vault.Auth{Method: vault.MethodToken}
	}
	return o
}
