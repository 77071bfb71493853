package bench

import (
	"fmt"
	"os"
	"time"

	"github.com/postern/postern/integration/harness"
)

// Runner is the benchmark program's harness.T: progress on stdout, cleanups run at the end or on
// a failure, which ends the program.
type Runner struct {
	Start time.Time

	parent *Runner
	harness.Cleanups
}

var _ harness.T = (*Runner)(nil)

// NewRunner returns a Runner whose clock starts now.
func NewRunner() *Runner { return &Runner{Start: time.Now()} }

// Step announces a phase.
func (r *Runner) Step(format string, args ...any) {
	fmt.Printf("[%6.1fs] ==> %s\n", time.Since(r.Start).Seconds(), fmt.Sprintf(format, args...))
}

func (r *Runner) Helper() {}

func (r *Runner) Logf(format string, args ...any) {
	fmt.Printf("            %s\n", fmt.Sprintf(format, args...))
}

// Fatalf reports the failure, runs the cleanups and exits with status 1.
func (r *Runner) Fatalf(format string, args ...any) {
	r.MarkFailed()
	r.Close()
	if r.parent != nil {
		r.parent.Fatalf(format, args...)
		return
	}
	fmt.Fprintf(os.Stderr, "bench failed: %s\n", fmt.Sprintf(format, args...))
	os.Exit(1)
}

// Sub returns a Runner for one phase: its cleanups run at its Close, and a failure in it also
// ends r.
func (r *Runner) Sub() *Runner { return &Runner{Start: r.Start, parent: r} }

// Close runs the cleanups once, last registered first.
func (r *Runner) Close() { r.RunCleanups() }
