package upstream

import (
	"bufio"
	"bytes"
)

// bodyWriter writes a message body for DATA a line at a time (net/textproto's DotWriter goes a
// byte at a time): a dot that begins a line is doubled, a bare LF is
// sent as CRLF, every other byte as it is, and finish ends the body with the final dot.
type bodyWriter struct {
	w *bufio.Writer

	midLine bool // the next byte does not begin a line
	cr      bool // the last byte written was a CR
	written bool // Write was given a byte
}

// Write takes more of the body. It fails only if the underlying writer did.
func (b *bodyWriter) Write(p []byte) (int, error) {
	n := len(p)
	b.written = b.written || n > 0
	for len(p) > 0 {
		if !b.midLine && p[0] == '.' {
			if err := b.w.WriteByte('.'); err != nil {
				return 0, err
			}
		}
		i := bytes.IndexByte(p, '\n')
		if i < 0 {
			b.midLine, b.cr = true, p[len(p)-1] == '\r'
			if _, err := b.w.Write(p); err != nil {
				return 0, err
			}
			return n, nil
		}
		crlf := i == 0 && b.cr || i > 0 && p[i-1] == '\r'
		line := p[:i+1]
		if !crlf {
			line = p[:i]
		}
		if _, err := b.w.Write(line); err != nil {
			return 0, err
		}
		if !crlf {
			if _, err := b.w.WriteString("\r\n"); err != nil {
				return 0, err
			}
		}
		b.midLine, b.cr = false, false
		p = p[i+1:]
	}
	return n, nil
}

// finish ends the last line if the body did not (a final bare CR becomes CRLF; an empty body is
// sent as one empty line, as DotWriter sends it), writes the final dot and flushes.
func (b *bodyWriter) finish() error {
	end := ".\r\n"
	switch {
	case b.midLine && b.cr:
		end = "\n.\r\n"
	case b.midLine || !b.written:
		end = "\r\n.\r\n"
	}
	if _, err := b.w.WriteString(end); err != nil {
		return err
	}
	return b.w.Flush()
}
