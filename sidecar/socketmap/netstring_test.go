package socketmap

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"strings"
	"testing"
)

func TestReadNetstring(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name  string
		input string
		max   int
		want  []string // netstrings read before the error
		err   error    // nil means the input ends cleanly (io.EOF)
	}{
		{"one", "3:abc,", 100, []string{"abc"}, nil},
		{"empty string", "0:,", 100, []string{""}, nil},
		{"two in a row", "3:abc,5:hello,", 100, []string{"abc", "hello"}, nil},
		{"comma and colon inside", "5:a,b:c,", 100, []string{"a,b:c"}, nil},
		{"leading zeros", "003:abc,", 100, []string{"abc"}, nil},
		{"exactly the limit", "4:abcd,", 4, []string{"abcd"}, nil},
		{"nothing", "", 100, nil, nil},
		{"over the limit", "5:abcde,", 4, nil, ErrTooLong},
		{"too many digits", "00000000000000000001:a,", 100, nil, ErrTooLong},
		{"huge length", "99999999999999999999999:", 100, nil, ErrTooLong},
		{"missing comma", "3:abcd", 100, nil, ErrMalformed},
		{"second missing comma", "1:a,1:bc", 100, []string{"a"}, ErrMalformed},
		{"non-digit length", "x:abc,", 100, nil, ErrMalformed},
		{"negative length", "-1:,", 100, nil, ErrMalformed},
		{"blank before length", " 3:abc,", 100, nil, ErrMalformed},
		{"no length", ":abc,", 100, nil, ErrMalformed},
		{"cut in the length", "12", 100, nil, io.ErrUnexpectedEOF},
		{"cut in the body", "10:abc", 100, nil, io.ErrUnexpectedEOF},
		{"cut before the comma", "3:abc", 100, nil, io.ErrUnexpectedEOF},
		{"cut after the colon", "3:", 100, nil, io.ErrUnexpectedEOF},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			r := bufio.NewReader(strings.NewReader(tc.input))
			var got []string
			var err error
			for {
				var b []byte
				b, err = readNetstring(r, tc.max)
				if err != nil {
					break
				}
				got = append(got, string(b))
			}
			if strings.Join(got, "|") != strings.Join(tc.want, "|") {
				t.Fatalf("read %q, want %q", got, tc.want)
			}
			want := tc.err
			if want == nil {
				want = io.EOF
			}
			if !errors.Is(err, want) {
				t.Fatalf("error = %v, want %v", err, want)
			}
		})
	}
}

func TestWriteNetstring(t *testing.T) {
	t.Parallel()
	var buf bytes.Buffer
	w := bufio.NewWriter(&buf)
	for _, s := range []string{"OK lmtp:unix:/run/postern/lmtp.sock", "NOTFOUND ", ""} {
		if err := writeNetstring(w, s); err != nil {
			t.Fatal(err)
		}
	}
	w.Flush()
	if want := "35:OK lmtp:unix:/run/postern/lmtp.sock,9:NOTFOUND ,0:,"; buf.String() != want {
		t.Fatalf("wrote %q, want %q", buf.String(), want)
	}
}

func FuzzNetstring(f *testing.F) {
	for _, s := range []string{"3:abc,", "0:,", "3:abc,5:hello,", "x:", "3:abcd", "12", "00000000000000000001:a,", "5:a,b:c,"} {
		f.Add([]byte(s))
	}
	const max = 64
	f.Fuzz(func(t *testing.T, input []byte) {
		src := &countingReader{r: bytes.NewReader(input)}
		r := bufio.NewReader(src)
		consumed := 0
		for {
			b, err := readNetstring(r, max)
			if err != nil {
				if !errors.Is(err, io.EOF) && !errors.Is(err, io.ErrUnexpectedEOF) &&
					!errors.Is(err, ErrMalformed) && !errors.Is(err, ErrTooLong) {
					t.Fatalf("unexpected error kind: %v", err)
				}
				if errors.Is(err, io.EOF) && consumed != len(input) {
					t.Fatalf("clean EOF after %d of %d bytes", consumed, len(input))
				}
				return
			}
			if len(b) > max {
				t.Fatalf("read %d bytes, over the limit %d", len(b), max)
			}
			// What was read re-encodes to a netstring that reads back the same.
			var out bytes.Buffer
			w := bufio.NewWriter(&out)
			writeNetstring(w, string(b))
			w.Flush()
			consumed = src.n - r.Buffered()
			again, err := readNetstring(bufio.NewReader(&out), max)
			if err != nil || !bytes.Equal(again, b) {
				t.Fatalf("round trip of %q: %q, %v", b, again, err)
			}
		}
	})
}

type countingReader struct {
	r io.Reader
	n int
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += n
	return n, err
}
