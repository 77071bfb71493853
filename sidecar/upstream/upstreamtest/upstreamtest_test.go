package upstreamtest_test

import (
	"encoding/base64"
	"net"
	"net/textproto"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/postern/postern/sidecar/upstream/upstreamtest"
)

func dial(t *testing.T, srv *upstreamtest.Server) *textproto.Conn {
	t.Helper()
	nc, err := net.Dial("tcp", srv.Addr())
	if err != nil {
		t.Fatal(err)
	}
	nc.SetDeadline(time.Now().Add(10 * time.Second))
	c := textproto.NewConn(nc)
	t.Cleanup(func() { c.Close() })
	return c
}

// expect sends line (unless empty) and reads a reply with the code.
func expect(t *testing.T, c *textproto.Conn, line string, code int) string {
	t.Helper()
	if line != "" {
		if err := c.PrintfLine("%s", line); err != nil {
			t.Fatal(err)
		}
	}
	_, msg, err := c.ReadResponse(code)
	if err != nil {
		t.Fatalf("%q: %v", line, err)
	}
	return msg
}

func TestLoginWithoutInitialResponse(t *testing.T) {
	t.Parallel()
	srv := upstreamtest.NewServer(t, upstreamtest.Options{Users: map[string]string{"u@example.com": "pw"}})
	c := dial(t, srv)
	b64 := func(s string) string { return base64.StdEncoding.EncodeToString([]byte(s)) }
	expect(t, c, "", 220)
	expect(t, c, "EHLO client.example", 250)
	expect(t, c, "MAIL FROM:<u@example.com>", 530)
	if msg := expect(t, c, "AUTH LOGIN", 334); msg != b64("Username:") {
		t.Errorf("first challenge %q", msg)
	}
	if msg := expect(t, c, b64("u@example.com"), 334); msg != b64("Password:") {
		t.Errorf("second challenge %q", msg)
	}
	expect(t, c, b64("pw"), 235)
	expect(t, c, "MAIL FROM:<u@example.com>", 250)
	expect(t, c, "RCPT TO:<v@example.org>", 250)
	expect(t, c, "DATA", 354)
	expect(t, c, "Subject: x\r\n\r\nbody\r\n.", 250)
	m := srv.Messages()
	if len(m) != 1 || m[0].User != "u@example.com" || m[0].ConnID != 1 || string(m[0].Data) != "Subject: x\r\n\r\nbody\r\n" {
		t.Errorf("recorded %+v", m)
	}
	if st := srv.Stats(); st.Auths != 1 || st.Messages != 1 || st.Conns != 1 {
		t.Errorf("stats %+v", st)
	}
}

func TestWrongPasswordCounted(t *testing.T) {
	t.Parallel()
	srv := upstreamtest.NewServer(t, upstreamtest.Options{Users: map[string]string{"u@example.com": "pw"}})
	c := dial(t, srv)
	expect(t, c, "", 220)
	expect(t, c, "EHLO client.example", 250)
	expect(t, c, "AUTH PLAIN "+base64.StdEncoding.EncodeToString([]byte("\x00u@example.com\x00nope")), 535)
	if st := srv.Stats(); st.AuthFailures != 1 || st.Auths != 0 {
		t.Errorf("stats %+v", st)
	}
}

func TestStopStart(t *testing.T) {
	t.Parallel()
	srv := upstreamtest.NewServer(t, upstreamtest.Options{})
	port := srv.Port()
	c := dial(t, srv)
	expect(t, c, "", 220)
	srv.Stop()
	if _, err := c.ReadLine(); err == nil {
		t.Error("the connection survived Stop")
	}
	if nc, err := net.Dial("tcp", srv.Addr()); err == nil {
		nc.Close()
		t.Fatal("the stopped server accepted a connection")
	}
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	if srv.Port() != port {
		t.Errorf("port changed from %d to %d", port, srv.Port())
	}
	expect(t, dial(t, srv), "", 220)
	if st := srv.Stats(); st.Conns != 2 || st.Closed != 1 {
		t.Errorf("stats %+v", st)
	}
}

func TestHang(t *testing.T) {
	t.Parallel()
	srv := upstreamtest.NewServer(t, upstreamtest.Options{Hang: true})
	nc, err := net.Dial("tcp", srv.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	if err := srv.Wait(t.Context(), func(s upstreamtest.Stats) bool { return s.Conns == 1 }); err != nil {
		t.Fatal(err)
	}
	nc.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
	if n, err := nc.Read(make([]byte, 1)); n != 0 || err == nil {
		t.Fatalf("the hanging server sent something (%d bytes, %v)", n, err)
	}
	srv.Stop()
	nc.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := nc.Read(make([]byte, 1)); err == nil {
		t.Error("Stop left the hanging connection open")
	}
}

func TestXOAUTH2(t *testing.T) {
	t.Parallel()
	const user = "noreply@client.example"
	good := strings.Repeat("T", 5<<10) // access tokens are several kilobytes
	check := func(u, tok string) bool { return u == user && tok == good }
	response := func(u, tok string) string {
		return base64.StdEncoding.EncodeToString([]byte("user=" + u + "\x01auth=Bearer " + tok + "\x01\x01"))
	}
	cases := []struct {
		name  string
		mech  upstreamtest.Mechanism
		token string
		// replies after the response: codes in order
		codes []int
		text  string // in the last reply
	}{
		{"accepted", upstreamtest.XOAUTH2Mechanism(check), good, []int{235}, ""},
		{"refused google style", upstreamtest.XOAUTH2Mechanism(check), "bad", []int{334, 535}, "5.7.8"},
		{"refused microsoft style", upstreamtest.XOAUTH2{Check: check, Direct: true}.Mechanism(), "bad", []int{535}, "5.7.3"},
		{"custom refusal", upstreamtest.XOAUTH2{Check: check, Refusal: &smtp.SMTPError{
			Code: 535, EnhancedCode: smtp.EnhancedCode{5, 7, 139}, Message: "Authentication unsuccessful, SmtpClientAuthentication is disabled for the Mailbox.",
		}}.Mechanism(), good + "x", []int{535}, "SmtpClientAuthentication is disabled"},
		{"nil check refuses", upstreamtest.XOAUTH2{Direct: true}.Mechanism(), good, []int{535}, "5.7.3"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			srv := upstreamtest.NewServer(t, upstreamtest.Options{Mechanisms: map[string]upstreamtest.Mechanism{"XOAUTH2": tc.mech}})
			c := dial(t, srv)
			expect(t, c, "", 220)
			if msg := expect(t, c, "EHLO client.example", 250); !strings.Contains(msg, "AUTH XOAUTH2") {
				t.Fatalf("EHLO does not offer XOAUTH2: %q", msg)
			}
			expect(t, c, "AUTH XOAUTH2", 334)
			var msg string
			for i, code := range tc.codes {
				line := response(user, tc.token)
				if i > 0 {
					line = "" // the empty answer to the error challenge
				}
				if err := c.PrintfLine("%s", line); err != nil {
					t.Fatal(err)
				}
				var err error
				if _, msg, err = c.ReadResponse(code); err != nil {
					t.Fatalf("reply %d: %v", i+1, err)
				}
			}
			if !strings.Contains(msg, tc.text) {
				t.Errorf("last reply %q does not say %q", msg, tc.text)
			}
			st := srv.Stats()
			if ok := tc.codes[len(tc.codes)-1] == 235; ok {
				if st.Auths != 1 {
					t.Errorf("stats %+v", st)
				}
				expect(t, c, "MAIL FROM:<"+user+">", 250)
				expect(t, c, "RCPT TO:<v@example.org>", 250)
				expect(t, c, "DATA", 354)
				expect(t, c, "Subject: x\r\n\r\nbody\r\n.", 250)
				if m := srv.Messages(); len(m) != 1 || m[0].User != user {
					t.Errorf("recorded %+v", m)
				}
			} else if st.AuthFailures != 1 || st.Auths != 0 {
				t.Errorf("stats %+v", st)
			}
		})
	}
}
