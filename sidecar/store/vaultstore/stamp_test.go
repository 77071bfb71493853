package vaultstore_test

import (
	"fmt"
	"testing"
	"time"

	"github.com/postern/postern/sidecar/store/storetest"
	"github.com/postern/postern/sidecar/store/vaultstore"
	"github.com/postern/postern/vault"
	"github.com/postern/postern/vault/vaulttest"
)

// TestProjectsStamp checks that the stamp costs what a poll costs and changes exactly when what
// Projects returns does: an administrator's write, a delete, a hand edit found by the full scan.
func TestProjectsStamp(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	srv := vaulttest.New(t, vaulttest.Options{})
	admin := newStore(t, client(t, srv, "", ""), vaultstore.Options{})
	for i := range 20 {
		if _, err := admin.PutProject(ctx, storetest.BasicProject(fmt.Sprintf("p%02d", i))); err != nil {
			t.Fatal(err)
		}
	}
	sc := newSidecar(t, srv)
	stamp := func(want vault.Stats) string {
		t.Helper()
		sc.clock.Advance(time.Second)
		before := sc.vc.Stats()
		v, err := sc.s.ProjectsStamp(ctx)
		if err != nil {
			t.Fatalf("ProjectsStamp: %v", err)
		}
		wantCost(t, "a stamp", sc.vc.Stats().Sub(before), want)
		return v
	}
	first := stamp(vault.Stats{Reads: 1 + 20, Lists: 1})
	if again := stamp(vault.Stats{Reads: 1}); again != first {
		t.Fatalf("an unchanged Vault gave a new stamp: %q, then %q", first, again)
	}

	p := storetest.BasicProject("p07")
	p.Version = 1
	p.Upstream.Port = 465
	if _, err := admin.PutProject(ctx, p); err != nil {
		t.Fatal(err)
	}
	changed := stamp(vault.Stats{Reads: 2})
	if changed == first {
		t.Fatal("a changed project kept the stamp")
	}
	if err := admin.DeleteProject(ctx, "p03"); err != nil {
		t.Fatal(err)
	}
	deleted := stamp(vault.Stats{Reads: 2})
	if deleted == changed || deleted == first {
		t.Fatal("a deleted project kept the stamp")
	}
	// A hand edit leaves the index alone: the stamp follows it at the next full scan.
	hand := storetest.BasicProject("p10")
	hand.Limits.MessagesPerMinute = 5
	srv.Put("postern/projects/p10", storedMap(t, hand))
	if v := stamp(vault.Stats{Reads: 1}); v != deleted {
		t.Fatal("a quick poll changed the stamp without reading anything new")
	}
	sc.clock.Advance(time.Minute)
	if v := stamp(vault.Stats{Reads: 1 + 19 + 1 + 1, Lists: 1}); v == deleted {
		t.Fatal("the full scan read a hand edit and kept the stamp")
	}
	ps, _ := sc.poll()
	if ps["p10"].Limits.MessagesPerMinute != 5 {
		t.Fatalf("Projects after the stamp: p10 = %+v", ps["p10"].Limits)
	}
}
