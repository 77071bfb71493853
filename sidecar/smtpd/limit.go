package smtpd

import (
	"context"
	"fmt"
	"sync"
	"time"

	"golang.org/x/time/rate"

	"github.com/postern/postern/sidecar/project"
)

// limiters holds one token bucket per project for Limits.MessagesPerMinute. The bucket holds a
// single token, so messages are spaced evenly and no minute ever sees more than the limit.
type limiters struct {
	mu sync.Mutex
	m  map[string]*projectLimiter
}

type projectLimiter struct {
	perMinute int
	l         *rate.Limiter
}

func newLimiters() *limiters { return &limiters{m: map[string]*projectLimiter{}} }

// wait takes one message from p's budget, waiting at most max. It fails at once, without waiting,
// when the budget cannot be had within max.
func (ls *limiters) wait(ctx context.Context, p project.Project, max time.Duration) error {
	perMinute := p.Limits.MessagesPerMinute
	if perMinute <= 0 {
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, max)
	defer cancel()
	if err := ls.get(p.Name, perMinute).Wait(ctx); err != nil {
		return fmt.Errorf("%d messages a minute, no slot within %s (%v): %w", perMinute, max, err, errRateLimited)
	}
	return nil
}

func (ls *limiters) get(name string, perMinute int) *rate.Limiter {
	ls.mu.Lock()
	defer ls.mu.Unlock()
	pl := ls.m[name]
	if pl == nil || pl.perMinute != perMinute {
		pl = &projectLimiter{perMinute: perMinute, l: rate.NewLimiter(rate.Limit(float64(perMinute)/60), 1)}
		ls.m[name] = pl
	}
	return pl.l
}
