package harness

import (
	"fmt"
	"runtime"
	"strings"
	"sync"
	"testing"
)

// recorder is a T that records what a helper reports, and ends the helper's goroutine at Fatalf
// or Skipf as testing does.
type recorder struct {
	mu       sync.Mutex
	fatal    string
	skipped  string
	cleanups []func()
}

func (r *recorder) Helper()                         {}
func (r *recorder) Logf(format string, args ...any) {}
func (r *recorder) Cleanup(f func())                { r.mu.Lock(); r.cleanups = append(r.cleanups, f); r.mu.Unlock() }
func (r *recorder) Failed() bool                    { r.mu.Lock(); defer r.mu.Unlock(); return r.fatal != "" }

func (r *recorder) Fatalf(format string, args ...any) {
	r.mu.Lock()
	r.fatal = fmt.Sprintf(format, args...)
	r.mu.Unlock()
	runtime.Goexit()
}

func (r *recorder) Skipf(format string, args ...any) {
	r.mu.Lock()
	r.skipped = fmt.Sprintf(format, args...)
	r.mu.Unlock()
	runtime.Goexit()
}

// run calls f with r in a goroutine of its own and waits for it, then runs the cleanups.
func (r *recorder) run(f func(T)) {
	done := make(chan struct{})
	go func() {
		defer close(done)
		f(r)
	}()
	<-done
	for i := len(r.cleanups) - 1; i >= 0; i-- {
		r.cleanups[i]()
	}
}

// TestMissingPrerequisitesFailAtOnce starts each part with its prerequisites out of reach (node
// not in PATH, an empty cache directory for the Vault dev server) and wants an immediate failure that names `make deps`, or a skip
// with POSTERN_IT_SKIP=1.
func TestMissingPrerequisitesFailAtOnce(t *testing.T) {
	starts := []struct {
		name     string
		vaultdev string // POSTERN_VAULTDEV
		start    func(T)
		want     string
	}{
		{"oauth server", "", func(t T) { StartIdP(t, IdPOptions{}) }, "OAuth server (node"},
		{"vault dev server", "", func(t T) { StartVault(t) }, "Vault dev server (not built"},
		{"vault dev server named", "/nonexistent/vaultdev", func(t T) { StartVault(t) },
			"Vault dev server (POSTERN_VAULTDEV=/nonexistent/vaultdev)"},
	}
	for _, skip := range []bool{false, true} {
		for _, s := range starts {
			t.Run(fmt.Sprintf("%s/skip=%v", s.name, skip), func(t *testing.T) {
				if s.vaultdev == "" && strings.HasPrefix(s.name, "oauth") {
					t.Setenv("PATH", t.TempDir())
				}
				t.Setenv("POSTERN_CACHE", t.TempDir())
				t.Setenv("POSTERN_VAULTDEV", s.vaultdev)
				t.Setenv(SkipEnv, "")
				if skip {
					t.Setenv(SkipEnv, "1")
				}
				r := &recorder{}
				r.run(s.start)
				got := r.fatal
				if skip {
					got = r.skipped
					if r.fatal != "" {
						t.Fatalf("failed with %s=1: %s", SkipEnv, r.fatal)
					}
				}
				if !strings.Contains(got, s.want) || !strings.Contains(got, "missing: run make deps") {
					t.Fatalf("reported %q, want it to name %q and %q", got, s.want, "missing: run make deps")
				}
			})
		}
	}
}

// TestPrerequisitesAllReported wants every failed check in the one message, and no failure when
// all pass.
func TestPrerequisitesAllReported(t *testing.T) {
	t.Setenv(SkipEnv, "")
	r := &recorder{}
	r.run(func(t T) {
		requirePrereqs(t, SkipEnv, func() error { return missing("a") }, func() error { return nil }, func() error { return missing("b") })
	})
	if want := "a missing; b missing: run make deps"; !strings.HasPrefix(r.fatal, want) {
		t.Fatalf("reported %q, want it to begin with %q", r.fatal, want)
	}
	r = &recorder{}
	var ok bool
	r.run(func(t T) { ok = requirePrereqs(t, SkipEnv, func() error { return nil }) })
	if !ok || r.fatal != "" || r.skipped != "" {
		t.Fatalf("all checks passed: ok=%v, fatal %q, skipped %q", ok, r.fatal, r.skipped)
	}
}
