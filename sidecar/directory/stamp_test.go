package directory

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/postern/postern/sidecar/project"
)

// stampedStore is a fakeStore that is a store.Stamper and counts its full reads.
type stampedStore struct {
	*fakeStore
	mu       sync.Mutex
	stamp    string
	stampErr error
	full     int
}

func (s *stampedStore) ProjectsStamp(context.Context) (string, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.stamp, s.stampErr
}

func (s *stampedStore) Projects(ctx context.Context) ([]project.Project, error) {
	s.mu.Lock()
	s.full++
	s.mu.Unlock()
	return s.fakeStore.Projects(ctx)
}

func (s *stampedStore) setStamp(v string, err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.stamp, s.stampErr = v, err
}

func (s *stampedStore) fullReads() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.full
}

func TestUnchangedStampKeepsTheSnapshot(t *testing.T) {
	t.Parallel()
	c := &clock{now: time.Unix(1_700_000_000, 0)}
	logs := &logBuffer{}
	src := &stampedStore{fakeStore: &fakeStore{projects: []project.Project{proj("client-a", true, "@client-a.example")}}, stamp: "1"}
	d := New(src, Options{Now: c.Now, Logger: slog.New(slog.NewTextHandler(logs, nil)), RemovedHold: time.Hour})
	ctx := t.Context()
	select {
	case <-d.Loaded():
		t.Fatal("Loaded is closed before any load")
	default:
	}
	if err := d.Load(ctx); err != nil {
		t.Fatal(err)
	}
	if src.fullReads() != 1 {
		t.Fatalf("the first load read the projects %d times, want 1", src.fullReads())
	}
	select {
	case <-d.Loaded():
	default:
		t.Fatal("Loaded is not closed after the first load")
	}

	// The same stamp: nothing is read, the snapshot stays and counts as current.
	c.advance(10 * time.Second)
	src.set([]project.Project{proj("client-b", true, "@client-b.example")}, nil) // unseen: same stamp
	if err := d.Load(ctx); err != nil {
		t.Fatal(err)
	}
	if src.fullReads() != 1 {
		t.Fatalf("an unchanged stamp read the projects again (%d reads)", src.fullReads())
	}
	if _, ok := d.Project("client-a"); !ok {
		t.Fatal("the snapshot was dropped")
	}
	if got := d.LastLoad(); !got.Equal(c.Now()) {
		t.Errorf("LastLoad = %v, want the time of the check %v", got, c.Now())
	}
	if d.StoreReads() != 2 {
		t.Errorf("StoreReads = %d, want 2: the stamp is a read of the store", d.StoreReads())
	}
	if d.Generation() != 1 {
		t.Errorf("Generation = %d after a reload that kept the snapshot, want 1", d.Generation())
	}

	// A new stamp: the projects are read.
	src.setStamp("2", nil)
	if err := d.Load(ctx); err != nil {
		t.Fatal(err)
	}
	if _, ok := d.Project("client-b"); !ok || src.fullReads() != 2 {
		t.Fatalf("after a new stamp: client-b loaded %v, %d reads", ok, src.fullReads())
	}
	if d.Generation() != 2 || d.Len() != 1 {
		t.Errorf("after a new snapshot: Generation %d, Len %d; want 2, 1", d.Generation(), d.Len())
	}
	for p := range d.All() {
		if p.Name != "client-b" {
			t.Errorf("All yields %q", p.Name)
		}
	}

	// A failing stamp is a failed reload: the last snapshot stays, Ready says so, and the next
	// good stamp (the same as before) recovers without reading the projects.
	src.setStamp("", errors.New("store down"))
	if err := d.Load(ctx); err == nil {
		t.Fatal("Load with a failing stamp succeeded")
	}
	if ok, reason := d.Ready(); !ok || reason == "" {
		t.Errorf("Ready = %v %q, want ready with the failed reload named", ok, reason)
	}
	src.setStamp("2", nil)
	if err := d.Load(ctx); err != nil {
		t.Fatal(err)
	}
	if ok, reason := d.Ready(); !ok || reason != "" || src.fullReads() != 2 {
		t.Errorf("after recovery: Ready = %v %q, %d reads", ok, reason, src.fullReads())
	}
	if logs.count("reading projects works again") != 1 {
		t.Errorf("the recovery was not logged once:\n%s", logs)
	}
}

func TestTombstoneHoldEndsDespiteAnUnchangedStamp(t *testing.T) {
	t.Parallel()
	c := &clock{now: time.Unix(1_700_000_000, 0)}
	gone := project.Tombstone(project.Project{Name: "gone", Senders: []string{"@gone.example"}, Version: 2}, c.Now())
	src := &stampedStore{fakeStore: &fakeStore{projects: []project.Project{gone}}, stamp: "1"}
	d := New(src, Options{Now: c.Now, RemovedHold: time.Hour})
	ctx := t.Context()
	if err := d.Load(ctx); err != nil {
		t.Fatal(err)
	}
	c.advance(30 * time.Minute)
	if err := d.Load(ctx); err != nil {
		t.Fatal(err)
	}
	if _, ok := d.Project("gone"); !ok || src.fullReads() != 1 {
		t.Fatalf("within the hold: tombstone kept %v, %d reads (want kept, 1)", ok, src.fullReads())
	}
	c.advance(31 * time.Minute)
	if err := d.Load(ctx); err != nil {
		t.Fatal(err)
	}
	if _, ok := d.Project("gone"); ok {
		t.Fatalf("the tombstone outlived its hold under an unchanged stamp (%d reads)", src.fullReads())
	}
}
