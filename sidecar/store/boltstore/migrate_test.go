package boltstore

import (
	"bytes"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/postern/postern/sidecar/project"
	"github.com/postern/postern/sidecar/secret"
	"github.com/postern/postern/sidecar/store"
	"github.com/postern/postern/sidecar/store/filestore"
	"github.com/postern/postern/sidecar/store/storetest"
)

// legacyStore writes a file store with package filestore itself: two projects with tokens, a deleted
// project, and a token rotated twice. It returns the versions it left.
func legacyStore(t *testing.T, o Options) map[string]int {
	t.Helper()
	ctx := t.Context()
	fs, err := filestore.Open(ctx, filestore.Options{Path: o.Path, KeyFile: o.KeyFile, Create: true})
	if err != nil {
		t.Fatal(err)
	}
	defer fs.Close()
	v := map[string]int{}
	for _, p := range []project.Project{storetest.OAuthProject("client-a"), storetest.BasicProject("client-b"), storetest.BasicProject("gone")} {
		if v[p.Name], err = fs.PutProject(ctx, p); err != nil {
			t.Fatal(err)
		}
	}
	tok := storetest.SampleToken("client-a")
	for i := range 3 {
		tok.RefreshToken = secret.New("refresh-" + string(rune('0'+i)))
		if tok.Version, err = fs.PutToken(ctx, "client-a", tok); err != nil {
			t.Fatal(err)
		}
	}
	v["token client-a"] = tok.Version
	if _, err := fs.PutToken(ctx, "gone", storetest.SampleToken("gone")); err != nil {
		t.Fatal(err)
	}
	if err := fs.DeleteProject(ctx, "gone"); err != nil {
		t.Fatal(err)
	}
	return v
}

func TestMigrateFromFileStore(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	o := paths(t)
	versions := legacyStore(t, o)
	old, err := os.ReadFile(o.Path)
	if err != nil {
		t.Fatal(err)
	}
	var logs bytes.Buffer
	o.Logger = slog.New(slog.NewTextHandler(&logs, nil))

	s := open(t, o)

	// Every record is there, with its version and its secrets.
	ps, err := s.Projects(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(ps) != 2 || ps[0].Name != "client-a" || ps[1].Name != "client-b" {
		t.Fatalf("migrated projects: %v", ps)
	}
	for _, p := range ps {
		if p.Version != versions[p.Name] {
			t.Errorf("project %s has version %d after the migration, %d before", p.Name, p.Version, versions[p.Name])
		}
	}
	if !ps[0].Auth.OAuth.ClientSecret.Equal(secret.New("client-secret-of-client-a")) || !ps[1].Auth.Password.Equal(secret.New("password-of-client-b")) {
		t.Error("the secrets did not survive the migration")
	}
	tok, err := s.Token(ctx, "client-a")
	if err != nil {
		t.Fatal(err)
	}
	if tok.Version != versions["token client-a"] || !tok.RefreshToken.Equal(secret.New("refresh-2")) {
		t.Errorf("token: version %d (want %d), last refresh token kept: %v", tok.Version, versions["token client-a"], tok.RefreshToken.Equal(secret.New("refresh-2")))
	}
	if _, err := s.Project(ctx, "gone"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("the deleted project came back: %v", err)
	}
	if _, err := s.Token(ctx, "gone"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("the deleted project's token came back: %v", err)
	}

	// The tombstone kept its version: re-creating continues the count.
	if v, err := s.PutProject(ctx, storetest.BasicProject("gone")); err != nil || v <= versions["gone"] {
		t.Errorf("re-created project got version %d (error %v), not above %d", v, err, versions["gone"])
	}
	// A writer holding a version read before the migration still gets a conflict on a stale one.
	stale := storetest.SampleToken("client-a")
	stale.Version = versions["token client-a"] - 1
	if _, err := s.PutToken(ctx, "client-a", stale); !errors.Is(err, store.ErrConflict) {
		t.Errorf("stale token write after the migration: %v, want ErrConflict", err)
	}

	// The old file is kept byte for byte, the new one is not in the old format, and it was logged.
	backup, err := os.ReadFile(o.Path + MigratedSuffix)
	if err != nil || !bytes.Equal(backup, old) {
		t.Fatalf("backup of the old file: %v, same bytes %v", err, bytes.Equal(backup, old))
	}
	if legacy, err := isLegacy(o.Path); err != nil || legacy {
		t.Fatalf("the store is still in the old format (%v)", err)
	}
	if !strings.Contains(logs.String(), "migrated the store") || !strings.Contains(logs.String(), "projects=2 tokens=1") {
		t.Errorf("the migration was not logged as expected: %s", logs.String())
	}
	assertNoTemporaryFiles(t, filepath.Dir(o.Path))

	// Opening again does not migrate again.
	logs.Reset()
	open(t, o)
	if strings.Contains(logs.String(), "migrated") {
		t.Errorf("second Open migrated again: %s", logs.String())
	}
}

// A migration interrupted after the backup was made, before the rename, is done again and reuses
// the backup; a backup name taken by another file is not overwritten.
func TestMigrateKeepsEveryBackup(t *testing.T) {
	t.Parallel()
	t.Run("interrupted", func(t *testing.T) {
		t.Parallel()
		o := paths(t)
		legacyStore(t, o)
		if err := os.Link(o.Path, o.Path+MigratedSuffix); err != nil {
			t.Fatal(err)
		}
		s := open(t, o)
		if ps, err := s.Projects(t.Context()); err != nil || len(ps) != 2 {
			t.Fatalf("%d projects, %v", len(ps), err)
		}
		if legacy, _ := isLegacy(o.Path + MigratedSuffix); !legacy {
			t.Fatal("the backup is not the old file")
		}
	})
	t.Run("name taken", func(t *testing.T) {
		t.Parallel()
		o := paths(t)
		legacyStore(t, o)
		writeFile(t, o.Path+MigratedSuffix, []byte("an older backup"), 0o600)
		open(t, o)
		if b, _ := os.ReadFile(o.Path + MigratedSuffix); string(b) != "an older backup" {
			t.Fatal("the file at the backup name was overwritten")
		}
		others, _ := filepath.Glob(o.Path + MigratedSuffix + "-*")
		if len(others) != 1 {
			t.Fatalf("backups beside the taken name: %v", others)
		}
		if legacy, _ := isLegacy(others[0]); !legacy {
			t.Fatal("the second backup is not the old file")
		}
	})
}

// A migration that cannot read the old file changes nothing.
func TestMigrateFailureChangesNothing(t *testing.T) {
	t.Parallel()
	o := paths(t)
	legacyStore(t, o)
	old, _ := os.ReadFile(o.Path)
	writeFile(t, o.KeyFile, bytes.Repeat([]byte{7}, KeySize), 0o600)
	if s, err := Open(t.Context(), o); !errors.Is(err, ErrDecrypt) {
		if err == nil {
			s.Close()
		}
		t.Fatalf("Open with the wrong key: %v, want ErrDecrypt", err)
	}
	if now, _ := os.ReadFile(o.Path); !bytes.Equal(now, old) {
		t.Fatal("the old file changed")
	}
	if _, err := os.Stat(o.Path + MigratedSuffix); err == nil {
		t.Fatal("a backup was made of a file that was not migrated")
	}
	assertNoTemporaryFiles(t, filepath.Dir(o.Path))
}

func assertNoTemporaryFiles(t *testing.T, dir string) {
	t.Helper()
	tmp, _ := filepath.Glob(filepath.Join(dir, ".*tmp*"))
	if len(tmp) != 0 {
		t.Errorf("temporary files left behind: %v", tmp)
	}
}

// The migration carries the file store's index file along: the database continues the file's
// generation and the index goes on describing it, so an empty copy of the file store put back
// before or after the migration reads as lost (store.ErrProjectsLost), never as "no projects".
func TestMigrateCarriesTheIndex(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	o := paths(t)
	fs, err := filestore.Init(ctx, filestore.Options{Path: o.Path, KeyFile: o.KeyFile})
	if err != nil {
		t.Fatal(err)
	}
	fs.Close()
	empty, err := os.ReadFile(o.Path)
	if err != nil {
		t.Fatal(err)
	}
	legacyStore(t, o)
	indexBefore, err := os.ReadFile(o.Path + ".index")
	if err != nil {
		t.Fatal(err)
	}

	// Migrated as it is: the index still counts the two projects, the database continues it.
	s := open(t, o)
	if ps, err := s.Projects(ctx); err != nil || len(ps) != 2 {
		t.Fatalf("after the migration: %d projects, %v", len(ps), err)
	}
	if again, _ := os.ReadFile(o.Path + ".index"); !bytes.Equal(again, indexBefore) {
		t.Fatalf("the migration changed the index from %s to %s", indexBefore, again)
	}
	if _, err := s.PutProject(ctx, storetest.BasicProject("client-c")); err != nil {
		t.Fatal(err)
	}
	if again, _ := os.ReadFile(o.Path + ".index"); !strings.Contains(string(again), `"projects":3`) {
		t.Fatalf("the index after a write to the database: %s", again)
	}

	// The empty file store put back over the database: migrated again, and lost.
	writeFile(t, o.Path, empty, 0o600)
	s2 := open(t, o)
	if _, err := s2.Projects(ctx); !errors.Is(err, store.ErrProjectsLost) {
		t.Fatalf("Projects of an empty file store put back: %v; want ErrProjectsLost", err)
	}
	if _, err := s.Projects(ctx); !errors.Is(err, store.ErrProjectsLost) {
		t.Fatalf("Projects in the process that had it open: %v; want ErrProjectsLost", err)
	}

	// The empty file store put back before the migration is lost too.
	o2 := paths(t)
	fs, err = filestore.Init(ctx, filestore.Options{Path: o2.Path, KeyFile: o2.KeyFile})
	if err != nil {
		t.Fatal(err)
	}
	fs.Close()
	empty, _ = os.ReadFile(o2.Path)
	legacyStore(t, o2)
	writeFile(t, o2.Path, empty, 0o600)
	s3 := open(t, o2)
	if _, err := s3.Projects(ctx); !errors.Is(err, store.ErrProjectsLost) {
		t.Fatalf("Projects of a file store that had lost its projects when migrated: %v; want ErrProjectsLost", err)
	}
	if _, err := os.Stat(o2.Path + MigratedSuffix); err != nil {
		t.Fatalf("no backup of the migrated file: %v", err)
	}
}
