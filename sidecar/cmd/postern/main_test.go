package main

import (
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// The binary built with the version stamped the way make build and make dist stamp it prints that
// version, with --version as with the version command.
func TestStampedVersion(t *testing.T) {
	t.Parallel()
	if testing.Short() {
		t.Skip("builds the binary")
	}
	bin := filepath.Join(t.TempDir(), "postern")
	const pkg = "github.com/postern/postern/sidecar/buildinfo"
	ldflags := "-X " + pkg + ".version=v9.8.7-1-g0123abcd -X " + pkg + ".revision=0123abcd4567"
	build := exec.Command("go", "build", "-ldflags", ldflags, "-o", bin, ".")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	for _, args := range [][]string{{"--version"}, {"version"}} {
		out, err := exec.Command(bin, args...).CombinedOutput()
		if err != nil {
			t.Fatalf("postern %s: %v\n%s", args[0], err, out)
		}
		const want = "postern v9.8.7-1-g0123abcd (go"
		if !strings.HasPrefix(string(out), want) || !strings.Contains(string(out), "revision 0123abcd4567)") {
			t.Errorf("postern %s printed %q, want %q... with the revision", args[0], out, want)
		}
	}
}
