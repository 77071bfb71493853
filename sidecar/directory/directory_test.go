package directory

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/postern/postern/sidecar/project"
)

// fakeStore is an in-memory store.Projects whose reads can fail or be held.
type fakeStore struct {
	mu       sync.Mutex
	projects []project.Project
	err      error
	gate     chan struct{} // when set, reads wait for it (or ctx)
	entered  chan struct{} // when set, each read sends on it first
	onRead   func()        // when set, called by each read (a slow store advances the clock)
}

func (f *fakeStore) Projects(ctx context.Context) ([]project.Project, error) {
	f.mu.Lock()
	gate, entered, onRead := f.gate, f.entered, f.onRead
	f.mu.Unlock()
	if onRead != nil {
		onRead()
	}
	if entered != nil {
		select {
		case entered <- struct{}{}:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	if gate != nil {
		select {
		case <-gate:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.err != nil {
		return nil, f.err
	}
	return append([]project.Project(nil), f.projects...), nil
}

func (f *fakeStore) set(ps []project.Project, err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.projects, f.err = ps, err
}

// clock is a manual clock.
type clock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *clock) advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

// logBuffer collects log output safely.
type logBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.Write(p)
}

func (l *logBuffer) count(s string) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return strings.Count(l.buf.String(), s)
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.String()
}

func proj(name string, enabled bool, senders ...string) project.Project {
	return project.Project{Name: name, Enabled: enabled, Senders: senders, Version: 1}
}

type fixture struct {
	store *fakeStore
	clock *clock
	logs  *logBuffer
	dir   *Directory
}

func newFixture(t *testing.T, opts Options, ps ...project.Project) *fixture {
	t.Helper()
	f := &fixture{store: &fakeStore{projects: ps}, clock: &clock{now: time.Unix(1_700_000_000, 0)}, logs: &logBuffer{}}
	opts.Now = f.clock.Now
	opts.Logger = slog.New(slog.NewTextHandler(f.logs, nil))
	f.dir = New(f.store, opts)
	return f
}

func TestResolve(t *testing.T) {
	t.Parallel()
	f := newFixture(t, Options{}, proj("client-a", true, "noreply@client-a.example"), proj("client-b", false, "@client-b.example"))
	ctx := t.Context()
	if err := f.dir.Load(ctx); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name    string
		sender  string
		want    string
		enabled bool
		err     error
	}{
		{"exact address", "NoReply@client-a.example", "client-a", true, nil},
		{"disabled project still resolves", "x@client-b.example", "client-b", false, nil},
		{"unknown sender", "x@unknown.example", "", false, ErrNoProject},
		{"bounce", "", "", false, ErrNoProject},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p, err := f.dir.Resolve(ctx, tc.sender)
			if !errors.Is(err, tc.err) || p.Name != tc.want || p.Enabled != tc.enabled {
				t.Fatalf("Resolve(%q) = %q (enabled %v), %v; want %q (enabled %v), %v", tc.sender, p.Name, p.Enabled, err, tc.want, tc.enabled, tc.err)
			}
		})
	}
}

func TestSteadyStateReadsTheStoreNever(t *testing.T) {
	t.Parallel()
	f := newFixture(t, Options{}, proj("client-a", true, "@client-a.example"))
	if err := f.dir.Load(t.Context()); err != nil {
		t.Fatal(err)
	}
	if got := f.dir.StoreReads(); got != 1 {
		t.Fatalf("StoreReads after Load = %d, want 1", got)
	}
	for range 1000 {
		if _, err := f.dir.Resolve(t.Context(), "someone@client-a.example"); err != nil {
			t.Fatal(err)
		}
	}
	if got := f.dir.StoreReads(); got != 1 {
		t.Fatalf("1000 known senders caused %d store reads, want none", got-1)
	}
}

func TestUnknownSenderTriggersOneReloadPerGap(t *testing.T) {
	t.Parallel()
	f := newFixture(t, Options{MinReloadGap: time.Minute}, proj("client-a", true, "@client-a.example"))
	ctx := t.Context()
	if err := f.dir.Load(ctx); err != nil {
		t.Fatal(err)
	}
	f.store.set([]project.Project{proj("client-a", true, "@client-a.example"), proj("new", true, "@new.example")}, nil)

	// Within the gap since the last load, an unknown sender does not reload.
	if _, err := f.dir.Resolve(ctx, "x@new.example"); !errors.Is(err, ErrNoProject) {
		t.Fatalf("within the gap: err = %v, want ErrNoProject", err)
	}
	if got := f.dir.StoreReads(); got != 1 {
		t.Fatalf("StoreReads = %d within the gap, want 1", got)
	}

	// After the gap it does, and waits for the result.
	f.clock.advance(time.Minute)
	p, err := f.dir.Resolve(ctx, "x@new.example")
	if err != nil || p.Name != "new" {
		t.Fatalf("after the gap: %q, %v; want the new project", p.Name, err)
	}
	// A still unknown sender right after does not reload again.
	if _, err := f.dir.Resolve(ctx, "x@still-unknown.example"); !errors.Is(err, ErrNoProject) {
		t.Fatal(err)
	}
	if got := f.dir.StoreReads(); got != 2 {
		t.Fatalf("StoreReads = %d, want 2", got)
	}
}

// With very many projects a read takes seconds. Misses (every sender Postfix asks about that is
// not Postern's) then neither wait for a reload that cannot finish within MissWait, nor start
// reloads back to back: the next one waits four times the last one's duration after its end.
func TestSlowReloadsNeitherHoldMissesNorRunBackToBack(t *testing.T) {
	t.Parallel()
	f := newFixture(t, Options{MinReloadGap: time.Second, MissWait: 2 * time.Second}, proj("client-a", true, "@client-a.example"))
	f.store.onRead = func() { f.clock.advance(3 * time.Second) } // each read takes 3 s
	ctx := t.Context()
	if err := f.dir.Load(ctx); err != nil {
		t.Fatal(err)
	}
	f.clock.advance(13 * time.Second) // past 4 × 3 s since the load ended
	gate := make(chan struct{})
	f.store.mu.Lock()
	f.store.gate = gate
	f.store.mu.Unlock()
	done := make(chan error, 1)
	go func() {
		_, err := f.dir.Resolve(ctx, "x@unknown.example")
		done <- err
	}()
	select {
	case err := <-done:
		if !errors.Is(err, ErrNoProject) {
			t.Fatalf("miss: %v, want ErrNoProject at once", err)
		}
	case <-time.After(time.Second): // half of MissWait: a miss that waits never answers by then
		t.Fatal("a miss waited for a reload slower than MissWait")
	}
	close(gate)
	// The miss did start one reload; wait until it has ended.
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(time.Millisecond) {
		f.dir.mu.Lock()
		running := f.dir.inflight != nil
		f.dir.mu.Unlock()
		if f.dir.StoreReads() == 2 && !running {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the reload the miss started did not end (StoreReads %d)", f.dir.StoreReads())
		}
	}
	f.clock.advance(5 * time.Second) // past MinReloadGap, within 4 × 3 s of the reload's end
	if _, err := f.dir.Resolve(ctx, "y@unknown.example"); !errors.Is(err, ErrNoProject) {
		t.Fatal(err)
	}
	if got := f.dir.StoreReads(); got != 2 {
		t.Fatalf("StoreReads = %d: a miss started a reload %v after a 3 s one ended", got, 5*time.Second)
	}
}

func TestConcurrentMissesShareOneReload(t *testing.T) {
	t.Parallel()
	f := newFixture(t, Options{MinReloadGap: time.Minute, MissWait: time.Hour}, proj("client-a", true, "@client-a.example"))
	ctx := t.Context()
	if err := f.dir.Load(ctx); err != nil {
		t.Fatal(err)
	}
	f.clock.advance(time.Minute)
	gate := make(chan struct{})
	entered := make(chan struct{}, 1)
	f.store.mu.Lock()
	f.store.gate, f.store.entered = gate, entered
	f.store.projects = append(f.store.projects, proj("new", true, "@new.example"))
	f.store.mu.Unlock()

	const n = 20
	results := make(chan string, n)
	for range n {
		go func() {
			p, _ := f.dir.Resolve(ctx, "x@new.example")
			results <- p.Name
		}()
	}
	<-entered // the one reload is reading
	close(gate)
	for range n {
		// Every caller either waited for the shared reload or came after it: all see the project.
		if got := <-results; got != "new" {
			t.Fatalf("a caller got %q", got)
		}
	}
	if got := f.dir.StoreReads(); got != 2 {
		t.Fatalf("StoreReads = %d for %d concurrent misses, want 2 (load + one reload)", got, n)
	}
}

func TestLookupWaitIsBoundedByContext(t *testing.T) {
	t.Parallel()
	f := newFixture(t, Options{MissWait: time.Hour})
	gate := make(chan struct{})
	t.Cleanup(func() { close(gate) })
	entered := make(chan struct{}, 1)
	f.store.gate, f.store.entered = gate, entered

	ctx, cancel := context.WithCancel(t.Context())
	errc := make(chan error, 1)
	go func() {
		_, err := f.dir.Resolve(ctx, "x@client-a.example")
		errc <- err
	}()
	<-entered
	cancel()
	if err := <-errc; !errors.Is(err, ErrUnavailable) {
		t.Fatalf("err = %v, want ErrUnavailable (nothing loaded)", err)
	}
}

func TestFailedReloadKeepsLastGoodSnapshot(t *testing.T) {
	t.Parallel()
	f := newFixture(t, Options{}, proj("client-a", true, "@client-a.example"))
	ctx := t.Context()
	if err := f.dir.Load(ctx); err != nil {
		t.Fatal(err)
	}
	loadedAt := f.dir.LastLoad()
	if ok, reason := f.dir.Ready(); !ok || reason != "" {
		t.Fatalf("Ready = %v %q", ok, reason)
	}

	f.store.set(nil, errors.New("vault: connection refused"))
	for range 3 {
		f.clock.advance(time.Minute)
		if err := f.dir.Load(ctx); err == nil || !strings.Contains(err.Error(), "connection refused") {
			t.Fatalf("Load error = %v", err)
		}
	}
	if p, err := f.dir.Resolve(ctx, "x@client-a.example"); err != nil || p.Name != "client-a" {
		t.Fatalf("stale snapshot not served: %q %v", p.Name, err)
	}
	if ok, reason := f.dir.Ready(); !ok || !strings.Contains(reason, "connection refused") {
		t.Fatalf("Ready = %v %q; want ready with the failure named", ok, reason)
	}
	if !f.dir.LastLoad().Equal(loadedAt) {
		t.Fatal("LastLoad moved on a failed reload")
	}
	if n := f.logs.count("connection refused"); n != 1 {
		t.Fatalf("the same reload error was logged %d times, want once:\n%s", n, f.logs)
	}

	f.store.set([]project.Project{proj("client-a", true, "@client-a.example")}, nil)
	if err := f.dir.Load(ctx); err != nil {
		t.Fatal(err)
	}
	if ok, reason := f.dir.Ready(); !ok || reason != "" {
		t.Fatalf("Ready after recovery = %v %q", ok, reason)
	}
	if f.logs.count("works again") != 1 {
		t.Fatalf("recovery not logged:\n%s", f.logs)
	}
}

func TestNothingCachedIsUnavailable(t *testing.T) {
	t.Parallel()
	f := newFixture(t, Options{})
	if ok, reason := f.dir.Ready(); ok || reason == "" {
		t.Fatalf("Ready before any load = %v %q", ok, reason)
	}
	f.store.set(nil, errors.New("store sealed"))
	if err := f.dir.Load(t.Context()); err == nil {
		t.Fatal("Load succeeded")
	}
	if _, err := f.dir.Resolve(t.Context(), "x@client-a.example"); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("err = %v, want ErrUnavailable", err)
	}
	if ok, reason := f.dir.Ready(); ok || !strings.Contains(reason, "store sealed") {
		t.Fatalf("Ready = %v %q", ok, reason)
	}
}

func TestConflictsAreLoggedOncePerChange(t *testing.T) {
	t.Parallel()
	ps := []project.Project{proj("alpha", true, "@dup.example"), proj("beta", true, "@dup.example")}
	f := newFixture(t, Options{}, ps...)
	for range 3 {
		if err := f.dir.Load(t.Context()); err != nil {
			t.Fatal(err)
		}
	}
	if n := f.logs.count(`claimed by projects`); n != 1 {
		t.Fatalf("conflict logged %d times, want once:\n%s", n, f.logs)
	}
	if p, _ := f.dir.Resolve(t.Context(), "x@dup.example"); p.Name != "alpha" {
		t.Fatalf("conflict winner = %q, want alpha", p.Name)
	}
	// A new conflict is a change and is logged.
	f.store.set(append(ps, proj("gamma", true, "@dup.example")), nil)
	if err := f.dir.Load(t.Context()); err != nil {
		t.Fatal(err)
	}
	if n := f.logs.count(`gamma`); n == 0 {
		t.Fatalf("new conflict not logged:\n%s", f.logs)
	}
}

func TestRunReloadsPeriodically(t *testing.T) {
	t.Parallel()
	f := newFixture(t, Options{Interval: time.Millisecond}, proj("client-a", true, "@client-a.example"))
	entered := make(chan struct{})
	f.store.entered = entered
	ctx, cancel := context.WithCancel(t.Context())
	errc := make(chan error, 1)
	go func() { errc <- f.dir.Run(ctx) }()
	for range 3 {
		<-entered
	}
	if _, err := f.dir.Resolve(ctx, "x@client-a.example"); err != nil {
		t.Fatalf("after periodic loads: %v", err)
	}
	cancel()
	if err := <-errc; !errors.Is(err, context.Canceled) {
		t.Fatalf("Run returned %v", err)
	}
}

func TestAccessors(t *testing.T) {
	t.Parallel()
	f := newFixture(t, Options{}, proj("b", true, "x@b.example"), proj("a", false, "@a.example"))
	if f.dir.Table() != nil || f.dir.Projects() != nil || f.dir.ServesDomain("a.example") {
		t.Fatal("accessors answer before any load")
	}
	if err := f.dir.Load(t.Context()); err != nil {
		t.Fatal(err)
	}
	ps := f.dir.Projects()
	if len(ps) != 2 || ps[0].Name != "a" || ps[1].Name != "b" {
		t.Fatalf("Projects = %v", ps)
	}
	if p, ok := f.dir.Project("b"); !ok || p.Name != "b" {
		t.Fatal("Project(b) missing")
	}
	if !f.dir.ServesDomain("B.example") || f.dir.ServesDomain("c.example") {
		t.Fatal("ServesDomain wrong")
	}
	if f.dir.StoreReads() != 1 {
		t.Fatal("accessors read the store")
	}
}

// Postfix asks for the null sender as "<>" (and quoted); such keys, and keys without a domain,
// never reach the store, however often they come.
func TestNullSenderNeverReloads(t *testing.T) {
	t.Parallel()
	f := newFixture(t, Options{MinReloadGap: time.Nanosecond}, proj("client-a", true, "@client-a.example"))
	if err := f.dir.Load(t.Context()); err != nil {
		t.Fatal(err)
	}
	for _, key := range []string{"", "<>", `"<>"`, "postmaster", "x@", "@client-a.example"} {
		for range 10 {
			_, found, err := f.dir.Lookup(t.Context(), key)
			if found || err != nil {
				t.Fatalf("Lookup(%q) = %v, %v", key, found, err)
			}
		}
	}
	if got := f.dir.StoreReads(); got != 1 {
		t.Fatalf("null-sender lookups caused %d store reads, want none", got-1)
	}
}

// TestRunRetriesSoonWhileNothingIsCached: a store that was down at start is read again after
// RetryMin (doubling), not a whole Interval later; once projects are cached, Interval applies.
func TestRunRetriesSoonWhileNothingIsCached(t *testing.T) {
	t.Parallel()
	f := newFixture(t, Options{Interval: time.Hour, RetryMin: time.Millisecond})
	f.store.set(nil, errors.New("vault is sealed"))
	if err := f.dir.Load(t.Context()); err == nil {
		t.Fatal("Load succeeded")
	}
	entered := make(chan struct{})
	f.store.entered = entered
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	go func() { _ = f.dir.Run(ctx) }()
	for range 3 {
		select {
		case <-entered: // a retry, long before the hour is up
		case <-time.After(20 * time.Second):
			t.Fatal("no retry while nothing is cached")
		}
	}
	// The read let in last may already see the store back, or the next one will.
	f.store.set([]project.Project{proj("client-a", true, "@client-a.example")}, nil)
	deadline := time.After(20 * time.Second)
	for ok, _ := f.dir.Ready(); !ok; ok, _ = f.dir.Ready() {
		select {
		case <-entered:
		case <-time.After(time.Millisecond):
		case <-deadline:
			t.Fatal("not ready after the store came back")
		}
	}
	select {
	case <-entered:
		t.Fatal("read again after a successful load, before Interval")
	case <-time.After(100 * time.Millisecond):
	}
}

// A removed project's tombstone keeps answering for its senders (so that its queued mail goes to
// Postern and is deferred, never elsewhere) until its hold ends; a live project claiming the same
// senders routes before it; no problem is logged for the tombstone.
func TestRemovedProjectAnswersUntilItsHoldEnds(t *testing.T) {
	t.Parallel()
	clockStart := time.Unix(1_700_000_000, 0)
	gone := project.Tombstone(project.Project{Name: "gone", Senders: []string{"@gone.example", "noreply@taken.example"}, Version: 3}, clockStart)
	live := proj("taken", true, "@taken.example")
	f := newFixture(t, Options{RemovedHold: time.Hour}, gone, live)
	ctx := t.Context()
	if err := f.dir.Load(ctx); err != nil {
		t.Fatal(err)
	}
	p, err := f.dir.Resolve(ctx, "billing@gone.example")
	if err != nil || p.Name != "gone" || !p.IsRemoved() || p.Enabled {
		t.Fatalf("Resolve of a removed project's sender = %+v, %v; want its tombstone", p, err)
	}
	if p, err := f.dir.Resolve(ctx, "noreply@taken.example"); err != nil || p.Name != "taken" {
		t.Errorf("a sender of a removed project that a live project claims resolves to %q, %v; want the live one", p.Name, err)
	}
	if strings.Contains(f.logs.String(), `project \"gone\"`) {
		t.Errorf("problems logged for a tombstone:\n%s", f.logs)
	}

	f.clock.advance(time.Hour + time.Second)
	if err := f.dir.Load(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := f.dir.Resolve(ctx, "billing@gone.example"); !errors.Is(err, ErrNoProject) {
		t.Errorf("Resolve after the hold = %v, want ErrNoProject", err)
	}
	if _, ok := f.dir.Project("gone"); ok {
		t.Error("the expired tombstone is still listed")
	}
}
