package store

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync/atomic"

	"github.com/postern/postern/sidecar/project"
)

// ErrNotOpen is what every call of a Pending store answers until its store has been opened.
var ErrNotOpen = errors.New("the store is not open yet")

// Pending lets Postern start while its store (Vault) is unreachable: until Open hands it the
// store, every call fails with ErrNotOpen, so lookups answer 4xx and mail waits in Postfix's queue.
type Pending struct {
	why    string
	s      atomic.Pointer[Store]
	opened chan struct{} // closed when s is set
	calls  atomic.Int64  // ProjectsStamp's calls, for a store without stamps
}

var _ Store = (*Pending)(nil)

// NewPending returns a store that is not open yet; why says what it waits for ("signing in to
// Vault").
func NewPending(why string) *Pending {
	return &Pending{why: why, opened: make(chan struct{})}
}

// Open hands p the opened store. Call it once.
func (p *Pending) Open(s Store) {
	p.s.Store(&s)
	close(p.opened)
}

// Opened is closed once Open has been called.
func (p *Pending) Opened() <-chan struct{} { return p.opened }

func (p *Pending) get() (Store, error) {
	if s := p.s.Load(); s != nil {
		return *s, nil
	}
	return nil, fmt.Errorf("%w: %s", ErrNotOpen, p.why)
}

// Projects implements Projects.
func (p *Pending) Projects(ctx context.Context) ([]project.Project, error) {
	s, err := p.get()
	if err != nil {
		return nil, err
	}
	return s.Projects(ctx)
}

// ProjectsStamp implements Stamper: the opened store's stamp, or, for a store that has none, a
// new value on every call, so that its projects are read every time.
func (p *Pending) ProjectsStamp(ctx context.Context) (string, error) {
	s, err := p.get()
	if err != nil {
		return "", err
	}
	if st, ok := s.(Stamper); ok {
		return st.ProjectsStamp(ctx)
	}
	return "unstamped:" + strconv.FormatInt(p.calls.Add(1), 10), nil
}

// Project implements Admin.
func (p *Pending) Project(ctx context.Context, name string) (project.Project, error) {
	s, err := p.get()
	if err != nil {
		return project.Project{}, err
	}
	return s.Project(ctx, name)
}

// PutProject implements Admin.
func (p *Pending) PutProject(ctx context.Context, pr project.Project) (int, error) {
	s, err := p.get()
	if err != nil {
		return 0, err
	}
	return s.PutProject(ctx, pr)
}

// DeleteProject implements Admin.
func (p *Pending) DeleteProject(ctx context.Context, name string) error {
	s, err := p.get()
	if err != nil {
		return err
	}
	return s.DeleteProject(ctx, name)
}

// Token implements Tokens.
func (p *Pending) Token(ctx context.Context, name string) (project.Token, error) {
	s, err := p.get()
	if err != nil {
		return project.Token{}, err
	}
	return s.Token(ctx, name)
}

// PutToken implements Tokens.
func (p *Pending) PutToken(ctx context.Context, name string, t project.Token) (int, error) {
	s, err := p.get()
	if err != nil {
		return 0, err
	}
	return s.PutToken(ctx, name, t)
}

// Close closes the opened store, if any.
func (p *Pending) Close() error {
	if s := p.s.Load(); s != nil {
		return (*s).Close()
	}
	return nil
}

// Healthy reports the store's health: not open yet, or what the open store says.
func (p *Pending) Healthy() error {
	s, err := p.get()
	if err != nil {
		return err
	}
	if h, ok := s.(interface{ Healthy() error }); ok {
		return h.Healthy()
	}
	return nil
}
