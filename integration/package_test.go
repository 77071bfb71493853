//go:build integration

package integration

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/postern/postern/integration/harness"
)

const (
	packageUnit  = "/usr/lib/systemd/system/postern.service"
	packageConf  = "/etc/postern/postern.yaml"
	packageState = "/var/lib/postern"
)

// The Debian package of make dist, installed with dpkg on this machine, runs Postern from its
// unit's command line as the unit's user and relays a message; upgrades keep a changed
// configuration, remove keeps configuration and state, purge removes the configuration and keeps
// the state. The test installs and purges the package: it changes the machine while it runs
// (POSTERN_IT_SKIP_PACKAGE=1 skips it) and refuses to run where postern is installed already.
func TestDebianPackageInstallsAndRelays(t *testing.T) {
	if os.Getenv("POSTERN_IT_SKIP_PACKAGE") == "1" {
		t.Skip("POSTERN_IT_SKIP_PACKAGE=1: not installing the Debian package on this machine")
	}
	harness.Require(t)
	for _, tool := range []string{"dpkg", "setpriv"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("%s is needed to install and run the package: %v", tool, err)
		}
	}
	if out, err := exec.Command("dpkg-query", "-W", "-f", "${db:Status-Status}", "postern").Output(); err == nil && len(out) > 0 && string(out) != "not-installed" {
		t.Fatalf("a postern package is already installed here (%s): not touching it", out)
	}
	_, userExisted := user.Lookup("postern")
	stateBefore, stateExisted := os.Stat(packageState)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
	defer cancel()

	// Build the package the way make dist does, for this machine's architecture only.
	root, err := harness.ModuleRoot()
	if err != nil {
		t.Fatal(err)
	}
	dist := t.TempDir()
	const version = "v0.9.0-7-g0123abcd"
	build := exec.CommandContext(ctx, "bash", "contrib/package/dist.sh")
	build.Dir = root
	build.Env = append(os.Environ(), "ARCHES="+runtime.GOARCH, "DIST="+dist, "VERSION="+version, "REVISION=0123abcd", "GOWORK=off")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("building the package: %v\n%s", err, out)
	}
	debs, _ := filepath.Glob(filepath.Join(dist, "*.deb"))
	if len(debs) != 1 {
		t.Fatalf("want one .deb in %s, found %v", dist, debs)
	}
	deb := debs[0]
	if st, err := os.Stat(deb); err == nil {
		contents, _ := exec.Command("dpkg-deb", "-c", deb).Output()
		t.Logf("%s: %d bytes\n%s", filepath.Base(deb), st.Size(), contents)
	}

	// Whatever happens, leave the machine as it was: purge the package, and remove the state
	// directory and the user if they were not here before.
	t.Cleanup(func() {
		_, _ = dpkgRun("--purge", "postern")
		if stateExisted != nil {
			os.RemoveAll(packageState)
		} else if st, ok := stateBefore.Sys().(*syscall.Stat_t); ok {
			// postinst gave the existing directory to postern: give it back.
			if out, err := exec.Command("chown", "-R", fmt.Sprintf("%d:%d", st.Uid, st.Gid), packageState).CombinedOutput(); err != nil {
				t.Logf("chown back %s: %v\n%s", packageState, err, out)
			}
			os.Chmod(packageState, stateBefore.Mode().Perm())
		}
		if userExisted != nil {
			if out, err := exec.Command("userdel", "postern").CombinedOutput(); err != nil {
				t.Logf("userdel postern: %v\n%s", err, out)
			}
		}
	})
	if out, err := dpkgRun("-i", deb); err != nil {
		t.Fatalf("dpkg -i: %v\n%s", err, out)
	}

	// What the package installed.
	out, err := exec.Command("/usr/bin/postern", "--version").CombinedOutput()
	if err != nil || !strings.HasPrefix(string(out), "postern "+version+" (go") {
		t.Fatalf("postern --version: %v %q, want the stamped %s", err, out, version)
	}
	u, err := user.Lookup("postern")
	if err != nil {
		t.Fatalf("postinst created no postern user: %v", err)
	}
	if g, err := user.LookupGroup("postfix"); err != nil || u.Gid != g.Gid {
		t.Errorf("postern's group is %s, want postfix (%v)", u.Gid, err)
	}
	if st, err := os.Stat(packageState); err != nil || st.Mode().Perm() != 0o700 || !st.IsDir() || fmt.Sprint(st.Sys().(*syscall.Stat_t).Uid) != u.Uid {
		t.Errorf("%s: %v, want a directory of postern's with mode 0700", packageState, err)
	}
	conffiles, _ := exec.Command("dpkg-query", "-W", "-f", "${Conffiles}", "postern").Output()
	if !strings.Contains(string(conffiles), packageConf) {
		t.Errorf("%s is not a conffile: %q", packageConf, conffiles)
	}
	execStart, runAs := unitCommand(t, packageUnit)

	// The harness's Postfix and upstream; Postern is started below, as the unit starts it.
	e := harness.Start(t, harness.Options{})
	p := e.Postern
	p.Bin = execStart[0]
	conf, err := os.ReadFile(p.Config)
	if err != nil {
		t.Fatal(err)
	}
	// The unit reads /etc/postern/postern.yaml: the operator edits it.
	if err := os.WriteFile(packageConf, conf, 0o644); err != nil {
		t.Fatal(err)
	}
	p.Config = packageConf
	if got, want := strings.Join(execStart[1:], " "), "serve --config "+packageConf; got != want {
		t.Fatalf("ExecStart runs %q, want %q", got, want)
	}
	// The store exists before serve starts: project add creates it.
	args, password, senders, err := e.ProjectAddArgs(harness.ProjectOptions{Name: "client-a", Org: "client-a"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := p.CLI(ctx, password+"\n", args...); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("chown", "-R", runAs[0]+":"+runAs[1], p.Dir).CombinedOutput(); err != nil {
		t.Fatalf("chown: %v\n%s", err, out)
	}
	p.Command = append([]string{"setpriv", "--reuid=" + runAs[0], "--regid=" + runAs[1], "--clear-groups", "--"}, execStart...)
	harness.StartPostern(t, p)
	if err := p.WaitRouted(ctx, senders[0], true); err != nil {
		t.Fatal(err)
	}
	mail := &harness.Mail{From: senders[0], To: []string{"alice@dest.test"}}
	submit(t, ctx, e, mail)
	if _, err := e.Upstream.WaitForMessage(ctx, "alice@dest.test", harness.WithID(mail.ID)); err != nil {
		t.Fatalf("the message did not arrive through the packaged Postern: %v", err)
	}
	metrics, err := p.Get(ctx, "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	if want := `version="` + version + `"`; !strings.Contains(metrics, "postern_build_info{") || !strings.Contains(metrics, want) {
		t.Errorf("/metrics lacks postern_build_info with %s", want)
	}
	if out, err := exec.Command("/usr/bin/postern", "healthcheck").CombinedOutput(); err != nil || !strings.HasPrefix(string(out), "ready") {
		t.Errorf("postern healthcheck: %v\n%s", err, out)
	}
	if err := p.Stop(); err != nil {
		t.Fatal(err)
	}

	// Installing again (an upgrade) keeps the changed configuration and runs postinst again.
	if out, err := dpkgRun("-i", deb); err != nil {
		t.Fatalf("dpkg -i again: %v\n%s", err, out)
	}
	if now, _ := os.ReadFile(packageConf); !bytes.Equal(now, conf) {
		t.Errorf("installing again replaced the changed %s", packageConf)
	}
	// remove keeps configuration and state.
	if out, err := dpkgRun("-r", "postern"); err != nil {
		t.Fatalf("dpkg -r: %v\n%s", err, out)
	}
	if _, err := os.Stat("/usr/bin/postern"); err == nil {
		t.Error("dpkg -r left /usr/bin/postern")
	}
	if now, _ := os.ReadFile(packageConf); !bytes.Equal(now, conf) {
		t.Errorf("dpkg -r changed %s", packageConf)
	}
	// purge removes the configuration and keeps the state, saying so.
	purged, err := dpkgRun("--purge", "postern")
	if err != nil {
		t.Fatalf("dpkg --purge: %v\n%s", err, purged)
	}
	if _, err := os.Stat(packageConf); err == nil {
		t.Errorf("dpkg --purge left %s", packageConf)
	}
	if _, err := os.Stat(packageState); err != nil || !strings.Contains(purged, packageState+" is kept") {
		t.Errorf("dpkg --purge: %s (%v), want it kept and said so:\n%s", packageState, err, purged)
	}
}

// dpkgRun runs dpkg non-interactively and returns its output.
func dpkgRun(args ...string) (string, error) {
	cmd := exec.Command("dpkg", args...)
	cmd.Env = append(os.Environ(), "DEBIAN_FRONTEND=noninteractive")
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// unitCommand returns the ExecStart command line of a systemd unit file and the user and group it
// runs as (root when the unit names none).
func unitCommand(t *testing.T, path string) (execStart []string, runAs [2]string) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("the package installed no unit: %v", err)
	}
	runAs = [2]string{"root", "root"}
	for _, line := range strings.Split(string(b), "\n") {
		k, v, ok := strings.Cut(strings.TrimSpace(line), "=")
		switch {
		case !ok:
		case k == "ExecStart":
			execStart = strings.Fields(v)
		case k == "User":
			runAs[0] = v
		case k == "Group":
			runAs[1] = v
		}
	}
	if len(execStart) == 0 {
		t.Fatalf("%s has no ExecStart", path)
	}
	return execStart, runAs
}
