//go:build integration

package integration

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/postern/postern/integration/harness"
	"github.com/postern/postern/sidecar/cli"
	"github.com/postern/postern/sidecar/config"
	"github.com/postern/postern/sidecar/project"
	"github.com/postern/postern/sidecar/secret"
	"github.com/postern/postern/sidecar/store/filestore"
	"github.com/postern/postern/sidecar/store/storetest"
	"github.com/postern/postern/sidecar/store/transfer"
)

// The store of an earlier version (one encrypted file) is moved into the embedded database by the
// first command that opens it, then into a real Vault server with `postern store migrate --to
// vault`, then back into a new embedded store with `--to file`: every project and token arrives
// intact, and no secret is printed on the way.
func TestStoreMigrationFileBoltVaultAndBack(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	bin, err := buildPostern()
	if err != nil {
		t.Fatal(err)
	}
	root := harness.TempDir(t)

	// The old file store, written by package filestore itself.
	fileDir := filepath.Join(root, "file")
	filePostern, err := harness.NewPostern(harness.PosternOptions{Bin: bin, Dir: fileDir})
	if err != nil {
		t.Fatal(err)
	}
	// In place of the store `postern init` made: an upgrade finds the old file where the database
	// goes, with its key and index files.
	for _, f := range []string{"store.db", "store.key", "store.db.index"} {
		if err := os.Remove(filepath.Join(fileDir, f)); err != nil {
			t.Fatal(err)
		}
	}
	want, secrets := writeLegacyStore(t, ctx, filepath.Join(fileDir, "store.db"), filepath.Join(fileDir, "store.key"), 25)
	index := mustReadFile(t, filepath.Join(fileDir, "store.db.index"))

	var printed bytes.Buffer
	run := func(p *harness.Postern, args ...string) string {
		t.Helper()
		out, err := cliCombined(ctx, p, args...)
		printed.WriteString(out)
		if err != nil {
			t.Fatal(err)
		}
		return out
	}

	out := run(filePostern, "project", "list")
	if !strings.Contains(out, "migrated the store") {
		t.Errorf("the first command did not report migrating the old file:\n%s", out)
	}
	if _, err := os.Stat(filepath.Join(fileDir, "store.db.migrated")); err != nil {
		t.Errorf("the old file was not kept: %v", err)
	}
	sameStore(t, "the embedded database", storeContents(t, ctx, filePostern.Config), want)
	if again := mustReadFile(t, filepath.Join(fileDir, "store.db.index")); !bytes.Equal(again, index) {
		t.Errorf("the index file changed from %s to %s in the migration, which changed no project", index, again)
	}

	v := harness.StartVault(t)
	admin := vaultAdmin(t, v, v.Addr, filepath.Join(root, "vault"))
	out = run(filePostern, "store", "migrate", "--to", "vault", "--to-config", admin.Config)
	if !strings.Contains(out, "copied 25 projects and 19 tokens") || !strings.Contains(out, "(100%)") {
		t.Errorf("migrate --to vault:\n%s", out)
	}
	sameStore(t, "Vault", storeContents(t, ctx, admin.Config), want)

	back, err := harness.NewPostern(harness.PosternOptions{Bin: bin, Dir: filepath.Join(root, "back")})
	if err != nil {
		t.Fatal(err)
	}
	out = run(admin, "store", "migrate", "--to", "file", "--to-config", back.Config)
	if !strings.Contains(out, "copied 25 projects and 19 tokens") {
		t.Errorf("migrate --to file:\n%s", out)
	}
	sameStore(t, "back in an embedded store", storeContents(t, ctx, back.Config), want)

	for _, s := range secrets {
		if strings.Contains(printed.String(), s) {
			t.Errorf("a secret (length %d) was printed", len(s))
		}
	}
}

// cliCombined runs `postern ARGS --config <p's config>` and returns what it wrote on standard output
// and standard error, where the store commands report.
func cliCombined(ctx context.Context, p *harness.Postern, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, p.Bin, append(args, "--config", p.Config)...)
	cmd.Dir = p.Dir
	cmd.WaitDelay = 5 * time.Second
	out, err := cmd.CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("running postern %s: %w\n%s", strings.Join(args, " "), err, out)
	}
	return string(out), nil
}

// writeLegacyStore writes n projects, most with a token, into a file store at path with package
// filestore. It returns them and their secrets.
func writeLegacyStore(t *testing.T, ctx context.Context, path, keyFile string, n int) (*transfer.Snapshot, []string) {
	t.Helper()
	fs, err := filestore.Open(ctx, filestore.Options{Path: path, KeyFile: keyFile, Create: true})
	if err != nil {
		t.Fatal(err)
	}
	defer fs.Close()
	snap := &transfer.Snapshot{}
	var secrets []string
	for i := range n {
		name := fmt.Sprintf("client-%02d", i)
		p := storetest.BasicProject(name)
		p.Auth.Password = secret.New(fmt.Sprintf("password-%d-plugh", i))
		secrets = append(secrets, p.Auth.Password.Reveal())
		if i%2 == 1 {
			p = storetest.OAuthProject(name)
			p.Auth.OAuth.ClientSecret = secret.New(fmt.Sprintf("client-secret-%d-plugh", i))
			secrets = append(secrets, p.Auth.OAuth.ClientSecret.Reveal())
		}
		if _, err := fs.PutProject(ctx, p); err != nil {
			t.Fatal(err)
		}
		r := transfer.Record{Project: p}
		if i%4 != 3 {
			tok := storetest.SampleToken(name)
			tok.RefreshToken = secret.New(fmt.Sprintf("refresh-%d-plugh", i))
			if _, err := fs.PutToken(ctx, name, tok); err != nil {
				t.Fatal(err)
			}
			r.Token = &tok
			secrets = append(secrets, tok.RefreshToken.Reveal())
		}
		snap.Records = append(snap.Records, r)
	}
	return snap, secrets
}

// storeContents reads the store the configuration at path names.
func storeContents(t *testing.T, ctx context.Context, path string) *transfer.Snapshot {
	t.Helper()
	cfg, err := config.Load(path)
	if err != nil {
		t.Fatal(err)
	}
	st, err := cli.OpenStore(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	snap, err := transfer.Read(ctx, st, transfer.Options{})
	if err != nil {
		t.Fatal(err)
	}
	return snap
}

// sameStore compares every record, secrets included, in their storage form, printing no secret.
func sameStore(t *testing.T, where string, got, want *transfer.Snapshot) {
	t.Helper()
	gp, gt := got.Counts()
	wp, wt := want.Counts()
	if gp != wp || gt != wt {
		t.Fatalf("%s: %d projects and %d tokens, want %d and %d", where, gp, gt, wp, wt)
	}
	byName := make(map[string]transfer.Record)
	for _, r := range got.Records {
		byName[r.Project.Name] = r
	}
	for _, w := range want.Records {
		g, ok := byName[w.Project.Name]
		if !ok {
			t.Fatalf("%s: project %s is missing", where, w.Project.Name)
		}
		gb, _ := project.MarshalStored(g.Project)
		wb, _ := project.MarshalStored(w.Project)
		if !bytes.Equal(gb, wb) {
			t.Errorf("%s: project %s changed", where, w.Project.Name)
		}
		if (g.Token == nil) != (w.Token == nil) {
			t.Fatalf("%s: project %s has a token: %v, want %v", where, w.Project.Name, g.Token != nil, w.Token != nil)
		}
		if w.Token != nil {
			gb, _ := project.MarshalStoredToken(*g.Token)
			wb, _ := project.MarshalStoredToken(*w.Token)
			if !bytes.Equal(gb, wb) {
				t.Errorf("%s: the token of %s changed", where, w.Project.Name)
			}
		}
	}
}

func mustReadFile(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
