// Package backoff is the one source of waits between retries in Postern's sidecar: the token
// broker's refreshes and pending writes, the upstream pools' fail-fast period after an upstream
// failed, the directory's reloads while the store is down at start, the accept loops of every
// listener (sidecar, smtpd's, the milter's, the socketmap's) and the embedded store's file lock.
//
// It is one small function rather than a library: every caller keeps a count of consecutive
// failures (reset by a success) and asks for the wait after that many, computed against the
// caller's own clock; github.com/cenkalti/backoff's ExponentialBackOff keeps that count itself,
// one object per sequence, and adds jitter, which none of these loops wants (they are one
// process retrying one resource, not a crowd of clients). The Vault client (package vault) keeps
// its own jittered backoff, as many replicas retry one Vault.
package backoff

import (
	"context"
	"time"
)

// Defaults of a zero Doubling.
const (
	DefaultMin = time.Second
	DefaultMax = 5 * time.Minute
)

// Doubling is a wait of Min after the first failure, doubling with each further failure up to
// Max. A zero Min means DefaultMin; a Max below Min means the larger of Min and DefaultMax.
type Doubling struct {
	Min, Max time.Duration
}

// Delay is the wait after the given number of consecutive failures (1 or more; 0 counts as 1).
func (b Doubling) Delay(failures int) time.Duration {
	if b.Min <= 0 {
		b.Min = DefaultMin
	}
	if b.Max < b.Min {
		b.Max = max(b.Min, DefaultMax)
	}
	d := b.Min
	for i := 1; i < failures && d < b.Max; i++ {
		d *= 2
	}
	return min(d, b.Max)
}

// Accept is the wait of an accept loop after a failed accept (out of file descriptors and the
// like), as net/http waits: 5 ms doubling to 1 s.
func Accept() Doubling { return Doubling{Min: 5 * time.Millisecond, Max: time.Second} }

// Sleep waits d, or until ctx ends; it reports whether the wait ran to its end.
func Sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}
