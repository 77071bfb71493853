package smtpd

import (
	"bufio"
	"net"
	"net/textproto"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/postern/postern/sidecar/upstream/upstreamtest"
)

// rawClient speaks LMTP by hand, to send what a well-behaved client never would.
type rawClient struct {
	t  *testing.T
	nc net.Conn
	r  *textproto.Reader
}

func (h *harness) dialRaw() *rawClient {
	h.t.Helper()
	nc, err := net.Dial("unix", h.sock)
	if err != nil {
		h.t.Fatal(err)
	}
	h.t.Cleanup(func() { nc.Close() })
	nc.SetReadDeadline(time.Now().Add(10 * time.Second))
	c := &rawClient{t: h.t, nc: nc, r: textproto.NewReader(bufio.NewReader(nc))}
	c.expect("220")
	c.send("LHLO postfix.test\r\n")
	c.expect("250")
	return c
}

func (c *rawClient) send(s string) {
	c.t.Helper()
	if _, err := c.nc.Write([]byte(s)); err != nil {
		c.t.Fatal(err)
	}
}

// reply reads one whole reply, its lines joined with "\n".
func (c *rawClient) reply() (string, error) {
	var lines []string
	for {
		l, err := c.r.ReadLine()
		if err != nil {
			return strings.Join(lines, "\n"), err
		}
		lines = append(lines, l)
		if len(l) < 4 || l[3] != '-' {
			return strings.Join(lines, "\n"), nil
		}
	}
}

func (c *rawClient) expect(prefix string) string {
	c.t.Helper()
	r, err := c.reply()
	if err != nil || !strings.HasPrefix(r, prefix) {
		c.t.Fatalf("got reply %q, %v; want %s", r, err, prefix)
	}
	return r
}

// expectClosed reads the 421 4.4.2 of a timeout and the end of the connection, and nothing else.
func (c *rawClient) expectClosed() {
	c.t.Helper()
	c.expect("421 4.4.2")
	if r, err := c.reply(); err == nil {
		c.t.Fatalf("got %q after the 421, want the connection closed", r)
	}
}

// A command dribbled in slower than the read timeout allows is never run, not even in part: the
// connection gets 421 4.4.2 and is closed.
func TestSlowCommandIsNotRun(t *testing.T) {
	t.Parallel()
	up := fakeUpstream(t, upstreamtest.Options{}, "user@a.example")
	h := newHarness(t, Options{ReadTimeout: 300 * time.Millisecond}, basicProject("a", "a.example", up))
	c := h.dialRaw()
	go func() {
		for _, b := range []byte("MAIL FROM:<noreply@a.example>\r\n") {
			if _, err := c.nc.Write([]byte{b}); err != nil {
				return
			}
			time.Sleep(40 * time.Millisecond)
		}
	}()
	c.expectClosed()
	if n := up.Stats().Conns; n != 0 {
		t.Errorf("the upstream got %d connections: MAIL ran", n)
	}
}

// The same for a line cut off that would look whole: nothing runs, whatever the client does next.
func TestCommandCutOffIsNotRun(t *testing.T) {
	t.Parallel()
	up := fakeUpstream(t, upstreamtest.Options{}, "user@a.example")
	h := newHarness(t, Options{ReadTimeout: 200 * time.Millisecond}, basicProject("a", "a.example", up))
	c := h.dialRaw()
	c.send("MAIL FROM:<noreply@a.example>")
	c.expectClosed()
	if n := up.Stats().Conns; n != 0 {
		t.Errorf("the upstream got %d connections: MAIL ran", n)
	}
}

// A message must arrive whole within the data timeout, however steadily its lines come; one cut off
// is not relayed.
func TestSlowMessageIsCutOff(t *testing.T) {
	t.Parallel()
	up := fakeUpstream(t, upstreamtest.Options{}, "user@a.example")
	h := newHarness(t, Options{ReadTimeout: time.Minute, DataTimeout: 300 * time.Millisecond}, basicProject("a", "a.example", up))
	c := h.dialRaw()
	c.send("MAIL FROM:<noreply@a.example>\r\n")
	c.expect("250")
	c.send("RCPT TO:<x@dest.example>\r\n")
	c.expect("250")
	c.send("DATA\r\n")
	c.expect("354")
	stop := make(chan struct{})
	defer close(stop)
	go func() {
		c.send(body)
		for {
			select {
			case <-stop:
				return
			case <-time.After(50 * time.Millisecond):
				if _, err := c.nc.Write([]byte("more\r\n")); err != nil {
					return
				}
			}
		}
	}()
	c.expect("4") // the recipient: a temporary failure
	c.expectClosed()
	if n := len(up.Messages()); n != 0 {
		t.Errorf("the upstream took %d messages", n)
	}
}

// BDAT chunks are binary: a chunk need not end a line, and go-smtp reads it without a line end.
func TestChunksAreNotLines(t *testing.T) {
	t.Parallel()
	up := fakeUpstream(t, upstreamtest.Options{}, "user@a.example")
	h := newHarness(t, Options{}, basicProject("a", "a.example", up))
	c := h.dialRaw()
	c.send("MAIL FROM:<noreply@a.example>\r\nRCPT TO:<x@dest.example>\r\n")
	c.expect("250")
	c.expect("250")
	first := body + "no line end yet: "
	c.send("BDAT " + strconv.Itoa(len(first)) + "\r\n" + first)
	c.expect("250")
	c.send("BDAT 6 LAST\r\nend.\r\n")
	c.expect("250")
	msgs := up.Messages()
	if len(msgs) != 1 || string(msgs[0].Data) != first+"end.\r\n" {
		t.Fatalf("upstream got %d messages, want the one sent in chunks", len(msgs))
	}
	c.send("NOOP\r\n")
	c.expect("250")
}

func TestEndOfDataMatchesGoSMTP(t *testing.T) {
	t.Parallel()
	tests := []struct {
		lines []string
		end   int // index of the line that ends the message, -1 for none
	}{
		{[]string{"a\r\n", ".\r\n"}, 1},
		{[]string{".\r\n"}, 0},
		{[]string{"a\n", ".\r\n"}, -1},     // a bare LF starts no line
		{[]string{"a\r\r\n", ".\r\n"}, -1}, // nor does CR CR LF
		{[]string{"..\r\n", ".\r\n"}, 1},
		{[]string{".x\r\n", ". \r\n", ".\n", ".\r\n"}, -1}, // ".\n" is a dot-stuffed line without CR
		{[]string{".\n", "a\r\n", ".\r\n"}, 2},
	}
	for _, tc := range tests {
		var e endOfData
		got := -1
		for i, l := range tc.lines {
			if e.feed([]byte(l)) {
				got = i
				break
			}
		}
		if got != tc.end {
			t.Errorf("%q: ended at line %d, want %d", tc.lines, got, tc.end)
		}
	}
}
