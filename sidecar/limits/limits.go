// Package limits owns a project's per-mailbox limits — messages per minute, recipients per day,
// concurrent upstream connections — and the pause after an upstream's quota reply, so that they
// hold for the mailbox however many Postern replicas share the store.
//
// # The choice: shares of a configured replica count
//
// An upstream counts per mailbox, not per Postern process: two replicas that each allow 3
// connections open 6 to a mailbox that allows 3. Two designs make a limit hold across replicas:
//
//   - leases and counters in the shared store: every connection opened and every message sent is
//     a check-and-set on a record in Vault (or, for the embedded store, a file lock). Capacity
//     follows the replicas that are up, but every message costs store round trips on the
//     delivery path, a lease left by a crashed replica must expire before its slot is free, and
//     a store that does not answer stops mail the upstream would take — the store becomes part
//     of every delivery, which Postern otherwise avoids (delivering reads nothing from Vault).
//   - shares: the operator says how many replicas share the store (limits.replicas: N) and each
//     replica enforces its share of every limit on its own, in memory. Nothing is coordinated,
//     nothing is written, a stopped store changes nothing; the cost is capacity: while a replica
//     is down its share is unused.
//
// Postern takes shares. A limit held too low by an unused share only delays mail (Postfix keeps
// it queued and retries); a limit passed is refused by the upstream, often with a 5xx, and for
// Exchange Online's connection limit with a connection cut mid-session. The shares are:
//
//  1. Connections (Connections): floor(limit / replicas), at least 1. The replicas together
//     never open more than the limit while limit >= replicas. With fewer connections allowed
//     than replicas (3 connections, 4 replicas), each replica still gets 1, so the replicas
//     together may open up to `replicas` connections: more than the upstream allows. An
//     upstream refuses the extra connection with a temporary reply (Exchange Online: 432 4.3.2),
//     which Postern passes on as a 4xx, so mail waits; run no more replicas than the smallest
//     connection limit of a project to avoid it.
//  2. Messages per minute (WaitMessage): a token bucket refilled at limit / replicas messages a
//     minute, holding one message, so messages are spaced evenly and no minute of any replica
//     sees more than its share. A message waits for its turn at most a bounded time, then is
//     deferred (ErrRateLimited) and Postfix retries it.
//  3. Recipients per day (TakeRecipient, ReturnRecipients): floor(limit / replicas), at least 1,
//     counted over a rolling 24 hours in hourly buckets, by recipients accepted: a recipient is
//     taken from the budget when it is accepted at RCPT and given back when the upstream does not
//     take the message. A recipient over the budget is deferred (ErrRecipientsPerDay). The
//     counts live in memory: a replica that restarts starts its day afresh. The upstream's own
//     quota reply (step 4) is the backstop.
//  4. Quota replies (Pause, Paused): when an upstream answers with a sending quota (Exchange's
//     SubmissionQuotaExceeded, Gmail's 5.4.5 daily limit, Exchange's 5.7.233 tenant cap on
//     external recipients), the project is paused on this replica until the next boundary of
//     Options.QuotaPause (the next full hour by default): its mail is deferred at MAIL FROM
//     without asking the upstream. Every replica learns it from its own first refusal.
//
// Every limit is read from project.Project.EffectiveLimits, so a project without limits of its
// own gets its provider's (Microsoft: 30 messages a minute, 10,000 recipients a day, 3
// connections).
package limits

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"golang.org/x/time/rate"

	"github.com/postern/postern/sidecar/project"
)

// Sentinel errors matched by the callers that decide replies; every error of this package is an
// *Error wrapping one of them.
var (
	// ErrRateLimited: the project's messages-per-minute share had no slot in time.
	ErrRateLimited = errors.New("messages-per-minute limit reached")
	// ErrRecipientsPerDay: the project's recipients-per-day share is used up.
	ErrRecipientsPerDay = errors.New("recipients-per-day limit reached")
	// ErrPaused: the project is paused after an upstream's quota reply.
	ErrPaused = errors.New("paused after the upstream's quota reply")
)

// Error is a limit that stopped a message.
type Error struct {
	Project string
	// Limit is the project's limit (all replicas together); Share is this replica's part of it.
	Limit, Share int
	// Until is when the project may send again, where known (a pause, the daily budget).
	Until time.Time
	// Reason says why (a pause: the upstream's quota reply).
	Reason string
	Err    error
}

func (e *Error) Error() string {
	var s string
	switch {
	case errors.Is(e.Err, ErrPaused):
		s = fmt.Sprintf("project %s is paused until %s: %s", e.Project, e.Until.UTC().Format(time.RFC3339), e.Reason)
	case e.Share != e.Limit:
		s = fmt.Sprintf("project %s: %v (%d, this replica's share %d)", e.Project, e.Err, e.Limit, e.Share)
	default:
		s = fmt.Sprintf("project %s: %v (%d)", e.Project, e.Err, e.Limit)
	}
	if e.Reason != "" && !errors.Is(e.Err, ErrPaused) {
		s += ": " + e.Reason
	}
	return s
}

func (e *Error) Unwrap() error { return e.Err }

// DefaultQuotaPause is the default of Options.QuotaPause.
const DefaultQuotaPause = time.Hour

// Options configure a Limiter. The zero value is one replica, the real clock and
// DefaultQuotaPause.
type Options struct {
	// Replicas is how many Postern processes share the store, and so every mailbox's limits
	// (limits.replicas). Zero means 1.
	Replicas int
	// QuotaPause: a project paused after a quota reply sends again at the next multiple of
	// QuotaPause (in UTC): the next full hour for 1h, the next minute for 1m. Zero means
	// DefaultQuotaPause.
	QuotaPause time.Duration
	// Now is the clock; nil means time.Now.
	Now func() time.Time
}

// Limiter enforces this replica's share of every project's limits. It is safe for concurrent
// use.
type Limiter struct {
	opts Options

	mu       sync.Mutex
	projects map[string]*state
}

type state struct {
	perMinute int
	replicas  int
	bucket    *rate.Limiter
	// hours counts the recipients taken in each of the last 24 hours: hours[h%24] for the hour
	// h since the Unix epoch, valid while stamp[h%24] == h.
	hours [24]int
	stamp [24]int64
	pause Pause
}

// Pause is a project's pause after an upstream's quota reply.
type Pause struct {
	Until  time.Time
	Reason string
}

// New returns a Limiter. A negative Replicas or QuotaPause is taken as its default.
func New(opts Options) *Limiter {
	if opts.Replicas <= 0 {
		opts.Replicas = 1
	}
	if opts.QuotaPause <= 0 {
		opts.QuotaPause = DefaultQuotaPause
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	return &Limiter{opts: opts, projects: map[string]*state{}}
}

// Replicas is the replica count the shares are taken from.
func (l *Limiter) Replicas() int { return l.opts.Replicas }

// Share is this replica's part of limit: floor(limit / replicas), at least 1; 0 (no limit) stays 0.
func Share(limit, replicas int) int {
	if limit <= 0 {
		return 0
	}
	return max(1, limit/max(1, replicas))
}

// Connections is how many upstream connections this replica may open for p at once.
func (l *Limiter) Connections(p project.Project) int {
	return Share(p.EffectiveLimits().Connections(), l.opts.Replicas)
}

func (l *Limiter) stateLocked(name string) *state {
	s := l.projects[name]
	if s == nil {
		s = &state{}
		l.projects[name] = s
	}
	return s
}

// WaitMessage takes one message from p's messages-per-minute share, waiting at most wait for it.
// It fails at once, without waiting, when no slot comes within wait (ErrRateLimited).
func (l *Limiter) WaitMessage(ctx context.Context, p project.Project, wait time.Duration) error {
	perMinute := p.EffectiveLimits().MessagesPerMinute
	if perMinute <= 0 {
		return nil
	}
	now := l.opts.Now()
	l.mu.Lock()
	s := l.stateLocked(p.Name)
	if s.bucket == nil || s.perMinute != perMinute || s.replicas != l.opts.Replicas {
		s.perMinute, s.replicas = perMinute, l.opts.Replicas
		s.bucket = rate.NewLimiter(rate.Limit(float64(perMinute)/float64(l.opts.Replicas)/60), 1)
	}
	r := s.bucket.ReserveN(now, 1)
	l.mu.Unlock()
	delay := r.DelayFrom(now)
	fail := func(why string) error {
		r.CancelAt(now)
		return &Error{Project: p.Name, Limit: perMinute, Share: perMinute / l.opts.Replicas, Reason: why, Err: ErrRateLimited}
	}
	if !r.OK() || delay > wait {
		return fail(fmt.Sprintf("no slot within %s", wait))
	}
	if delay <= 0 {
		return nil
	}
	t := time.NewTimer(delay)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return fail("gave up waiting: " + context.Cause(ctx).Error())
	}
}

// TakeRecipient takes one recipient from p's recipients-per-day share, or fails with
// ErrRecipientsPerDay when the last 24 hours used it up.
func (l *Limiter) TakeRecipient(p project.Project) error {
	perDay := p.EffectiveLimits().RecipientsPerDay
	if perDay <= 0 {
		return nil
	}
	share := Share(perDay, l.opts.Replicas)
	h := l.opts.Now().Unix() / 3600
	l.mu.Lock()
	defer l.mu.Unlock()
	s := l.stateLocked(p.Name)
	used := 0
	for i := range s.hours {
		if h-s.stamp[i] < 24 {
			used += s.hours[i]
		}
	}
	if used >= share {
		// The oldest hour still counted frees its recipients first.
		oldest := h
		for i := range s.hours {
			if h-s.stamp[i] < 24 && s.hours[i] > 0 && s.stamp[i] < oldest {
				oldest = s.stamp[i]
			}
		}
		return &Error{Project: p.Name, Limit: perDay, Share: share, Until: time.Unix((oldest+24)*3600, 0).UTC(), Err: ErrRecipientsPerDay}
	}
	i := h % 24
	if s.stamp[i] != h {
		s.stamp[i], s.hours[i] = h, 0
	}
	s.hours[i]++
	return nil
}

// ReturnRecipients gives n recipients taken by TakeRecipient back to the project's share: the
// upstream did not take them.
func (l *Limiter) ReturnRecipients(name string, n int) {
	if n <= 0 {
		return
	}
	h := l.opts.Now().Unix() / 3600
	l.mu.Lock()
	defer l.mu.Unlock()
	s := l.projects[name]
	if s == nil {
		return
	}
	// From the newest hour back: where they were most likely taken.
	for back := int64(0); back < 24 && n > 0; back++ {
		i := (h - back) % 24
		if s.stamp[i] != h-back {
			continue
		}
		k := min(n, s.hours[i])
		s.hours[i] -= k
		n -= k
	}
}

// RecipientsToday is how many recipients of p this replica counted in the last 24 hours.
func (l *Limiter) RecipientsToday(name string) int {
	h := l.opts.Now().Unix() / 3600
	l.mu.Lock()
	defer l.mu.Unlock()
	s := l.projects[name]
	if s == nil {
		return 0
	}
	used := 0
	for i := range s.hours {
		if h-s.stamp[i] < 24 {
			used += s.hours[i]
		}
	}
	return used
}

// Pause pauses the project called name after an upstream's quota reply (reason) until the next
// multiple of Options.QuotaPause, and returns that time. A longer pause in force is kept.
func (l *Limiter) Pause(name, reason string) time.Time {
	now := l.opts.Now()
	until := now.Truncate(l.opts.QuotaPause).Add(l.opts.QuotaPause)
	l.mu.Lock()
	defer l.mu.Unlock()
	s := l.stateLocked(name)
	if s.pause.Until.After(until) {
		return s.pause.Until
	}
	s.pause = Pause{Until: until, Reason: reason}
	return until
}

// Paused returns the project's pause while it lasts.
func (l *Limiter) Paused(name string) (Pause, bool) {
	now := l.opts.Now()
	l.mu.Lock()
	defer l.mu.Unlock()
	s := l.projects[name]
	if s == nil || !now.Before(s.pause.Until) {
		return Pause{}, false
	}
	return s.pause, true
}

// CheckPaused returns an *Error matching ErrPaused while the project is paused.
func (l *Limiter) CheckPaused(name string) error {
	if p, ok := l.Paused(name); ok {
		return &Error{Project: name, Until: p.Until, Reason: p.Reason, Err: ErrPaused}
	}
	return nil
}
