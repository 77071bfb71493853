package boltstore

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	bolt "go.etcd.io/bbolt"

	"github.com/postern/postern/sidecar/project"
	"github.com/postern/postern/sidecar/secret"
	"github.com/postern/postern/sidecar/store"
	"github.com/postern/postern/sidecar/store/storetest"
)

func paths(t testing.TB) Options {
	dir := t.TempDir()
	return Options{Path: filepath.Join(dir, "store.db"), KeyFile: filepath.Join(dir, "store.key")}
}

func create(t testing.TB, o Options) *Store {
	t.Helper()
	s, err := Create(t.Context(), o)
	if err != nil {
		t.Fatalf("Create: %v", err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func open(t testing.TB, o Options) *Store {
	t.Helper()
	s, err := Open(t.Context(), o)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func TestConformance(t *testing.T) {
	t.Parallel()
	storetest.Run(t, func(t *testing.T) store.Store { return create(t, paths(t)) })
}

// Every call goes through a second Store value opened on the same files, as another process would:
// the suite then also checks that each sees the other's writes.
func TestConformanceAcrossTwoOpens(t *testing.T) {
	t.Parallel()
	storetest.Run(t, func(t *testing.T) store.Store {
		o := paths(t)
		return &alternating{a: create(t, o), b: open(t, o)}
	})
}

// alternating sends each call to a or b in turn.
type alternating struct {
	mu   sync.Mutex
	n    int
	a, b store.Store
}

func (x *alternating) next() store.Store {
	x.mu.Lock()
	defer x.mu.Unlock()
	x.n++
	if x.n%2 == 0 {
		return x.a
	}
	return x.b
}

func (x *alternating) Projects(ctx context.Context) ([]project.Project, error) {
	return x.next().Projects(ctx)
}
func (x *alternating) Project(ctx context.Context, name string) (project.Project, error) {
	return x.next().Project(ctx, name)
}
func (x *alternating) PutProject(ctx context.Context, p project.Project) (int, error) {
	return x.next().PutProject(ctx, p)
}
func (x *alternating) DeleteProject(ctx context.Context, name string) error {
	return x.next().DeleteProject(ctx, name)
}
func (x *alternating) Token(ctx context.Context, name string) (project.Token, error) {
	return x.next().Token(ctx, name)
}
func (x *alternating) PutToken(ctx context.Context, name string, t project.Token) (int, error) {
	return x.next().PutToken(ctx, name, t)
}
func (x *alternating) Close() error { return errors.Join(x.a.Close(), x.b.Close()) }

func TestCreateAndOpen(t *testing.T) {
	t.Parallel()
	o := paths(t)
	o.Path = filepath.Join(filepath.Dir(o.Path), "sub", "dir", "store.db")

	if _, err := Open(t.Context(), o); !errors.Is(err, ErrNotExist) {
		t.Fatalf("Open of a missing store: %v, want ErrNotExist", err)
	}
	if _, err := os.Stat(o.KeyFile); err == nil {
		t.Fatal("Open of a missing store made a key file")
	}

	s := create(t, o)
	for path, size := range map[string]int64{o.KeyFile: KeySize, o.Path: -1} {
		fi, err := os.Stat(path)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm() != 0o600 || (size >= 0 && fi.Size() != size) {
			t.Fatalf("%s: mode %v size %d, want 0600", path, fi.Mode().Perm(), fi.Size())
		}
	}
	if ps, err := s.Projects(t.Context()); err != nil || len(ps) != 0 {
		t.Fatalf("new store: %d projects, error %v", len(ps), err)
	}
	if _, err := s.PutProject(t.Context(), storetest.BasicProject("client-a")); err != nil {
		t.Fatal(err)
	}
	key, _ := os.ReadFile(o.KeyFile)

	if _, err := Create(t.Context(), o); !errors.Is(err, ErrExists) {
		t.Fatalf("Create over a store: %v, want ErrExists", err)
	}
	s2 := open(t, o)
	if again, _ := os.ReadFile(o.KeyFile); !bytes.Equal(key, again) {
		t.Fatal("opening an existing store replaced its key")
	}
	if _, err := s2.Project(t.Context(), "client-a"); err != nil {
		t.Fatalf("the project did not survive Create refusing and Open: %v", err)
	}

	// Create next to an existing key file refuses, and changes nothing.
	o2 := o
	o2.Path = filepath.Join(filepath.Dir(o.Path), "second.db")
	if _, err := Create(t.Context(), o2); !errors.Is(err, ErrExists) || !strings.Contains(err.Error(), "key file "+o.KeyFile+" exists") {
		t.Fatalf("Create beside an existing key file: %v, want ErrExists naming it", err)
	}
	if again, _ := os.ReadFile(o.KeyFile); !bytes.Equal(key, again) {
		t.Fatal("Create replaced an existing key file")
	}
	if _, err := os.Stat(o2.Path); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("Create made a database beside an existing key file: %v", err)
	}
}

// Opening never makes a store, a key or a directory unless asked, and asking makes one only where
// neither file exists: a lost volume or a deleted database is an error naming the path and the
// fix, never a new empty store.
func TestOpenNeverReplacesAStore(t *testing.T) {
	t.Parallel()
	t.Run("nothing there", func(t *testing.T) {
		t.Parallel()
		o := paths(t)
		o.Path = filepath.Join(filepath.Dir(o.Path), "volume", "store.db")
		_, err := Open(t.Context(), o)
		if !errors.Is(err, ErrNotExist) || !strings.Contains(err.Error(), "neither the store "+o.Path+" nor its key file "+o.KeyFile+" exists") ||
			!strings.Contains(err.Error(), "create the store with `postern init`") {
			t.Fatalf("Open of nothing: %v, want ErrNotExist naming the paths and the fix", err)
		}
		if _, err := os.Stat(filepath.Dir(o.Path)); !errors.Is(err, os.ErrNotExist) {
			t.Fatalf("Open made the store's directory: %v", err)
		}
		if _, err := os.Stat(o.KeyFile); !errors.Is(err, os.ErrNotExist) {
			t.Fatalf("Open made a key file: %v", err)
		}
		o.Create = true
		s := open(t, o)
		if !s.Created() {
			t.Fatal("Created() is false after Open with Create made the store")
		}
		if _, err := os.Stat(o.Path + ".index"); err != nil {
			t.Fatalf("a new store has no index file: %v", err)
		}
		if s := open(t, o); s.Created() {
			t.Fatal("Created() is true after opening an existing store")
		}
	})
	t.Run("database deleted", func(t *testing.T) {
		t.Parallel()
		o := paths(t)
		s := create(t, o)
		if _, err := s.PutProject(t.Context(), storetest.BasicProject("client-a")); err != nil {
			t.Fatal(err)
		}
		key, _ := os.ReadFile(o.KeyFile)
		os.Remove(o.Path)
		// A store open while its database is deleted reports it, and writes make no new one.
		if _, err := s.PutProject(t.Context(), storetest.BasicProject("client-b")); err == nil ||
			!strings.Contains(err.Error(), "restore the data file from backup") {
			t.Fatalf("a write after the database was deleted: %v", err)
		}
		for _, c := range []bool{false, true} {
			o.Create = c
			_, err := Open(t.Context(), o)
			if err == nil || !strings.Contains(err.Error(), "store "+o.Path+" does not exist, but its key file "+o.KeyFile+" does: restore the data file from backup or mount the volume") {
				t.Fatalf("Open(Create: %v) of a key without its database: %v", c, err)
			}
		}
		if _, err := Create(t.Context(), o); !errors.Is(err, ErrExists) {
			t.Fatalf("Create over a key file: %v, want ErrExists", err)
		}
		if again, _ := os.ReadFile(o.KeyFile); !bytes.Equal(key, again) {
			t.Fatal("the key file was replaced")
		}
		if _, err := os.Stat(o.Path); !errors.Is(err, os.ErrNotExist) {
			t.Fatalf("a database was made: %v", err)
		}
	})
	t.Run("key deleted", func(t *testing.T) {
		t.Parallel()
		o := paths(t)
		create(t, o).Close()
		os.Remove(o.KeyFile)
		for _, c := range []bool{false, true} {
			o.Create = c
			_, err := Open(t.Context(), o)
			if err == nil || !strings.Contains(err.Error(), "key file "+o.KeyFile+" does not exist, but the store "+o.Path+" does") {
				t.Fatalf("Open(Create: %v) of a database without its key: %v", c, err)
			}
		}
		if _, err := os.Stat(o.KeyFile); !errors.Is(err, os.ErrNotExist) {
			t.Fatalf("a key file was made: %v", err)
		}
	})
}

// A database replaced by an older copy that holds no project, while the index file beside it says
// the store held some, is refused on every read and write with store.ErrProjectsLost: "no project"
// is never concluded from it. Removing the last project on purpose leaves an empty store that reads
// as empty.
func TestLostProjectsAreDetected(t *testing.T) {
	t.Parallel()
	o := paths(t)
	s := create(t, o)
	empty, err := os.ReadFile(o.Path)
	if err != nil {
		t.Fatal(err)
	}
	ctx := t.Context()
	if _, err := s.PutProject(ctx, storetest.BasicProject("client-a")); err != nil {
		t.Fatal(err)
	}
	withProject, _ := os.ReadFile(o.Path)
	writeFile(t, o.Path, empty, 0o600) // the empty store as it was right after it was made

	if ps, err := s.Projects(ctx); !errors.Is(err, store.ErrProjectsLost) {
		t.Fatalf("Projects of the replaced database: %d projects, %v; want ErrProjectsLost", len(ps), err)
	} else if !strings.Contains(err.Error(), o.Path+".index") || !strings.Contains(err.Error(), "Restore it from backup") {
		t.Fatalf("the error does not name the index file and the fix: %v", err)
	}
	if _, err := s.Token(ctx, "client-a"); !errors.Is(err, store.ErrProjectsLost) {
		t.Fatalf("Token of the replaced database: %v; want ErrProjectsLost", err)
	}
	if _, err := s.PutProject(ctx, storetest.BasicProject("client-b")); !errors.Is(err, store.ErrProjectsLost) {
		t.Fatalf("a write over the replaced database: %v; want ErrProjectsLost", err)
	}
	if err := s.Rekey(ctx, nil); !errors.Is(err, store.ErrProjectsLost) {
		t.Fatalf("a rekey of the replaced database: %v; want ErrProjectsLost", err)
	}
	// A new process opens it (to defer mail and see the restore) but reads fail the same way.
	s2 := open(t, o)
	if _, err := s2.Projects(ctx); !errors.Is(err, store.ErrProjectsLost) {
		t.Fatalf("Projects after reopening: %v; want ErrProjectsLost", err)
	}
	// The right database put back is read at once.
	writeFile(t, o.Path, withProject, 0o600)
	if ps, err := s2.Projects(ctx); err != nil || len(ps) != 1 {
		t.Fatalf("after the restore: %d projects, %v", len(ps), err)
	}
	writeFile(t, o.Path, empty, 0o600)

	// Removing the index says the store is meant to be empty.
	os.Remove(o.Path + ".index")
	if ps, err := s2.Projects(ctx); err != nil || len(ps) != 0 {
		t.Fatalf("after removing the index: %d projects, %v", len(ps), err)
	}

	// Deleting the last project on purpose is an empty store, not a lost one.
	if _, err := s2.PutProject(ctx, storetest.BasicProject("client-c")); err != nil {
		t.Fatal(err)
	}
	if err := s2.DeleteProject(ctx, "client-c"); err != nil {
		t.Fatal(err)
	}
	if ps, err := s.Projects(ctx); err != nil || len(ps) != 0 {
		t.Fatalf("after deleting the last project: %d projects, %v", len(ps), err)
	}
}

func TestOpenRefuses(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name  string
		setup func(t *testing.T, o Options)
		want  string
		is    error
	}{
		{
			name:  "data file without its key",
			setup: func(t *testing.T, o Options) { os.Remove(o.KeyFile) },
			want:  "cannot be read without the key",
		},
		{
			name: "group readable key",
			setup: func(t *testing.T, o Options) {
				os.Chmod(o.KeyFile, 0o640)
			},
			want: "chmod 600 %KEY%",
		},
		{
			name:  "wrong key",
			setup: func(t *testing.T, o Options) { writeFile(t, o.KeyFile, bytes.Repeat([]byte{7}, KeySize), 0o600) },
			want:  "does not belong to the store",
			is:    ErrDecrypt,
		},
		{
			name:  "not a store",
			setup: func(t *testing.T, o Options) { writeFile(t, o.Path, []byte("projects:\n  - name: a\n"), 0o600) },
			want:  "opening store",
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			o := paths(t)
			s := create(t, o)
			if _, err := s.PutProject(t.Context(), storetest.BasicProject("client-a")); err != nil {
				t.Fatal(err)
			}
			s.Close()
			tc.setup(t, o)
			s, err := Open(t.Context(), o)
			if err == nil {
				s.Close()
				t.Fatal("Open succeeded")
			}
			want := strings.NewReplacer("%PATH%", o.Path, "%KEY%", o.KeyFile).Replace(tc.want)
			if !strings.Contains(err.Error(), want) {
				t.Fatalf("error %q does not say %q", err, want)
			}
			if tc.is != nil && !errors.Is(err, tc.is) {
				t.Fatalf("error %v does not wrap %v", err, tc.is)
			}
		})
	}
}

func writeFile(t testing.TB, path string, b []byte, mode os.FileMode) {
	t.Helper()
	if err := os.WriteFile(path, b, mode); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(path, mode); err != nil { // past the umask
		t.Fatal(err)
	}
}

// rawUpdate changes the database directly, as someone with write access to the file could.
func rawUpdate(t *testing.T, path string, fn func(tx *bolt.Tx) error) {
	t.Helper()
	db, err := bolt.Open(path, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if err := db.Update(fn); err != nil {
		t.Fatal(err)
	}
}

// A record moved to another name, given another version or changed in any byte is refused.
func TestRecordsAreBoundToTheirPlace(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name   string
		change func(tx *bolt.Tx) error
		read   func(s *Store) error
	}{
		{
			name: "project copied to another name",
			change: func(tx *bolt.Tx) error {
				b := tx.Bucket(bucketProjects)
				return b.Put([]byte("client-b"), bytes.Clone(b.Get([]byte("client-a"))))
			},
			read: func(s *Store) error { _, err := s.Project(context.Background(), "client-b"); return err },
		},
		{
			name: "token copied to the projects",
			change: func(tx *bolt.Tx) error {
				return tx.Bucket(bucketProjects).Put([]byte("client-a"), bytes.Clone(tx.Bucket(bucketTokens).Get([]byte("client-a"))))
			},
			read: func(s *Store) error { _, err := s.Projects(context.Background()); return err },
		},
		{
			name: "version changed",
			change: func(tx *bolt.Tx) error {
				b := tx.Bucket(bucketTokens)
				v := bytes.Clone(b.Get([]byte("client-a")))
				binary.BigEndian.PutUint64(v[2:headerSize], 9)
				return b.Put([]byte("client-a"), v)
			},
			read: func(s *Store) error { _, err := s.Token(context.Background(), "client-a"); return err },
		},
		{
			name: "ciphertext changed",
			change: func(tx *bolt.Tx) error {
				b := tx.Bucket(bucketProjects)
				v := bytes.Clone(b.Get([]byte("client-a")))
				v[len(v)-20] ^= 1
				return b.Put([]byte("client-a"), v)
			},
			read: func(s *Store) error { _, err := s.Project(context.Background(), "client-a"); return err },
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			o := paths(t)
			s := create(t, o)
			if _, err := s.PutProject(t.Context(), storetest.OAuthProject("client-a")); err != nil {
				t.Fatal(err)
			}
			if _, err := s.PutToken(t.Context(), "client-a", storetest.SampleToken("client-a")); err != nil {
				t.Fatal(err)
			}
			rawUpdate(t, o.Path, tc.change)
			if err := tc.read(s); !errors.Is(err, ErrDecrypt) {
				t.Fatalf("reading the changed record: %v, want ErrDecrypt", err)
			}
		})
	}
}

func TestSecretsAreNotInTheFile(t *testing.T) {
	t.Parallel()
	o := paths(t)
	s := create(t, o)
	p := storetest.OAuthProject("client-a")
	p.Auth.Password = secret.New("basic-password-1234")
	if _, err := s.PutProject(t.Context(), p); err != nil {
		t.Fatal(err)
	}
	if _, err := s.PutToken(t.Context(), "client-a", storetest.SampleToken("client-a")); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(o.Path)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range []string{"basic-password-1234", "client-secret-of-client-a", "access-token-of-client-a", "refresh-token-of-client-a", "smtp.client-a.example", "noreply@client-a.example"} {
		if bytes.Contains(b, []byte(s)) {
			t.Errorf("the database holds %q in clear", s)
		}
	}
	if !bytes.Contains(b, []byte("client-a")) {
		t.Error("the project's name is not in the database: the test reads the wrong file")
	}
}

// Many goroutines over two Store values (two processes) lose no update.
func TestConcurrentWritersLoseNothing(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	o := paths(t)
	stores := []*Store{create(t, o), open(t, o)}
	const workers, each = 6, 10
	var wg sync.WaitGroup
	errs := make(chan error, workers)
	for w := range workers {
		wg.Go(func() {
			s := stores[w%2]
			for i := range each {
				p := storetest.BasicProject(fmt.Sprintf("w%d-%d", w, i))
				if _, err := s.PutProject(ctx, p); err != nil {
					errs <- err
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	ps, err := stores[0].Projects(ctx)
	if err != nil || len(ps) != workers*each {
		t.Fatalf("%d projects (error %v), want %d", len(ps), err, workers*each)
	}
}

func TestClosedStoreFails(t *testing.T) {
	t.Parallel()
	s := create(t, paths(t))
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Projects(t.Context()); err == nil || !strings.Contains(err.Error(), "closed") {
		t.Fatalf("Projects after Close: %v", err)
	}
	if err := s.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
}

func TestInvalidNamesAreRefused(t *testing.T) {
	t.Parallel()
	s := create(t, paths(t))
	for _, name := range []string{"", "../x", "a/b", "A B"} {
		if _, err := s.PutProject(t.Context(), storetest.BasicProject(name)); err == nil {
			t.Errorf("PutProject(%q) succeeded", name)
		}
		if _, err := s.PutToken(t.Context(), name, storetest.SampleToken("x")); err == nil {
			t.Errorf("PutToken(%q) succeeded", name)
		}
	}
}

func TestPutProjectsIsAllOrNothing(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	s := create(t, paths(t))
	v, err := s.PutProject(ctx, storetest.BasicProject("existing"))
	if err != nil {
		t.Fatal(err)
	}
	stale := storetest.BasicProject("existing")
	stale.Version = v + 1
	_, err = s.PutProjects(ctx, []project.Project{storetest.BasicProject("new"), stale})
	if !errors.Is(err, store.ErrConflict) {
		t.Fatalf("PutProjects with a stale entry: %v, want ErrConflict", err)
	}
	if _, err := s.Project(ctx, "new"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("the entry before the conflict was written: %v", err)
	}
	if _, err := s.PutProjects(ctx, []project.Project{storetest.BasicProject("a"), storetest.BasicProject("a")}); err == nil {
		t.Fatal("PutProjects accepted a name given twice")
	}
	vs, err := s.PutProjects(ctx, []project.Project{storetest.BasicProject("new"), storetest.BasicProject("existing")})
	if err != nil || len(vs) != 2 || vs[0] != 1 || vs[1] != v+1 {
		t.Fatalf("PutProjects: versions %v, error %v", vs, err)
	}
}
