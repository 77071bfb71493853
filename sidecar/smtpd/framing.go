package smtpd

import (
	"bufio"
	"bytes"
	"io"
	"strconv"
	"strings"
	"sync/atomic"

	"github.com/emersion/go-smtp"
)

// go-smtp reads each command line with a read deadline it sets when it starts waiting, but when the
// deadline passes in the middle of a line, its buffered reader hands the partial line over as a
// whole one, the command runs, and the next command's deadline starts afresh. A client could thus
// have "RCPT TO:<a@b.example" run as "RCPT TO:<a@b.e" and keep the connection forever.
//
// framer stands between the connection and go-smtp and hands go-smtp whole lines only:
//
//  1. Between commands, one whole command line per read. A line that has not arrived whole by the
//     deadline go-smtp set (Options.ReadTimeout from when it started waiting) is never handed over:
//     go-smtp gets the timeout, answers 421 4.4.2 and closes the connection.
//  2. After go-smtp answers DATA with 354, whole lines of the message, up to and including the line
//     that ends it (go-smtp's own end-of-data rule, mirrored by endOfData), within
//     Options.DataTimeout of the 354. A message cut off is never relayed: the upstream connection
//     sees the read fail before the final dot.
//  3. After a BDAT command go-smtp will read (its size parses as go-smtp parses it), the chunk's
//     bytes as they come: a chunk is binary and need not end a line. Each chunk must arrive within
//     Options.DataTimeout of its command.
//  4. Every read error is final: after a timeout the connection is finished, whatever deadline
//     go-smtp sets next. A line longer than maxLineLength fails with smtp.ErrTooLongLine.
//  5. XFORWARD is announced and answered here, never by go-smtp (xforward.go).
//
// STARTTLS would need the raw bytes, but the server offers no TLS.
type framer struct {
	c     *drainConn
	rd    *bufio.Reader // reads ahead of go-smtp's own small buffer: a message body in few reads
	mode  frameMode
	ready int   // bytes at the front of rd that go-smtp may read now
	chunk int64 // bytes of the current BDAT chunk not yet made ready
	eod   endOfData
	err   error // the first read error, returned from then on

	body atomic.Bool // set when go-smtp has answered 354: the message follows
	// hello is set when go-smtp was handed EHLO or LHLO: its reply gets the XFORWARD keyword.
	hello atomic.Bool
	xfwd  xforward
}

type frameMode int

const (
	modeCommand frameMode = iota
	modeBody
	modeChunk
)

// readAhead is how much one read from Postfix's connection may take in.
const readAhead = 32 << 10

// maxLineLength is the longest line, CRLF included, taken from Postfix: go-smtp's default limit,
// twice RFC 5321's 1000. Postfix's own smtp and lmtp clients fold longer lines
// (smtp_line_length_limit), so only another client sends one. A longer command line fails with
// smtp.ErrTooLongLine, which go-smtp answers with 500 5.4.0 and closes the connection. A longer
// line of a message is refused by countingReader with 451 4.6.0, the same for DATA and BDAT (whose
// chunks are not lines); the framer lets message lines pass up to bodyLineLimit, a bound on memory
// only, so that the message's own check always comes first.
const maxLineLength = 2000

// bodyLineLimit bounds a message line the framer holds whole before handing it to go-smtp.
const bodyLineLimit = 4 * maxLineLength

func (f *framer) init(c *drainConn) {
	f.c = c
	f.rd = bufio.NewReaderSize(c.Conn, readAhead)
}

// Read hands go-smtp what it may read now.
func (c *drainConn) Read(b []byte) (int, error) {
	f := &c.frame
	if f.err != nil {
		return 0, f.err
	}
	if f.ready == 0 {
		if err := f.prepare(); err != nil {
			f.err = err
			return 0, err
		}
	}
	n, _ := f.rd.Read(b[:min(len(b), f.ready)]) // buffered: never blocks
	f.ready -= n
	return n, nil
}

// Write sends go-smtp's replies; a 354 starts a message; the reply to EHLO or LHLO announces
// XFORWARD.
func (c *drainConn) Write(b []byte) (int, error) {
	if bytes.HasPrefix(b, []byte("354")) {
		c.frame.body.Store(true)
		c.setDataDeadline()
	}
	if c.frame.hello.Swap(false) {
		if _, err := c.Conn.Write(withCapability(b)); err != nil {
			return 0, err
		}
		return len(b), nil
	}
	return c.Conn.Write(b)
}

// prepare waits until there is something go-smtp may read, and sets ready.
func (f *framer) prepare() error {
	if f.body.Swap(false) {
		f.mode, f.eod = modeBody, endOfData{}
	}
	switch f.mode {
	case modeChunk:
		if f.rd.Buffered() == 0 {
			if _, err := f.rd.Peek(1); err != nil {
				return err
			}
		}
		n := min(int64(f.rd.Buffered()), f.chunk)
		f.ready, f.chunk = int(n), f.chunk-n
		if f.chunk == 0 {
			f.mode = modeCommand
		}
		return nil
	case modeBody:
		return f.prepareBody()
	}
	line, err := f.peekLine()
	for err == nil && isXForward(line) {
		reply := f.xfwd.command(line)
		f.rd.Discard(len(line))
		if _, err = f.c.Conn.Write(reply); err == nil {
			line, err = f.peekLine()
		}
	}
	if err != nil {
		return err
	}
	f.hello.Store(isHello(line))
	f.ready = len(line)
	if size, ok := bdatSize(line); ok && size > 0 {
		f.mode, f.chunk = modeChunk, size
		f.c.setDataDeadline()
	}
	return nil
}

// peekLine returns the next whole line, its line feed included, without consuming it.
func (f *framer) peekLine() ([]byte, error) {
	for {
		b, _ := f.rd.Peek(f.rd.Buffered())
		if i := bytes.IndexByte(b, '\n'); i >= 0 {
			if i+1 > maxLineLength {
				return nil, smtp.ErrTooLongLine
			}
			return b[:i+1], nil
		}
		if len(b) >= maxLineLength {
			return nil, smtp.ErrTooLongLine
		}
		if _, err := f.rd.Peek(len(b) + 1); err != nil {
			return nil, eofIsUnexpected(err, len(b))
		}
	}
}

// prepareBody makes every whole line of the message buffered so far ready, up to its end.
func (f *framer) prepareBody() error {
	for {
		b, _ := f.rd.Peek(f.rd.Buffered())
		off := 0
		for {
			i := bytes.IndexByte(b[off:], '\n')
			if i < 0 {
				break
			}
			if i+1 > bodyLineLimit {
				if off > 0 {
					break // the lines before it first
				}
				return smtp.ErrTooLongLine
			}
			line := b[off : off+i+1]
			off += len(line)
			if f.eod.feed(line) {
				f.mode = modeCommand
				break
			}
		}
		if off > 0 {
			f.ready = off
			return nil
		}
		if len(b) >= bodyLineLimit {
			return smtp.ErrTooLongLine
		}
		if _, err := f.rd.Peek(len(b) + 1); err != nil {
			return eofIsUnexpected(err, len(b))
		}
	}
}

// eofIsUnexpected: the end of the stream inside a line is a failure, not a clean end.
func eofIsUnexpected(err error, partial int) error {
	if err == io.EOF && partial > 0 {
		return io.ErrUnexpectedEOF
	}
	return err
}

// bdatSize returns the chunk size of a BDAT command line that go-smtp will read a chunk after: its
// arguments parse (a size, then LAST or nothing) exactly as go-smtp parses them.
func bdatSize(line []byte) (int64, bool) {
	s := strings.TrimRight(string(line), "\r\n")
	if len(s) < 6 || s[4] != ' ' || !strings.EqualFold(s[:4], "BDAT") {
		return 0, false
	}
	args := strings.Fields(s[5:])
	if len(args) == 0 || len(args) > 2 || len(args) == 2 && !strings.EqualFold(args[1], "LAST") {
		return 0, false
	}
	n, err := strconv.ParseUint(args[0], 10, 32)
	if err != nil {
		return 0, false
	}
	return int64(n), true
}

// endOfData is go-smtp's end-of-data state machine (its dataReader): the message ends at ".\r\n"
// at the start of a line, and only "\r\n" starts a line.
type endOfData struct{ state int }

const (
	eodBeginLine = iota
	eodDot
	eodDotCR
	eodCR
	eodData
)

// feed runs the machine over p and reports whether the message ended (at p's last byte, as p is a
// line).
func (e *endOfData) feed(p []byte) bool {
	for _, c := range p {
		switch e.state {
		case eodBeginLine:
			switch c {
			case '.':
				e.state = eodDot
			case '\r':
				e.state = eodCR
			default:
				e.state = eodData
			}
		case eodDot:
			if c == '\r' {
				e.state = eodDotCR
			} else {
				e.state = eodData
			}
		case eodDotCR:
			if c == '\n' {
				return true
			}
			e.state = eodData
		case eodCR:
			if c == '\n' {
				e.state = eodBeginLine
			} else {
				e.state = eodData
			}
		case eodData:
			if c == '\r' {
				e.state = eodCR
			}
		}
	}
	return false
}
