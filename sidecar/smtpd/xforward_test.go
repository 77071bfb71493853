package smtpd

import (
	"net/textproto"
	"strings"
	"testing"

	"github.com/postern/postern/sidecar/upstream/upstreamtest"
)

// Postfix's lmtp client sends XFORWARD when the server announces it (lmtp_send_xforward_command =
// yes): Postern announces it, answers it itself, and logs Postfix's queue id (IDENT, xtext-decoded)
// on the transaction's lines, and only on that transaction's.
func TestXForwardQueueIDReachesTheLog(t *testing.T) {
	t.Parallel()
	up := fakeUpstream(t, upstreamtest.Options{}, "user@a.example")
	h := newHarness(t, Options{}, basicProject("a", "a.example", up))
	c, err := textproto.Dial("unix", h.sock)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, _, err := c.ReadResponse(220); err != nil {
		t.Fatal(err)
	}
	cmd := func(code int, format string, args ...any) string {
		t.Helper()
		id, err := c.Cmd(format, args...)
		if err != nil {
			t.Fatal(err)
		}
		c.StartResponse(id)
		defer c.EndResponse(id)
		_, msg, err := c.ReadResponse(code)
		if err != nil {
			t.Fatalf("%s: %v", format, err)
		}
		return msg
	}
	if caps := cmd(250, "LHLO postfix.test"); !strings.Contains(caps, "\nXFORWARD NAME ADDR PROTO HELO IDENT SOURCE") {
		t.Fatalf("LHLO does not announce XFORWARD:\n%s", caps)
	}
	cmd(250, "XFORWARD NAME=client.test ADDR=127.0.0.1 PROTO=ESMTP HELO=client.test")
	cmd(250, "XFORWARD IDENT=4QAbc+2B12 SOURCE=REMOTE")
	cmd(501, "XFORWARD PASSWORD=x")
	cmd(250, "MAIL FROM:<noreply@a.example>")
	cmd(250, "RCPT TO:<x@dest.example>")
	cmd(354, "DATA")
	cmd(250, "Subject: t\r\n\r\nhello\r\n.")
	// The next transaction had no XFORWARD: no queue id of the one before.
	cmd(250, "MAIL FROM:<noreply@a.example>")
	cmd(250, "RCPT TO:<x@dest.example>")
	cmd(354, "DATA")
	cmd(250, "Subject: t\r\n\r\nhello\r\n.")
	cmd(221, "QUIT")

	var delivered []string
	for _, l := range strings.Split(h.logs.String(), "\n") {
		if strings.Contains(l, "msg=delivered") {
			delivered = append(delivered, l)
		}
	}
	if len(delivered) != 2 {
		t.Fatalf("%d delivered lines, want 2:\n%s", len(delivered), h.logs)
	}
	for _, want := range []string{"queue_id=4QAbc+12", "project=a", "sender=noreply@a.example", "outcome=delivered", "upstream_id=", "duration="} {
		if !strings.Contains(delivered[0], want) {
			t.Errorf("the delivered line lacks %s: %s", want, delivered[0])
		}
	}
	if strings.Contains(delivered[1], "queue_id=") {
		t.Errorf("the second transaction got the first one's queue id: %s", delivered[1])
	}
}

func TestXTextDecode(t *testing.T) {
	for in, want := range map[string]string{"abc": "abc", "a+2Bb": "a+b", "+5B+5D": "[]"} {
		if got, ok := xtextDecode(in); !ok || got != want {
			t.Errorf("xtextDecode(%q) = %q, %v; want %q", in, got, ok, want)
		}
	}
	for _, bad := range []string{"a+", "a+2", "a+ZZ"} {
		if _, ok := xtextDecode(bad); ok {
			t.Errorf("xtextDecode(%q) accepted", bad)
		}
	}
}
