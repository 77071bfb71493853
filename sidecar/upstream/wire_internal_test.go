package upstream

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"net/textproto"
	"slices"
	"strings"
	"testing"
	"testing/iotest"
)

// replyLimit splits replies as textproto's ReadResponse does: many short replies pass however
// many there are, and a reply is measured whole, however its lines are cut.
func TestReplyLimit(t *testing.T) {
	t.Parallel()
	rep := strings.Repeat
	cases := []struct {
		name    string
		in      string
		replies int // read by textproto over the limit; -1: the limit trips
	}{
		{"many one-line replies", rep("250 2.1.0 ok\r\n", 1000), 1000},
		{"many short-line replies", rep("250\r\n", 1000), 1000}, // each is a textproto error
		{"bare LF", rep("250 ok\n", 500), 500},
		{"multi-line replies", rep("250-a\r\n"+rep("250-b\r\n", 100)+"250 c\r\n", 20), 20},
		{"longest line", "250 " + rep("x", maxReplyLine-6) + "\r\n", 1},
		{"line too long", "250 " + rep("x", maxReplyLine-5) + "\r\n", -1},
		{"line too long without CR", "250 " + rep("x", maxReplyLine-4) + "\n", -1},
		{"line never ends", "220 " + rep("x", 10*maxReplyLine), -1},
		{"too many lines", rep("250-b\r\n", maxReplyLines) + "250 c\r\n", -1},
		{"most lines", rep("250-b\r\n", maxReplyLines-1) + "250 c\r\n", 1},
		{"other codes continue a reply", "250-a\r\n" + rep("999 b\r\n", maxReplyLines), -1},
		{"malformed lines continue a reply", "250-a\r\n" + rep("250\r\n", maxReplyLines), -1},
		{"most bytes", rep("250-"+rep("y", 900)+"\r\n", maxReplyBytes/900) + "250 c\r\n", 1},
		{"too many bytes", rep("250-"+rep("y", 900)+"\r\n", maxReplyBytes/900+1) + "250 c\r\n", -1},
	}
	for _, tc := range cases {
		for _, read := range []struct {
			name string
			r    func(io.Reader) io.Reader
		}{{"whole", func(r io.Reader) io.Reader { return r }}, {"by byte", iotest.OneByteReader}} {
			t.Run(tc.name+"/"+read.name, func(t *testing.T) {
				t.Parallel()
				w := &wireConn{Conn: nil}
				src := read.r(strings.NewReader(tc.in))
				tp := textproto.NewReader(bufio.NewReader(readerFunc(func(b []byte) (int, error) {
					n, err := src.Read(b)
					return w.limit.check(b[:n], err)
				})))
				n := 0
				for {
					_, _, err := tp.ReadResponse(0)
					if err = w.over(err); errors.Is(err, io.EOF) {
						break
					}
					var te *textproto.Error
					if err != nil && !errors.As(err, &te) && !errors.As(err, new(textproto.ProtocolError)) {
						if !errors.Is(err, ErrReplyTooLarge) {
							t.Fatalf("reply %d: %v", n, err)
						}
						n = -1
						break
					}
					n++
				}
				if n != tc.replies {
					t.Errorf("read %d replies, want %d", n, tc.replies)
				}
			})
		}
	}
}

type readerFunc func([]byte) (int, error)

func (f readerFunc) Read(b []byte) (int, error) { return f(b) }

// readAll reads every reply of in with textproto, through a replyLimit when limited, one byte at
// a time when byByte, and describes what it read.
func readAll(in []byte, limited, byByte bool) (replies []string, tripped bool) {
	var l replyLimit
	var src io.Reader = bytes.NewReader(in)
	if byByte {
		src = iotest.OneByteReader(src)
	}
	tp := textproto.NewReader(bufio.NewReader(readerFunc(func(b []byte) (int, error) {
		n, err := src.Read(b)
		if !limited {
			return n, err
		}
		return l.check(b[:n], err)
	})))
	for {
		code, msg, err := tp.ReadResponse(0)
		if l.err != nil {
			return replies, true
		}
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			return replies, false
		}
		replies = append(replies, fmt.Sprintf("%d %q %v", code, msg, err))
	}
}

// The limit changes nothing in what textproto reads of replies within it, however the bytes
// arrive, and trips alike however they arrive.
func FuzzReplyLimit(f *testing.F) {
	f.Add([]byte("220 ready\r\n250-a\r\n250-b\r\n250 c\r\n"))
	f.Add([]byte("250-a\r\n999 b\r\n250\r\n250 c\n"))
	f.Add([]byte(strings.Repeat("250-x\r\n", maxReplyLines+1) + "250 y\r\n"))
	f.Add([]byte("220 " + strings.Repeat("x", maxReplyLine)))
	f.Fuzz(func(t *testing.T, in []byte) {
		plain, _ := readAll(in, false, false)
		whole, trippedWhole := readAll(in, true, false)
		_, trippedByByte := readAll(in, true, true)
		if trippedWhole != trippedByByte {
			t.Fatalf("tripped %v read whole, %v read by byte", trippedWhole, trippedByByte)
		}
		if !trippedWhole && !slices.Equal(plain, whole) {
			t.Fatalf("within the limit, read %q, without it %q", whole, plain)
		}
		if len(in) <= maxReplyLine && bytes.Count(in, []byte("\n")) < maxReplyLines && trippedWhole {
			t.Fatalf("tripped on %d bytes", len(in))
		}
	})
}
