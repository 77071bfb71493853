package harness

import (
	"context"
	"strings"
	"testing"
	"time"
)

func startSh(t *testing.T, script string, opts ProcessOptions) *Process {
	t.Helper()
	opts.Name, opts.Path, opts.Args = "sh", "/bin/sh", []string{"-c", script}
	p, err := StartProcess(opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = p.Stop() })
	return p
}

func TestProcessReadyThenStopped(t *testing.T) {
	t.Parallel()
	p := startSh(t, `echo serving; exec sleep 60`, ProcessOptions{})
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	if err := p.WaitReady(ctx, func() (bool, error) { return strings.Contains(p.Log(), "serving"), nil }); err != nil {
		t.Fatal(err)
	}
	if err := p.Stop(); err != nil {
		t.Fatalf("Stop of a process that ends on SIGTERM: %v", err)
	}
	if ended, _ := p.Exited(); !ended {
		t.Fatal("the process runs after Stop")
	}
}

func TestProcessExitBeforeReadyFailsAtOnce(t *testing.T) {
	t.Parallel()
	p := startSh(t, `echo cannot bind; exit 3`, ProcessOptions{})
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	err := p.WaitReady(ctx, func() (bool, error) { return false, nil })
	if err == nil || !strings.Contains(err.Error(), "exited before it was ready") || !strings.Contains(err.Error(), "cannot bind") {
		t.Fatalf("WaitReady: %v, want the exit and the output", err)
	}
	if ctx.Err() != nil {
		t.Fatal("WaitReady waited out its context")
	}
}

func TestProcessIgnoringSIGTERMIsKilled(t *testing.T) {
	t.Parallel()
	p := startSh(t, `trap "" TERM; echo up; while :; do sleep 0.05; done`, ProcessOptions{Group: true, StopTimeout: 300 * time.Millisecond})
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	if err := p.WaitReady(ctx, func() (bool, error) { return strings.Contains(p.Log(), "up"), nil }); err != nil {
		t.Fatal(err)
	}
	err := p.Stop()
	if err == nil || !strings.Contains(err.Error(), "was killed") {
		t.Fatalf("Stop: %v, want it to say the process was killed", err)
	}
	if ended, _ := p.Exited(); !ended {
		t.Fatal("the process runs after Stop")
	}
}
