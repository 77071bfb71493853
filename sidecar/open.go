package sidecar

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"time"

	"github.com/postern/postern/sidecar/config"
	"github.com/postern/postern/sidecar/oauth"
	"github.com/postern/postern/sidecar/store"
	"github.com/postern/postern/sidecar/store/boltstore"
	"github.com/postern/postern/sidecar/store/vaultstore"
	"github.com/postern/postern/sidecar/upstream"
	"github.com/postern/postern/vault"
)

// VaultOpenTimeout bounds signing in to Vault when the caller's context has no deadline.
const VaultOpenTimeout = 20 * time.Second

// StoreMode says how OpenStore treats a missing file store. Vault is never created.
type StoreMode int

const (
	// StoreOpen refuses a missing file store: a volume that did not mount never becomes a new,
	// empty store. The error names the paths and the fix (`postern init`, or restoring the files).
	StoreOpen StoreMode = iota
	// StoreCreate creates the file store when neither of its files exists (the first `postern
	// project add`).
	StoreCreate
	// StoreInit creates the file store and refuses when either file exists (`postern init`).
	StoreInit
)

// OpenStore opens (or, as mode allows, creates) the store cfg.Store names: the embedded store
// (package boltstore) or Vault, with the store's own log going to log (nil discards it). created reports a new
// embedded store.
func OpenStore(ctx context.Context, cfg *config.Config, log *slog.Logger, mode StoreMode) (st store.Store, created bool, err error) {
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
		s, err := vaultstore.Open(ctx, VaultOptions(v, log), vaultstore.Options{Mount: v.Mount, Prefix: v.Prefix, FullScanInterval: v.FullScanInterval, Logger: log})
		if err != nil {
			return nil, false, fmt.Errorf("opening the Vault store at %s: %w (check store.vault.address or VAULT_ADDR, that Vault is unsealed, and the login settings)", v.Address, err)
		}
		return s, false, nil
	case cfg.Store.File != nil:
		if mode == StoreInit {
			o := boltstore.Options{Path: cfg.Store.File.Path, KeyFile: cfg.Store.File.KeyFile, Logger: log}
			s, err := boltstore.Create(ctx, o)
			if err != nil {
				return nil, false, err // "creating store: ..."
			}
			return s, true, nil
		}
		s, err := OpenEmbedded(ctx, cfg.Store.File, log, mode == StoreCreate)
		if err != nil {
			return nil, false, fmt.Errorf("opening store: %w", err)
		}
		return s, s.Created(), nil
	}
	return nil, false, errors.New("opening store: no store is configured")
}

// OpenEmbedded opens the embedded store (package boltstore) at f's paths. A data file in the format
// of the earlier single-file store (package filestore) is migrated on the way, once, the old file
// kept beside it with the suffix ".migrated" and its index file carried along; log hears of it.
// When neither the database nor its key file exists, create says whether to make them (Created
// then reports true) or to fail with boltstore.ErrNotExist; one without the other is always an
// error.
func OpenEmbedded(ctx context.Context, f *config.FileStore, log *slog.Logger, create bool) (*boltstore.Store, error) {
	return boltstore.Open(ctx, boltstore.Options{Path: f.Path, KeyFile: f.KeyFile, Create: create, Logger: log})
}

// OAuthHTTPClient is the HTTP client for identity providers that cfg describes (oauth.http_proxy,
// or the environment). A proxy setting that does not parse, which Validate reports, makes every
// request fail rather than go around the proxy.
func OAuthHTTPClient(cfg *config.Config) *http.Client {
	proxy, err := cfg.OAuth.ProxyURL()
	if err != nil {
		return oauth.FailingHTTPClient(err)
	}
	return oauth.NewHTTPClient(proxy)
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

// UpstreamOptions are the upstream connection settings of cfg, for upstream.NewPools.
func UpstreamOptions(cfg *config.Config, log *slog.Logger) upstream.Options {
	return upstream.Options{
		LocalName:       cfg.Upstream.HeloName,
		DialTimeout:     cfg.Upstream.DialTimeout,
		GreetingTimeout: cfg.Upstream.GreetingTimeout,
		CommandTimeout:  cfg.Upstream.CommandTimeout,
		DataTimeout:     cfg.Upstream.DataTimeout,
		IdleTimeout:     cfg.Upstream.IdleTimeout,
		MaxConnWait:     cfg.Upstream.MaxConnWait,
		DownBackoff:     cfg.Upstream.DownBackoff,
		Trace:           cfg.Upstream.Trace,
		TraceProjects:   cfg.Upstream.TraceProjects,
		Logger:          log,
	}
}

// openServeStore opens the configured store for `postern serve`. The file store opens at once or
// fails; Vault is opened in the background, retrying until ctx ends, and the returned store
// (store.Pending) answers errors until then. opened is closed once the store is open.
func openServeStore(ctx context.Context, cfg *config.Config, log *slog.Logger) (st store.Store, opened <-chan struct{}, err error) {
	if cfg.Store.Vault == nil {
		st, _, err = OpenStore(ctx, cfg, log, StoreOpen)
		done := make(chan struct{})
		close(done)
		return st, done, err
	}
	p := store.NewPending("signing in to Vault")
	go func() {
		s, _, err := OpenStore(ctx, cfg, log, StoreOpen) // vault.New retries until ctx ends
		if err != nil {
			if ctx.Err() == nil {
				log.Error("the Vault store could not be opened; mail for its projects is deferred", "err", err)
			}
			return
		}
		p.Open(s)
		log.Info("Vault store open", "address", cfg.Store.Vault.Address)
	}()
	return p, p.Opened(), nil
}
