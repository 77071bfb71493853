package upstream_test

import (
	"bufio"
	"bytes"
	"encoding/base64"
	"errors"
	"io"
	"net"
	"net/textproto"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"

	"github.com/postern/postern/sidecar/project"
	"github.com/postern/postern/sidecar/secret"
	"github.com/postern/postern/sidecar/upstream"
	"github.com/postern/postern/sidecar/upstream/upstreamtest"
	"github.com/postern/postern/sidecar/xoauth2"
)

// recorder sits between Postern and a plain-text upstream on loopback and keeps what the client
// wrote on each connection, so a test can read the session's dialogue line by line.
type recorder struct {
	ln   net.Listener
	dest string

	mu    sync.Mutex
	conns []*bytes.Buffer
	wg    sync.WaitGroup
}

func startRecorder(t *testing.T, srv *upstreamtest.Server) *recorder {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	r := &recorder{ln: ln, dest: srv.Addr()}
	go r.serve()
	t.Cleanup(func() {
		ln.Close()
		r.wg.Wait()
	})
	return r
}

func (r *recorder) serve() {
	for {
		c, err := r.ln.Accept()
		if err != nil {
			return
		}
		up, err := net.Dial("tcp", r.dest)
		if err != nil {
			c.Close()
			continue
		}
		buf := &bytes.Buffer{}
		r.mu.Lock()
		r.conns = append(r.conns, buf)
		r.mu.Unlock()
		r.wg.Add(2)
		go func() {
			defer r.wg.Done()
			io.Copy(c, up)
			c.Close()
		}()
		go func() {
			defer r.wg.Done()
			io.Copy(io.MultiWriter(up, lockedWriter{&r.mu, buf}), c)
			up.Close()
		}()
	}
}

type lockedWriter struct {
	mu *sync.Mutex
	w  io.Writer
}

func (l lockedWriter) Write(b []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(b)
}

// project describes the upstream behind the recorder.
func (r *recorder) project(name string) project.Project {
	port := r.ln.Addr().(*net.TCPAddr).Port
	return project.Project{Name: name, Enabled: true, Senders: []string{from},
		Upstream: project.Upstream{Host: "127.0.0.1", Port: port, TLS: project.TLSNone}}
}

// lines returns what the client wrote on its i-th connection (from 0), one entry per line,
// waiting for the connection to be closed by both sides first.
func (r *recorder) lines(t *testing.T, i int) []string {
	t.Helper()
	r.ln.Close()
	r.wg.Wait()
	r.mu.Lock()
	defer r.mu.Unlock()
	if i >= len(r.conns) {
		t.Fatalf("connection %d of %d", i, len(r.conns))
	}
	var out []string
	sc := bufio.NewScanner(bytes.NewReader(r.conns[i].Bytes()))
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		out = append(out, sc.Text())
	}
	return out
}

var verbs = []string{"EHLO", "HELO", "STARTTLS", "NOOP", "RSET", "QUIT"}

// verbsOf keeps the verbs of a dialogue's command lines (AUTH with its mechanism), dropping
// the message bodies between DATA and the final dot and the lines of the AUTH exchange.
func verbsOf(lines []string) []string {
	var out []string
	inData := false
	for _, l := range lines {
		switch {
		case inData:
			inData = l != "."
		case l == "DATA":
			inData = true
			out = append(out, l)
		case strings.HasPrefix(l, "AUTH "):
			f := strings.Fields(l)
			out = append(out, f[0]+" "+f[1])
		case strings.HasPrefix(l, "MAIL FROM:"), strings.HasPrefix(l, "RCPT TO:"):
			out = append(out, l[:4])
		default:
			if f := strings.Fields(l); len(f) > 0 && slices.Contains(verbs, f[0]) {
				out = append(out, f[0])
			}
		}
	}
	return out
}

// The session as the upstream hears it: one greeting read, EHLO once, AUTH, transactions, RSET
// only after a transaction left open and then nothing else before the next MAIL, QUIT at close.
func TestSessionDialogue(t *testing.T) {
	t.Parallel()
	srv := upstreamtest.NewServer(t, upstreamtest.Options{
		Users: users(),
		RejectRcpt: func(to string) *smtp.SMTPError {
			if strings.HasPrefix(to, "nobody@") {
				return &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 1, 1}, Message: "no such user"}
			}
			return nil
		},
		RejectData: func(m upstreamtest.Message) *smtp.SMTPError {
			if strings.Contains(string(m.Data), "refuse me") {
				return &smtp.SMTPError{Code: 554, EnhancedCode: smtp.EnhancedCode{5, 7, 1}, Message: "refused"}
			}
			return nil
		},
	})
	rec := startRecorder(t, srv)
	pools, _ := newPools(t, upstream.Options{})
	p := rec.project("client-a")
	ctx := ctxFor(t)

	deliver(t, pools, p, basic("PLAIN"))
	// A transaction left open (its only recipient refused): RSET at release, then the next MAIL.
	c, err := pools.Acquire(ctx, p, basic("PLAIN"))
	if err != nil {
		t.Fatal(err)
	}
	if err := send(ctx, c, []string{"nobody@elsewhere.example"}, body); err == nil {
		t.Fatal("the refused recipient went through")
	}
	c.Release()
	// A message refused at the final dot ends its transaction: no RSET.
	c, err = pools.Acquire(ctx, p, basic("PLAIN"))
	if err != nil {
		t.Fatal(err)
	}
	if err := send(ctx, c, []string{to}, "Subject: x\r\n\r\nrefuse me\r\n"); asError(t, err).Code != 554 {
		t.Fatalf("got %v, want the 554", err)
	}
	c.Release()
	deliver(t, pools, p, basic("PLAIN"))
	pools.Close()

	got := verbsOf(rec.lines(t, 0))
	want := []string{
		"EHLO", "AUTH PLAIN",
		"MAIL", "RCPT", "DATA",
		"MAIL", "RCPT", "RSET",
		"MAIL", "RCPT", "DATA",
		"MAIL", "RCPT", "DATA",
		"QUIT",
	}
	if !slices.Equal(got, want) {
		t.Errorf("the upstream heard\n%q\nwant\n%q", got, want)
	}
	if st := srv.Stats(); st.Conns != 1 || st.Messages != 2 {
		t.Errorf("upstream saw %+v, want 1 connection and 2 messages", st)
	}
}

// A connection an error left in an unknown state refuses further use and never goes back to the
// pool: the next message opens a fresh connection.
func TestBrokenConnectionNeverReused(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name  string
		reply *smtp.SMTPError // the upstream's answer to RCPT
	}{
		{"421 on RCPT", &smtp.SMTPError{Code: 421, EnhancedCode: smtp.EnhancedCode{4, 4, 2}, Message: "closing"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			srv := upstreamtest.NewServer(t, upstreamtest.Options{
				TLS: project.TLSStartTLS, Users: users(),
				RejectRcpt: func(to string) *smtp.SMTPError {
					if strings.HasPrefix(to, "break@") {
						return tc.reply
					}
					return nil
				},
			})
			pools, _ := newPools(t, upstream.Options{})
			p := proj("client-a", srv)
			ctx := ctxFor(t)
			c, err := pools.Acquire(ctx, p, basic(""))
			if err != nil {
				t.Fatal(err)
			}
			if err := send(ctx, c, []string{"break@elsewhere.example"}, body); asError(t, err).Code != tc.reply.Code {
				t.Fatalf("got %v, want the upstream's %d", err, tc.reply.Code)
			}
			err = send(ctx, c, []string{to}, body)
			if e := asError(t, err); e.Code != 0 || !strings.Contains(e.Message, "broken") || !e.Temporary() {
				t.Errorf("a broken connection sent on: %v", err)
			}
			c.Release()
			waitServer(t, srv, func(s upstreamtest.Stats) bool { return s.Closed == 1 })
			deliver(t, pools, p, basic(""))
			if st := srv.Stats(); st.Conns != 2 || st.Messages != 1 {
				t.Errorf("upstream saw %+v, want the message on a second connection", st)
			}
			if s := poolStats(t, pools, "client-a"); s.Open != 1 || s.Idle != 1 {
				t.Errorf("pool stats %+v, want only the new connection", s)
			}
		})
	}
}

// RFC 4954: an initial response that would take the AUTH line over 512 octets is sent as the
// answer to the server's empty 334 challenge instead, whatever the mechanism.
func TestLongInitialResponse(t *testing.T) {
	t.Parallel()
	long := strings.Repeat("p", 600)
	srv := upstreamtest.NewServer(t, upstreamtest.Options{Users: map[string]string{user: long}})
	rec := startRecorder(t, srv)
	pools, _ := newPools(t, upstream.Options{})
	deliver(t, pools, rec.project("client-a"), upstream.Auth{Mechanism: "PLAIN", Username: user, Secret: secret.New(long)})
	pools.Close()

	lines := rec.lines(t, 0)
	i := slices.IndexFunc(lines, func(l string) bool { return strings.HasPrefix(l, "AUTH ") })
	if i < 0 || lines[i] != "AUTH PLAIN" {
		t.Fatalf("AUTH line %.40q..., want AUTH PLAIN without an initial response", lines[max(i, 0)])
	}
	if want := base64.StdEncoding.EncodeToString([]byte("\x00" + user + "\x00" + long)); lines[i+1] != want {
		t.Errorf("the line after AUTH is not the response")
	}
	for _, l := range lines {
		if len(l)+2 > 512 && !strings.HasPrefix(lines[i+1], l) {
			t.Errorf("a command line of %d octets: %.40q", len(l)+2, l)
		}
	}
}

// XOAUTH2 through the session against the fake's Gmail- and Exchange-like servers: a token of
// several kilobytes goes after an empty 334 challenge, never on the AUTH line; Gmail's error
// challenge is answered with an empty line, which brings its 535, and nothing follows it.
func TestXOAUTH2(t *testing.T) {
	t.Parallel()
	good := strings.Repeat("G", 6<<10) // Exchange Online's tokens are about this long
	cases := []struct {
		name       string
		token      string
		direct     bool
		wantCode   int // 0: signed in
		wantEnh    smtp.EnhancedCode
		wantOnLine bool // the response goes on the AUTH line
	}{
		{"long token accepted", good, false, 0, smtp.EnhancedCode{}, false},
		{"short token on the AUTH line", "short", false, 535, smtp.EnhancedCode{5, 7, 8}, true},
		{"long token refused gmail style", strings.Repeat("B", 6<<10), false, 535, smtp.EnhancedCode{5, 7, 8}, false},
		{"long token refused exchange style", strings.Repeat("B", 6<<10), true, 535, smtp.EnhancedCode{5, 7, 3}, false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			srv := upstreamtest.NewServer(t, upstreamtest.Options{Mechanisms: map[string]upstreamtest.Mechanism{
				xoauth2.Mechanism: upstreamtest.XOAUTH2{
					Check:  func(u, tok string) bool { return u == user && tok == good },
					Direct: tc.direct,
				}.Mechanism(),
			}})
			rec := startRecorder(t, srv)
			pools, logs := newPools(t, upstream.Options{Trace: true})
			tok := secret.New(tc.token)
			auth := upstream.Auth{Mechanism: xoauth2.Mechanism, Username: user,
				SASL: func() sasl.Client { return xoauth2.NewClient(user, tok) }}
			p := rec.project("client-a")
			if tc.wantCode == 0 {
				deliver(t, pools, p, auth)
				if m := srv.Messages(); len(m) != 1 || m[0].User != user {
					t.Errorf("upstream got %+v", m)
				}
			} else {
				_, err := pools.Acquire(ctxFor(t), p, auth)
				e := asError(t, err)
				if e.Stage != upstream.StageAuth || e.Code != tc.wantCode || e.Enhanced != tc.wantEnh || !e.AuthFailed() || !e.Temporary() {
					t.Errorf("got %v, want a temporary auth failure %d %v", err, tc.wantCode, tc.wantEnh)
				}
			}
			pools.Close()
			if strings.Contains(logs.String(), tc.token) {
				t.Errorf("the trace holds the token")
			}

			lines := rec.lines(t, 0)
			resp := base64.StdEncoding.EncodeToString(xoauth2.Response(user, tok))
			i := slices.IndexFunc(lines, func(l string) bool { return strings.HasPrefix(l, "AUTH ") })
			if i < 0 {
				t.Fatalf("no AUTH line in %q", verbsOf(lines))
			}
			j := i // the line with the response
			if tc.wantOnLine {
				if lines[i] != "AUTH XOAUTH2 "+resp {
					t.Fatalf("AUTH line %.40q, want the response on it", lines[i])
				}
			} else {
				if lines[i] != "AUTH XOAUTH2" {
					t.Fatalf("AUTH line %.40q..., want AUTH XOAUTH2 alone", lines[i])
				}
				if j = i + 1; j >= len(lines) || lines[j] != resp {
					t.Fatal("the line after AUTH XOAUTH2 is not the response")
				}
			}
			rest := lines[j+1:]
			switch {
			case tc.wantCode == 0:
				if len(rest) == 0 || !strings.HasPrefix(rest[0], "MAIL FROM:") {
					t.Errorf("after signing in: %q", rest)
				}
			case tc.direct:
				if len(rest) != 0 {
					t.Errorf("after the 535 the client wrote %q, want nothing", rest)
				}
			default:
				// Gmail's error challenge gets an empty line, which brings the 535; nothing more.
				if !slices.Equal(rest, []string{""}) {
					t.Errorf("after the response the client wrote %q, want one empty line", rest)
				}
			}
			if st := srv.Stats(); tc.wantCode != 0 && (st.AuthFailures != 1 || st.Auths != 0) {
				t.Errorf("upstream saw %+v", st)
			}
		})
	}
}

// A SASL client that fails mid-exchange cancels it with "*" (RFC 4954), and the connection is not
// used further.
func TestAuthCancelled(t *testing.T) {
	t.Parallel()
	srv := upstreamtest.NewServer(t, upstreamtest.Options{Users: users()})
	rec := startRecorder(t, srv)
	pools, _ := newPools(t, upstream.Options{})
	failing := errors.New("no answer to that")
	auth := upstream.Auth{Mechanism: "LOGIN", Username: user, SASL: func() sasl.Client {
		return failingClient{err: failing}
	}}
	_, err := pools.Acquire(ctxFor(t), rec.project("client-a"), auth)
	if e := asError(t, err); e.Stage != upstream.StageAuth || e.Code != 0 || !errors.Is(err, failing) || !e.Temporary() {
		t.Errorf("got %v, want a temporary auth error wrapping the client's", err)
	}
	pools.Close()
	lines := rec.lines(t, 0)
	if n := len(lines); n < 2 || lines[n-2] != "AUTH LOGIN" || lines[n-1] != "*" {
		t.Errorf("the client wrote %q, want AUTH LOGIN, then * after the challenge", lines)
	}
}

// failingClient starts LOGIN without an initial response and fails at the first challenge.
type failingClient struct{ err error }

func (f failingClient) Start() (string, []byte, error) { return sasl.Login, nil, nil }
func (f failingClient) Next([]byte) ([]byte, error)    { return nil, f.err }

// An upstream that does not know EHLO (502) is greeted with HELO, offers no extension, and takes
// the message one command at a time with MAIL FROM bare of parameters.
func TestHELOFallback(t *testing.T) {
	t.Parallel()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	heard := make(chan []string, 1)
	go func() {
		var lines []string
		defer func() { heard <- lines }()
		nc, err := ln.Accept()
		if err != nil {
			return
		}
		defer nc.Close()
		nc.SetDeadline(time.Now().Add(10 * time.Second))
		tp := textproto.NewConn(nc)
		tp.PrintfLine("220 old.example SMTP")
		for {
			line, err := tp.ReadLine()
			if err != nil {
				return
			}
			lines = append(lines, line)
			switch verb := strings.ToUpper(strings.Fields(line + " x")[0]); verb {
			case "EHLO":
				tp.PrintfLine("502 5.5.1 unknown command")
			case "HELO", "MAIL", "RCPT":
				tp.PrintfLine("250 ok")
			case "DATA":
				tp.PrintfLine("354 go ahead")
				if _, err := tp.ReadDotBytes(); err != nil {
					return
				}
				tp.PrintfLine("250 queued")
			case "QUIT":
				tp.PrintfLine("221 bye")
				return
			default:
				tp.PrintfLine("500 what")
			}
		}
	}()
	t.Cleanup(func() { ln.Close() })
	port := ln.Addr().(*net.TCPAddr).Port
	p := project.Project{Name: "old", Enabled: true, Senders: []string{from},
		Upstream: project.Upstream{Host: "127.0.0.1", Port: port, TLS: project.TLSNone}}
	pools, _ := newPools(t, upstream.Options{LocalName: "postern.test"})
	deliver(t, pools, p, upstream.Auth{})
	pools.Close()
	want := []string{"EHLO postern.test", "HELO postern.test", "MAIL FROM:<" + from + ">", "RCPT TO:<" + to + ">", "DATA", "QUIT"}
	if got := <-heard; !slices.Equal(got, want) {
		t.Errorf("the upstream heard %q, want %q", got, want)
	}
}
