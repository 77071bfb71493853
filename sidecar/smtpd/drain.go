package smtpd

import (
	"bufio"
	"bytes"
	"net"
	"sync"
	"time"

	"github.com/emersion/go-smtp"
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

	mu       sync.Mutex
	conns    map[*drainConn]struct{}
	draining bool
	wg       sync.WaitGroup // one per open connection
}

func newDrainListener(l net.Listener) *drainListener {
	return &drainListener{Listener: l, conns: map[*drainConn]struct{}{}}
}

func (l *drainListener) Accept() (net.Conn, error) {
	nc, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	c := &drainConn{Conn: nc, l: l}
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

// drainConn is one Postfix connection.
type drainConn struct {
	net.Conn
	l    *drainListener
	rd   *bufio.Reader // reads ahead of go-smtp's own small buffer: a message body in few reads
	line int           // bytes read since the last line end

	mu       sync.Mutex
	busy     bool // inside a transaction
	draining bool
	closed   bool
}

// readAhead is how much of a message body one read from Postfix's connection may take in.
const readAhead = 32 << 10

// wireLineLimit bounds every line on the wire, so that go-smtp never holds a command line of
// any length (RFC 5321 allows 512 bytes). It is checked here in bulk, go-smtp's own check (a byte
// at a time) being off, and lies well above maxLineLength, the limit of the message's own lines
// (countingReader): the bytes before a line passes wireLineLimit are always handed on first, so
// a message line over maxLineLength is refused for what it is, with DATA or in BDAT chunks, before
// the wire limit is reached. Only the read after those bytes fails, with smtp.ErrTooLongLine,
// which go-smtp answers with 500 5.4.0 and closes the connection.
const wireLineLimit = 4 * maxLineLength

func (c *drainConn) Read(b []byte) (int, error) {
	if c.rd == nil {
		c.rd = bufio.NewReaderSize(c.Conn, readAhead)
	}
	if c.line > wireLineLimit {
		return 0, smtp.ErrTooLongLine
	}
	n, err := c.rd.Read(b)
	for i := 0; i < n; {
		end, eol := n, false
		if j := bytes.IndexByte(b[i:n], '\n'); j >= 0 {
			end, eol = i+j+1, true
		}
		if c.line+end-i > wireLineLimit {
			keep := i + wireLineLimit - c.line
			c.line = wireLineLimit + 1
			if keep == 0 {
				return 0, smtp.ErrTooLongLine
			}
			return keep, nil
		}
		c.line += end - i
		if eol {
			c.line = 0
		}
		i = end
	}
	return n, err
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
