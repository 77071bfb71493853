package smtpd

import (
	"context"
	"fmt"
	"net"
	"net/textproto"
	"strings"
	"testing"

	"github.com/postern/postern/sidecar/credential"
	"github.com/postern/postern/sidecar/directory"
	"github.com/postern/postern/sidecar/project"
	"github.com/postern/postern/sidecar/upstream"
	"github.com/postern/postern/sidecar/upstream/upstreamtest"
)

// serveSMTP serves SMTP on loopback for the project a.example delivering to up, and returns the
// address.
func serveSMTP(t *testing.T, up *upstreamtest.Server) string {
	t.Helper()
	store := &memStore{projects: []project.Project{basicProject("a", "a.example", up)}}
	dir := directory.New(store, directory.Options{})
	if err := dir.Load(t.Context()); err != nil {
		t.Fatal(err)
	}
	pools := upstream.NewPools(upstream.Options{})
	t.Cleanup(func() { pools.Close() })
	srv, err := New(Options{Resolver: dir, Credentials: credential.New(credential.Options{}), Upstreams: pools})
	if err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- srv.ServeSMTP(ctx, l) }()
	t.Cleanup(func() {
		cancel()
		if err := <-served; err != nil {
			t.Errorf("ServeSMTP: %v", err)
		}
	})
	return l.Addr().String()
}

// rawMessage sends one message over a fresh SMTP connection with DATA or, with bdat, in BDAT
// chunks of at most chunk bytes, and returns the reply to the message ("250 2.0.0 ...").
func rawMessage(t *testing.T, addr, msg string, bdat bool, chunk int) string {
	t.Helper()
	c, err := textproto.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	expect := func(code int) {
		t.Helper()
		if _, _, err := c.ReadResponse(code); err != nil {
			t.Fatalf("expecting %d: %v", code, err)
		}
	}
	expect(220)
	c.PrintfLine("EHLO postfix.test")
	_, ext, err := c.ReadResponse(250)
	if err != nil {
		t.Fatal(err)
	}
	if bdat && !strings.Contains(ext, "CHUNKING") {
		t.Fatalf("CHUNKING not advertised: %q", ext)
	}
	c.PrintfLine("MAIL FROM:<noreply@a.example>")
	expect(250)
	c.PrintfLine("RCPT TO:<x@dest.example>")
	expect(250)
	reply := func() string {
		code, text, err := c.ReadResponse(0)
		if err != nil && code == 0 {
			return "no reply: " + err.Error()
		}
		return fmt.Sprintf("%d %s", code, text)
	}
	if !bdat {
		c.PrintfLine("DATA")
		expect(354)
		w := c.DotWriter()
		w.Write([]byte(msg))
		w.Close()
		return reply()
	}
	for len(msg) > 0 {
		n := min(chunk, len(msg))
		last := ""
		if n == len(msg) {
			last = " LAST"
		}
		fmt.Fprintf(c.W, "BDAT %d%s\r\n%s", n, last, msg[:n])
		c.W.Flush()
		msg = msg[n:]
		if r := reply(); msg == "" || !strings.HasPrefix(r, "250 ") {
			return r
		}
	}
	return ""
}

// BDAT takes lines as long as DATA does, and a line over the limit gets DATA's reply, which is
// temporary: never go-smtp's 554 for an error that is not an *smtp.SMTPError.
func TestBDATLineLength(t *testing.T) {
	t.Parallel()
	up := fakeUpstream(t, upstreamtest.Options{}, "user@a.example")
	addr := serveSMTP(t, up)
	longest := body + strings.Repeat("x", maxLineLength-2) + "\r\n"
	// In one chunk, and in chunks that end inside the line.
	for i, chunk := range []int{1 << 20, 100} {
		if r := rawMessage(t, addr, longest, true, chunk); !strings.HasPrefix(r, "250 ") {
			t.Fatalf("BDAT (chunks of %d) with a line of %d bytes: %s", chunk, maxLineLength, r)
		}
		if msgs := up.Messages(); len(msgs) != i+1 || string(msgs[i].Data) != longest {
			t.Fatalf("upstream got %d messages, want the one with the longest line intact", len(msgs))
		}
	}

	// Over the limit, and over the limit of any line on the wire.
	for _, n := range []int{2 * maxLineLength, 2 * bodyLineLimit} {
		tooLong := body + strings.Repeat("x", n) + "\r\n"
		viaData := rawMessage(t, addr, tooLong, false, 0)
		if !strings.HasPrefix(viaData, "451 4.6.0 ") {
			t.Fatalf("DATA with a line of %d bytes: %s, want a temporary failure", n, viaData)
		}
		for _, chunk := range []int{1 << 20, 1000, 100} {
			if viaBDAT := rawMessage(t, addr, tooLong, true, chunk); viaBDAT != viaData {
				t.Errorf("BDAT (chunks of %d) with a line of %d bytes: %q, want what DATA gets: %q", chunk, n, viaBDAT, viaData)
			}
		}
	}
	if n := len(up.Messages()); n != 2 {
		t.Fatalf("upstream got %d messages, want still 2", n)
	}
}
