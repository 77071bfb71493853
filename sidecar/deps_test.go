package sidecar

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestDependencyDirection enforces the map in DESIGN: plugin imports neither sidecar nor vault;
// vault knows nothing of SMTP or the sidecar; wiring goes one way, cmd → cli → sidecar → parts, so
// neither sidecar nor any of its parts imports sidecar/cli or sidecar/cmd; fakes in xxxtest
// packages are imported only by tests; the earlier file store (store/filestore) is imported by no
// package, only by tests.
func TestDependencyDirection(t *testing.T) {
	t.Parallel()
	out, err := exec.Command("go", "list", "-f", `{{.ImportPath}} {{join .Imports " "}}`, "github.com/postern/postern/...").Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	const mod = "github.com/postern/postern/"
	rules := []struct {
		pkg, forbidden, why string
	}{
		{mod + "plugin", mod + "sidecar", "the plugin contract must stand alone"},
		{mod + "plugin", mod + "vault", "the plugin contract must stand alone"},
		{mod + "vault", mod + "sidecar", "vault knows nothing of the sidecar"},
		{mod + "vault", "github.com/emersion/go-smtp", "vault knows nothing of SMTP"},
	}
	cli, cmd := mod+"sidecar/cli", mod+"sidecar/cmd"
	checked := 0
	for _, line := range strings.Split(string(bytes.TrimSpace(out)), "\n") {
		fields := strings.Fields(line)
		if len(fields) == 0 {
			continue
		}
		pkg, imports := fields[0], fields[1:]
		checked++
		for _, imp := range imports {
			for _, r := range rules {
				if strings.HasPrefix(pkg, r.pkg) && strings.HasPrefix(imp, r.forbidden) {
					t.Errorf("%s imports %s: %s", pkg, imp, r.why)
				}
			}
			if imp == mod+"sidecar/store/filestore" {
				t.Errorf("%s imports %s: the earlier file store is only migrated (by boltstore, which reads its format itself); nothing opens it", pkg, imp)
			}
			if strings.HasPrefix(pkg, mod+"sidecar") && (imp == cli || strings.HasPrefix(imp, cmd)) && pkg != cli && !strings.HasPrefix(pkg, cmd) {
				t.Errorf("%s imports %s: wiring goes one way, cmd → cli → sidecar → parts", pkg, imp)
			}
			if strings.HasPrefix(imp, mod) && strings.HasSuffix(imp, "test") && !strings.HasSuffix(pkg, "test") &&
				!strings.HasPrefix(pkg, mod+"integration") {
				t.Errorf("%s imports the test fake %s outside tests", pkg, imp)
			}
		}
	}
	if checked < 10 {
		t.Fatalf("only %d packages listed; the check looked at nothing", checked)
	}
}

// TestSMTPDKnowsNoAuthType: the mail server hands every sign-in to package credential, so its
// non-test source names no auth type.
func TestSMTPDKnowsNoAuthType(t *testing.T) {
	t.Parallel()
	files, err := filepath.Glob("smtpd/*.go")
	if err != nil || len(files) == 0 {
		t.Fatalf("no source in smtpd: %v", err)
	}
	checked := 0
	for _, f := range files {
		if strings.HasSuffix(f, "_test.go") {
			continue
		}
		src, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		checked++
		for _, name := range []string{"AuthOAuth2", "AuthPlugin", "AuthBasic", "AuthNone"} {
			if bytes.Contains(src, []byte(name)) {
				t.Errorf("%s mentions project.%s: choosing a credential by auth type belongs to package credential", f, name)
			}
		}
	}
	if checked == 0 {
		t.Fatal("no non-test source in smtpd")
	}
}
