package bench

import (
	"os"
	"os/exec"
	"slices"
	"testing"
)

// children finds a process this test started, as the slot sampler finds the master's agents.
func TestChildren(t *testing.T) {
	cmd := exec.Command("sleep", "30")
	if err := cmd.Start(); err != nil {
		t.Skipf("no sleep: %v", err)
	}
	defer func() { cmd.Process.Kill(); cmd.Wait() }()
	if got := children(os.Getpid()); !slices.Contains(got, cmd.Process.Pid) {
		t.Fatalf("children(%d) = %v, without %d", os.Getpid(), got, cmd.Process.Pid)
	}
	if busyAgents(os.Getpid()) != 0 {
		t.Fatal("a sleep counted as a busy delivery agent")
	}
}
