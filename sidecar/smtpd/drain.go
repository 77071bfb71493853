package smtpd

import (
	"net"
	"sync"
	"time"
)

// Graceful shutdown works below go-smtp, on the connections themselves. go-smtp sets a read deadline
// before reading each command; once the server drains, a connection that is between transactions
// gets a deadline in the past instead, so its next (or current) read fails at once and go-smtp
// answers "421 4.4.2" and closes. A connection inside a transaction keeps its deadlines until the
// transaction ends (its reply is written first), so Postfix hears the outcome of every message it
// handed over.

// drainListener wraps accepted connections in drainConns and keeps track of them.
type drainListener struct {
	net.Listener
	dataTimeout time.Duration // see Options.DataTimeout

	mu       sync.Mutex
	conns    map[*drainConn]struct{}
	draining bool
	wg       sync.WaitGroup // one per open connection
}

func newDrainListener(l net.Listener, dataTimeout time.Duration) *drainListener {
	return &drainListener{Listener: l, dataTimeout: dataTimeout, conns: map[*drainConn]struct{}{}}
}

func (l *drainListener) Accept() (net.Conn, error) {
	nc, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	c := &drainConn{Conn: nc, l: l}
	c.frame.init(c)
	l.mu.Lock()
	defer l.mu.Unlock()
	c.draining = l.draining
	l.conns[c] = struct{}{}
	l.wg.Add(1)
	if c.draining {
		nc.SetReadDeadline(past)
	}
	return c, nil
}

// drain makes every connection close as soon as it is between transactions.
func (l *drainListener) drain() {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.draining = true
	for c := range l.conns {
		c.drain()
	}
}

// closeAll closes every connection at once.
func (l *drainListener) closeAll() {
	l.mu.Lock()
	conns := make([]*drainConn, 0, len(l.conns))
	for c := range l.conns {
		conns = append(conns, c)
	}
	l.mu.Unlock()
	for _, c := range conns {
		c.Conn.Close()
	}
}

// wait returns a channel closed when every connection has been closed.
func (l *drainListener) wait() <-chan struct{} {
	done := make(chan struct{})
	go func() {
		l.wg.Wait()
		close(done)
	}()
	return done
}

var past = time.Unix(1, 0)

// drainConn is one Postfix connection. Its reads are framed (see framing.go).
type drainConn struct {
	msg messageReader // the message being read, if it came with DATA (data.go)

	net.Conn
	l     *drainListener
	frame framer

	mu       sync.Mutex
	busy     bool // inside a transaction
	draining bool
	closed   bool
}

// SetReadDeadline is go-smtp's call before each command: while draining and idle, the deadline is
// moved to the past.
func (c *drainConn) SetReadDeadline(t time.Time) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.draining && !c.busy {
		t = past
	}
	return c.Conn.SetReadDeadline(t)
}

// setDataDeadline gives a message's data (or one BDAT chunk) Options.DataTimeout from now.
func (c *drainConn) setDataDeadline() {
	_ = c.SetReadDeadline(time.Now().Add(c.l.dataTimeout))
}

func (c *drainConn) SetDeadline(t time.Time) error {
	if err := c.Conn.SetWriteDeadline(t); err != nil {
		return err
	}
	return c.SetReadDeadline(t)
}

func (c *drainConn) drain() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.draining = true
	if !c.busy {
		c.Conn.SetReadDeadline(past)
	}
}

// begin marks the start of a transaction. It reports false when the server is draining: no new
// transaction may start.
func (c *drainConn) begin() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.draining {
		return false
	}
	c.busy = true
	return true
}

// end marks the end of a transaction. A draining connection then closes at its next command
// read, which comes after the transaction's reply was written.
func (c *drainConn) end() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.busy = false
}

func (c *drainConn) Close() error {
	err := c.Conn.Close()
	c.mu.Lock()
	first := !c.closed
	c.closed = true
	c.mu.Unlock()
	if first {
		c.l.mu.Lock()
		delete(c.l.conns, c)
		c.l.mu.Unlock()
		c.l.wg.Done()
	}
	return err
}
