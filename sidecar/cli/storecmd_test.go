package cli

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/postern/postern/sidecar/config"
	"github.com/postern/postern/sidecar/project"
	"github.com/postern/postern/sidecar/secret"
	"github.com/postern/postern/sidecar/store"
	"github.com/postern/postern/sidecar/store/boltstore"
	"github.com/postern/postern/sidecar/store/filestore"
	"github.com/postern/postern/sidecar/store/storetest"
	"github.com/postern/postern/vault/vaulttest"
)

// storeContents is every project and token of a store, for comparing two stores.
type storeContents struct {
	projects map[string]project.Project
	tokens   map[string]project.Token
}

// legacyFileStore writes n projects, and a token for most, into a store in the old single-file
// format at the harness's store paths, with package filestore itself. Their secrets are returned
// for neverPrinted.
func (h *harness) legacyFileStore(n int) (storeContents, []string) {
	h.t.Helper()
	ctx := h.t.Context()
	fs, err := filestore.Open(ctx, filestore.Options{Path: filepath.Join(h.dir, "store.db"), KeyFile: filepath.Join(h.dir, "store.key"), Create: true})
	if err != nil {
		h.t.Fatal(err)
	}
	defer fs.Close()
	want := storeContents{projects: map[string]project.Project{}, tokens: map[string]project.Token{}}
	var secrets []string
	for i := range n {
		name := fmt.Sprintf("client-%02d", i)
		p := storetest.OAuthProject(name)
		p.Auth.OAuth.ClientSecret = secret.New(fmt.Sprintf("client-secret-%d-xyzzy", i))
		if i%2 == 0 {
			p = storetest.BasicProject(name)
			p.Auth.Password = secret.New(fmt.Sprintf("password-%d-xyzzy", i))
		}
		if _, err := fs.PutProject(ctx, p); err != nil {
			h.t.Fatal(err)
		}
		want.projects[name] = p
		if p.Auth.OAuth == nil {
			secrets = append(secrets, p.Auth.Password.Reveal())
		} else {
			secrets = append(secrets, p.Auth.OAuth.ClientSecret.Reveal())
		}
		if i%4 != 3 {
			tok := storetest.SampleToken(name)
			tok.RefreshToken = secret.New(fmt.Sprintf("refresh-%d-xyzzy", i))
			tok.AccessToken = secret.New(fmt.Sprintf("access-%d-xyzzy", i))
			if _, err := fs.PutToken(ctx, name, tok); err != nil {
				h.t.Fatal(err)
			}
			want.tokens[name] = tok
			secrets = append(secrets, tok.RefreshToken.Reveal(), tok.AccessToken.Reveal())
		}
	}
	return want, secrets
}

// contentsOf reads the store the configuration file at path names.
func (h *harness) contentsOf(path string) storeContents {
	h.t.Helper()
	cfg, err := config.Load(path)
	if err != nil {
		h.t.Fatal(err)
	}
	s, err := OpenStore(h.t.Context(), cfg)
	if err != nil {
		h.t.Fatal(err)
	}
	defer s.Close()
	got := storeContents{projects: map[string]project.Project{}, tokens: map[string]project.Token{}}
	ps, err := s.Projects(h.t.Context())
	if err != nil {
		h.t.Fatal(err)
	}
	for _, p := range ps {
		got.projects[p.Name] = p
		t, err := s.Token(h.t.Context(), p.Name)
		if err == nil {
			got.tokens[p.Name] = t
		} else if !strings.Contains(err.Error(), store.ErrNotFound.Error()) {
			h.t.Fatal(err)
		}
	}
	return got
}

// sameContents compares every field of every record, secrets included, printing no secret.
func (h *harness) sameContents(where string, got, want storeContents) {
	h.t.Helper()
	if len(got.projects) != len(want.projects) || len(got.tokens) != len(want.tokens) {
		h.t.Fatalf("%s: %d projects and %d tokens, want %d and %d", where, len(got.projects), len(got.tokens), len(want.projects), len(want.tokens))
	}
	for name, w := range want.projects {
		g, ok := got.projects[name]
		if !ok {
			h.t.Fatalf("%s: project %s is missing", where, name)
		}
		gb, _ := project.MarshalStored(g)
		wb, _ := project.MarshalStored(w)
		if !bytes.Equal(gb, wb) {
			h.t.Errorf("%s: project %s changed", where, name)
		}
	}
	for name, w := range want.tokens {
		g, ok := got.tokens[name]
		if !ok {
			h.t.Fatalf("%s: the token of %s is missing", where, name)
		}
		gb, _ := project.MarshalStoredToken(g)
		wb, _ := project.MarshalStoredToken(w)
		if !bytes.Equal(gb, wb) {
			h.t.Errorf("%s: the token of %s changed", where, name)
		}
	}
}

func (h *harness) writeConfig(name, storeSection string) string {
	h.t.Helper()
	path := filepath.Join(h.dir, name)
	cfg := fmt.Sprintf("listen:\n  socket_group: %s\nstore:\n%s", currentGroup(h.t), storeSection)
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		h.t.Fatal(err)
	}
	return path
}

// The store of an earlier version (one encrypted file) moves to the embedded database when a command
// first opens it, then to Vault, then back to a new embedded store, with every project and token
// intact at every step.
func TestStoreMigrationFileBoltVaultAndBack(t *testing.T) {
	t.Parallel()
	h := newHarness(t, "")
	want, secrets := h.legacyFileStore(13)
	dbPath := filepath.Join(h.dir, "store.db")
	old, _ := os.ReadFile(dbPath)

	// 1. Any command opening the store migrates it, says so, and keeps the old file.
	r := h.mustRun("", "project", "list")
	if !strings.Contains(r.stderr, "migrated the store") || !strings.Contains(r.stderr, "projects=13 tokens=10") {
		t.Errorf("the migration was not reported: %v", r)
	}
	if backup, err := os.ReadFile(dbPath + boltstore.MigratedSuffix); err != nil || !bytes.Equal(backup, old) {
		t.Fatalf("the old file was not kept: %v", err)
	}
	if bytes.HasPrefix(mustRead(t, dbPath), []byte("POSTERN1")) {
		t.Fatal("the store is still in the old format")
	}
	h.sameContents("after the migration to the embedded database", h.contentsOf(h.cfgPath), want)

	// 2. To Vault.
	srv := vaulttest.New(t, vaulttest.Options{})
	tokenFile := filepath.Join(h.dir, "vault-token")
	if err := os.WriteFile(tokenFile, []byte(srv.RootToken), 0o600); err != nil {
		t.Fatal(err)
	}
	vaultCfg := h.writeConfig("vault.yaml", fmt.Sprintf("  vault:\n    address: %s\n    auth:\n      token_file: %s\n", srv.URL, tokenFile))
	r = h.mustRun("", "store", "migrate", "--to", "vault", "--to-config", vaultCfg)
	if !strings.Contains(r.stderr, "writing: 23/23 (100%)") || !strings.Contains(r.stderr, "copied 13 projects and 10 tokens") {
		t.Errorf("migrate --to vault did not report its progress: %v", r)
	}
	h.sameContents("in Vault", h.contentsOf(vaultCfg), want)

	// Again: the target holds them all now, so nothing is written without --replace.
	if r := h.run("", "store", "migrate", "--to", "vault", "--to-config", vaultCfg); r.code != ExitFail || !strings.Contains(r.stderr, "already holds 13") {
		t.Fatalf("a second migration into the same Vault: %v", r)
	}

	// 3. Back from Vault into a new embedded store.
	backCfg := h.writeConfig("back.yaml", fmt.Sprintf("  file:\n    path: %s\n    key_file: %s\n", filepath.Join(h.dir, "back", "store.db"), filepath.Join(h.dir, "back", "store.key")))
	r = h.mustRun("", "store", "migrate", "--config", vaultCfg, "--to", "file", "--to-config", backCfg)
	if !strings.Contains(r.stderr, "copied 13 projects and 10 tokens") {
		t.Errorf("migrate --to file: %v", r)
	}
	h.sameContents("back in the embedded store", h.contentsOf(backCfg), want)

	h.neverPrinted(secrets...)
}

func mustRead(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestStoreMigrateRefuses(t *testing.T) {
	t.Parallel()
	h := newHarness(t, "")
	h.initStore()
	tests := []struct {
		name string
		args []string
		code int
		want string
	}{
		{"no kind", []string{"store", "migrate"}, ExitUsage, "--to must be vault or file"},
		{"same kind", []string{"store", "migrate", "--to", "file"}, ExitFail, "already a file store"},
		{"target of another kind", []string{"store", "migrate", "--to", "vault", "--to-config", h.cfgPath}, ExitFail, "names no Vault store"},
	}
	for _, tc := range tests {
		if r := h.run("", tc.args...); r.code != tc.code || !strings.Contains(r.stderr, tc.want) {
			t.Errorf("%s: %v, want exit %d saying %q", tc.name, r, tc.code, tc.want)
		}
	}
}

func TestStoreExportImport(t *testing.T) {
	t.Parallel()
	h := newHarness(t, "")
	h.app.archiveWorkFactor = 10
	want, secrets := h.legacyFileStore(5)
	passFile := filepath.Join(h.dir, "pass")
	if err := os.WriteFile(passFile, []byte("a long archive passphrase\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	secrets = append(secrets, "a long archive passphrase")
	archive := filepath.Join(h.dir, "backup.age")

	r := h.mustRun("", "store", "export", "--passphrase-file", passFile, archive)
	if !strings.Contains(r.stderr, "exported 5 projects and 4 tokens") || !strings.Contains(r.stderr, "exporting: 5/5 (100%)") {
		t.Errorf("export: %v", r)
	}
	if fi, err := os.Stat(archive); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("archive: %v %v", fi, err)
	}
	if r := h.run("short", "store", "export", "--passphrase-stdin", filepath.Join(h.dir, "x.age")); r.code != ExitFail || !strings.Contains(r.stderr, "at least 12") {
		t.Fatalf("export with a short passphrase: %v", r)
	}

	// Into a new store on "another host".
	other := h.writeConfig("other.yaml", fmt.Sprintf("  file:\n    path: %s\n    key_file: %s\n", filepath.Join(h.dir, "other", "store.db"), filepath.Join(h.dir, "other", "store.key")))
	if r := h.run("the wrong passphrase", "store", "import", "--config", other, "--passphrase-stdin", archive); r.code != ExitFail || !strings.Contains(r.stderr, "wrong passphrase") {
		t.Fatalf("import with the wrong passphrase: %v", r)
	}
	// Export, rekey and migrate never make a store; import makes one where nothing is, and says so.
	for _, args := range [][]string{
		{"store", "export", "--config", other, "--passphrase-file", passFile, filepath.Join(h.dir, "y.age")},
		{"store", "rekey", "--config", other},
		{"store", "migrate", "--config", other, "--to", "vault"},
	} {
		if r := h.run("", args...); r.code != ExitFail || !strings.Contains(r.stderr, "create the store with `postern init`") {
			t.Fatalf("%s of a missing store: %v", args[1], r)
		}
		if _, err := os.Stat(filepath.Join(h.dir, "other")); !errors.Is(err, fs.ErrNotExist) {
			t.Fatalf("%s of a missing store made something: %v", args[1], err)
		}
	}
	r = h.mustRun("a long archive passphrase\n", "store", "import", "--config", other, "--passphrase-stdin", archive)
	if !strings.Contains(r.stderr, "imported 5 projects and 4 tokens") ||
		!strings.Contains(r.stderr, "created a new, empty store "+filepath.Join(h.dir, "other", "store.db")) {
		t.Errorf("import: %v", r)
	}
	h.sameContents("imported", h.contentsOf(other), want)

	// Importing again is refused, then accepted with --replace.
	if r := h.run("", "store", "import", "--config", other, "--passphrase-file", passFile, archive); r.code != ExitFail || !strings.Contains(r.stderr, "--replace") {
		t.Fatalf("a second import: %v", r)
	}
	h.mustRun("", "store", "import", "--config", other, "--passphrase-file", passFile, "--replace", archive)
	h.sameContents("imported twice", h.contentsOf(other), want)
	h.neverPrinted(secrets...)
}

func TestStoreRekey(t *testing.T) {
	t.Parallel()
	h := newHarness(t, "")
	want, secrets := h.legacyFileStore(4)
	keyFile := filepath.Join(h.dir, "store.key")
	h.mustRun("", "project", "list")
	oldKey := mustRead(t, keyFile)
	r := h.mustRun("", "store", "rekey")
	if !strings.Contains(r.stderr, "re-encrypting: 7/7 (100%)") || !strings.Contains(r.stderr, "back it up") {
		t.Errorf("rekey: %v", r)
	}
	if bytes.Equal(oldKey, mustRead(t, keyFile)) {
		t.Fatal("the key did not change")
	}
	h.sameContents("rekeyed", h.contentsOf(h.cfgPath), want)
	h.neverPrinted(secrets...)
}
