package vaultstore_test

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/postern/postern/sidecar/project"
	"github.com/postern/postern/sidecar/store"
	"github.com/postern/postern/sidecar/store/storetest"
	"github.com/postern/postern/sidecar/store/vaultstore"
	"github.com/postern/postern/vault"
	"github.com/postern/postern/vault/vaulttest"
)

func batch(prefix string, n int) []project.Project {
	ps := make([]project.Project, n)
	for i := range ps {
		ps[i] = storetest.BasicProject(fmt.Sprintf("%s%03d", prefix, i))
	}
	return ps
}

func TestPutProjects(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	srv := vaulttest.New(t, vaulttest.Options{})
	vc := client(t, srv, "", "")
	admin := newStore(t, vc, vaultstore.Options{})
	if _, err := admin.PutProject(ctx, storetest.BasicProject("seed")); err != nil {
		t.Fatal(err)
	}

	// 50 projects: 50 record writes, and one read and one write of the index.
	ps := batch("b", 50)
	before := vc.Stats()
	versions, err := admin.PutProjects(ctx, ps)
	if err != nil {
		t.Fatalf("PutProjects: %v", err)
	}
	wantCost(t, "writing 50 projects", vc.Stats().Sub(before), vault.Stats{Reads: 1, Writes: 51})
	for i, v := range versions {
		if v != 1 {
			t.Fatalf("project %s: version %d, want 1", ps[i].Name, v)
		}
	}
	sc := newSidecar(t, srv)
	got, _ := sc.poll()
	if len(got) != 51 || got["b042"].Upstream.Host != "smtp.b042.example" {
		t.Fatalf("the sidecar sees %d projects, b042 = %+v", len(got), got["b042"])
	}
	sc.clock.Advance(time.Second)
	if _, cost := sc.poll(); cost != (vault.Stats{Reads: 1}) {
		t.Fatalf("a quick poll after the batch cost %+v: the index is not current", cost)
	}

	// Updates name the version they replace.
	for i := range ps {
		ps[i].Version = versions[i]
		ps[i].Upstream.Port = 465
	}
	if versions, err = admin.PutProjects(ctx, ps); err != nil || versions[7] != 2 {
		t.Fatalf("updating the batch: versions %v, %v", versions, err)
	}

	// A bad entry writes nothing.
	for name, bad := range map[string][]project.Project{
		"a name given twice": {storetest.BasicProject("x1"), storetest.BasicProject("x2"), storetest.BasicProject("x1")},
		"an invalid name":    {storetest.BasicProject("x1"), storetest.BasicProject("../x")},
	} {
		before := vc.Stats()
		if v, err := admin.PutProjects(ctx, bad); err == nil || v != nil {
			t.Fatalf("%s: versions %v, error %v", name, v, err)
		}
		if cost := vc.Stats().Sub(before); cost != (vault.Stats{}) {
			t.Fatalf("%s: %+v requests, want none", name, cost)
		}
	}

	// A stale version fails that entry; what was written stays written and indexed, and the error
	// says so.
	mixed := []project.Project{storetest.BasicProject("c0"), ps[3], storetest.BasicProject("c1"), storetest.BasicProject("c2")}
	mixed[1].Version = 1 // it is at 2
	versions, err = admin.PutProjects(ctx, mixed)
	if !errors.Is(err, store.ErrConflict) || versions[1] != 0 {
		t.Fatalf("a stale version: versions %v, error %v", versions, err)
	}
	written := 0
	for _, v := range versions {
		if v > 0 {
			written++
		}
	}
	if want := fmt.Sprintf("(%d of 4 projects written; the others were not)", written); !strings.Contains(err.Error(), want) {
		t.Fatalf("error %q does not say %q", err, want)
	}
	sc.clock.Advance(time.Second)
	got, _ = sc.poll()
	for i, p := range mixed {
		if i == 1 {
			if got[p.Name].Version != 2 {
				t.Fatalf("the stale entry changed the record: version %d", got[p.Name].Version)
			}
			continue
		}
		if _, seen := got[p.Name]; seen != (versions[i] > 0) {
			t.Fatalf("%s: written %v, seen by a quick poll %v", p.Name, versions[i] > 0, seen)
		}
	}
}

// TestFullScanInParallel holds Vault's answers to the reads of project records until as many are
// in flight as the scan may have: a scan reading one record at a time never gets there.
func TestFullScanInParallel(t *testing.T) {
	t.Parallel()
	const workers = 8 // vaultstore's scanWorkers
	ctx := t.Context()
	srv := vaulttest.New(t, vaulttest.Options{})
	admin := newStore(t, client(t, srv, "", ""), vaultstore.Options{})
	if _, err := admin.PutProjects(ctx, batch("p", 40)); err != nil {
		t.Fatal(err)
	}

	var (
		mu                   sync.Mutex
		inFlight, most, seen int
		gate                 = make(chan struct{})
		timedOut, open       bool
	)
	release := func() { // with mu held
		if !open {
			open = true
			close(gate)
		}
	}
	front := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if strings.Contains(r.URL.Path, "/postern/projects/") {
			mu.Lock()
			inFlight++
			seen++
			most = max(most, inFlight)
			if seen == workers {
				release()
			}
			mu.Unlock()
			select {
			case <-gate:
			case <-time.After(15 * time.Second):
				mu.Lock()
				if !open {
					timedOut = true
					release()
				}
				mu.Unlock()
			}
			defer func() { mu.Lock(); inFlight--; mu.Unlock() }()
		}
		srv.ServeHTTP(w, r)
	}))
	t.Cleanup(front.Close)
	vc, err := vault.New(ctx, vault.Options{Address: front.URL, Auth: vault.Auth{Token: vault.Secret(srv.RootToken)}})
	if err != nil {
		t.Fatal(err)
	}
	scanCtx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	ps, err := newStore(t, vc, vaultstore.Options{}).Projects(scanCtx)
	if err != nil || len(ps) != 40 {
		t.Fatalf("Projects: %d projects, %v", len(ps), err)
	}
	mu.Lock()
	defer mu.Unlock()
	if timedOut {
		t.Fatalf("the full scan never had %d reads in flight (at most %d)", workers, most)
	}
	if most > workers {
		t.Fatalf("%d reads in flight, want at most %d", most, workers)
	}
}
