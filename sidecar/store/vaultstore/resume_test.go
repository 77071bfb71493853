package vaultstore_test

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/postern/postern/sidecar/store/storetest"
	"github.com/postern/postern/sidecar/store/vaultstore"
	"github.com/postern/postern/vault"
	"github.com/postern/postern/vault/vaulttest"
)

// TestFullScanResumes checks that a full scan cut short (the sidecar bounds each reload; 100,000
// projects take longer) keeps what it read, so that the next attempt goes on from there and the
// scan ends, rather than starting again every time and never ending.
func TestFullScanResumes(t *testing.T) {
	t.Parallel()
	const n, budget = 100, 25
	ctx := t.Context()
	srv := vaulttest.New(t, vaulttest.Options{})
	admin := newStore(t, client(t, srv, "", ""), vaultstore.Options{})
	for i := range n {
		if _, err := admin.PutProject(ctx, storetest.BasicProject(fmt.Sprintf("p%03d", i))); err != nil {
			t.Fatal(err)
		}
	}

	clock := &clock{t: time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)}
	var (
		mu     sync.Mutex
		reads  int                // reads of project records, data or metadata, in all
		left   int                // reads the current attempt may still make
		cancel context.CancelFunc // ends the current attempt
	)
	front := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if strings.Contains(r.URL.Path, "/postern/projects/") && r.Method == http.MethodGet {
			mu.Lock()
			reads++
			if left--; left == 0 {
				cancel()
			}
			mu.Unlock()
			// Each read takes 3 s: one attempt of a scan lasts longer than the full scan
			// interval (1 min).
			clock.Advance(3 * time.Second)
		}
		srv.ServeHTTP(w, r)
	}))
	t.Cleanup(front.Close)
	vc, err := vault.New(ctx, vault.Options{Address: front.URL, Auth: vault.Auth{Token: vault.Secret(srv.RootToken)}})
	if err != nil {
		t.Fatal(err)
	}
	s := newStore(t, vc, vaultstore.Options{Now: clock.Now})

	// attempt runs Projects with a budget of reads, as a reload bounded by a timeout would.
	attempt := func(max int) (int, error) {
		actx, c := context.WithCancel(ctx)
		defer c()
		mu.Lock()
		left, cancel = max, c
		mu.Unlock()
		ps, err := s.Projects(actx)
		return len(ps), err
	}
	scan := func(what string, want int) {
		t.Helper()
		mu.Lock()
		reads = 0
		mu.Unlock()
		tries := 0
		for {
			tries++
			got, err := attempt(budget)
			if err == nil {
				if got != n {
					t.Fatalf("%s: %d projects, want %d", what, got, n)
				}
				break
			}
			if tries > 10 {
				t.Fatalf("%s never ended: %d attempts of %d reads each, the last: %v", what, tries, budget, err)
			}
		}
		mu.Lock()
		total := reads
		mu.Unlock()
		// The scan that ended counts from its end: the next call is a quick poll, not a new full
		// scan at once (which, as long as the last, would be cut short again, for ever).
		before := vc.Stats()
		if _, err := s.Projects(ctx); err != nil {
			t.Fatal(err)
		}
		wantCost(t, what+", then a call", vc.Stats().Sub(before), vault.Stats{Reads: 1})
		mu.Lock()
		defer mu.Unlock()
		reads = total
		// Each cut-short attempt may lose the reads it had in flight (eight at a time).
		if tries < 3 || reads > want+(tries-1)*8 {
			t.Fatalf("%s: %d attempts and %d reads, want at least 3 attempts and about %d reads", what, tries, reads, want)
		}
		t.Logf("%s: %d attempts, %d reads of %d projects", what, tries, reads, n)
	}

	scan("the first scan", n)
	// A later full scan (metadata reads of cached projects) resumes in the same way, and sees a
	// change made while it was under way.
	// The first scan took 7 minutes of the clock (3 s a read): the next is due 2 × 7 minutes after
	// it ended, not one interval (1 min).
	clock.Advance(2 * time.Minute)
	before := vc.Stats()
	if _, err := s.Projects(ctx); err != nil {
		t.Fatal(err)
	}
	wantCost(t, "a call 2 minutes after a 7-minute scan", vc.Stats().Sub(before), vault.Stats{Reads: 1})
	clock.Advance(time.Hour)
	p := storetest.BasicProject("p099")
	p.Version = 1
	p.Upstream.Port = 2525
	if _, err := admin.PutProject(ctx, p); err != nil {
		t.Fatal(err)
	}
	srv.Put("postern/projects/p098", storedMap(t, storetest.BasicProject("p098"))) // by hand: not in the index
	scan("a later full scan", n+2)
	ps, err := s.Projects(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range ps {
		if p.Name == "p099" && p.Upstream.Port != 2525 || p.Name == "p098" && p.Version != 2 {
			t.Fatalf("the resumed scan missed a change: %s = version %d, port %d", p.Name, p.Version, p.Upstream.Port)
		}
	}
}
