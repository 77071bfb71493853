package smtpd

import (
	"bytes"
	"io"

	"github.com/emersion/go-smtp"
)

// Postern reads a message that comes with DATA itself, in bulk, and go-smtp only the final dot.
//
// go-smtp's own reader of DATA (its dataReader, net/textproto's dot reader less the CRLF
// rewriting) takes the message one byte at a time through two buffered readers: at 100 KB it was
// most of Postern's CPU per message. The framer already holds every line of the message whole in
// its buffer and finds its end (framing.go), so the session reads the message from the framer
// instead of from go-smtp:
//
//  1. The session asks for a messageReader when go-smtp has answered DATA with 354 (never for
//     BDAT, whose chunks go-smtp reads in bulk already).
//  2. The reader takes whole lines from the framer's buffer (no line longer than bodyLineLimit, as
//     the framer hands go-smtp). A line that begins the message or follows CRLF and ends in a
//     single CRLF — every line of the mail Postfix sends — goes out as one copy: its leading
//     dot, if any, is taken off (the sender doubled it). Any other line goes through go-smtp's
//     own state machine byte by byte, so the bytes are always exactly those go-smtp would give
//     (a bare CR or LF, a dot followed by a lone CR).
//  3. At the line ".\r\n" the reader ends (io.EOF) and leaves that line in the framer for go-smtp,
//     whose own reader then reads just it and ends too. go-smtp's state and the framer's stay
//     in step: the reader stops only at the start of a line, and Close reads whatever the
//     session left of the message first.
//  4. The server's MaxMessageBytes is enforced as go-smtp's reader enforces it (smtp.ErrDataTooLarge
//     once that many bytes were read), and every read error is final, as with the framer.
//
// The differential test (data_test.go) runs the same inputs through go-smtp's reader and this one
// and requires the same message bytes, errors and replies.
type messageReader struct {
	f *framer

	state   int   // go-smtp's dataReader state between lines
	limited bool  // max applies
	left    int64 // bytes that may still be read if limited

	cur  []byte // what the current line gives; a slice of the framer's buffer or of slow
	raw  int    // length of the current line in the framer's buffer; 0: none taken
	slow []byte // the output of a line that went through the state machine
	eof  bool
	err  error
}

// go-smtp's dataReader states.
const (
	drBeginLine = iota
	drDot
	drDotCR
	drCR
	drData
)

// messageReader returns the reader of the message go-smtp has just answered 354 for, or nil if it
// has not (BDAT, or no framer). max is the server's MaxMessageBytes (0: none).
func (c *drainConn) messageReader(max int64) *messageReader {
	if c == nil || !c.frame.body.Swap(false) {
		return nil
	}
	f := &c.frame
	f.mode, f.eod = modeBody, endOfData{}
	// One per connection, reused: a message costs no allocation here.
	c.msg = messageReader{f: f, limited: max > 0, left: max, slow: c.msg.slow[:0]}
	return &c.msg
}

// Read gives the message's bytes as go-smtp's dataReader gives them.
func (r *messageReader) Read(b []byte) (int, error) {
	if r.err != nil {
		return 0, r.err
	}
	if r.eof {
		return 0, io.EOF
	}
	if r.limited {
		if r.left <= 0 {
			return 0, smtp.ErrDataTooLarge
		}
		if int64(len(b)) > r.left {
			b = b[:r.left]
		}
	}
	n := 0
	for n < len(b) {
		if r.raw == 0 {
			if err := r.next(); err != nil {
				if err == io.EOF {
					r.eof = true
				} else {
					r.err = err
				}
				break
			}
		}
		k := copy(b[n:], r.cur)
		n += k
		r.cur = r.cur[k:]
		if len(r.cur) == 0 {
			r.f.rd.Discard(r.raw)
			r.raw = 0
		}
	}
	if r.limited {
		r.left -= int64(n)
	}
	if n > 0 && r.err == nil {
		return n, nil // the end or an error comes with the next read
	}
	if r.eof {
		return n, io.EOF
	}
	return n, r.err
}

// next takes the next line of the message; io.EOF at its end.
func (r *messageReader) next() error {
	f := r.f
	if f.err != nil {
		return f.err
	}
	line, err := r.peekLine()
	if err != nil {
		f.err = err
		if err == io.EOF {
			return io.ErrUnexpectedEOF // the connection ended, the message did not
		}
		return err
	}
	if r.state == drBeginLine {
		n := len(line)
		switch {
		case n == 3 && line[0] == '.' && line[1] == '\r':
			f.eod = endOfData{} // the final dot, for go-smtp to read
			return io.EOF
		case n >= 2 && line[n-2] == '\r' && (n == 2 || line[n-3] != '\r') && !(line[0] == '.' && line[1] == '\r'):
			r.cur, r.raw = line, n
			if line[0] == '.' {
				r.cur = line[1:]
			}
			return nil
		}
	}
	r.cur, r.raw = r.machine(line), len(line)
	return nil
}

// peekLine returns the next whole line of the message in the framer's buffer, its line feed
// included, without consuming it; a line the framer would not hand over fails as it fails there.
func (r *messageReader) peekLine() ([]byte, error) {
	rd := r.f.rd
	for {
		b, _ := rd.Peek(rd.Buffered())
		if len(b) > 0 {
			if i := bytes.IndexByte(b, '\n'); i >= 0 {
				if i+1 > bodyLineLimit {
					return nil, smtp.ErrTooLongLine
				}
				return b[:i+1], nil
			}
		}
		if len(b) >= bodyLineLimit {
			return nil, smtp.ErrTooLongLine
		}
		if _, err := rd.Peek(len(b) + 1); err != nil {
			return nil, eofIsUnexpected(err, len(b))
		}
	}
}

// machine runs go-smtp's dataReader over one line (never the final dot: next found that) and
// returns what it gives.
func (r *messageReader) machine(line []byte) []byte {
	out := r.slow[:0]
	for _, c := range line {
		switch r.state {
		case drBeginLine:
			if c == '.' {
				r.state = drDot
				continue
			}
			if c == '\r' {
				r.state = drCR
				break
			}
			r.state = drData
		case drDot:
			if c == '\r' {
				r.state = drDotCR
				continue
			}
			r.state = drData
		case drDotCR:
			r.state = drData // "\n" here would have been the final dot
		case drCR:
			if c == '\n' {
				r.state = drBeginLine
				break
			}
			r.state = drData
		case drData:
			if c == '\r' {
				r.state = drCR
			}
		}
		out = append(out, c)
	}
	r.slow = out
	return out
}

// Close reads the rest of the message, so that go-smtp reads just its final dot. It returns the
// read error that ended the message early, if any.
func (r *messageReader) Close() error {
	r.limited = false
	_, err := io.Copy(io.Discard, r)
	return err
}
