package cli

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/postern/postern/sidecar/config"
)

// The shipped policies are what `postern vault-policy` prints for the default layout.
func TestVaultPolicyMatchesContrib(t *testing.T) {
	t.Parallel()
	for file, admin := range map[string]bool{"postern-sidecar.hcl": false, "postern-admin.hcl": true} {
		want, err := os.ReadFile(filepath.Join("..", "..", "contrib", "vault", file))
		if err != nil {
			t.Fatal(err)
		}
		if got := VaultPolicy(config.Default(), admin); got != string(want) {
			t.Errorf("contrib/vault/%s differs from `postern vault-policy`:\n--- command\n%s\n--- file\n%s", file, got, want)
		}
	}
}

func TestVaultPolicyHonoursMountAndPrefix(t *testing.T) {
	t.Parallel()
	cfg, err := config.Parse([]byte("store:\n  vault:\n    address: http://127.0.0.1:8200\n    mount: kv\n    prefix: mail/postern\n"))
	if err != nil {
		t.Fatal(err)
	}
	got := VaultPolicy(cfg, false)
	for _, want := range []string{`path "kv/data/mail/postern/tokens/*"`, `path "kv/data/mail/postern/projects/*"`} {
		if !strings.Contains(got, want) {
			t.Errorf("policy lacks %s:\n%s", want, got)
		}
	}
}
