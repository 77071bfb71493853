package transfer_test

import (
	"bytes"
	"errors"
	"fmt"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/postern/postern/sidecar/secret"
	"github.com/postern/postern/sidecar/store"
	"github.com/postern/postern/sidecar/store/boltstore"
	"github.com/postern/postern/sidecar/store/storetest"
	"github.com/postern/postern/sidecar/store/transfer"
	"github.com/postern/postern/sidecar/store/vaultstore"
	"github.com/postern/postern/vault"
	"github.com/postern/postern/vault/vaulttest"
)

func newBolt(t *testing.T) *boltstore.Store {
	t.Helper()
	dir := t.TempDir()
	s, err := boltstore.Create(t.Context(), boltstore.Options{Path: filepath.Join(dir, "store.db"), KeyFile: filepath.Join(dir, "store.key")})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func newVault(t *testing.T) *vaultstore.Store {
	t.Helper()
	srv := vaulttest.New(t, vaulttest.Options{})
	vc, err := vault.New(t.Context(), vault.Options{Address: srv.URL, Auth: vault.Auth{Token: vault.Secret(srv.RootToken)}})
	if err != nil {
		t.Fatal(err)
	}
	s, err := vaultstore.New(vc, vaultstore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// sample fills s with n projects, every third without a token, and returns what it wrote.
func sample(t *testing.T, s store.Store, n int) map[string]transfer.Record {
	t.Helper()
	want := make(map[string]transfer.Record)
	for i := range n {
		name := fmt.Sprintf("client-%03d", i)
		p := storetest.OAuthProject(name)
		if i%2 == 1 {
			p = storetest.BasicProject(name)
		}
		if _, err := s.PutProject(t.Context(), p); err != nil {
			t.Fatal(err)
		}
		r := transfer.Record{Project: p}
		if i%3 != 0 {
			tok := storetest.SampleToken(name)
			tok.RefreshToken = secret.New(fmt.Sprintf("refresh-%d-of-%s", i, name))
			if _, err := s.PutToken(t.Context(), name, tok); err != nil {
				t.Fatal(err)
			}
			r.Token = &tok
		}
		want[name] = r
	}
	return want
}

// same checks that s holds exactly want, secrets included, without printing a secret.
func same(t *testing.T, where string, s store.Store, want map[string]transfer.Record) {
	t.Helper()
	snap, err := transfer.Read(t.Context(), s, transfer.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if len(snap.Records) != len(want) {
		t.Fatalf("%s: %d projects, want %d", where, len(snap.Records), len(want))
	}
	for _, got := range snap.Records {
		w, ok := want[got.Project.Name]
		if !ok {
			t.Fatalf("%s: unexpected project %s", where, got.Project.Name)
		}
		gp, wp := got.Project, w.Project
		gp.Version, wp.Version = 0, 0
		if !reflect.DeepEqual(gp, wp) || !gp.Auth.Password.Equal(wp.Auth.Password) ||
			(wp.Auth.OAuth != nil && !gp.Auth.OAuth.ClientSecret.Equal(wp.Auth.OAuth.ClientSecret)) {
			t.Errorf("%s: project %s changed", where, wp.Name)
		}
		if (got.Token == nil) != (w.Token == nil) {
			t.Fatalf("%s: project %s has a token: %v, want %v", where, wp.Name, got.Token != nil, w.Token != nil)
		}
		if w.Token == nil {
			continue
		}
		gt, wt := *got.Token, *w.Token
		if !gt.RefreshToken.Equal(wt.RefreshToken) || !gt.AccessToken.Equal(wt.AccessToken) ||
			!gt.Expiry.Equal(wt.Expiry) || gt.Account != wt.Account || gt.State != wt.State {
			t.Errorf("%s: the token of %s changed", where, wp.Name)
		}
	}
}

// Every project and token goes from the embedded store to Vault and back intact.
func TestCopyBoltVaultAndBack(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	bolt, vs, back := newBolt(t), newVault(t), newBolt(t)
	want := sample(t, bolt, 30)

	var last [3]int
	stages := map[string]bool{}
	progress := func(stage string, done, total int) {
		stages[stage] = true
		last = [3]int{done, total, 0}
	}
	if _, err := transfer.Copy(ctx, vs, bolt, transfer.Options{Progress: progress}); err != nil {
		t.Fatal(err)
	}
	if !stages["reading"] || !stages["writing"] || last[0] != last[1] || last[1] != 30+20 {
		t.Errorf("progress: stages %v, last %d of %d, want 50 of 50", stages, last[0], last[1])
	}
	same(t, "vault", vs, want)

	if _, err := transfer.Copy(ctx, back, vs, transfer.Options{}); err != nil {
		t.Fatal(err)
	}
	same(t, "back in the embedded store", back, want)
}

// A target holding some of the projects is refused whole unless Replace is set.
func TestCopyConflicts(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	src, dst := newBolt(t), newBolt(t)
	want := sample(t, src, 4)
	if _, err := dst.PutProject(ctx, storetest.BasicProject("client-002")); err != nil {
		t.Fatal(err)
	}
	if _, err := dst.PutToken(ctx, "client-001", storetest.SampleToken("stale")); err != nil {
		t.Fatal(err)
	}
	_, err := transfer.Copy(ctx, dst, src, transfer.Options{})
	var conflict *transfer.ConflictError
	if !errors.As(err, &conflict) || !reflect.DeepEqual(conflict.Names, []string{"client-001", "client-002"}) {
		t.Fatalf("Copy into a store holding two of the names: %v", err)
	}
	if _, err := dst.Project(ctx, "client-000"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("a refused copy wrote project client-000: %v", err)
	}
	if _, err := transfer.Copy(ctx, dst, src, transfer.Options{Replace: true}); err != nil {
		t.Fatal(err)
	}
	same(t, "after replace", dst, want)
}

func TestArchiveRoundTrip(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	src, dst := newBolt(t), newVault(t)
	want := sample(t, src, 12)
	snap, err := transfer.Read(ctx, src, transfer.Options{})
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	o := transfer.ArchiveOptions{WorkFactor: 10, Now: func() time.Time { return time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC) }}
	if err := transfer.Export(&buf, snap, "correct horse battery", o); err != nil {
		t.Fatal(err)
	}
	for _, s := range []string{"client-000", "password-of-client-001", "refresh-1-of-client-001", "postern-store-archive"} {
		if bytes.Contains(buf.Bytes(), []byte(s)) {
			t.Errorf("the archive holds %q in clear", s)
		}
	}
	archive := buf.Bytes()

	if _, err := transfer.ReadArchive(bytes.NewReader(archive), "wrong horse battery", o); !errors.Is(err, transfer.ErrPassphrase) {
		t.Fatalf("wrong passphrase: %v, want ErrPassphrase", err)
	}
	for _, cut := range []int{len(archive) - 1, len(archive) / 2} {
		if _, err := transfer.ReadArchive(bytes.NewReader(archive[:cut]), "correct horse battery", o); err == nil {
			t.Errorf("an archive cut at %d of %d bytes was read", cut, len(archive))
		}
	}
	changed := bytes.Clone(archive)
	changed[len(changed)-30] ^= 1
	if _, err := transfer.ReadArchive(bytes.NewReader(changed), "correct horse battery", o); err == nil {
		t.Error("a changed archive was read")
	}

	got, err := transfer.ReadArchive(bytes.NewReader(archive), "correct horse battery", o)
	if err != nil {
		t.Fatal(err)
	}
	if err := transfer.Write(ctx, dst, got, transfer.Options{}); err != nil {
		t.Fatal(err)
	}
	same(t, "imported", dst, want)
}

func TestExportRefusesShortPassphrase(t *testing.T) {
	t.Parallel()
	err := transfer.Export(&bytes.Buffer{}, &transfer.Snapshot{}, "short", transfer.ArchiveOptions{WorkFactor: 10})
	if err == nil || !strings.Contains(err.Error(), "at least") {
		t.Fatalf("Export with a short passphrase: %v", err)
	}
}

// The empty store exports and imports as nothing.
func TestArchiveEmpty(t *testing.T) {
	t.Parallel()
	var buf bytes.Buffer
	o := transfer.ArchiveOptions{WorkFactor: 10}
	if err := transfer.Export(&buf, &transfer.Snapshot{}, "correct horse battery", o); err != nil {
		t.Fatal(err)
	}
	snap, err := transfer.ReadArchive(&buf, "correct horse battery", o)
	if err != nil || len(snap.Records) != 0 {
		t.Fatalf("%v, %v", snap, err)
	}
}
