package socketmap

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"strconv"
)

// ErrMalformed is wrapped by every error about input that is not a netstring.
var ErrMalformed = errors.New("malformed netstring")

// ErrTooLong is wrapped by the error for a netstring longer than the limit.
var ErrTooLong = errors.New("netstring too long")

// readNetstring reads one netstring ("<len>:<bytes>,") from r. It returns io.EOF when r ends before
// the first byte, io.ErrUnexpectedEOF when it ends inside the netstring, an error wrapping
// ErrTooLong when the declared length exceeds max, and one wrapping ErrMalformed for anything else
// that is not a netstring. It never reads past the comma.
func readNetstring(r *bufio.Reader, max int) ([]byte, error) {
	maxDigits := len(strconv.Itoa(max))
	n, digits := 0, 0
	for {
		c, err := r.ReadByte()
		if err != nil {
			if err == io.EOF && digits > 0 {
				return nil, io.ErrUnexpectedEOF
			}
			return nil, err
		}
		if c == ':' {
			if digits == 0 {
				return nil, fmt.Errorf("%w: no length before ':'", ErrMalformed)
			}
			break
		}
		if c < '0' || c > '9' {
			return nil, fmt.Errorf("%w: byte %q where a length digit or ':' belongs", ErrMalformed, c)
		}
		digits++
		if digits > maxDigits {
			return nil, fmt.Errorf("%w: length has more than %d digits", ErrTooLong, maxDigits)
		}
		n = n*10 + int(c-'0')
	}
	if n > max {
		return nil, fmt.Errorf("%w: %d bytes, the limit is %d", ErrTooLong, n, max)
	}
	buf := make([]byte, n+1)
	if _, err := io.ReadFull(r, buf); err != nil {
		if err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		return nil, err
	}
	if buf[n] != ',' {
		return nil, fmt.Errorf("%w: byte %q where the closing ',' belongs", ErrMalformed, buf[n])
	}
	return buf[:n], nil
}

// writeNetstring writes s as one netstring to w. The caller flushes.
func writeNetstring(w *bufio.Writer, s string) error {
	w.WriteString(strconv.Itoa(len(s)))
	w.WriteByte(':')
	w.WriteString(s)
	return w.WriteByte(',')
}
