package filestore

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"

	"github.com/postern/postern/sidecar/project"
	"github.com/postern/postern/sidecar/secret"
	"github.com/postern/postern/sidecar/store"
	"github.com/postern/postern/sidecar/store/storetest"
)

func paths(t *testing.T) Options {
	dir := t.TempDir()
	return Options{Path: filepath.Join(dir, "store.db"), KeyFile: filepath.Join(dir, "store.key"), Create: true}
}

func open(t *testing.T, o Options) *Store {
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
	storetest.Run(t, func(t *testing.T) store.Store { return open(t, paths(t)) })
}

// Every store.Store call goes through a second Store value opened on the same files, as another
// process would: the suite then also checks that each sees the other's writes.
func TestConformanceAcrossTwoOpens(t *testing.T) {
	t.Parallel()
	storetest.Run(t, func(t *testing.T) store.Store {
		o := paths(t)
		return &alternating{a: open(t, o), b: open(t, o)}
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

func TestCreatesKeyAndStore(t *testing.T) {
	t.Parallel()
	o := paths(t)
	o.Path = filepath.Join(filepath.Dir(o.Path), "sub", "dir", "store.db")
	s := open(t, o)
	fi, err := os.Stat(o.KeyFile)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 || fi.Size() != KeySize {
		t.Fatalf("key file mode %v size %d, want 0600 and %d", fi.Mode().Perm(), fi.Size(), KeySize)
	}
	fi, err = os.Stat(o.Path)
	if err != nil {
		t.Fatalf("the data file was not created: %v", err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Fatalf("data file mode %v, want 0600", fi.Mode().Perm())
	}
	if ps, err := s.Projects(t.Context()); err != nil || len(ps) != 0 {
		t.Fatalf("new store: %v projects, error %v", len(ps), err)
	}
	key, _ := os.ReadFile(o.KeyFile)

	// Opening again keeps the key.
	s.Close()
	open(t, o)
	if again, _ := os.ReadFile(o.KeyFile); !bytes.Equal(key, again) {
		t.Fatal("opening an existing store replaced its key")
	}
}

func TestOpenRefuses(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name  string
		setup func(t *testing.T, o *Options)
		want  string
	}{
		{
			name:  "no store without create",
			setup: func(t *testing.T, o *Options) { o.Create = false },
			want:  "neither the store %PATH% nor its key file %KEY% exists: no store here. If Postern has not run here before, create the store with `postern init`",
		},
		{
			name: "no data file, even with create",
			setup: func(t *testing.T, o *Options) {
				writeFile(t, o.KeyFile, bytes.Repeat([]byte{7}, KeySize), 0o600)
			},
			want: "store %PATH% does not exist, but its key file %KEY% does: restore the data file from backup or mount the volume",
		},
		{
			name: "no data file without create",
			setup: func(t *testing.T, o *Options) {
				writeFile(t, o.KeyFile, bytes.Repeat([]byte{7}, KeySize), 0o600)
				o.Create = false
			},
			want: "store " + "%PATH%" + " does not exist",
		},
		{
			name: "data file without its key",
			setup: func(t *testing.T, o *Options) {
				s := open(t, *o)
				s.Close()
				os.Remove(o.KeyFile)
			},
			want: "cannot be read without the key it was written with; restore the key file from backup",
		},
		{
			name: "group readable key",
			setup: func(t *testing.T, o *Options) {
				writeFile(t, o.KeyFile, bytes.Repeat([]byte{7}, KeySize), 0o640)
				writeFile(t, o.Path, []byte("data"), 0o600)
			},
			want: "chmod 600 %KEY%",
		},
		{
			name: "world readable key",
			setup: func(t *testing.T, o *Options) {
				writeFile(t, o.KeyFile, bytes.Repeat([]byte{7}, KeySize), 0o604)
				writeFile(t, o.Path, []byte("data"), 0o600)
			},
			want: "readable by group or others (mode 0604): chmod 600 %KEY%",
		},
		{
			name: "short key",
			setup: func(t *testing.T, o *Options) {
				writeFile(t, o.KeyFile, []byte("not a key\n"), 0o600)
				writeFile(t, o.Path, []byte("data"), 0o600)
			},
			want: "holds 10 bytes, not 32",
		},
		{
			name: "wrong key",
			setup: func(t *testing.T, o *Options) {
				s := open(t, *o)
				if _, err := s.PutProject(t.Context(), storetest.BasicProject("client-a")); err != nil {
					t.Fatal(err)
				}
				s.Close()
				writeFile(t, o.KeyFile, bytes.Repeat([]byte{7}, KeySize), 0o600)
			},
			want: "cannot decrypt %PATH%: wrong key file or damaged store",
		},
		{
			name: "not a store",
			setup: func(t *testing.T, o *Options) {
				writeFile(t, o.KeyFile, bytes.Repeat([]byte{7}, KeySize), 0o600)
				writeFile(t, o.Path, []byte("projects:\n  - name: a\n  - name: b\n"), 0o600)
			},
			want: "is not a Postern store",
		},
		{
			name: "empty data file",
			setup: func(t *testing.T, o *Options) {
				writeFile(t, o.KeyFile, bytes.Repeat([]byte{7}, KeySize), 0o600)
				writeFile(t, o.Path, nil, 0o600)
			},
			want: "is truncated",
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			o := paths(t)
			tc.setup(t, &o)
			s, err := Open(t.Context(), o)
			if err == nil {
				s.Close()
				t.Fatal("Open succeeded")
			}
			want := strings.NewReplacer("%PATH%", o.Path, "%KEY%", o.KeyFile).Replace(tc.want)
			if !strings.Contains(err.Error(), want) {
				t.Fatalf("error %q does not say %q", err, want)
			}
		})
	}
}

func writeFile(t *testing.T, path string, b []byte, mode os.FileMode) {
	t.Helper()
	if err := os.WriteFile(path, b, mode); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(path, mode); err != nil { // past the umask
		t.Fatal(err)
	}
}

// Flipping any byte of the file, header included, is detected and reported, never accepted.
func TestTamperingIsDetected(t *testing.T) {
	t.Parallel()
	o := paths(t)
	s := open(t, o)
	if _, err := s.PutProject(t.Context(), storetest.BasicProject("client-a")); err != nil {
		t.Fatal(err)
	}
	s.Close()
	orig, err := os.ReadFile(o.Path)
	if err != nil {
		t.Fatal(err)
	}
	positions := []int{0, 7, 8, 20, headerSize, headerSize + 1, len(orig) / 2, len(orig) - 17, len(orig) - 1}
	for _, pos := range positions {
		t.Run(fmt.Sprint("byte ", pos), func(t *testing.T) {
			o := o
			o.Path = filepath.Join(t.TempDir(), "store.db")
			b := bytes.Clone(orig)
			b[pos] ^= 0x01
			writeFile(t, o.Path, b, 0o600)
			s, err := Open(t.Context(), o)
			if err == nil {
				s.Close()
				t.Fatal("a tampered store opened")
			}
			if !errors.Is(err, ErrDecrypt) {
				t.Fatalf("error %v does not wrap ErrDecrypt", err)
			}
		})
	}

	// A store already open reports the damage on its next read, and works again once repaired.
	s = open(t, o)
	b := bytes.Clone(orig)
	b[len(b)-1] ^= 0x80
	replace(t, o.Path, b)
	if _, err := s.Projects(t.Context()); err == nil || !strings.Contains(err.Error(), "cannot decrypt") {
		t.Fatalf("Projects on a damaged file: %v", err)
	}
	replace(t, o.Path, orig)
	if ps, err := s.Projects(t.Context()); err != nil || len(ps) != 1 {
		t.Fatalf("Projects after the repair: %d projects, %v", len(ps), err)
	}
}

// replace swaps the file atomically, as a writer would.
func replace(t *testing.T, path string, b []byte) {
	t.Helper()
	tmp := path + ".test"
	writeFile(t, tmp, b, 0o600)
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

func TestSecretsAreNotInTheFile(t *testing.T) {
	t.Parallel()
	o := paths(t)
	s := open(t, o)
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
	tok := storetest.SampleToken("client-a")
	for _, needle := range []string{
		"basic-password-1234", p.Auth.OAuth.ClientSecret.Reveal(), tok.AccessToken.Reveal(), tok.RefreshToken.Reveal(),
		"client-a", "noreply@", "smtp.", "projects",
	} {
		if bytes.Contains(b, []byte(needle)) {
			t.Errorf("the data file contains a plaintext string of length %d", len(needle))
		}
	}
	if !bytes.HasPrefix(b, []byte("POSTERN1")) {
		t.Errorf("the data file does not start with the magic")
	}
}

// Two Store values on the same files stand for two processes: each sees the other's writes, and a
// write based on a stale read conflicts.
func TestTwoOpensConflict(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	o := paths(t)
	a := open(t, o)
	b := open(t, o)

	if _, err := a.PutProject(ctx, storetest.OAuthProject("client-a")); err != nil {
		t.Fatal(err)
	}
	pb, err := b.Project(ctx, "client-a")
	if err != nil {
		t.Fatalf("b does not see a's project: %v", err)
	}
	pa, err := a.Project(ctx, "client-a")
	if err != nil {
		t.Fatal(err)
	}
	pa.Enabled = false
	if _, err := a.PutProject(ctx, pa); err != nil {
		t.Fatal(err)
	}
	pb.Upstream.Port = 465
	if _, err := b.PutProject(ctx, pb); !errors.Is(err, store.ErrConflict) {
		t.Fatalf("b's stale project write: %v, want ErrConflict", err)
	}

	tok := storetest.SampleToken("client-a")
	v, err := a.PutToken(ctx, "client-a", tok)
	if err != nil {
		t.Fatal(err)
	}
	tb, err := b.Token(ctx, "client-a")
	if err != nil || tb.Version != v {
		t.Fatalf("b reads token version %d (%v), want %d", tb.Version, err, v)
	}
	ta := tb
	ta.RefreshToken = secret.New("rotated-by-a")
	if _, err := a.PutToken(ctx, "client-a", ta); err != nil {
		t.Fatal(err)
	}
	tb.RefreshToken = secret.New("rotated-by-b")
	if _, err := b.PutToken(ctx, "client-a", tb); !errors.Is(err, store.ErrConflict) {
		t.Fatalf("b's stale token write: %v, want ErrConflict", err)
	}
	got, err := b.Token(ctx, "client-a")
	if err != nil || !got.RefreshToken.Equal(secret.New("rotated-by-a")) {
		t.Fatalf("b does not read a's rotated refresh token (err %v)", err)
	}

	if err := b.DeleteProject(ctx, "client-a"); err != nil {
		t.Fatal(err)
	}
	if _, err := a.Token(ctx, "client-a"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("a still reads the token b deleted: %v", err)
	}
}

// Writers in many goroutines over two Store values (two processes) never lose an update.
func TestConcurrentWritersLoseNothing(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	o := paths(t)
	stores := []*Store{open(t, o), open(t, o)}
	const workers, each, maxAttempts = 6, 8, 1000
	var wg sync.WaitGroup
	errs := make(chan error, workers)
	for w := range workers {
		s := stores[w%len(stores)]
		wg.Go(func() {
			for i := range each {
				// Each worker adds projects of its own…
				p := storetest.BasicProject(fmt.Sprintf("w%d-p%d", w, i))
				if _, err := s.PutProject(ctx, p); err != nil {
					errs <- err
					return
				}
				// …and increments a shared counter with check-and-set.
				for attempt := 0; ; attempt++ {
					if attempt == maxAttempts {
						errs <- fmt.Errorf("no increment landed in %d attempts: every write conflicts", maxAttempts)
						return
					}
					tok, err := s.Token(ctx, "counter")
					if errors.Is(err, store.ErrNotFound) {
						tok = project.Token{State: project.TokenOK, Reason: "0"}
					} else if err != nil {
						errs <- err
						return
					}
					var n int
					fmt.Sscan(tok.Reason, &n)
					tok.Reason = fmt.Sprint(n + 1)
					if _, err = s.PutToken(ctx, "counter", tok); err == nil {
						break
					} else if !errors.Is(err, store.ErrConflict) {
						errs <- err
						return
					}
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	check := open(t, Options{Path: o.Path, KeyFile: o.KeyFile})
	ps, err := check.Projects(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(ps) != workers*each {
		t.Errorf("%d projects stored, want %d", len(ps), workers*each)
	}
	tok, err := check.Token(ctx, "counter")
	if err != nil {
		t.Fatal(err)
	}
	if tok.Reason != fmt.Sprint(workers*each) {
		t.Errorf("counter is %s, want %d", tok.Reason, workers*each)
	}
	if tmp, _ := filepath.Glob(filepath.Join(filepath.Dir(o.Path), ".*tmp-*")); len(tmp) != 0 {
		t.Errorf("temporary files left behind: %v", tmp)
	}
}

func TestClosedStoreFails(t *testing.T) {
	t.Parallel()
	s := open(t, paths(t))
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	if _, err := s.Projects(t.Context()); err == nil {
		t.Fatal("Projects on a closed store succeeded")
	}
	if _, err := s.PutProject(t.Context(), storetest.BasicProject("a")); err == nil {
		t.Fatal("PutProject on a closed store succeeded")
	}
}

func TestInvalidNamesAreRefused(t *testing.T) {
	t.Parallel()
	s := open(t, paths(t))
	for _, name := range []string{"", "../escape", "Upper"} {
		p := storetest.BasicProject("a")
		p.Name = name
		if _, err := s.PutProject(t.Context(), p); err == nil {
			t.Errorf("PutProject accepted the name %q", name)
		}
		if _, err := s.PutToken(t.Context(), name, project.Token{}); err == nil {
			t.Errorf("PutToken accepted the name %q", name)
		}
	}
}

// Run as root, files created in a directory owned by another user are given to that user, so a
// sidecar running as that user can still read what root wrote.
func TestRootGivesFilesToTheDirectoryOwner(t *testing.T) {
	t.Parallel()
	if os.Geteuid() != 0 {
		t.Skip("needs root")
	}
	o := paths(t)
	dir := filepath.Dir(o.Path)
	const uid, gid = 4321, 4322
	if err := os.Chown(dir, uid, gid); err != nil {
		t.Fatal(err)
	}
	s := open(t, o)
	if _, err := s.PutProject(t.Context(), storetest.BasicProject("a")); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{o.Path, o.KeyFile, o.Path + ".lock"} {
		fi, err := os.Stat(f)
		if err != nil {
			t.Fatal(err)
		}
		st := fi.Sys().(*syscall.Stat_t)
		if st.Uid != uid || st.Gid != gid {
			t.Errorf("%s is owned by %d:%d, want %d:%d", filepath.Base(f), st.Uid, st.Gid, uid, gid)
		}
	}
}

func TestPutProjects(t *testing.T) {
	t.Parallel()
	edited := func(name string, version int) project.Project {
		p := storetest.BasicProject(name)
		p.Upstream.Port = 465
		p.Version = version
		return p
	}
	tests := []struct {
		name string
		// setup writes what is stored before the batch.
		setup func(t *testing.T, s *Store)
		batch []project.Project
		// want holds the versions returned; nil when the batch must fail.
		want []int
		// wantErr is a target for errors.Is, or nil; wantMsg is part of the error's text.
		wantErr error
		wantMsg string
	}{
		{
			name:  "new projects",
			batch: []project.Project{storetest.BasicProject("c"), storetest.OAuthProject("a"), storetest.BasicProject("b")},
			want:  []int{1, 1, 1},
		},
		{
			name: "new, replaced and checked-and-set together",
			setup: func(t *testing.T, s *Store) {
				put(t, s, storetest.BasicProject("a"))
				put(t, s, storetest.BasicProject("b"))
				put(t, s, edited("b", 1))
			},
			batch: []project.Project{edited("a", 1), edited("b", 0), storetest.BasicProject("c")},
			want:  []int{2, 3, 1},
		},
		{
			name: "a deleted project continues its count",
			setup: func(t *testing.T, s *Store) {
				put(t, s, storetest.BasicProject("a"))
				put(t, s, edited("a", 1))
				if err := s.DeleteProject(t.Context(), "a"); err != nil {
					t.Fatal(err)
				}
			},
			batch: []project.Project{storetest.BasicProject("a")},
			want:  []int{3},
		},
		{
			name:    "a stale version in one entry writes none",
			setup:   func(t *testing.T, s *Store) { put(t, s, storetest.BasicProject("b")); put(t, s, edited("b", 1)) },
			batch:   []project.Project{storetest.BasicProject("a"), edited("b", 1), storetest.BasicProject("c")},
			wantErr: store.ErrConflict,
			wantMsg: `"b" at version 1`,
		},
		{
			name:    "a version for a missing project writes none",
			batch:   []project.Project{storetest.BasicProject("a"), edited("b", 1)},
			wantErr: store.ErrConflict,
			wantMsg: `"b" at version 1`,
		},
		{
			name:    "a name given twice writes none",
			batch:   []project.Project{storetest.BasicProject("a"), storetest.BasicProject("b"), edited("a", 0)},
			wantMsg: `"a" is given twice (entries 1 and 3)`,
		},
		{
			name:    "an invalid name writes none",
			batch:   []project.Project{storetest.BasicProject("a"), storetest.BasicProject("../escape")},
			wantMsg: `invalid name "../escape"`,
		},
		{
			name:  "empty",
			setup: func(t *testing.T, s *Store) { put(t, s, storetest.BasicProject("a")) },
			want:  []int{},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			ctx := t.Context()
			o := paths(t)
			s := open(t, o)
			if tc.setup != nil {
				tc.setup(t, s)
			}
			before, err := s.Projects(ctx)
			if err != nil {
				t.Fatal(err)
			}
			file, err := os.ReadFile(o.Path)
			if err != nil {
				t.Fatal(err)
			}

			got, err := s.PutProjects(ctx, tc.batch)

			if tc.want == nil {
				if err == nil {
					t.Fatalf("PutProjects succeeded with versions %v", got)
				}
				if tc.wantErr != nil && !errors.Is(err, tc.wantErr) {
					t.Errorf("error %v does not wrap %v", err, tc.wantErr)
				}
				if !strings.Contains(err.Error(), tc.wantMsg) {
					t.Errorf("error %q does not say %q", err, tc.wantMsg)
				}
				if got != nil {
					t.Errorf("a failed PutProjects returned versions %v", got)
				}
			} else if err != nil {
				t.Fatalf("PutProjects: %v", err)
			} else if !slices.Equal(got, tc.want) {
				t.Fatalf("PutProjects returned versions %v, want %v", got, tc.want)
			}

			after, err := os.ReadFile(o.Path)
			if err != nil {
				t.Fatal(err)
			}
			if len(tc.batch) == 0 || tc.want == nil {
				// Nothing written: every write draws a fresh nonce, so any write changes the file.
				if !bytes.Equal(file, after) {
					t.Fatal("the data file was rewritten")
				}
				if now, err := s.Projects(ctx); err != nil || !reflect.DeepEqual(now, before) {
					t.Fatalf("the projects changed: %d before, %d after (error %v)", len(before), len(now), err)
				}
				return
			}

			// Every entry reads back with its new version, here and through a second open of the
			// files, as another process would see them.
			again := open(t, Options{Path: o.Path, KeyFile: o.KeyFile})
			for _, r := range []*Store{s, again} {
				stored := make(map[string]project.Project)
				all, err := r.Projects(ctx)
				if err != nil {
					t.Fatal(err)
				}
				for _, p := range all {
					stored[p.Name] = p
				}
				for i, want := range tc.batch {
					want.Version = tc.want[i]
					one, err := r.Project(ctx, want.Name)
					if err != nil {
						t.Fatal(err)
					}
					if !reflect.DeepEqual(one, want) {
						t.Errorf("Project(%q) = %+v, want %+v", want.Name, one, want)
					}
					if !reflect.DeepEqual(stored[want.Name], want) {
						t.Errorf("Projects holds %+v, want %+v", stored[want.Name], want)
					}
				}
			}
		})
	}
}

func put(t *testing.T, s *Store, p project.Project) {
	t.Helper()
	if _, err := s.PutProject(t.Context(), p); err != nil {
		t.Fatalf("PutProject %s: %v", p.Name, err)
	}
}

// A batch replaces the data file once, whatever its size. The bytes this process writes are read
// from /proc/self/io: writing the file once writes its size; rewriting it per project would write
// about n/2 times that. The test is not parallel, so that no other test writes meanwhile.
func TestPutProjectsRewritesTheFileOnce(t *testing.T) {
	const n = 2000
	o := paths(t)
	s := open(t, o)
	put(t, s, storetest.BasicProject("existing"))
	ps := make([]project.Project, n)
	for i := range ps {
		ps[i] = storetest.BasicProject(fmt.Sprintf("p%04d", i))
	}
	w0, err := bytesWritten()
	if err != nil {
		t.Skipf("cannot count the bytes written: %v", err)
	}
	versions, err := s.PutProjects(t.Context(), ps)
	w1, _ := bytesWritten()
	if err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(o.Path)
	if err != nil {
		t.Fatal(err)
	}
	written, size := w1-w0, fi.Size()
	if written == 0 {
		t.Skip("/proc/self/io does not count this process's writes here")
	}
	if written < size || written >= size+size/2 {
		t.Errorf("writing %d projects wrote %d bytes for a %d-byte file: want one rewrite", n, written, size)
	}
	if len(versions) != n {
		t.Fatalf("%d versions returned, want %d", len(versions), n)
	}
	if all, err := s.Projects(t.Context()); err != nil || len(all) != n+1 {
		t.Fatalf("%d projects stored (error %v), want %d", len(all), err, n+1)
	}
}

// bytesWritten returns how many bytes this process has passed to write calls (wchar).
func bytesWritten() (int64, error) {
	b, err := os.ReadFile("/proc/self/io")
	if err != nil {
		return 0, err
	}
	for line := range strings.Lines(string(b)) {
		if v, ok := strings.CutPrefix(line, "wchar:"); ok {
			return strconv.ParseInt(strings.TrimSpace(v), 10, 64)
		}
	}
	return 0, errors.New("no wchar in /proc/self/io")
}

// Opening never makes a store, a key or a directory unless asked, and asking makes one only where
// neither file exists: a lost volume or a deleted data file is an error, never a new empty store.
func TestOpenNeverReplacesAStore(t *testing.T) {
	t.Parallel()
	t.Run("nothing there", func(t *testing.T) {
		t.Parallel()
		o := paths(t)
		o.Path = filepath.Join(filepath.Dir(o.Path), "volume", "store.db")
		o.Create = false
		if _, err := Open(t.Context(), o); !errors.Is(err, ErrNotInitialized) {
			t.Fatalf("Open of nothing: %v, want ErrNotInitialized", err)
		}
		if _, err := os.Stat(filepath.Dir(o.Path)); !errors.Is(err, os.ErrNotExist) {
			t.Fatalf("Open made the store's directory: %v", err)
		}
		if _, err := os.Stat(o.KeyFile); !errors.Is(err, os.ErrNotExist) {
			t.Fatalf("Open made a key file: %v", err)
		}
	})
	t.Run("data file deleted", func(t *testing.T) {
		t.Parallel()
		o := paths(t)
		s := open(t, o)
		if _, err := s.PutProject(t.Context(), storetest.BasicProject("client-a")); err != nil {
			t.Fatal(err)
		}
		s.Close()
		key, _ := os.ReadFile(o.KeyFile)
		os.Remove(o.Path)
		for _, create := range []bool{false, true} {
			o.Create = create
			if s, err := Open(t.Context(), o); err == nil {
				s.Close()
				t.Fatalf("Open(Create: %v) of a key without its data file succeeded", create)
			}
			if _, err := Init(t.Context(), o); !errors.Is(err, ErrExists) {
				t.Fatalf("Init over a key file: %v, want ErrExists", err)
			}
		}
		if again, _ := os.ReadFile(o.KeyFile); !bytes.Equal(key, again) {
			t.Fatal("the key file was replaced")
		}
		if _, err := os.Stat(o.Path); !errors.Is(err, os.ErrNotExist) {
			t.Fatalf("a data file was made: %v", err)
		}
	})
	t.Run("init", func(t *testing.T) {
		t.Parallel()
		o := paths(t)
		o.Create = false
		s, err := Init(t.Context(), o)
		if err != nil {
			t.Fatal(err)
		}
		if !s.Created() {
			t.Fatal("Created() is false after Init")
		}
		s.Close()
		if _, err := Init(t.Context(), o); !errors.Is(err, ErrExists) {
			t.Fatalf("second Init: %v, want ErrExists", err)
		}
		s = open(t, o)
		if s.Created() {
			t.Fatal("Created() is true after opening an existing store")
		}
	})
}

// A data file replaced by an older one that holds no project, while the index says the store held
// some, is refused on every read with store.ErrProjectsLost: "no project" is never concluded from
// it. Removing the last project on purpose leaves an empty store that reads as empty.
func TestLostProjectsAreDetected(t *testing.T) {
	t.Parallel()
	o := paths(t)
	s := open(t, o)
	empty, err := os.ReadFile(o.Path)
	if err != nil {
		t.Fatal(err)
	}
	ctx := t.Context()
	if _, err := s.PutProject(ctx, storetest.BasicProject("client-a")); err != nil {
		t.Fatal(err)
	}
	writeFile(t, o.Path, empty, 0o600) // the empty store as it was right after it was made

	if ps, err := s.Projects(ctx); !errors.Is(err, store.ErrProjectsLost) {
		t.Fatalf("Projects of the replaced file: %d projects, %v; want ErrProjectsLost", len(ps), err)
	} else if !strings.Contains(err.Error(), o.Path+".index") || !strings.Contains(err.Error(), "Restore it from backup") {
		t.Fatalf("the error does not name the index file and the fix: %v", err)
	}
	if _, err := s.PutProject(ctx, storetest.BasicProject("client-b")); !errors.Is(err, store.ErrProjectsLost) {
		t.Fatalf("a write over the replaced file: %v; want ErrProjectsLost", err)
	}
	// A new process opens it (to defer mail and see the restore) but reads fail the same way.
	o.Create = false
	s2 := open(t, o)
	if _, err := s2.Projects(ctx); !errors.Is(err, store.ErrProjectsLost) {
		t.Fatalf("Projects after reopening: %v; want ErrProjectsLost", err)
	}

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
