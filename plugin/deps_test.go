package plugin

import (
	"os/exec"
	"strings"
	"testing"
)

// TestDependencyDirection keeps this package and its example free of the sidecar and of the
// Vault client: provider authors depend on package plugin alone.
func TestDependencyDirection(t *testing.T) {
	t.Parallel()
	goTool, err := exec.LookPath("go")
	if err != nil {
		t.Fatalf("need the go tool: %v", err)
	}
	out, err := exec.Command(goTool, "list", "-deps", "./...").Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	for _, dep := range strings.Fields(string(out)) {
		for _, banned := range []string{"github.com/postern/postern/sidecar", "github.com/postern/postern/vault"} {
			if dep == banned || strings.HasPrefix(dep, banned+"/") {
				t.Errorf("plugin depends on %s", dep)
			}
		}
	}
}
