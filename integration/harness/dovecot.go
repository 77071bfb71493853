package harness

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"
)

// Dovecot is a Dovecot instance that serves only SASL authentication (PLAIN and LOGIN) from a
// passwd-file, for the upstream Postfix's smtpd_sasl_type = dovecot. Its configuration includes
// nothing from /etc.
type Dovecot struct {
	// Dir holds the configuration, the passwd-file, the run directory and the log.
	Dir string
	// Config is the dovecot.conf given to `dovecot -c`.
	Config string
	// AuthSocket is the SASL socket (mode 0666) for smtpd_sasl_path.
	AuthSocket string
	// PasswdFile holds "user:{PLAIN}password" lines.
	PasswdFile string
	// LogFile is log_path.
	LogFile string

	mu    sync.Mutex
	users map[string]string
	proc  *Process
}

// newDovecot writes a configuration into dir.
func newDovecot(dir string) (*Dovecot, error) {
	d := &Dovecot{
		Dir:        dir,
		Config:     filepath.Join(dir, "dovecot.conf"),
		AuthSocket: filepath.Join(dir, "auth"),
		PasswdFile: filepath.Join(dir, "passwd"),
		LogFile:    filepath.Join(dir, "dovecot.log"),
		users:      map[string]string{},
	}
	if err := mkdirs(dir, filepath.Join(dir, "run"), filepath.Join(dir, "state")); err != nil {
		return nil, err
	}
	conf := fmt.Sprintf(`# Dovecot of Postern's integration tests: SASL for Postfix only.
base_dir = %[1]s/run
state_dir = %[1]s/state
instance_name = postern-it-%[2]s
log_path = %[3]s
protocols =
listen = 127.0.0.1
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain login
auth_failure_delay = 0
auth_cache_size = 0
auth_verbose = yes
default_internal_user = dovecot
default_login_user = dovenull
passdb {
  driver = passwd-file
  args = scheme=PLAIN username_format=%%u %[4]s
}
userdb {
  driver = static
  args = uid=postfix gid=postfix home=%[1]s/home/%%u
}
service auth {
  unix_listener %[5]s {
    mode = 0666
  }
}
# No anvil-auth-penalty socket: no growing delay after failed logins.
service anvil {
  unix_listener anvil-auth-penalty {
    mode = 0
  }
}
`, dir, filepath.Base(filepath.Dir(dir)), d.LogFile, d.PasswdFile, d.AuthSocket)
	if err := os.WriteFile(d.Config, []byte(conf), 0o644); err != nil {
		return nil, fmt.Errorf("writing %s: %w", d.Config, err)
	}
	if err := d.writePasswd(); err != nil {
		return nil, err
	}
	return d, nil
}

// SetUser adds a user or changes its password. Dovecot rereads the passwd-file when it changes.
func (d *Dovecot) SetUser(name, password string) error {
	if strings.ContainsAny(name, ":\n") || strings.ContainsAny(password, ":\n") {
		return fmt.Errorf("setting dovecot user %q: ':' and newlines cannot be stored in a passwd-file", name)
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	d.users[name] = password
	return d.writePasswd()
}

func (d *Dovecot) writePasswd() error {
	names := make([]string, 0, len(d.users))
	for n := range d.users {
		names = append(names, n)
	}
	sort.Strings(names)
	var b strings.Builder
	for _, n := range names {
		fmt.Fprintf(&b, "%s:{PLAIN}%s\n", n, d.users[n])
	}
	tmp := d.PasswdFile + ".tmp"
	if err := os.WriteFile(tmp, []byte(b.String()), 0o644); err != nil {
		return fmt.Errorf("writing %s: %w", tmp, err)
	}
	if err := os.Rename(tmp, d.PasswdFile); err != nil {
		return fmt.Errorf("replacing %s: %w", d.PasswdFile, err)
	}
	return nil
}

// Start runs Dovecot in the foreground (`dovecot -F`) and waits for its auth socket.
func (d *Dovecot) Start(ctx context.Context) error {
	path, err := lookPath("dovecot")
	if err != nil {
		return err
	}
	proc, err := StartProcess(ProcessOptions{Name: "dovecot", Path: path, Args: []string{"-F", "-c", d.Config},
		LogFile: filepath.Join(d.Dir, "dovecot.stderr"), Group: true})
	if err != nil {
		return err
	}
	d.proc = proc
	err = proc.WaitReady(ctx, func() (bool, error) {
		_, err := os.Stat(d.AuthSocket)
		return err == nil, nil
	})
	if err != nil {
		return fmt.Errorf("%w\n--- %s\n%s", err, d.LogFile, tail(d.Log(), 50))
	}
	return nil
}

// Stop stops Dovecot (SIGTERM to its process group, SIGKILL after ten seconds).
func (d *Dovecot) Stop() error {
	if d.proc == nil {
		return nil
	}
	return d.proc.Stop()
}

// Log returns Dovecot's log so far.
func (d *Dovecot) Log() string { return readFile(d.LogFile) }

// StartDovecot starts a Dovecot in dir and registers its stop as a cleanup of t.
func StartDovecot(t T, dir string) *Dovecot {
	t.Helper()
	requirePrereqs(t, SkipEnv, checkMailPrograms)
	d, err := newDovecot(dir)
	if err != nil {
		t.Fatalf("%v", err)
	}
	stopAtCleanup(t, "dovecot", d.Stop, d.Log)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	began := time.Now()
	if err := d.Start(ctx); err != nil {
		t.Fatalf("%v", err)
	}
	t.Logf("dovecot started in %s", time.Since(began).Round(time.Millisecond))
	return d
}
