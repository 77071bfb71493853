package xoauth2_test

import (
	"bufio"
	"bytes"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"

	"github.com/postern/postern/sidecar/secret"
	"github.com/postern/postern/sidecar/xoauth2"
	"github.com/postern/postern/sidecar/xoauth2/xoauth2test"
)

func TestStart(t *testing.T) {
	t.Parallel()
	short := secret.New("tok")
	long := secret.New(strings.Repeat("a", 600))
	want := []byte("user=me@example.com\x01auth=Bearer tok\x01\x01")
	tests := []struct {
		name   string
		mode   xoauth2.Mode
		token  secret.Secret
		wantIR bool
	}{
		{"auto short token goes on the AUTH line", xoauth2.Auto, short, true},
		{"auto long token waits for 334", xoauth2.Auto, long, false},
		{"no initial response", xoauth2.NoInitialResponse, short, false},
		{"forced initial response", xoauth2.InitialResponse, long, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			c := xoauth2.NewClientMode("me@example.com", tc.token, tc.mode)
			mech, ir, err := c.Start()
			if err != nil || mech != "XOAUTH2" {
				t.Fatalf("Start = %q, _, %v", mech, err)
			}
			if got := ir != nil; got != tc.wantIR {
				t.Fatalf("initial response present = %v, want %v", got, tc.wantIR)
			}
			if tc.token.Equal(short) && tc.wantIR && !bytes.Equal(ir, want) {
				t.Fatalf("ir = %q, want %q", ir, want)
			}
			if !tc.wantIR {
				resp, err := c.Next([]byte{})
				if err != nil {
					t.Fatal(err)
				}
				if !bytes.Equal(resp, xoauth2.Response("me@example.com", tc.token)) {
					t.Fatalf("response to the empty challenge is not the XOAUTH2 response")
				}
			}
			if c.Err() != nil {
				t.Fatalf("Err = %v before any error challenge", c.Err())
			}
		})
	}
}

func TestAutoLimit(t *testing.T) {
	t.Parallel()
	// The largest token whose AUTH line is exactly 512 octets goes on the line; one more octet doesn't.
	prefix := len("user=u\x01auth=Bearer \x01\x01")
	for n := 300; n < 400; n++ {
		tok := secret.New(strings.Repeat("x", n))
		_, ir, _ := xoauth2.NewClient("u", tok).Start()
		line := len("AUTH XOAUTH2 ") + base64.StdEncoding.EncodedLen(prefix+n) + 2
		if got, want := ir != nil, line <= 512; got != want {
			t.Fatalf("token of %d octets (line %d): initial response %v, want %v", n, line, got, want)
		}
	}
}

func TestStartRefuses(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name, user string
		token      secret.Secret
	}{
		{"empty token", "u@example.com", secret.Secret{}},
		{"control character in user", "u\x01@example.com", secret.New("t")},
		{"newline in user", "u\r\n@example.com", secret.New("t")},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			if _, _, err := xoauth2.NewClient(tc.user, tc.token).Start(); err == nil {
				t.Fatal("Start accepted it")
			}
		})
	}
}

func TestErrorChallenge(t *testing.T) {
	t.Parallel()
	c := xoauth2.NewClientMode("u@example.com", secret.New("t"), xoauth2.NoInitialResponse)
	if _, ir, _ := c.Start(); ir != nil {
		t.Fatal("initial response sent")
	}
	if _, err := c.Next(nil); err != nil {
		t.Fatal(err)
	}
	resp, err := c.Next([]byte(`{"status":"401","schemes":"bearer","scope":"https://mail.google.com/"}`))
	if err != nil {
		t.Fatal(err)
	}
	if resp == nil || len(resp) != 0 {
		t.Fatalf("answer to the error challenge = %#v, want a non-nil empty response", resp)
	}
	var ce *xoauth2.ChallengeError
	if !errors.As(c.Err(), &ce) {
		t.Fatalf("Err = %v, want a *ChallengeError", c.Err())
	}
	want := xoauth2.ChallengeError{Status: "401", Schemes: "bearer", Scope: "https://mail.google.com/"}
	if *ce != want {
		t.Fatalf("challenge = %+v, want %+v", *ce, want)
	}
	if _, err := c.Next([]byte("again")); !errors.Is(err, sasl.ErrUnexpectedServerChallenge) {
		t.Fatalf("third challenge: err = %v", err)
	}
}

func TestParseChallenge(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		in   string
		want xoauth2.ChallengeError
	}{
		{"google", `{"status":"401","schemes":"bearer","scope":"https://mail.google.com/"}`,
			xoauth2.ChallengeError{Status: "401", Schemes: "bearer", Scope: "https://mail.google.com/"}},
		{"numeric status", `{"status":401,"schemes":"Bearer"}`, xoauth2.ChallengeError{Status: "401", Schemes: "Bearer"}},
		{"400", `{"status":"400","schemes":"Bearer","scope":"https://outlook.office.com/SMTP.Send"}`,
			xoauth2.ChallengeError{Status: "400", Schemes: "Bearer", Scope: "https://outlook.office.com/SMTP.Send"}},
		{"unknown fields ignored", `{"status":"401","extra":[1,2]}`, xoauth2.ChallengeError{Status: "401"}},
		{"not json", "go away", xoauth2.ChallengeError{Raw: "go away"}},
		{"empty", "", xoauth2.ChallengeError{}},
		{"json without fields", `{}`, xoauth2.ChallengeError{Raw: "{}"}},
		{"status of the wrong type", `{"status":{"a":1}}`, xoauth2.ChallengeError{Raw: `{"status":{"a":1}}`}},
		{"control characters", "bad\x00\r\nthing", xoauth2.ChallengeError{Raw: "bad???thing"}},
		{"long", strings.Repeat("z", 300), xoauth2.ChallengeError{Raw: strings.Repeat("z", 200) + "..."}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			got := xoauth2.ParseChallenge([]byte(tc.in))
			if *got != tc.want {
				t.Fatalf("ParseChallenge(%q) = %+v, want %+v", tc.in, *got, tc.want)
			}
			if got.Error() == "" {
				t.Fatal("empty error text")
			}
		})
	}
}

func FuzzParseChallenge(f *testing.F) {
	f.Add([]byte(`{"status":"401","schemes":"bearer","scope":"https://mail.google.com/"}`))
	f.Add([]byte(`{"status":401}`))
	f.Add([]byte("\xff\xfe"))
	f.Add([]byte(`{"status":null,"scope":"\u0000"}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		e := xoauth2.ParseChallenge(b)
		if e == nil {
			t.Fatal("nil")
		}
		msg := e.Error()
		if strings.ContainsAny(msg, "\r\n\x00") {
			t.Fatalf("error text %q has control characters", msg)
		}
		if len(e.Raw) > 4*200+3 {
			t.Fatalf("Raw not bounded: %d octets", len(e.Raw))
		}
	})
}

// upstream is a go-smtp server on loopback that offers XOAUTH2 through xoauth2test.
type upstream struct {
	addr string
	opts xoauth2test.Options
}

type backend struct{ opts xoauth2test.Options }

func (b *backend) NewSession(*smtp.Conn) (smtp.Session, error) { return &session{opts: b.opts}, nil }

type session struct{ opts xoauth2test.Options }

func (s *session) AuthMechanisms() []string { return []string{xoauth2.Mechanism} }
func (s *session) Auth(mech string) (sasl.Server, error) {
	if mech != xoauth2.Mechanism {
		return nil, errors.New("unsupported mechanism")
	}
	return xoauth2test.NewServer(s.opts), nil
}
func (s *session) Mail(string, *smtp.MailOptions) error { return nil }
func (s *session) Rcpt(string, *smtp.RcptOptions) error { return nil }
func (s *session) Data(r io.Reader) error               { _, err := io.Copy(io.Discard, r); return err }
func (s *session) Reset()                               {}
func (s *session) Logout() error                        { return nil }

var _ smtp.AuthSession = (*session)(nil)

func startUpstream(t *testing.T, opts xoauth2test.Options) *upstream {
	t.Helper()
	s := smtp.NewServer(&backend{opts: opts})
	s.Domain = "upstream.test"
	s.AllowInsecureAuth = true
	s.MaxLineLength = 16 << 10
	s.ReadTimeout = 10 * time.Second
	s.WriteTimeout = 10 * time.Second
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go s.Serve(l)
	t.Cleanup(func() { s.Close() })
	return &upstream{addr: l.Addr().String(), opts: opts}
}

// recordingConn keeps what the client wrote, line by line.
type recordingConn struct {
	net.Conn
	mu    sync.Mutex
	wrote bytes.Buffer
	read  bytes.Buffer
}

func (c *recordingConn) Write(b []byte) (int, error) {
	c.mu.Lock()
	c.wrote.Write(b)
	c.mu.Unlock()
	return c.Conn.Write(b)
}

func (c *recordingConn) Read(b []byte) (int, error) {
	n, err := c.Conn.Read(b)
	c.mu.Lock()
	c.read.Write(b[:n])
	c.mu.Unlock()
	return n, err
}

func (c *recordingConn) lines(buf *bytes.Buffer) []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []string
	sc := bufio.NewScanner(bytes.NewReader(buf.Bytes()))
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		out = append(out, sc.Text())
	}
	return out
}

func dial(t *testing.T, addr string) (*smtp.Client, *recordingConn) {
	t.Helper()
	nc, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	rc := &recordingConn{Conn: nc}
	c := smtp.NewClient(rc)
	t.Cleanup(func() { c.Close() })
	if err := c.Hello("client.test"); err != nil {
		t.Fatal(err)
	}
	return c, rc
}

func TestLoopback(t *testing.T) {
	t.Parallel()
	const user = "noreply@client.example"
	good := strings.Repeat("G", 6<<10) // a 6 KB token, like Exchange Online's
	check := func(u, tok string) bool { return u == user && tok == good }

	tests := []struct {
		name     string
		direct   bool
		token    string
		mode     xoauth2.Mode
		wantCode int // 0: success
		wantChal bool
	}{
		{"6 KB token accepted", false, good, xoauth2.Auto, 0, false},
		{"short token on the AUTH line refused google style", false, "short", xoauth2.Auto, 535, true},
		{"6 KB token refused google style", false, strings.Repeat("B", 6<<10), xoauth2.Auto, 535, true},
		{"6 KB token refused microsoft style", true, strings.Repeat("B", 6<<10), xoauth2.Auto, 535, false},
		{"short token without initial response", false, "short", xoauth2.NoInitialResponse, 535, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			var seenUser, seenToken string
			u := startUpstream(t, xoauth2test.Options{
				Check:  check,
				Direct: tc.direct,
				Seen:   func(u, tok string) { seenUser, seenToken = u, tok },
			})
			c, rc := dial(t, u.addr)
			xc := xoauth2.NewClientMode(user, secret.New(tc.token), tc.mode)
			err := c.Auth(xc)

			if seenUser != user || seenToken != tc.token {
				t.Fatalf("server saw user %q and a token of %d octets, want %q and %d", seenUser, len(seenToken), user, len(tc.token))
			}
			if tc.wantCode == 0 {
				if err != nil {
					t.Fatalf("Auth: %v", err)
				}
			} else {
				var se *smtp.SMTPError
				if !errors.As(err, &se) || se.Code != tc.wantCode {
					t.Fatalf("Auth error = %v, want SMTP %d", err, tc.wantCode)
				}
			}
			if got := xc.Challenge() != nil; got != tc.wantChal {
				t.Fatalf("challenge kept = %v, want %v", got, tc.wantChal)
			}
			if tc.wantChal {
				if ch := xc.Challenge(); ch.Status != "401" || ch.Schemes != "bearer" || ch.Scope != "https://mail.google.com/" {
					t.Fatalf("challenge = %+v", *ch)
				}
			}

			// The wire: the AUTH line, then (without an initial response) the response after "334 ".
			wrote := rc.lines(&rc.wrote)
			read := rc.lines(&rc.read)
			resp := base64.StdEncoding.EncodeToString(xoauth2.Response(user, secret.New(tc.token)))
			i := indexPrefix(wrote, "AUTH ")
			if i < 0 {
				t.Fatalf("no AUTH line in %q", wrote)
			}
			if len(tc.token) > 300 || tc.mode == xoauth2.NoInitialResponse {
				if wrote[i] != "AUTH XOAUTH2" {
					t.Fatalf("AUTH line = %q, want %q", wrote[i], "AUTH XOAUTH2")
				}
				if i+1 >= len(wrote) || wrote[i+1] != resp {
					t.Fatal("the line after AUTH is not the base64 response")
				}
				if j := indexPrefix(read, "334"); j < 0 || read[j] != "334 " {
					t.Fatalf("server's first 334 = %q, want an empty challenge", read)
				}
				if len(wrote[i]) > 510 {
					t.Fatal("AUTH line too long")
				}
			} else if wrote[i] != "AUTH XOAUTH2 "+resp {
				t.Fatalf("AUTH line = %q, want the initial response on it", wrote[i])
			}
			if tc.wantChal {
				// go-smtp v0.25.1 follows any final failure during AUTH with a stray "*" line, so the
				// empty answer is the line before the last.
				j := indexPrefix(wrote, resp)
				if strings.HasPrefix(wrote[i], "AUTH XOAUTH2 ") {
					j = i
				}
				if j+1 >= len(wrote) || wrote[j+1] != "" {
					t.Fatalf("answer to the error challenge = %q, want an empty line", wrote[j+1:])
				}
			}
		})
	}
}

func indexPrefix(lines []string, p string) int {
	for i, l := range lines {
		if strings.HasPrefix(l, p) {
			return i
		}
	}
	return -1
}

func TestParseResponse(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name      string
		in        string
		user, tok string
		ok        bool
	}{
		{"good", "user=a@b.c\x01auth=Bearer xyz\x01\x01", "a@b.c", "xyz", true},
		{"no terminator", "user=a@b.c\x01auth=Bearer xyz", "", "", false},
		{"not bearer", "user=a@b.c\x01auth=Basic xyz\x01\x01", "", "", false},
		{"missing user", "auth=Bearer xyz\x01\x01", "", "", false},
		{"unknown field", "user=a\x01host=x\x01auth=Bearer t\x01\x01", "", "", false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			u, tok, err := xoauth2test.ParseResponse([]byte(tc.in))
			if (err == nil) != tc.ok || u != tc.user || tok != tc.tok {
				t.Fatalf("ParseResponse = %q, %q, %v", u, tok, err)
			}
		})
	}
}

func ExampleClient() {
	c := xoauth2.NewClient("noreply@client.example", secret.New("ya29.a0Af..."))
	mech, ir, _ := c.Start()
	fmt.Println(mech, ir != nil)
	// Output: XOAUTH2 true
}
