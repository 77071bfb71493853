package cli

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// No command but init and the first project add makes a store: a missing one (a volume that did
// not mount, a deleted data file) is a refusal naming the path and the fix, and leaves nothing
// behind.
func TestCommandsNeverCreateAStore(t *testing.T) {
	t.Parallel()
	for _, args := range [][]string{
		{"project", "list"},
		{"project", "show", "client-a"},
		{"project", "remove", "client-a"},
		{"project", "update", "client-a", "--host", "smtp.other.example"},
		{"authorize-link", "client-a"},
	} {
		t.Run(strings.Join(args, " "), func(t *testing.T) {
			t.Parallel()
			h := newHarness(t, "")
			r := h.run("", args...)
			db := filepath.Join(h.dir, "store.db")
			if r.code != ExitFail || !strings.Contains(r.stderr, db) || !strings.Contains(r.stderr, "`postern init`") ||
				!strings.Contains(r.stderr, "restore both from backup") {
				t.Fatalf("postern %s without a store: %v", strings.Join(args, " "), r)
			}
			for _, f := range []string{"store.db", "store.key", "store.db.lock", "store.db.index"} {
				if _, err := os.Stat(filepath.Join(h.dir, f)); !errors.Is(err, fs.ErrNotExist) {
					t.Fatalf("%s was made: %v", f, err)
				}
			}
		})
	}
	t.Run("key without data", func(t *testing.T) {
		t.Parallel()
		h := newHarness(t, "")
		h.initStore()
		os.Remove(filepath.Join(h.dir, "store.db"))
		for _, args := range [][]string{{"project", "list"}, addClientA, {"init"}} {
			r := h.run("pw-Password-1234\n", args...)
			if r.code != ExitFail || !strings.Contains(r.stderr, filepath.Join(h.dir, "store.db")) || !strings.Contains(r.stderr, "from backup") {
				t.Fatalf("postern %s with the data file gone: %v", strings.Join(args, " "), r)
			}
		}
		if _, err := os.Stat(filepath.Join(h.dir, "store.db")); !errors.Is(err, fs.ErrNotExist) {
			t.Fatalf("a new data file was made: %v", err)
		}
	})
}

func TestInit(t *testing.T) {
	t.Parallel()
	sec := t.TempDir()
	h := newHarness(t, "signin:\n  key_file: "+filepath.Join(sec, "signin.key")+"\n  public_url: https://postern.example\n"+
		"api:\n  token_file: "+filepath.Join(sec, "api.token")+"\n")
	r := h.mustRun("", "init")
	for _, want := range []string{
		"created the store key " + filepath.Join(h.dir, "store.key"),
		"created the empty store " + filepath.Join(h.dir, "store.db"),
		"created the sign-in key " + filepath.Join(sec, "signin.key"),
		"created the API token " + filepath.Join(sec, "api.token"),
		"back up " + filepath.Join(h.dir, "store.key"),
		"postern project add",
	} {
		if !strings.Contains(r.stdout, want) {
			t.Fatalf("init does not say %q: %v", want, r)
		}
	}
	key, _ := os.ReadFile(filepath.Join(h.dir, "store.key"))
	if n := h.projectCount(); n != 0 {
		t.Fatalf("a new store holds %d projects", n)
	}

	r = h.run("", "init")
	if r.code != ExitFail || !strings.Contains(r.stderr, "exist") || !strings.Contains(r.stderr, "never replaces them") {
		t.Fatalf("second init: %v", r)
	}
	if again, _ := os.ReadFile(filepath.Join(h.dir, "store.key")); string(again) != string(key) {
		t.Fatal("the second init replaced the key")
	}
	if r := h.mustRun("", "project", "list"); strings.Contains(r.stderr, "created") {
		t.Fatalf("list after init: %v", r)
	}
}

// The first project add makes the store, says so on standard error, and an add that fails its
// checks makes nothing.
func TestFirstProjectAddCreatesTheStore(t *testing.T) {
	t.Parallel()
	h := newHarness(t, "")
	r := h.run("", "project", "add", "client-a", "--sender", "not an address", "--host", "smtp.client.example")
	if r.code == ExitOK {
		t.Fatalf("an invalid add succeeded: %v", r)
	}
	if _, err := os.Stat(filepath.Join(h.dir, "store.key")); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("an invalid add made the store: %v", err)
	}
	r = h.mustRun("pw-Password-1234\n", addClientA...)
	if !strings.Contains(r.stderr, "created a new, empty store "+filepath.Join(h.dir, "store.db")) {
		t.Fatalf("the first add does not say it made the store: %v", r)
	}
	if n := h.projectCount(); n != 1 {
		t.Fatalf("%d projects", n)
	}
	r = h.mustRun("", "project", "remove", "client-a")
	if strings.Contains(r.stderr, "created") {
		t.Fatalf("a later command says it made a store: %v", r)
	}
}
