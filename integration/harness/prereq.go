package harness

// Prerequisites: what `make deps` installs, checked before anything is started, so that a test
// without them fails at once and says what to run, instead of waiting out a start timeout.
//
//  1. Each Start function (and Require, RequireChromium, RequireEngine) calls requirePrereqs with
//     the checks of the parts it is about to start: Postfix and Dovecot (checkMailPrograms), the
//     OAuth server's npm packages and node (checkIdP), the Vault dev server (checkVaultDev),
//     Chromium (checkChromium), a container engine (checkEngine).
//  2. A check that fails becomes one line naming what is missing; all of them are reported at
//     once: "... missing: run make deps".
//  3. Unless the variable that skips those tests is set (POSTERN_IT_SKIP=1 for the real-parts
//     tests, POSTERN_IT_SKIP_CONTAINERS=1 for the container scenarios), the test fails with
//     t.Fatalf; with it, it is skipped.

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// SkipEnv, set to 1, skips the real-parts tests whose prerequisites are missing instead of failing
// them.
const SkipEnv = "POSTERN_IT_SKIP"

// ErrMissing is wrapped by every failed prerequisite check.
var ErrMissing = errors.New("missing")

// missingError says what is missing; it wraps ErrMissing.
type missingError struct{ what string }

func (e *missingError) Error() string { return e.what + " missing" }
func (e *missingError) Unwrap() error { return ErrMissing }

// missing returns the error of a failed prerequisite check.
func missing(format string, args ...any) error {
	return &missingError{what: fmt.Sprintf(format, args...)}
}

// requirePrereqs runs the checks and, when any fails, fails t naming `make deps`, or skips it
// when the variable skipEnv is "1" and t can skip. It reports whether every check passed.
func requirePrereqs(t T, skipEnv string, checks ...func() error) bool {
	t.Helper()
	var problems []string
	for _, check := range checks {
		if err := check(); err != nil {
			problems = append(problems, err.Error())
		}
	}
	if len(problems) == 0 {
		return true
	}
	msg := strings.Join(problems, "; ") + ": run make deps"
	if os.Getenv(skipEnv) == "1" {
		if s, ok := t.(interface{ Skipf(string, ...any) }); ok {
			s.Skipf("%s (%s=1: skipped)", msg, skipEnv)
			return false
		}
	}
	t.Fatalf("%s (or set %s=1 to skip these tests)", msg, skipEnv)
	return false
}

// checkMailPrograms checks that Postfix and Dovecot are installed.
func checkMailPrograms() error {
	if m := Missing(); len(m) > 0 {
		return missing("Postfix/Dovecot programs (%s)", strings.Join(m, ", "))
	}
	return nil
}

// checkRoot checks that the process may run Postfix and Dovecot instances.
func checkRoot() error {
	if os.Geteuid() != 0 {
		return errors.New("the real-parts tests run Postfix and Dovecot instances and need root")
	}
	return nil
}

// checkIdP checks that node and the OAuth server's npm packages (integration/oauth/install.sh)
// are installed in dir.
func checkIdP(dir string) error {
	var what []string
	if _, err := exec.LookPath("node"); err != nil {
		what = append(what, "node")
	}
	if _, err := os.Stat(filepath.Join(dir, "node_modules", "oidc-provider")); err != nil {
		what = append(what, "the npm packages in "+dir)
	}
	if len(what) > 0 {
		return missing("OAuth server (%s)", strings.Join(what, ", "))
	}
	return nil
}

// checkVaultDev checks that the Vault dev server is built and up to date with its source
// (integration/vaultdev/build.sh --check), and returns its path. POSTERN_VAULTDEV names a binary
// built elsewhere.
func checkVaultDev(root string) (string, error) {
	if p := os.Getenv("POSTERN_VAULTDEV"); p != "" {
		if _, err := os.Stat(p); err != nil {
			return "", missing("Vault dev server (POSTERN_VAULTDEV=%s)", p)
		}
		return p, nil
	}
	out, err := exec.Command("bash", filepath.Join(root, "integration", "vaultdev", "build.sh"), "--check").Output()
	if err != nil {
		return "", missing("Vault dev server (not built, or older than integration/vaultdev)")
	}
	return strings.TrimSpace(string(out)), nil
}

// checkChromium checks that Chromium is installed.
func checkChromium() error {
	if _, err := FindChromium(); err != nil {
		return missing("Chromium (integration/oauth/install.sh --chromium)")
	}
	return nil
}

// checkEngine checks that a container engine is there: a Docker engine that answers, or Podman.
func checkEngine() error {
	if _, err := lookPath("podman"); err == nil {
		return nil
	}
	if p, err := exec.LookPath("docker"); err == nil && exec.Command(p, "info", "--format", "{{.ServerVersion}}").Run() == nil {
		return nil
	}
	return missing("container engine (podman)")
}
