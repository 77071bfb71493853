package harness

import "sync"

// Cleanups is the cleanup half of T for programs that are not tests (the demo, the benchmarks):
// embed it, mark failures with MarkFailed, and call RunCleanups at the end or on a failure.
type Cleanups struct {
	mu     sync.Mutex
	fns    []func()
	failed bool
	once   sync.Once
}

// Cleanup registers f to run at RunCleanups.
func (c *Cleanups) Cleanup(f func()) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.fns = append(c.fns, f)
}

// Failed reports whether MarkFailed was called.
func (c *Cleanups) Failed() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.failed
}

// MarkFailed records a failure, so cleanups show their logs.
func (c *Cleanups) MarkFailed() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.failed = true
}

// RunCleanups runs the cleanups once, last registered first.
func (c *Cleanups) RunCleanups() {
	c.once.Do(func() {
		c.mu.Lock()
		fs := c.fns
		c.fns = nil
		c.mu.Unlock()
		for i := len(fs) - 1; i >= 0; i-- {
			fs[i]()
		}
	})
}
