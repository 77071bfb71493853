package harness

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"
)

// T is the part of testing.TB the harness uses, the one test interface of every helper here.
// *testing.T and *testing.B satisfy it; the demo and the benchmark program have their own
// (integration/cmd/demo, integration/bench.Runner).
type T interface {
	Helper()
	Logf(format string, args ...any)
	Fatalf(format string, args ...any)
	Cleanup(func())
	Failed() bool
}

// requiredBinaries are the programs the real-parts tests need; install-deps.sh installs them.
func requiredBinaries() []string {
	return []string{"postfix", "postconf", "postqueue", "postmap", "dovecot"}
}

// Missing returns the required programs that are not installed.
func Missing() []string {
	var missing []string
	for _, b := range requiredBinaries() {
		if _, err := lookPath(b); err != nil {
			missing = append(missing, b)
		}
	}
	return missing
}

// Require fails t at once when Postfix or Dovecot is missing (naming `make deps`) or the process
// is not root. With POSTERN_IT_SKIP=1 it skips instead (t must then have a Skipf method, as
// *testing.T does).
func Require(t T) {
	t.Helper()
	if !requirePrereqs(t, SkipEnv, checkMailPrograms) {
		return
	}
	if err := checkRoot(); err != nil {
		if s, ok := t.(interface{ Skipf(string, ...any) }); ok && os.Getenv(SkipEnv) == "1" {
			s.Skipf("%v (%s=1: skipped)", err, SkipEnv)
			return
		}
		t.Fatalf("%v (or set %s=1 to skip these tests)", err, SkipEnv)
	}
}

// lookPath finds a program in PATH or in the sbin directories, which a non-login shell may lack.
func lookPath(name string) (string, error) {
	if p, err := exec.LookPath(name); err == nil {
		return p, nil
	}
	for _, dir := range []string{"/usr/sbin", "/sbin", "/usr/local/sbin"} {
		p := filepath.Join(dir, name)
		if st, err := os.Stat(p); err == nil && !st.IsDir() && st.Mode()&0o111 != 0 {
			return p, nil
		}
	}
	return "", fmt.Errorf("finding %s: not in PATH nor in /usr/sbin", name)
}

// handedOut holds the ports FreePort returned: the kernel may offer a port again once its listener
// is closed, before whoever it was given to binds it, and two servers of one environment then
// share it (Postfix: "duplicate master.cf entry").
var handedOut sync.Map

// FreePort returns a TCP port on 127.0.0.1 that was free a moment ago and that it never returned
// before in this process.
func FreePort() (int, error) {
	for range 100 {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return 0, fmt.Errorf("finding a free port: %w", err)
		}
		port := ln.Addr().(*net.TCPAddr).Port
		ln.Close()
		if _, taken := handedOut.LoadOrStore(port, true); !taken {
			return port, nil
		}
	}
	return 0, errors.New("finding a free port: the system offered only ports handed out before")
}

// TempDir makes a directory for one environment under os.TempDir with a short name (unix socket
// paths must stay under 108 bytes) and mode 0755, so that the postfix and dovecot users can reach
// what lies below. It is removed at cleanup unless POSTERN_IT_KEEP=1.
func TempDir(t T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "pit-")
	if err != nil {
		t.Fatalf("making a temporary directory: %v", err)
	}
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatalf("making %s searchable: %v", dir, err)
	}
	t.Cleanup(func() {
		if os.Getenv("POSTERN_IT_KEEP") == "1" {
			t.Logf("keeping %s (POSTERN_IT_KEEP=1)", dir)
			return
		}
		if err := os.RemoveAll(dir); err != nil {
			t.Logf("removing %s: %v", dir, err)
		}
	})
	return dir
}

// mkdirs creates directories with mode 0755.
func mkdirs(dirs ...string) error {
	for _, d := range dirs {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return fmt.Errorf("making %s: %w", d, err)
		}
		if err := os.Chmod(d, 0o755); err != nil {
			return fmt.Errorf("making %s searchable: %w", d, err)
		}
	}
	return nil
}

// chownTo gives path to the named system user and its primary group.
func chownTo(path, username string) error {
	uid, gid, err := lookupIDs(username)
	if err != nil {
		return err
	}
	if err := os.Chown(path, uid, gid); err != nil {
		return fmt.Errorf("giving %s to %s: %w", path, username, err)
	}
	return nil
}

func lookupIDs(username string) (uid, gid int, err error) {
	u, err := user.Lookup(username)
	if err != nil {
		return 0, 0, fmt.Errorf("looking up user %s: %w", username, err)
	}
	uid, err = strconv.Atoi(u.Uid)
	if err != nil {
		return 0, 0, fmt.Errorf("user %s has uid %q: %w", username, u.Uid, err)
	}
	gid, err = strconv.Atoi(u.Gid)
	if err != nil {
		return 0, 0, fmt.Errorf("user %s has gid %q: %w", username, u.Gid, err)
	}
	return uid, gid, nil
}

// run runs a program and returns its combined output. The error includes the output. The output
// goes through a file, not a pipe, so that a daemon the program leaves behind holding its
// standard output (dovecot, postfix start) does not keep run waiting.
func run(ctx context.Context, stdin string, name string, args ...string) (string, error) {
	path, err := lookPath(name)
	if err != nil {
		return "", err
	}
	f, err := os.CreateTemp("", "pit-out-")
	if err != nil {
		return "", fmt.Errorf("running %s: %w", name, err)
	}
	defer os.Remove(f.Name())
	defer f.Close()
	cmd := exec.CommandContext(ctx, path, args...)
	if stdin != "" {
		cmd.Stdin = strings.NewReader(stdin)
	}
	cmd.Stdout = f
	cmd.Stderr = f
	runErr := cmd.Run()
	out, err := os.ReadFile(f.Name())
	if err != nil {
		return "", fmt.Errorf("running %s: reading its output: %w", name, err)
	}
	if runErr != nil {
		return string(out), fmt.Errorf("running %s %s: %w\n%s", name, strings.Join(args, " "), runErr, out)
	}
	return string(out), nil
}

// runSplit runs a program and returns its standard output and standard error separately.
func runSplit(ctx context.Context, name string, args ...string) (stdout, stderr string, err error) {
	path, err := lookPath(name)
	if err != nil {
		return "", "", err
	}
	cmd := exec.CommandContext(ctx, path, args...)
	var out, errb bytes.Buffer
	cmd.Stdout = &out
	cmd.Stderr = &errb
	cmd.WaitDelay = 5 * time.Second
	if err := cmd.Run(); err != nil {
		return out.String(), errb.String(), fmt.Errorf("running %s %s: %w\n%s", name, strings.Join(args, " "), err, errb.String())
	}
	return out.String(), errb.String(), nil
}

// errTimeout is returned by poll when ctx ends before cond held.
var errTimeout = errors.New("condition not met before the deadline")

// poll calls cond every interval until it returns true or an error, or ctx ends.
func poll(ctx context.Context, interval time.Duration, cond func() (bool, error)) error {
	tick := time.NewTicker(interval)
	defer tick.Stop()
	for {
		ok, err := cond()
		if err != nil {
			return err
		}
		if ok {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%w: %w", errTimeout, ctx.Err())
		case <-tick.C:
		}
	}
}

// waitListening waits until a socket listens on addr (127.0.0.1:port). It reads /proc/net/tcp
// rather than connecting, so no server logs a probe connection.
func waitListening(ctx context.Context, addr string) error {
	err := poll(ctx, 20*time.Millisecond, func() (bool, error) {
		if ok, err := listeningOn(addr); err == nil {
			return ok, nil
		}
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err != nil {
			return false, nil
		}
		c.Close()
		return true, nil
	})
	if err != nil {
		return fmt.Errorf("waiting for %s to listen: %w", addr, err)
	}
	return nil
}

// listeningOn reports whether /proc/net/tcp has a socket in state LISTEN on addr.
func listeningOn(addr string) (bool, error) {
	host, portStr, err := net.SplitHostPort(addr)
	if err != nil {
		return false, err
	}
	ip := net.ParseIP(host).To4()
	port, err := strconv.Atoi(portStr)
	if ip == nil || err != nil {
		return false, fmt.Errorf("listeningOn: %q is not an IPv4 address and port", addr)
	}
	want := fmt.Sprintf("%02X%02X%02X%02X:%04X", ip[3], ip[2], ip[1], ip[0], port)
	anyAddr := fmt.Sprintf("00000000:%04X", port)
	b, err := os.ReadFile("/proc/net/tcp")
	if err != nil {
		return false, err
	}
	for _, l := range strings.Split(string(b), "\n")[1:] {
		f := strings.Fields(l)
		if len(f) > 3 && (f[1] == want || f[1] == anyAddr) && f[3] == "0A" {
			return true, nil
		}
	}
	return false, nil
}

// waitRefusing waits until nothing accepts TCP connections on addr any more.
func waitRefusing(ctx context.Context, addr string) error {
	err := poll(ctx, 20*time.Millisecond, func() (bool, error) {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err != nil {
			return true, nil
		}
		c.Close()
		return false, nil
	})
	if err != nil {
		return fmt.Errorf("waiting for %s to stop listening: %w", addr, err)
	}
	return nil
}

// processGone reports whether pid no longer runs (absent, or a zombie waiting to be reaped).
func processGone(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return true
	}
	// The state follows the parenthesised command name: "pid (comm) S ...".
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 || i+2 >= len(s) {
		return false
	}
	return s[i+2] == 'Z'
}

// readPID reads a pid file as written by Postfix (padded) or Dovecot.
func readPID(path string) (int, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, fmt.Errorf("reading pid file: %w", err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		return 0, fmt.Errorf("pid file %s holds %q: %w", path, b, err)
	}
	return pid, nil
}

// tail returns the last n lines of s.
func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = append([]string{fmt.Sprintf("... (%d earlier lines)", len(lines)-n)}, lines[len(lines)-n:]...)
	}
	return strings.Join(lines, "\n")
}

// readFile returns a file's content, or a note saying why it could not be read.
func readFile(path string) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return fmt.Sprintf("(%v)", err)
	}
	return string(b)
}

// ModuleRoot returns the directory of Postern's go.mod, searched upwards from the working directory.
func ModuleRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", fmt.Errorf("finding the module root: %w", err)
	}
	for {
		b, err := os.ReadFile(filepath.Join(dir, "go.mod"))
		if err == nil && strings.Contains(string(b), "module github.com/postern/postern\n") {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("finding the module root: no go.mod of github.com/postern/postern above the working directory")
		}
		dir = parent
	}
}
