// Package socketmap owns Postfix's socketmap lookup protocol (socketmap_table(5)): the server Postfix
// asks which transport serves an envelope sender, and the "senders" map that answers it.
//
// The flow on one connection:
//
//  1. Postfix connects and keeps the connection open for many lookups, possibly pipelined.
//  2. Each request is one netstring holding "<map name> <key>". A request that is not a netstring
//     (bad length, missing comma, over MaxRequest, cut short) is answered "PERM ..." when an answer
//     is still possible, and the connection is closed: the stream can no longer be trusted.
//  3. The request goes to Server.Lookup with a ctx bounded by LookupTimeout. Its answer becomes one
//     netstring reply: "OK <value>", "NOTFOUND ", "PERM <reason>" for an unknown map
//     (ErrUnknownMap), "TIMEOUT <reason>" when the lookup ran out of time, "TEMP <reason>" for any
//     other error.
//  4. A connection idle for IdleTimeout is closed. When Serve's ctx ends, idle connections are
//     closed at once and busy ones right after their current reply.
//
// Senders is the map Postern serves: map name "senders", key an envelope sender, value the Postfix
// transport that delivers to Postern, for every sender a project serves.
package socketmap

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strings"
	"sync"
	"time"

	"github.com/postern/postern/sidecar/backoff"
)

// Defaults for zero Server fields.
const (
	DefaultMaxRequest    = 10000
	DefaultIdleTimeout   = 2 * time.Minute
	DefaultLookupTimeout = 10 * time.Second
	DefaultWriteTimeout  = 30 * time.Second
)

// MaxReply is the longest reply Postfix accepts (socketmap_table(5)).
const MaxReply = 100000

// ErrUnknownMap is returned by a Lookup function for a map name it does not serve; the reply is PERM.
var ErrUnknownMap = errors.New("unknown map name")

// Server answers socketmap requests. Set Lookup; the other fields have safe zero values. A Server may
// serve several listeners at once.
type Server struct {
	// Lookup answers one request. found false means NOTFOUND. An error wrapping ErrUnknownMap
	// becomes PERM, context.DeadlineExceeded TIMEOUT, anything else TEMP.
	Lookup func(ctx context.Context, mapName, key string) (value string, found bool, err error)
	// Logger receives protocol errors and failed lookups. Nil discards.
	Logger *slog.Logger
	// MaxRequest is the longest request accepted, in bytes. Zero means DefaultMaxRequest.
	MaxRequest int
	// IdleTimeout closes a connection that sends no request for this long. Zero means
	// DefaultIdleTimeout.
	IdleTimeout time.Duration
	// LookupTimeout bounds one Lookup call. Zero means DefaultLookupTimeout.
	LookupTimeout time.Duration
	// WriteTimeout bounds writing one reply. Zero means DefaultWriteTimeout.
	WriteTimeout time.Duration
}

// Serve accepts connections on l until ctx ends, then closes l, closes idle connections, lets busy
// ones finish their current reply, and returns nil once every connection is closed. A failed
// accept (out of file descriptors, a connection aborted before it was accepted) is tried again
// after 5 ms, doubling to 1 s; only a listener closed by someone else makes Serve return its error.
// Serve closes l in every case.
func (s *Server) Serve(ctx context.Context, l net.Listener) error {
	if s.Lookup == nil {
		l.Close()
		return errors.New("socketmap server: Lookup is nil")
	}
	cfg := s.withDefaults()

	var (
		mu     sync.Mutex
		conns  = map[*serverConn]struct{}{}
		wg     sync.WaitGroup
		closed bool
	)
	stop := context.AfterFunc(ctx, func() {
		l.Close()
		mu.Lock()
		defer mu.Unlock()
		closed = true
		for c := range conns {
			c.shutdown()
		}
	})
	defer stop()

	var (
		acceptErr error
		failures  int
	)
	for {
		nc, err := l.Accept()
		if err != nil {
			if ctx.Err() != nil {
				break
			}
			if errors.Is(err, net.ErrClosed) {
				acceptErr = fmt.Errorf("socketmap: accepting on %s: %w", l.Addr(), err)
				break
			}
			// Out of file descriptors and the like: wait and try again, as net/http does. The
			// connections already open go on being served.
			failures++
			delay := backoff.Accept().Delay(failures)
			cfg.Logger.Warn("socketmap: accepting a connection failed; retrying", "addr", l.Addr().String(), "err", err, "retry_in", delay)
			backoff.Sleep(ctx, delay)
			continue
		}
		failures = 0
		c := &serverConn{srv: &cfg, nc: nc}
		mu.Lock()
		if closed {
			mu.Unlock()
			nc.Close()
			continue
		}
		conns[c] = struct{}{}
		wg.Add(1)
		mu.Unlock()
		go func() {
			defer wg.Done()
			c.serve(ctx)
			mu.Lock()
			delete(conns, c)
			mu.Unlock()
		}()
	}
	if acceptErr != nil {
		mu.Lock()
		for c := range conns {
			c.shutdown()
		}
		mu.Unlock()
	}
	wg.Wait()
	return acceptErr
}

func (s *Server) withDefaults() Server {
	cfg := *s
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.MaxRequest <= 0 {
		cfg.MaxRequest = DefaultMaxRequest
	}
	if cfg.IdleTimeout <= 0 {
		cfg.IdleTimeout = DefaultIdleTimeout
	}
	if cfg.LookupTimeout <= 0 {
		cfg.LookupTimeout = DefaultLookupTimeout
	}
	if cfg.WriteTimeout <= 0 {
		cfg.WriteTimeout = DefaultWriteTimeout
	}
	return cfg
}

// serverConn is one Postfix connection.
type serverConn struct {
	srv *Server
	nc  net.Conn

	mu       sync.Mutex
	busy     bool // a request is being answered
	stopping bool // Serve's ctx ended
}

// shutdown closes the connection if it is waiting for a request, or marks it to close after the
// reply in progress.
func (c *serverConn) shutdown() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.stopping = true
	if !c.busy {
		// Wakes the blocked read; serve sees stopping and returns.
		c.nc.SetReadDeadline(time.Now())
	}
}

// awaitRequest marks the connection idle and arms the idle timeout. It reports false when Serve is
// shutting down and the connection should close.
func (c *serverConn) awaitRequest() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.busy = false
	if c.stopping {
		return false
	}
	c.nc.SetReadDeadline(time.Now().Add(c.srv.IdleTimeout))
	return true
}

// markBusy marks the connection as answering a request, so shutdown lets the reply go out.
func (c *serverConn) markBusy() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.busy = true
}

func (c *serverConn) serve(ctx context.Context) {
	defer c.nc.Close()
	log := c.srv.Logger.With("remote", c.nc.RemoteAddr().String())
	r := bufio.NewReaderSize(c.nc, 4096)
	w := bufio.NewWriter(c.nc)
	// Lookups run to completion even while Serve shuts down: their replies are still sent.
	lookupCtx := context.WithoutCancel(ctx)
	for {
		if !c.awaitRequest() {
			c.nc.SetWriteDeadline(time.Now().Add(c.srv.WriteTimeout))
			w.Flush()
			return
		}
		// A request that arrives complete is answered even if Serve starts shutting down meanwhile.
		req, err := readNetstring(r, c.srv.MaxRequest)
		c.markBusy()
		switch {
		case err == nil:
		case errors.Is(err, io.EOF):
			return
		case errors.Is(err, ErrMalformed), errors.Is(err, ErrTooLong):
			log.Warn("socketmap: closing a connection after a malformed request", "err", err)
			c.reply(w, "PERM "+err.Error())
			return
		default:
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				log.Debug("socketmap: closing an idle connection")
			} else if !errors.Is(err, io.ErrUnexpectedEOF) && !errors.Is(err, net.ErrClosed) {
				log.Warn("socketmap: reading a request failed", "err", err)
			}
			return
		}

		reply := c.answer(lookupCtx, log, string(req))
		if err := c.reply(w, reply); err != nil {
			log.Debug("socketmap: writing a reply failed", "err", err)
			return
		}
		if r.Buffered() == 0 {
			// Flush when no pipelined request is waiting, so a burst costs one write.
			c.nc.SetWriteDeadline(time.Now().Add(c.srv.WriteTimeout))
			if err := w.Flush(); err != nil {
				log.Debug("socketmap: writing a reply failed", "err", err)
				return
			}
		}
	}
}

// answer turns one request into one reply (without the netstring framing).
func (c *serverConn) answer(ctx context.Context, log *slog.Logger, req string) string {
	name, key, ok := strings.Cut(req, " ")
	if !ok || name == "" {
		log.Warn("socketmap: request is not \"<name> <key>\"", "request", truncate(req, 200))
		return "PERM request is not \"<name> <key>\""
	}
	ctx, cancel := context.WithTimeout(ctx, c.srv.LookupTimeout)
	defer cancel()
	value, found, err := c.srv.Lookup(ctx, name, key)
	switch {
	case errors.Is(err, ErrUnknownMap):
		log.Warn("socketmap: request for a map not served here", "map", truncate(name, 100))
		return "PERM unknown map name " + clean(name, 100)
	case errors.Is(err, context.DeadlineExceeded):
		log.Warn("socketmap: lookup timed out", "map", name, "key", key, "err", err)
		return "TIMEOUT " + clean(err.Error(), 500)
	case err != nil:
		log.Warn("socketmap: lookup failed", "map", name, "key", key, "err", err)
		return "TEMP " + clean(err.Error(), 500)
	case !found:
		log.Debug("socketmap: not found", "map", name, "key", key)
		return "NOTFOUND "
	}
	if len(value)+len("OK ") > MaxReply {
		log.Error("socketmap: value too long for Postfix", "map", name, "key", key, "bytes", len(value))
		return "PERM value too long"
	}
	log.Debug("socketmap: found", "map", name, "key", key, "value", value)
	return "OK " + value
}

// reply buffers one reply; an error reply (the connection closes next) is flushed at once.
func (c *serverConn) reply(w *bufio.Writer, s string) error {
	if err := writeNetstring(w, s); err != nil {
		return err
	}
	if strings.HasPrefix(s, "PERM ") {
		c.nc.SetWriteDeadline(time.Now().Add(c.srv.WriteTimeout))
		return w.Flush()
	}
	return nil
}

// clean makes s fit for a reply: one line, at most n bytes.
func clean(s string, n int) string {
	s = strings.Map(func(r rune) rune {
		if r < ' ' || r == 0x7f {
			return ' '
		}
		return r
	}, s)
	return truncate(s, n)
}

func truncate(s string, n int) string {
	if len(s) > n {
		return s[:n]
	}
	return s
}
