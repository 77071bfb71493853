package upstream

import (
	"bufio"
	"bytes"
	"errors"
	"net/textproto"
	"strings"
	"testing"
)

// onWire is what bodyWriter puts on the wire for body, written in chunks of at most chunk bytes.
func onWire(t testing.TB, body []byte, chunk int) []byte {
	t.Helper()
	var out bytes.Buffer
	bw := &bodyWriter{w: bufio.NewWriterSize(&out, 64)}
	for p := body; len(p) > 0; {
		n := min(chunk, len(p))
		if k, err := bw.Write(p[:n]); k != n || err != nil {
			t.Fatalf("Write = %d, %v; want %d, nil", k, err, n)
		}
		p = p[n:]
	}
	if err := bw.finish(); err != nil {
		t.Fatal(err)
	}
	return out.Bytes()
}

// textprotoWire is what go-smtp's client (net/textproto's DotWriter) sends for body.
func textprotoWire(t testing.TB, body []byte) []byte {
	t.Helper()
	var out bytes.Buffer
	tw := textproto.NewWriter(bufio.NewWriter(&out))
	w := tw.DotWriter()
	if _, err := w.Write(body); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	return out.Bytes()
}

func TestBodyWriter(t *testing.T) {
	t.Parallel()
	long := strings.Repeat("0123456789", 2000)
	tests := []struct {
		name, body, want string
	}{
		{"empty", "", "\r\n.\r\n"},
		{"one line", "Subject: x\r\n\r\nhello\r\n", "Subject: x\r\n\r\nhello\r\n.\r\n"},
		{"no final line ending", "hello", "hello\r\n.\r\n"},
		{"leading dot", ".hidden\r\n", "..hidden\r\n.\r\n"},
		{"dot lines", "a\r\n.\r\n..\r\n.x", "a\r\n..\r\n...\r\n..x\r\n.\r\n"},
		{"dot only", ".", "..\r\n.\r\n"},
		{"dot not at line start", "a.b\r\n x.\r\n", "a.b\r\n x.\r\n.\r\n"},
		{"bare LF", "a\nb\n", "a\r\nb\r\n.\r\n"},
		{"bare LF then dot", "a\n.b", "a\r\n..b\r\n.\r\n"},
		{"empty lines", "\n\r\n\n", "\r\n\r\n\r\n.\r\n"},
		{"bare CR kept", "a\rb\r\n", "a\rb\r\n.\r\n"},
		{"CR then dot is not a line start", "a\r.b\r\n", "a\r.b\r\n.\r\n"},
		{"CR CR LF kept", "a\r\r\nb", "a\r\r\nb\r\n.\r\n"},
		{"final bare CR ends the line", "a\r", "a\r\n.\r\n"},
		{"final CR CR", "a\r\r", "a\r\r\n.\r\n"},
		{"long line", long + "\r\n." + long, long + "\r\n.." + long + "\r\n.\r\n"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			for _, chunk := range []int{1, 2, 3, 7, 64, 1 << 20} {
				if got := onWire(t, []byte(tt.body), chunk); string(got) != tt.want {
					t.Errorf("chunks of %d: wire = %q, want %q", chunk, got, tt.want)
				}
			}
		})
	}
}

// FuzzBodyWriter checks bodyWriter against net/textproto's DotWriter, which differs only where
// a CR follows a CR (DotWriter then adds a CR before the next LF).
func FuzzBodyWriter(f *testing.F) {
	for _, s := range []string{"", "a\r\n.\r\n", ".\n.\r\n..", "x\r.\ry\n", "\r\n\r\n", "abc"} {
		f.Add([]byte(s), uint8(3))
	}
	f.Fuzz(func(t *testing.T, body []byte, chunk uint8) {
		if bytes.Contains(body, []byte("\r\r")) {
			t.Skip()
		}
		want := textprotoWire(t, body)
		if got := onWire(t, body, int(chunk)+1); !bytes.Equal(got, want) {
			t.Fatalf("body %q in chunks of %d: wire = %q, textproto sends %q", body, int(chunk)+1, got, want)
		}
	})
}

var errBroken = errors.New("connection broken")

type failingWriter struct{ err error }

func (w failingWriter) Write([]byte) (int, error) { return 0, w.err }

func TestBodyWriterReportsWriteErrors(t *testing.T) {
	t.Parallel()
	bw := &bodyWriter{w: bufio.NewWriterSize(failingWriter{err: errBroken}, 16)}
	var err error
	for i := 0; i < 10 && err == nil; i++ {
		_, err = bw.Write([]byte("0123456789\r\n"))
	}
	if err == nil {
		err = bw.finish()
	}
	if err != errBroken {
		t.Fatalf("err = %v, want %v", err, errBroken)
	}
}
