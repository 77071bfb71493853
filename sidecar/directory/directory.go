// Package directory owns the sidecar's live view of the projects: an immutable snapshot of every
// project and its routing table, read without locks on every lookup and replaced whole when the store
// changes.
//
// The flow:
//
//  1. Load reads the store once, synchronously, at start.
//  2. Run re-reads it every Options.Interval until its ctx ends.
//  3. A lookup of a sender no project serves may mean a project was just added: it triggers a reload
//     (shared by every caller that arrives meanwhile) and waits for it up to Options.MissWait,
//     bounded by the caller's ctx. Such reloads start at most once per Options.MinReloadGap, or per
//     four times the last reload's duration when that is longer, counted from the end of the last
//     one, so that with very many projects (100,000: a read takes seconds) reloads never run back
//     to back. When the last reload took longer than MissWait, a miss does not wait: the reload
//     would not finish in time, and every sender Postfix asks about that is not Postern's (most of
//     them) would be held for MissWait; the new project is seen when that reload ends.
//  4. Each successful read builds a new snapshot (projects by name plus a route.Table) and swaps it in
//     atomically. A failed read keeps the last good snapshot; only when none was ever loaded do
//     lookups answer ErrUnavailable (temporary). A store that knows it lost projects it held (a
//     file store's data file replaced by an empty one, a Vault listing nothing where it listed
//     projects) fails the read with store.ErrProjectsLost rather than answering "none", so lost
//     projects never turn into ErrNoProject (NOTFOUND, 550): they keep being served from the last
//     good snapshot, or, with none, answer ErrUnavailable; Ready reports it either way.
//  5. A removed project's tombstone (project.Project.Removed) stays in the snapshot, routed after
//     every live project, for Options.RemovedHold after its removal: its senders keep resolving to
//     it, so the socketmap keeps sending their mail to Postern, which defers it, and mail Postfix
//     still holds for the project never leaves through the default transport. A live project
//     claiming the same senders wins.
//  6. Reload errors, route conflicts and invalid projects are logged once each time they change, not
//     on every interval.
//  7. A store that is a store.Stamper (the embedded store, Vault) is asked for its stamp first; when it is
//     the stamp of the snapshot in use, and no tombstone's hold ended meanwhile, the snapshot is
//     kept and nothing is decoded. 100,000 unchanged projects then cost a scan of record headers
//     each interval, not seconds of decoding.
//
// In steady state a delivered message costs no store read: StoreReads counts them to prove it.
package directory

import (
	"context"
	"errors"
	"fmt"
	"iter"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/postern/postern/sidecar/backoff"
	"github.com/postern/postern/sidecar/project"
	"github.com/postern/postern/sidecar/route"
	"github.com/postern/postern/sidecar/store"
)

// ErrNoProject means no project serves the sender: a definite answer.
var ErrNoProject = errors.New("no project serves this sender")

// ErrUnavailable means the projects could not be read and none are cached: a temporary condition.
var ErrUnavailable = errors.New("projects are unavailable")

// Defaults for the zero Options.
const (
	DefaultInterval     = 10 * time.Second
	DefaultMinReloadGap = 2 * time.Second
	DefaultMissWait     = 2 * time.Second
	DefaultLoadTimeout  = 30 * time.Second
	DefaultRetryMin     = time.Second
	// DefaultRemovedHold is Postfix's default maximal_queue_lifetime (5d) plus its
	// maximal_backoff_time (4000s): by then Postfix has returned or delivered every message it
	// held for a removed project.
	DefaultRemovedHold = 5*24*time.Hour + 4000*time.Second
)

// Options tune a Directory. The zero value is ready to use.
type Options struct {
	// Interval between periodic reloads in Run. Zero means DefaultInterval.
	Interval time.Duration
	// MinReloadGap is the least time between two reloads triggered by unknown senders. Zero means
	// DefaultMinReloadGap.
	MinReloadGap time.Duration
	// MissWait bounds how long a lookup of an unknown sender waits for the reload it triggered. Zero
	// means DefaultMissWait.
	MissWait time.Duration
	// LoadTimeout bounds one read of the store started by Run or by a lookup. Zero means
	// DefaultLoadTimeout.
	LoadTimeout time.Duration
	// RetryMin is how long Run waits before trying again when a reload failed and no projects
	// are cached (mail waits meanwhile); the wait doubles with each failure up to Interval. Zero
	// means DefaultRetryMin.
	RetryMin time.Duration
	// RemovedHold is how long after its removal a removed project still answers for its senders
	// (with a temporary failure): Postfix's maximal_queue_lifetime plus its maximal_backoff_time.
	// Zero means DefaultRemovedHold.
	RemovedHold time.Duration
	// Logger receives reload errors, conflicts and changes. Nil discards.
	Logger *slog.Logger
	// Now is the clock. Nil means time.Now.
	Now func() time.Time
}

func (o Options) withDefaults() Options {
	if o.Interval <= 0 {
		o.Interval = DefaultInterval
	}
	if o.MinReloadGap <= 0 {
		o.MinReloadGap = DefaultMinReloadGap
	}
	if o.MissWait <= 0 {
		o.MissWait = DefaultMissWait
	}
	if o.LoadTimeout <= 0 {
		o.LoadTimeout = DefaultLoadTimeout
	}
	if o.RetryMin <= 0 {
		o.RetryMin = DefaultRetryMin
	}
	if o.RemovedHold <= 0 {
		o.RemovedHold = DefaultRemovedHold
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	return o
}

// snapshot is one consistent view of the projects. It is never modified after it is published.
type snapshot struct {
	projects map[string]project.Project
	table    *route.Table
	// removed routes the senders of removed projects still held (Options.RemovedHold), after table.
	removed  *route.Table
	loadedAt time.Time
	// stamp is the store's store.Stamper stamp the projects were read under ("" for a store
	// without one), and until is when the first tombstone's hold ends: a reload finding the same
	// stamp before then keeps this snapshot.
	stamp string
	until time.Time
	// gen numbers the snapshots built from a read of the projects (Generation).
	gen uint64
}

// Directory is the live view of the projects. It is safe for concurrent use.
type Directory struct {
	src  store.Projects
	opts Options
	log  *slog.Logger

	snap     atomic.Pointer[snapshot]
	gens     atomic.Uint64 // snapshots built so far
	loaded   chan struct{} // closed when the first snapshot is published
	loadOnce sync.Once
	reads    atomic.Int64
	interval atomic.Int64 // Options.Interval, changed by SetInterval

	mu          sync.Mutex
	inflight    chan struct{} // closed when the running reload ends; nil when none runs
	lastStart   time.Time     // when the last reload started
	lastEnd     time.Time     // when the last reload ended (zero while the first runs)
	lastTook    time.Duration // how long the last reload took
	lastErr     string        // the last reload error, "" after a success
	lastProblem string        // conflicts and invalid projects of the last snapshot
	lastShape   string        // names and versions of the last snapshot
}

// New returns a Directory over src. Nothing is read until Load or Run.
func New(src store.Projects, opts Options) *Directory {
	opts = opts.withDefaults()
	d := &Directory{src: src, opts: opts, log: opts.Logger, loaded: make(chan struct{})}
	d.interval.Store(int64(opts.Interval))
	return d
}

// SetInterval changes the time between Run's periodic reloads (a configuration reload), from the
// next one on. Zero or less means DefaultInterval.
func (d *Directory) SetInterval(i time.Duration) {
	if i <= 0 {
		i = DefaultInterval
	}
	d.interval.Store(int64(i))
}

// Load reads the store once and waits for the result. It returns the store's error when the read
// failed; the previous snapshot, if any, stays in use.
func (d *Directory) Load(ctx context.Context) error {
	select {
	case <-d.startReload(ctx, false):
	case <-ctx.Done():
		return fmt.Errorf("loading projects: %w", ctx.Err())
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.lastErr != "" {
		return fmt.Errorf("loading projects: %s", d.lastErr)
	}
	return nil
}

// Run reloads every Options.Interval until ctx ends, then returns ctx's error. It does not load at
// once: call Load first. While no projects are cached and the last read failed (the store was
// down at start), it tries again sooner: after Options.RetryMin, doubling up to Interval.
func (d *Directory) Run(ctx context.Context) error {
	failures := 0
	timer := time.NewTimer(d.nextWait(&failures))
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-timer.C:
			select {
			case <-d.startReload(ctx, false):
			case <-ctx.Done():
				return ctx.Err()
			}
			timer.Reset(d.nextWait(&failures))
		}
	}
}

// nextWait is the time until Run's next reload: Interval, or while nothing is cached after a
// failed read, RetryMin doubling with each further failure (counted in *failures) up to Interval.
func (d *Directory) nextWait(failures *int) time.Duration {
	interval := time.Duration(d.interval.Load())
	d.mu.Lock()
	failed := d.lastErr != ""
	d.mu.Unlock()
	if !failed || d.snap.Load() != nil {
		*failures = 0
		return interval
	}
	*failures++
	return min(backoff.Doubling{Min: d.opts.RetryMin, Max: interval}.Delay(*failures), interval)
}

// Lookup returns the project serving sender. found is false when no project serves it; err is
// ErrUnavailable when nothing was ever loaded. An unknown sender triggers a reload (at most one per
// MinReloadGap) and waits for it up to MissWait or until ctx ends.
func (d *Directory) Lookup(ctx context.Context, sender string) (p project.Project, found bool, err error) {
	s := d.snap.Load()
	if p, ok := s.lookup(sender); ok {
		return p, true, nil
	}
	if !routable(sender) {
		// Bounces (Postfix asks for the null sender as "<>" too) and keys without a domain
		// never belong to a project: no reload can change that.
		if s == nil {
			return project.Project{}, false, ErrUnavailable
		}
		return project.Project{}, false, nil
	}
	if done := d.startReload(ctx, true); done != nil && !d.slow() {
		wait := time.NewTimer(d.opts.MissWait)
		select {
		case <-done:
		case <-wait.C:
		case <-ctx.Done():
		}
		wait.Stop()
	}
	s = d.snap.Load()
	if p, ok := s.lookup(sender); ok {
		return p, true, nil
	}
	if s == nil {
		return project.Project{}, false, ErrUnavailable
	}
	return project.Project{}, false, nil
}

// Resolve returns the project serving sender, ErrNoProject when none does, or ErrUnavailable when
// the projects could not be read and none are cached.
func (d *Directory) Resolve(ctx context.Context, sender string) (project.Project, error) {
	p, found, err := d.Lookup(ctx, sender)
	if err != nil {
		return project.Project{}, err
	}
	if !found {
		return project.Project{}, ErrNoProject
	}
	return p, nil
}

// Project returns the cached project called name. It never reads the store.
func (d *Directory) Project(name string) (project.Project, bool) {
	s := d.snap.Load()
	if s == nil {
		return project.Project{}, false
	}
	p, ok := s.projects[name]
	return p, ok
}

// Projects returns the cached projects sorted by name. It never reads the store.
func (d *Directory) Projects() []project.Project {
	s := d.snap.Load()
	if s == nil {
		return nil
	}
	out := make([]project.Project, 0, len(s.projects))
	for _, p := range s.projects {
		out = append(out, p)
	}
	slices.SortFunc(out, func(a, b project.Project) int { return strings.Compare(a.Name, b.Name) })
	return out
}

// All yields the cached projects in no particular order, without copying the list (Projects
// sorts a copy). It never reads the store.
func (d *Directory) All() iter.Seq[project.Project] {
	s := d.snap.Load()
	return func(yield func(project.Project) bool) {
		if s == nil {
			return
		}
		for _, p := range s.projects {
			if !yield(p) {
				return
			}
		}
	}
}

// Loaded is closed once the first snapshot is in use: the projects have been read at least once.
func (d *Directory) Loaded() <-chan struct{} { return d.loaded }

// Len returns how many projects are cached.
func (d *Directory) Len() int {
	if s := d.snap.Load(); s != nil {
		return len(s.projects)
	}
	return 0
}

// Generation numbers the snapshot in use: it changes with every snapshot built from a read of the
// projects, and stays while reloads find the store unchanged, so that a consumer of every project
// (the health model) can skip its work when nothing changed. Zero before the first load.
func (d *Directory) Generation() uint64 {
	if s := d.snap.Load(); s != nil {
		return s.gen
	}
	return 0
}

// Table returns the current routing table (nil before the first load). It never reads the store.
func (d *Directory) Table() *route.Table {
	if s := d.snap.Load(); s != nil {
		return s.table
	}
	return nil
}

// ServesDomain reports whether any cached project's senders name domain.
func (d *Directory) ServesDomain(domain string) bool { return d.Table().ServesDomain(domain) }

// Ready reports whether projects are loaded. The reason explains a false answer, or says that the
// snapshot in use is stale because the last reload failed.
func (d *Directory) Ready() (bool, string) {
	s := d.snap.Load()
	d.mu.Lock()
	lastErr := d.lastErr
	d.mu.Unlock()
	switch {
	case s == nil && lastErr != "":
		return false, "projects could not be loaded: " + lastErr
	case s == nil:
		return false, "projects not loaded yet"
	case lastErr != "":
		return true, fmt.Sprintf("serving projects loaded at %s; the last reload failed: %s", s.loadedAt.Format(time.RFC3339), lastErr)
	}
	return true, ""
}

// LastLoad returns the time of the last successful load (zero before the first).
func (d *Directory) LastLoad() time.Time {
	if s := d.snap.Load(); s != nil {
		return s.loadedAt
	}
	return time.Time{}
}

// StoreReads returns how many times the store has been read.
func (d *Directory) StoreReads() int64 { return d.reads.Load() }

// slow reports whether the last reload took longer than a miss may wait (Options.MissWait).
func (d *Directory) slow() bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.lastTook > d.opts.MissWait
}

// startReload starts a reload unless one is running, and returns the done channel of the running
// one. A reload triggered by an unknown sender (onMiss) is skipped, and done is nil, when the
// previous reload started less than MinReloadGap ago.
func (d *Directory) startReload(ctx context.Context, onMiss bool) (done <-chan struct{}) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.inflight != nil {
		return d.inflight
	}
	now := d.opts.Now()
	if onMiss && !d.lastStart.IsZero() {
		since := now.Sub(d.lastStart)
		if !d.lastEnd.IsZero() {
			since = now.Sub(d.lastEnd)
		}
		if since < max(d.opts.MinReloadGap, 4*d.lastTook) {
			return nil
		}
	}
	d.lastStart = now
	ch := make(chan struct{})
	d.inflight = ch
	// The read outlives a caller that stops waiting, so that its result still serves the next one.
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), d.opts.LoadTimeout)
	go func() {
		defer cancel()
		d.reload(rctx)
		d.mu.Lock()
		d.lastEnd = d.opts.Now()
		d.lastTook = d.lastEnd.Sub(now)
		d.inflight = nil
		d.mu.Unlock()
		close(ch)
	}()
	return ch
}

// reload reads the store and publishes a new snapshot, or records the error. A store that is a
// store.Stamper and still gives the stamp of the snapshot in use is not read further: the snapshot
// is kept, marked as current now.
func (d *Directory) reload(ctx context.Context) {
	d.reads.Add(1)
	var stamp string
	if st, ok := d.src.(store.Stamper); ok {
		var err error
		if stamp, err = st.ProjectsStamp(ctx); err != nil {
			d.recordError(err)
			return
		}
		now := d.opts.Now()
		if cur := d.snap.Load(); cur != nil && cur.stamp == stamp && (cur.until.IsZero() || now.Before(cur.until)) {
			kept := *cur
			kept.loadedAt = now
			d.snap.Store(&kept)
			d.recordCurrent()
			return
		}
	}
	projects, err := d.src.Projects(ctx)
	if err != nil {
		d.recordError(err)
		return
	}
	now := d.opts.Now()
	live := make([]project.Project, 0, len(projects))
	var removed []project.Project
	var until time.Time
	for _, p := range projects {
		switch {
		case !p.IsRemoved():
			live = append(live, p)
		case now.Before(p.HeldUntil(d.opts.RemovedHold)):
			removed = append(removed, p)
			if held := p.HeldUntil(d.opts.RemovedHold); until.IsZero() || held.Before(until) {
				until = held
			}
		}
	}
	table, problems := route.New(live)
	// Two tombstones naming one sender are not worth a warning: either defers the mail.
	removedTable, _ := route.New(removed)
	for _, p := range live {
		for _, perr := range p.Validate() {
			problems = append(problems, fmt.Errorf("project %q: %w", p.Name, perr))
		}
	}
	s := &snapshot{projects: make(map[string]project.Project, len(projects)), table: table, removed: removedTable,
		loadedAt: now, stamp: stamp, until: until, gen: d.gens.Add(1)}
	for _, p := range append(live, removed...) {
		s.projects[p.Name] = p
	}
	projects = append(live, removed...)
	d.snap.Store(s)
	d.loadOnce.Do(func() { close(d.loaded) })
	d.recordSuccess(s, projects, problems)
}

func (d *Directory) recordError(err error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	msg := err.Error()
	if msg == d.lastErr {
		return
	}
	d.lastErr = msg
	if d.snap.Load() == nil {
		d.log.Error("reading projects failed and none are cached: mail is deferred", "err", msg)
	} else {
		d.log.Warn("reading projects failed: keeping the last good ones", "err", msg)
	}
}

// recordCurrent notes a reload that found the store unchanged.
func (d *Directory) recordCurrent() {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.lastErr != "" {
		d.log.Info("reading projects works again")
		d.lastErr = ""
	}
}

func (d *Directory) recordSuccess(s *snapshot, projects []project.Project, problems []error) {
	shape := make([]string, 0, len(projects))
	enabled := 0
	for _, p := range projects {
		shape = append(shape, fmt.Sprintf("%s@%d", p.Name, p.Version))
		if p.Enabled {
			enabled++
		}
	}
	slices.Sort(shape)
	problemText := make([]string, 0, len(problems))
	for _, e := range problems {
		problemText = append(problemText, e.Error())
	}

	d.mu.Lock()
	defer d.mu.Unlock()
	if d.lastErr != "" {
		d.log.Info("reading projects works again")
		d.lastErr = ""
	}
	if joined := strings.Join(shape, ","); joined != d.lastShape {
		d.lastShape = joined
		d.log.Info("projects loaded", "projects", len(projects), "enabled", enabled, "senders", s.table.Len())
	}
	if joined := strings.Join(problemText, "\n"); joined != d.lastProblem {
		d.lastProblem = joined
		for _, text := range problemText {
			d.log.Warn("project configuration problem", "problem", text)
		}
	}
}

func (s *snapshot) lookup(sender string) (project.Project, bool) {
	if s == nil {
		return project.Project{}, false
	}
	name, ok := s.table.Lookup(sender)
	if !ok {
		if name, ok = s.removed.Lookup(sender); !ok {
			return project.Project{}, false
		}
	}
	p, ok := s.projects[name]
	return p, ok
}

// routable reports whether sender could belong to a project at all.
func routable(sender string) bool {
	switch sender {
	case "", "<>", `"<>"`:
		return false
	}
	at := strings.LastIndexByte(sender, '@')
	return at > 0 && at < len(sender)-1
}
