package upstream

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/postern/postern/sidecar/backoff"
	"github.com/postern/postern/sidecar/project"
)

// pool is one project's connections. Its mutex guards bookkeeping only; no I/O happens under it.
type pool struct {
	p    *Pools
	name string
	log  *slog.Logger

	mu           sync.Mutex
	fp           string // fingerprint of the settings last asked for
	limit        int
	open         int       // connections open or being opened
	idle         []*Conn   // most recently used last
	waiters      []*waiter // first come, first served
	dials        uint64
	authFailures uint64
	backoff      time.Duration // the fail-fast period now, after downs consecutive failures
	downs        int
	downUntil    time.Time
	lastErr      string
	// probing is set once the upstream failed to answer (connect, TLS, greeting, EHLO) and
	// cleared by the next connection that opens: while it is set, only the callers that open a
	// connection wait for the upstream; every other caller is turned away at once, so that a
	// silent upstream holds no more of Postfix's delivery slots than the project's limit.
	probing bool
	closed  bool
}

// grant is what a caller of take or wait gets: a connection, the right to open one, or a reason
// to give up.
type grant struct {
	conn *Conn
	dial bool
	err  error
}

// waiter is an Acquire waiting for a connection; its channel receives exactly one grant.
type waiter struct{ ch chan grant }

// fingerprint identifies the settings a connection was opened with. Connections whose settings
// have changed are not reused. The secret is not part of it: a rotated password or token does not
// unsign a connection that is already in.
func fingerprint(u project.Upstream, a Auth) string {
	h := sha256.New()
	for _, s := range []string{
		u.Host, strconv.Itoa(u.Port), string(u.TLS), u.ServerName, u.CAPEM,
		strconv.FormatBool(u.InsecureSkipVerify), a.Username, strings.ToUpper(a.Mechanism),
		strconv.FormatBool(a.SASL != nil),
	} {
		fmt.Fprintf(h, "%d:%s;", len(s), s)
	}
	return hex.EncodeToString(h.Sum(nil))
}

// take hands out an idle connection or the right to open one, or enqueues a waiter.
func (pl *pool) take(fp string, limit int, addr string) (grant, *waiter) {
	now := pl.p.opts.Now()
	var stale []*Conn
	defer func() {
		for _, c := range stale {
			pl.p.background(c.quit)
		}
	}()
	pl.mu.Lock()
	defer pl.mu.Unlock()
	if pl.closed {
		return grant{err: &Error{Stage: StagePool, Addr: addr, Err: ErrClosed}}, nil
	}
	if fp != pl.fp {
		if pl.fp != "" {
			pl.log.Info("upstream settings changed: closing idle connections", "upstream", addr, "idle", len(pl.idle))
		}
		pl.fp = fp
		pl.backoff, pl.downs, pl.downUntil, pl.lastErr = 0, 0, time.Time{}, ""
		pl.probing = false
		stale = append(stale, pl.idle...)
		pl.open -= len(pl.idle)
		pl.idle = nil
	}
	pl.limit = limit
	pl.grantSlotsLocked()
	if now.Before(pl.downUntil) {
		return grant{err: pl.downErrorLocked(addr)}, nil
	}
	for len(pl.idle) > 0 {
		c := pl.idle[len(pl.idle)-1]
		pl.idle = pl.idle[:len(pl.idle)-1]
		c.stopIdleTimer()
		if now.Sub(c.lastUsed) >= pl.p.opts.IdleTimeout {
			stale = append(stale, c)
			pl.open--
			continue
		}
		return grant{conn: c}, nil
	}
	if len(pl.waiters) == 0 && pl.open < pl.limit {
		pl.open++
		pl.dials++
		return grant{dial: true}, nil
	}
	if pl.probing {
		return grant{err: &Error{
			Stage: StagePool, Addr: addr,
			Message: fmt.Sprintf("the upstream did not answer last time and all %d connections the project may open are trying it again", pl.limit),
			Err:     fmt.Errorf("%w (last failure: %s)", ErrDown, strings.TrimPrefix(pl.lastErr, "upstream "+addr+" ")),
		}}, nil
	}
	w := &waiter{ch: make(chan grant, 1)}
	pl.waiters = append(pl.waiters, w)
	return grant{}, w
}

// wait waits for w's grant, at most MaxConnWait and while ctx lasts.
func (pl *pool) wait(ctx context.Context, w *waiter, addr string) (grant, error) {
	timer := time.NewTimer(pl.p.opts.MaxConnWait)
	defer timer.Stop()
	var cause error
	select {
	case g := <-w.ch:
		return g, nil
	case <-timer.C:
		cause = ErrBusy
	case <-ctx.Done():
		cause = context.Cause(ctx)
	}
	pl.mu.Lock()
	i := slices.Index(pl.waiters, w)
	if i >= 0 {
		pl.waiters = slices.Delete(pl.waiters, i, i+1)
	}
	limit := pl.limit
	pl.mu.Unlock()
	if i < 0 {
		// Granted while giving up: take it after all.
		return <-w.ch, nil
	}
	msg := fmt.Sprintf("all %d connections the project may open stayed busy for %s", limit, pl.p.opts.MaxConnWait)
	if cause != ErrBusy {
		msg = "gave up waiting for a free connection"
	}
	return grant{}, &Error{Stage: StagePool, Addr: addr, Message: msg, Err: cause}
}

// grantSlotsLocked gives free slots to waiters, first come first served.
func (pl *pool) grantSlotsLocked() {
	for len(pl.waiters) > 0 && pl.open < pl.limit {
		w := pl.waiters[0]
		pl.waiters = pl.waiters[1:]
		pl.open++
		pl.dials++
		w.ch <- grant{dial: true}
	}
}

// failWaitersLocked sends err to every waiter.
func (pl *pool) failWaitersLocked(err error) {
	for _, w := range pl.waiters {
		w.ch <- grant{err: err}
	}
	pl.waiters = nil
}

func (pl *pool) downErrorLocked(addr string) *Error {
	return &Error{
		Stage: StagePool, Addr: addr,
		Message: fmt.Sprintf("not trying again before %s (backoff %s)", pl.downUntil.Format(time.TimeOnly), pl.backoff),
		Err:     fmt.Errorf("%w (last failure: %s)", ErrDown, strings.TrimPrefix(pl.lastErr, "upstream "+addr+" ")),
	}
}

// redial counts the opening of a connection in the slot of a stale one.
func (pl *pool) redial() {
	pl.mu.Lock()
	pl.dials++
	pl.mu.Unlock()
}

// opened settles the slot of a connection attempt: on failure it frees the slot and, when the
// upstream itself failed (connect, TLS, greeting, EHLO), starts or extends the backoff during
// which Acquire fails fast.
func (pl *pool) opened(c *Conn, err *Error) error {
	if err != nil {
		pl.failed(err)
		return err
	}
	pl.mu.Lock()
	if pl.closed {
		pl.open--
		pl.mu.Unlock()
		pl.p.background(c.quit)
		return &Error{Stage: StagePool, Addr: c.addr, Err: ErrClosed}
	}
	pl.backoff, pl.downs, pl.downUntil, pl.lastErr = 0, 0, time.Time{}, ""
	pl.probing = false
	c.pl = pl
	pl.mu.Unlock()
	return nil
}

func (pl *pool) failed(err *Error) {
	now := pl.p.opts.Now()
	pl.mu.Lock()
	defer pl.mu.Unlock()
	pl.open--
	pl.lastErr = err.Error()
	gaveUp := errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded)
	switch err.Stage {
	case StageConnect, StageTLS, StageGreeting, StageEHLO:
		if gaveUp {
			// The caller stopped waiting; that says nothing about the upstream.
			break
		}
		pl.probing = true
		if !now.Before(pl.downUntil) {
			pl.downs++
			pl.backoff = backoff.Doubling{Min: pl.p.opts.DownBackoff, Max: MaxDownBackoff}.Delay(pl.downs)
			pl.downUntil = now.Add(pl.backoff)
			pl.log.Warn("upstream down: failing fast", "upstream", err.Addr, "stage", err.Stage,
				"err", err.Error(), "backoff", pl.backoff, "until", pl.downUntil)
		}
		pl.failWaitersLocked(pl.downErrorLocked(err.Addr))
	case StageAuth:
		// The upstream answered: it is not down.
		pl.backoff, pl.downs, pl.downUntil = 0, 0, time.Time{}
		if err.AuthFailed() {
			pl.authFailures++
			pl.log.Warn("upstream rejected the credentials", "upstream", err.Addr, "err", err.Error())
		} else {
			pl.log.Warn("upstream sign-in failed", "upstream", err.Addr, "err", err.Error())
		}
	default:
		pl.log.Warn("upstream connection failed", "upstream", err.Addr, "stage", err.Stage, "err", err.Error())
	}
	pl.grantSlotsLocked()
}

// giveBack takes a healthy connection back: to the first waiter, else into the idle list.
func (pl *pool) giveBack(c *Conn) {
	now := pl.p.opts.Now()
	pl.mu.Lock()
	if pl.closed || c.fp != pl.fp {
		pl.open--
		pl.grantSlotsLocked()
		pl.mu.Unlock()
		pl.p.background(c.quit)
		return
	}
	defer pl.mu.Unlock()
	c.lastUsed = now
	if len(pl.waiters) > 0 {
		w := pl.waiters[0]
		pl.waiters = pl.waiters[1:]
		w.ch <- grant{conn: c}
		return
	}
	pl.idle = append(pl.idle, c)
	c.idleGen++
	gen := c.idleGen
	c.idleTimer = time.AfterFunc(pl.p.opts.IdleTimeout, func() { pl.expire(c, gen) })
}

// drop frees the slot of a connection that was closed. When the upstream stopped answering on
// it, the callers waiting for a connection are turned away at once rather than queued behind a
// silent upstream, and the pool probes it as after a failed greeting (see probing).
func (pl *pool) drop(c *Conn) {
	pl.mu.Lock()
	defer pl.mu.Unlock()
	pl.open--
	if c.silent {
		pl.probing = true
		pl.lastErr = "upstream " + c.addr + " stopped answering"
		pl.failWaitersLocked(&Error{Stage: StagePool, Addr: c.addr,
			Message: "the upstream stopped answering on an open connection", Err: ErrDown})
	}
	pl.grantSlotsLocked()
}

// expire closes c if it is still idle since the time its timer was set.
func (pl *pool) expire(c *Conn, gen uint64) {
	pl.mu.Lock()
	i := slices.Index(pl.idle, c)
	if i < 0 || c.idleGen != gen {
		pl.mu.Unlock()
		return
	}
	pl.idle = slices.Delete(pl.idle, i, i+1)
	pl.open--
	pl.grantSlotsLocked()
	pl.mu.Unlock()
	pl.log.Debug("closing idle upstream connection", "upstream", c.addr)
	pl.p.background(c.quit)
}

// close marks the pool closed, fails its waiters and returns its idle connections for closing.
func (pl *pool) close() []*Conn {
	pl.mu.Lock()
	defer pl.mu.Unlock()
	pl.closed = true
	pl.failWaitersLocked(&Error{Stage: StagePool, Err: ErrClosed})
	idle := pl.idle
	for _, c := range idle {
		c.stopIdleTimer()
	}
	pl.open -= len(idle)
	pl.idle = nil
	return idle
}

func (pl *pool) stats(now time.Time) PoolStats {
	pl.mu.Lock()
	defer pl.mu.Unlock()
	s := PoolStats{
		Project: pl.name, Open: pl.open, Idle: len(pl.idle), InUse: pl.open - len(pl.idle),
		Waiting: len(pl.waiters), Dials: pl.dials, AuthFailures: pl.authFailures, LastError: pl.lastErr,
	}
	if now.Before(pl.downUntil) {
		s.DownUntil = pl.downUntil
	}
	return s
}
