package sidecar

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync/atomic"

	"github.com/postern/postern/sidecar/cli"
	"github.com/postern/postern/sidecar/config"
	"github.com/postern/postern/sidecar/project"
	"github.com/postern/postern/sidecar/store"
)

// errStoreNotOpen is what every call answers until the store has been opened.
var errStoreNotOpen = errors.New("the store is not open yet")

// pendingStore lets Postern start while its store (Vault) is unreachable: until the store opens in
// the background, every call fails, so lookups answer 4xx and mail waits in Postfix's queue.
type pendingStore struct {
	s      atomic.Pointer[store.Store]
	opened chan struct{} // closed when s is set
}

var _ store.Store = (*pendingStore)(nil)

// openStore opens the configured store. The file store opens at once or fails; Vault is opened
// in the background, retrying until ctx ends, and the returned store answers errors until then.
// opened is closed once the store is open.
func openStore(ctx context.Context, cfg *config.Config, log *slog.Logger) (st store.Store, opened <-chan struct{}, err error) {
	if cfg.Store.Vault == nil {
		st, err = cli.OpenStoreLogged(ctx, cfg, log)
		done := make(chan struct{})
		close(done)
		return st, done, err
	}
	p := &pendingStore{opened: make(chan struct{})}
	go func() {
		s, err := cli.OpenStoreLogged(ctx, cfg, log) // vault.New retries until ctx ends
		if err != nil {
			if ctx.Err() == nil {
				log.Error("the Vault store could not be opened; mail for its projects is deferred", "err", err)
			}
			return
		}
		p.s.Store(&s)
		close(p.opened)
		log.Info("Vault store open", "address", cfg.Store.Vault.Address)
	}()
	return p, p.opened, nil
}

func (p *pendingStore) get() (store.Store, error) {
	if s := p.s.Load(); s != nil {
		return *s, nil
	}
	return nil, fmt.Errorf("%w: signing in to Vault", errStoreNotOpen)
}

func (p *pendingStore) Projects(ctx context.Context) ([]project.Project, error) {
	s, err := p.get()
	if err != nil {
		return nil, err
	}
	return s.Projects(ctx)
}

func (p *pendingStore) Project(ctx context.Context, name string) (project.Project, error) {
	s, err := p.get()
	if err != nil {
		return project.Project{}, err
	}
	return s.Project(ctx, name)
}

func (p *pendingStore) PutProject(ctx context.Context, pr project.Project) (int, error) {
	s, err := p.get()
	if err != nil {
		return 0, err
	}
	return s.PutProject(ctx, pr)
}

func (p *pendingStore) DeleteProject(ctx context.Context, name string) error {
	s, err := p.get()
	if err != nil {
		return err
	}
	return s.DeleteProject(ctx, name)
}

func (p *pendingStore) Token(ctx context.Context, name string) (project.Token, error) {
	s, err := p.get()
	if err != nil {
		return project.Token{}, err
	}
	return s.Token(ctx, name)
}

func (p *pendingStore) PutToken(ctx context.Context, name string, t project.Token) (int, error) {
	s, err := p.get()
	if err != nil {
		return 0, err
	}
	return s.PutToken(ctx, name, t)
}

func (p *pendingStore) Close() error {
	if s := p.s.Load(); s != nil {
		return (*s).Close()
	}
	return nil
}

// Healthy reports the store's health: not open yet, or what the open store says.
func (p *pendingStore) Healthy() error {
	s, err := p.get()
	if err != nil {
		return err
	}
	if h, ok := s.(interface{ Healthy() error }); ok {
		return h.Healthy()
	}
	return nil
}
