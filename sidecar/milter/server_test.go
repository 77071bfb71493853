package milter_test

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	gomilter "github.com/emersion/go-milter"

	"github.com/postern/postern/sidecar/milter"
	"github.com/postern/postern/sidecar/project"
	"github.com/postern/postern/sidecar/secret"
)

var (
	errNoProject   = errors.New("no project for this sender")
	errUnavailable = errors.New("directory unavailable")
)

// fakeDirectory resolves senders the way the real directory does: exact address first, then @domain.
// A few domains misbehave on purpose.
type fakeDirectory struct {
	projects []project.Project

	mu    sync.Mutex
	calls map[string]int
}

func (d *fakeDirectory) Resolve(ctx context.Context, sender string) (project.Project, error) {
	d.mu.Lock()
	d.calls[sender]++
	d.mu.Unlock()
	at := strings.LastIndexByte(sender, '@')
	domain := strings.ToLower(sender[at+1:])
	switch domain {
	case "down.example":
		return project.Project{}, fmt.Errorf("reading projects: %w", errUnavailable)
	case "broken.example":
		return project.Project{}, errors.New("decoding project record: unexpected end of JSON input")
	case "slow.example":
		<-ctx.Done()
		return project.Project{}, fmt.Errorf("reading projects: %w", ctx.Err())
	}
	for _, exact := range []bool{true, false} {
		for _, p := range d.projects {
			for _, s := range p.Senders {
				if exact && strings.EqualFold(s, sender) || !exact && strings.EqualFold(s, "@"+domain) {
					return p, nil
				}
			}
		}
	}
	return project.Project{}, fmt.Errorf("sender %s: %w", sender, errNoProject)
}

func (d *fakeDirectory) ServesDomain(domain string) bool {
	switch domain {
	case "down.example", "broken.example", "slow.example":
		return true
	}
	for _, p := range d.projects {
		for _, s := range p.Senders {
			if strings.HasSuffix(strings.ToLower(s), "@"+domain) {
				return true
			}
		}
	}
	return false
}

func (d *fakeDirectory) callsFor(sender string) int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.calls[sender]
}

// reauthNeeded marks the named projects as needing re-authorisation.
func reauthNeeded(names ...string) milter.CredentialStateFunc {
	return func(p project.Project) (project.TokenState, string) {
		if slices.Contains(names, p.Name) {
			return project.TokenNeedsReauth, "AADSTS700082: The refresh token has expired due to inactivity."
		}
		return project.TokenOK, ""
	}
}

func testProjects() []project.Project {
	up := func(host string) project.Upstream {
		return project.Upstream{Host: host, Port: 587, TLS: project.TLSStartTLS}
	}
	return []project.Project{
		{
			Name: "client-a", Enabled: true,
			Senders:  []string{"noreply@client-a.example", "@mail.client-a.example"},
			SendAs:   []string{"noreply@client-a.example", "news@client-a.example"},
			Upstream: up("smtp.office365.com"),
			Auth:     project.Auth{Type: project.AuthBasic, Username: "noreply@client-a.example", Password: secret.New("hunter2-secret")},
		},
		{Name: "client-b", Enabled: false, Senders: []string{"@client-b.example"}, Upstream: up("smtp.office365.com")},
		{Name: "client-c", Enabled: true, Senders: []string{"@client-c.example"}, Upstream: up("smtp.office365.com")},
		{
			Name: "client-d", Enabled: true, Senders: []string{"@client-d.example"}, Upstream: up("mail.client-d.example"),
			Limits: project.Limits{MaxRecipients: 2, MaxMessageBytes: 1000},
		},
		{Name: "client-g", Enabled: true, Senders: []string{"@client-g.example"}, Upstream: up("smtp.gmail.com")},
		{Name: "client-n", Enabled: true, Senders: []string{"@client-n.example"}, Upstream: up("mail.client-n.example")},
		{
			Name: "client-l", Enabled: true, Senders: []string{"@client-l.example"},
			SendAs:   []string{"a@client-l.example", "b@client-l.example", "c@client-l.example", "d@client-l.example", "e@client-l.example", "f@client-l.example", "@g.client-l.example"},
			Upstream: up("mail.client-l.example"),
		},
	}
}

// syncBuffer is a log destination safe to read while sessions write.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

type testServer struct {
	dir     *fakeDirectory
	logs    *syncBuffer
	network string
	addr    string
	cancel  context.CancelFunc
	served  chan error
}

// start runs a milter server over network ("unix" in t.TempDir(), or "tcp" on loopback).
func start(t *testing.T, network string, mutate func(*milter.Options)) *testServer {
	t.Helper()
	ts := &testServer{
		dir:     &fakeDirectory{projects: testProjects(), calls: map[string]int{}},
		logs:    &syncBuffer{},
		network: network,
		served:  make(chan error, 1),
	}
	opts := milter.Options{
		Resolver:      ts.dir,
		Domains:       ts.dir,
		Credentials:   reauthNeeded("client-c"),
		IsNoProject:   func(err error) bool { return errors.Is(err, errNoProject) },
		IsUnavailable: func(err error) bool { return errors.Is(err, errUnavailable) },
		Logger:        slog.New(slog.NewJSONHandler(ts.logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
		LookupTimeout: 200 * time.Millisecond,
	}
	if mutate != nil {
		mutate(&opts)
	}
	srv, err := milter.New(opts)
	if err != nil {
		t.Fatal(err)
	}
	var ln net.Listener
	switch network {
	case "unix":
		ln, err = net.Listen("unix", filepath.Join(t.TempDir(), "m.sock"))
	case "tcp":
		ln, err = net.Listen("tcp", "127.0.0.1:0")
	}
	if err != nil {
		t.Fatal(err)
	}
	ts.addr = ln.Addr().String()
	ctx, cancel := context.WithCancel(context.Background())
	ts.cancel = cancel
	go func() { ts.served <- srv.Serve(ctx, ln) }()
	t.Cleanup(func() {
		cancel()
		if err := <-ts.served; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	return ts
}

// v2Client negotiates the way Postfix's masks allow a protocol-2 milter: actions and protocol bits
// that exist in version 2 only (go-milter's default client offers version 6 actions and fails).
func (ts *testServer) v2Client() *gomilter.Client {
	return gomilter.NewClientWithOptions(ts.network, ts.addr, gomilter.ClientOptions{
		ReadTimeout:  10 * time.Second,
		WriteTimeout: 10 * time.Second,
		ActionMask: gomilter.OptAddHeader | gomilter.OptChangeBody | gomilter.OptAddRcpt |
			gomilter.OptRemoveRcpt | gomilter.OptChangeHeader | gomilter.OptQuarantine,
		ProtocolMask: gomilter.OptNoConnect | gomilter.OptNoHelo | gomilter.OptNoMailFrom | gomilter.OptNoRcptTo |
			gomilter.OptNoBody | gomilter.OptNoHeaders | gomilter.OptNoEOH,
	})
}

func (ts *testServer) session(t *testing.T) *gomilter.ClientSession {
	t.Helper()
	s, err := ts.v2Client().Session()
	if err != nil {
		t.Fatalf("negotiating: %v", err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

type message struct {
	sender   string
	mailArgs []string
	rcpts    []string
	headers  [][2]string
	body     string
}

// outcome is how the milter ended the message: at which stage, with which action and reply.
type outcome struct {
	stage string // mail, header, eoh, body, eom
	code  gomilter.ActionCode
	reply string // "550 5.7.1 ..." for ActReplyCode
	// rcptReplies holds the reply for each recipient, "" where the milter let it through.
	rcptReplies []string
}

func actionReply(a *gomilter.Action) string {
	if a.Code != gomilter.ActReplyCode {
		return ""
	}
	return fmt.Sprintf("%d %s", a.SMTPCode, a.SMTPText)
}

// send runs one message through the session as Postfix does, macros included, and aborts afterwards
// as Postfix does after every transaction.
func send(t *testing.T, s *gomilter.ClientSession, m message) outcome {
	t.Helper()
	out := transact(t, s, m)
	if err := s.Abort(); err != nil {
		t.Fatal(err)
	}
	return out
}

func transact(t *testing.T, s *gomilter.ClientSession, m message) outcome {
	t.Helper()
	check := func(stage string, a *gomilter.Action, err error) (outcome, bool) {
		if err != nil {
			t.Fatalf("%s: %v", stage, err)
		}
		if a.Code == gomilter.ActContinue {
			return outcome{}, false
		}
		return outcome{stage: stage, code: a.Code, reply: actionReply(a)}, true
	}
	if err := s.Macros(gomilter.CodeMail, "{mail_addr}", m.sender, "{auth_authen}", "app-user"); err != nil {
		t.Fatal(err)
	}
	a, err := s.Mail(m.sender, m.mailArgs)
	if o, done := check("mail", a, err); done {
		return o
	}
	var replies []string
	for _, r := range m.rcpts {
		if err := s.Macros(gomilter.CodeRcpt, "i", "4XyZ1Q", "{rcpt_addr}", r); err != nil {
			t.Fatal(err)
		}
		a, err := s.Rcpt(r, nil)
		if err != nil {
			t.Fatalf("rcpt %s: %v", r, err)
		}
		replies = append(replies, actionReply(a))
	}
	finish := func(o outcome) outcome { o.rcptReplies = replies; return o }
	for _, h := range m.headers {
		a, err := s.HeaderField(h[0], h[1])
		if o, done := check("header", a, err); done {
			return finish(o)
		}
	}
	a, err = s.HeaderEnd()
	if o, done := check("eoh", a, err); done {
		return finish(o)
	}
	body := []byte(m.body)
	for len(body) > 0 {
		n := min(len(body), gomilter.MaxBodyChunk)
		a, err := s.BodyChunk(body[:n])
		if o, done := check("body", a, err); done {
			return finish(o)
		}
		body = body[n:]
	}
	_, a, err = s.End()
	o, _ := check("eom", a, err)
	return finish(o)
}

func from(v string) [][2]string {
	return [][2]string{{"From", v}, {"To", "someone@dest.example"}, {"Subject", "hello"}}
}

func recipients(n int) []string {
	r := make([]string, n)
	for i := range r {
		r[i] = fmt.Sprintf("r%d@dest.example", i)
	}
	return r
}

func TestPolicy(t *testing.T) {
	t.Parallel()
	const body = "Hello.\r\n"
	over := func(n int, reply string) []string { // n recipients let through, then reply for the rest
		return append(make([]string, n), reply)
	}
	cases := []struct {
		name string
		msg  message
		want outcome
		// wantRcpt, when set, is checked against the replies from the recipient at that index on.
		wantRcpt   []string
		rcptOffset int
	}{
		{
			name: "unknown sender of a routed domain",
			msg:  message{sender: "stranger@client-a.example"},
			want: outcome{stage: "mail", code: gomilter.ActReplyCode,
				reply: "550 5.7.1 sender <stranger@client-a.example> is not served by Postern"},
		},
		{
			name: "unrelated sender",
			msg:  message{sender: "someone@elsewhere.example"},
			want: outcome{stage: "mail", code: gomilter.ActAccept},
		},
		{
			name: "null sender",
			msg:  message{sender: ""},
			want: outcome{stage: "mail", code: gomilter.ActAccept},
		},
		{
			name: "disabled project",
			msg:  message{sender: "x@client-b.example"},
			want: outcome{stage: "mail", code: gomilter.ActReplyCode, reply: "451 4.7.0 project client-b is disabled"},
		},
		{
			name: "credential needs re-authorisation",
			msg:  message{sender: "x@client-c.example"},
			want: outcome{stage: "mail", code: gomilter.ActReplyCode,
				reply: "451 4.7.0 project client-c needs re-authorisation: the mailbox owner must sign in again"},
		},
		{
			name: "directory unavailable",
			msg:  message{sender: "x@down.example"},
			want: outcome{stage: "mail", code: gomilter.ActReplyCode, reply: "451 4.3.0 project configuration is unavailable, try again later"},
		},
		{
			name: "directory too slow",
			msg:  message{sender: "x@slow.example"},
			want: outcome{stage: "mail", code: gomilter.ActReplyCode, reply: "451 4.3.0 project configuration is unavailable, try again later"},
		},
		{
			name: "resolver fault",
			msg:  message{sender: "x@broken.example"},
			want: outcome{stage: "mail", code: gomilter.ActReplyCode, reply: "451 4.3.0 temporary local problem, try again later"},
		},
		{
			name: "allowed From",
			msg:  message{sender: "noreply@client-a.example", rcpts: recipients(1), headers: from("Client A <noreply@client-a.example>"), body: body},
			want: outcome{stage: "eom", code: gomilter.ActAccept},
		},
		{
			name: "sender by domain, From in any case",
			msg:  message{sender: "bounce-7@mail.client-a.example", rcpts: recipients(1), headers: from("NEWS@Client-A.example"), body: body},
			want: outcome{stage: "eom", code: gomilter.ActAccept},
		},
		{
			name: "From not allowed",
			msg:  message{sender: "noreply@client-a.example", rcpts: recipients(1), headers: from("The Boss <boss@client-a.example>"), body: body},
			want: outcome{stage: "eoh", code: gomilter.ActReplyCode,
				reply: "550 5.7.60 From <boss@client-a.example> is not allowed for client-a: the mailbox may send as noreply@client-a.example, news@client-a.example"},
		},
		{
			name: "multiple From addresses, all allowed",
			msg:  message{sender: "noreply@client-a.example", rcpts: recipients(1), headers: from("noreply@client-a.example, News <news@client-a.example>"), body: body},
			want: outcome{stage: "eom", code: gomilter.ActAccept},
		},
		{
			name: "multiple From addresses, one not allowed",
			msg:  message{sender: "noreply@client-a.example", rcpts: recipients(1), headers: from("noreply@client-a.example,\n\tother@client-z.example"), body: body},
			want: outcome{stage: "eoh", code: gomilter.ActReplyCode,
				reply: "550 5.7.60 From <other@client-z.example> is not allowed for client-a: the mailbox may send as noreply@client-a.example, news@client-a.example"},
		},
		{
			name: "two From fields",
			msg: message{sender: "noreply@client-a.example", rcpts: recipients(1),
				headers: [][2]string{{"From", "noreply@client-a.example"}, {"from", "evil@client-z.example"}}, body: body},
			want: outcome{stage: "eoh", code: gomilter.ActReplyCode,
				reply: "550 5.7.60 From <evil@client-z.example> is not allowed for client-a: the mailbox may send as noreply@client-a.example, news@client-a.example"},
		},
		{
			name: "long send-as list is trimmed",
			msg:  message{sender: "x@client-l.example", rcpts: recipients(1), headers: from("z@client-l.example"), body: body},
			want: outcome{stage: "eoh", code: gomilter.ActReplyCode,
				reply: "550 5.7.60 From <z@client-l.example> is not allowed for client-l: the mailbox may send as a@client-l.example, b@client-l.example, c@client-l.example, d@client-l.example, e@client-l.example and 2 more"},
		},
		{
			name: "percent in the From address reaches the client once",
			msg:  message{sender: "noreply@client-a.example", rcpts: recipients(1), headers: from("100%off@client-z.example"), body: body},
			want: outcome{stage: "eoh", code: gomilter.ActReplyCode,
				reply: "550 5.7.60 From <100%%off@client-z.example> is not allowed for client-a: the mailbox may send as noreply@client-a.example, news@client-a.example"},
		},
		{
			name: "missing From",
			msg:  message{sender: "noreply@client-a.example", rcpts: recipients(1), headers: [][2]string{{"Subject", "no from"}}, body: body},
			want: outcome{stage: "eoh", code: gomilter.ActReplyCode, reply: "550 5.6.0 the message has no From address: RFC 5322 requires one"},
		},
		{
			name: "empty From",
			msg:  message{sender: "noreply@client-a.example", rcpts: recipients(1), headers: from(""), body: body},
			want: outcome{stage: "eoh", code: gomilter.ActReplyCode, reply: "550 5.6.0 the message has no From address: RFC 5322 requires one"},
		},
		{
			name: "unparsable From",
			msg:  message{sender: "noreply@client-a.example", rcpts: recipients(1), headers: from("noreply at client-a dot example"), body: body},
			want: outcome{stage: "eoh", code: gomilter.ActReplyCode, reply: "550 5.6.0 the From header cannot be parsed as RFC 5322 addresses"},
		},
		{
			name: "display name in a charset Go does not know",
			msg:  message{sender: "noreply@client-a.example", rcpts: recipients(1), headers: from("=?windows-1252?Q?Caf=E9?= <noreply@client-a.example>"), body: body},
			want: outcome{stage: "eom", code: gomilter.ActAccept},
		},
		{
			name: "no size limit: accepted at the end of the headers",
			msg:  message{sender: "x@client-n.example", rcpts: recipients(1), headers: from("x@client-n.example"), body: body},
			want: outcome{stage: "eoh", code: gomilter.ActAccept},
		},
		{
			name: "SIZE over the limit at MAIL FROM",
			msg:  message{sender: "x@client-d.example", mailArgs: []string{"BODY=8BITMIME", "SIZE=5000"}},
			want: outcome{stage: "mail", code: gomilter.ActReplyCode, reply: "552 5.3.4 message too large: client-d accepts at most 1000 bytes"},
		},
		{
			name: "SIZE over the default limit at MAIL FROM",
			msg:  message{sender: "noreply@client-a.example", mailArgs: []string{"size=36700161"}},
			want: outcome{stage: "mail", code: gomilter.ActReplyCode, reply: "552 5.3.4 message too large: client-a accepts at most 36700160 bytes"},
		},
		{
			name: "body over the limit",
			msg: message{sender: "x@client-d.example", mailArgs: []string{"SIZE=500"}, rcpts: recipients(1),
				headers: from("x@client-d.example"), body: strings.Repeat("0123456789abcdef\r\n", 60)},
			want: outcome{stage: "body", code: gomilter.ActReplyCode, reply: "552 5.3.4 message too large: client-d accepts at most 1000 bytes"},
		},
		{
			name: "body within the limit",
			msg: message{sender: "x@client-d.example", mailArgs: []string{"SIZE=500"}, rcpts: recipients(1),
				headers: from("x@client-d.example"), body: strings.Repeat("0123456789abcdef\r\n", 40)},
			want: outcome{stage: "eom", code: gomilter.ActAccept},
		},
		{
			name:     "recipients over the project limit",
			msg:      message{sender: "x@client-d.example", rcpts: recipients(4), headers: from("x@client-d.example"), body: body},
			want:     outcome{stage: "eom", code: gomilter.ActAccept},
			wantRcpt: []string{"", "", "452 4.5.3 too many recipients: client-d allows at most 2 per message", "452 4.5.3 too many recipients: client-d allows at most 2 per message"},
		},
		{
			name: "501 recipients for an Exchange upstream",
			msg:  message{sender: "noreply@client-a.example", rcpts: recipients(502), headers: from("noreply@client-a.example"), body: body},
			want: outcome{stage: "eom", code: gomilter.ActAccept},
			wantRcpt: append(over(500, "452 4.5.3 too many recipients: client-a allows at most 500 per message"),
				"452 4.5.3 too many recipients: client-a allows at most 500 per message"),
		},
		{
			name: "sender with a control character",
			msg:  message{sender: "no\x01reply@client-a.example"},
			want: outcome{stage: "mail", code: gomilter.ActReplyCode, reply: "553 5.1.7 sender address rejected: the local part holds a control character"},
		},
		{
			name: "recipient with a control character",
			msg: message{sender: "noreply@client-a.example", rcpts: []string{"bad\x7f@dest.example", "john doe@dest.example", `"quoted"@dest.example`},
				headers: from("noreply@client-a.example"), body: body},
			want:     outcome{stage: "eom", code: gomilter.ActAccept},
			wantRcpt: []string{"553 5.1.3 recipient address rejected: the local part holds a control character", "", ""},
		},
		{
			name:     "101 recipients for a Gmail upstream",
			msg:      message{sender: "x@client-g.example", rcpts: recipients(101), headers: from("x@client-g.example"), body: body},
			want:     outcome{stage: "eom", code: gomilter.ActAccept},
			wantRcpt: over(100, "452 4.5.3 too many recipients: client-g allows at most 100 per message"),
		},
	}
	for _, network := range []string{"unix", "tcp"} {
		t.Run(network, func(t *testing.T) {
			t.Parallel()
			ts := start(t, network, nil)
			for _, c := range cases {
				t.Run(c.name, func(t *testing.T) {
					t.Parallel()
					s := ts.session(t)
					got := send(t, s, c.msg)
					replies := got.rcptReplies
					if got.stage != c.want.stage || got.code != c.want.code || got.reply != c.want.reply {
						t.Errorf("got %+v\nwant %+v", got, c.want)
					}
					if c.wantRcpt != nil {
						if len(replies) != len(c.wantRcpt) {
							t.Fatalf("got %d recipient replies, want %d", len(replies), len(c.wantRcpt))
						}
						for i := range replies {
							if replies[i] != c.wantRcpt[i] {
								t.Errorf("recipient %d: got %q, want %q", i+1, replies[i], c.wantRcpt[i])
							}
						}
					}
					// The session is still usable for the next message, as Postfix expects.
					if o := send(t, s, message{sender: "someone@elsewhere.example"}); o.code != gomilter.ActAccept {
						t.Errorf("next message on the same connection: %+v", o)
					}
				})
			}
		})
	}
}

func TestUnrelatedMailCostsNoLookup(t *testing.T) {
	t.Parallel()
	ts := start(t, "unix", nil)
	s := ts.session(t)
	for range 3 {
		if o := send(t, s, message{sender: "someone@elsewhere.example", rcpts: recipients(1)}); o.stage != "mail" || o.code != gomilter.ActAccept {
			t.Fatalf("got %+v, want accept at MAIL FROM", o)
		}
	}
	if n := ts.dir.callsFor("someone@elsewhere.example"); n != 0 {
		t.Errorf("resolver called %d times for a sender of no Postern domain", n)
	}
}

// Postfix sends an abort after every transaction; a client that does not must not mix the header
// fields of two messages (go-milter's own header map keeps them).
func TestMessagesOnOneConnectionAreJudgedAlone(t *testing.T) {
	t.Parallel()
	ts := start(t, "tcp", nil)
	s := ts.session(t)
	msgs := []message{
		{sender: "noreply@client-a.example", rcpts: recipients(1), headers: from("noreply@client-a.example"), body: "a\r\n"},
		{sender: "x@client-d.example", rcpts: recipients(2), headers: from("x@client-d.example"), body: "d\r\n"},
		{sender: "x@client-d.example", rcpts: recipients(3), headers: from("x@client-d.example"), body: "d\r\n"},
	}
	for i, m := range msgs {
		o := transact(t, s, m) // no abort in between
		if o.stage != "eom" || o.code != gomilter.ActAccept {
			t.Fatalf("message %d: got %+v, want accept at end of message", i+1, o)
		}
		if i == 2 && (o.rcptReplies[0] != "" || o.rcptReplies[1] != "" || !strings.HasPrefix(o.rcptReplies[2], "452 ")) {
			t.Errorf("message 3: recipient replies %q, want two let through and the third refused", o.rcptReplies)
		}
	}
}

func TestNegotiatesProtocolVersion2(t *testing.T) {
	t.Parallel()
	ts := start(t, "unix", nil)
	c, err := net.Dial("unix", ts.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	// Exactly what Postfix 3.7 sends: version 6, all its actions, all its protocol bits.
	req := []byte{0, 0, 0, 13, 'O', 0, 0, 0, 6, 0, 0, 0x01, 0xff, 0, 0x1f, 0xff, 0xff}
	if _, err := c.Write(req); err != nil {
		t.Fatal(err)
	}
	var resp struct {
		Len                         uint32
		Code                        byte
		Version, Actions, Protocols uint32
	}
	if err := binary.Read(c, binary.BigEndian, &resp); err != nil {
		t.Fatal(err)
	}
	want := uint32(gomilter.OptNoConnect | gomilter.OptNoHelo | gomilter.OptNoUnknown | gomilter.OptNoData)
	if resp.Code != 'O' || resp.Version != 2 || resp.Actions != 0 || resp.Protocols != want {
		t.Errorf("negotiated code %q version %d actions %#x protocol %#x, want 'O' 2 0 %#x", resp.Code, resp.Version, resp.Actions, resp.Protocols, want)
	}
}

func TestDefaultClientCannotNegotiate(t *testing.T) {
	t.Parallel()
	ts := start(t, "unix", nil)
	s, err := gomilter.NewDefaultClient("unix", ts.addr).Session()
	if !errors.Is(err, gomilter.ErrUnsupportedMilterVersion) {
		if s != nil {
			s.Close()
		}
		t.Fatalf("got %v, want ErrUnsupportedMilterVersion: the server speaks version 2 only", err)
	}
}

func TestDecisionsAreLoggedOnceWithoutSecrets(t *testing.T) {
	t.Parallel()
	ts := start(t, "unix", nil)
	s := ts.session(t)
	send(t, s, message{sender: "noreply@client-a.example", rcpts: recipients(502), headers: from("noreply@client-a.example"), body: "x\r\n"})
	send(t, s, message{sender: "noreply@client-a.example", rcpts: recipients(1), headers: from("boss@client-a.example"), body: "x\r\n"})

	var decisions []map[string]any
	for line := range strings.Lines(ts.logs.String()) {
		if strings.Contains(line, "hunter2") {
			t.Errorf("a log line carries the project's password: %s", line)
		}
		var rec map[string]any
		if err := json.Unmarshal([]byte(line), &rec); err != nil {
			t.Fatal(err)
		}
		if rec["msg"] == "milter decision" {
			decisions = append(decisions, rec)
		}
	}
	want := []struct{ stage, action string }{{"rcpt", "refuse recipient"}, {"eom", "accept"}, {"eoh", "reject"}}
	if len(decisions) != len(want) {
		t.Fatalf("got %d decisions, want %d:\n%s", len(decisions), len(want), ts.logs.String())
	}
	for i, w := range want {
		d := decisions[i]
		if d["level"] != "INFO" || d["stage"] != w.stage || d["action"] != w.action || d["project"] != "client-a" ||
			d["sender"] != "noreply@client-a.example" || d["queue_id"] != "4XyZ1Q" || d["sasl_username"] != "app-user" || d["reason"] == "" {
			t.Errorf("decision %d = %v, want stage %s action %s with project, sender, queue id, login and reason", i, d, w.stage, w.action)
		}
	}
	if decisions[1]["recipients"] != 500.0 || decisions[1]["recipients_refused"] != 2.0 {
		t.Errorf("accept decision counts %v/%v recipients, want 500 let through and 2 refused", decisions[1]["recipients"], decisions[1]["recipients_refused"])
	}
}

func TestServeEndsOnCancel(t *testing.T) {
	t.Parallel()
	ts := start(t, "tcp", nil)
	s := ts.session(t)
	if o := send(t, s, message{sender: "someone@elsewhere.example"}); o.code != gomilter.ActAccept {
		t.Fatalf("got %+v", o)
	}
	ts.cancel()
	if err := <-ts.served; err != nil {
		t.Fatalf("Serve after cancel: %v", err)
	}
	ts.served <- nil // for the cleanup
	if _, err := s.Mail("someone@elsewhere.example", nil); err == nil {
		t.Error("the open connection still answers after Serve returned")
	}
	if _, err := net.DialTimeout("tcp", ts.addr, time.Second); err == nil {
		t.Error("the listener still accepts after Serve returned")
	}
}

func TestIdleConnectionIsClosed(t *testing.T) {
	t.Parallel()
	ts := start(t, "unix", func(o *milter.Options) { o.IdleTimeout = 50 * time.Millisecond })
	c, err := net.Dial("unix", ts.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	if n, err := c.Read(make([]byte, 1)); err != io.EOF {
		t.Fatalf("read %d bytes, %v: want the server to close the idle connection", n, err)
	}
	if !strings.Contains(ts.logs.String(), "closing an idle milter connection") {
		t.Errorf("no log line about the idle connection:\n%s", ts.logs.String())
	}
}

func TestNewReportsEveryProblem(t *testing.T) {
	t.Parallel()
	_, err := milter.New(milter.Options{
		HostLimits:  []milter.HostLimit{{Host: "bad host"}, {Host: "*.ok.example", MaxRecipients: -1}},
		IdleTimeout: -time.Second,
	})
	if err == nil {
		t.Fatal("New accepted empty options")
	}
	for _, want := range []string{"Resolver", "Domains", "IsNoProject", "timeouts", "HostLimits[0]", "HostLimits[1]"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not mention %s", err, want)
		}
	}
}

// dialRaw opens a connection that speaks the packet framing by hand.
func (ts *testServer) dialRaw(t *testing.T) net.Conn {
	t.Helper()
	c, err := net.Dial(ts.network, ts.addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	return c
}

// wantClosed waits for the server to close c without answering.
func wantClosed(t *testing.T, c net.Conn, why string) {
	t.Helper()
	if n, err := c.Read(make([]byte, 64)); err != io.EOF {
		t.Fatalf("read %d bytes, %v: want the server to close the connection (%s)", n, err, why)
	}
}

func (ts *testServer) wantLog(t *testing.T, text string) {
	t.Helper()
	if !strings.Contains(ts.logs.String(), text) {
		t.Errorf("no log line containing %q:\n%s", text, ts.logs.String())
	}
}

// A message whose header fields go over the limit ends the connection: go-milter would keep them
// all in memory.
func TestHeaderFieldsAreBounded(t *testing.T) {
	t.Parallel()
	const limit = 64 << 10
	ts := start(t, "unix", func(o *milter.Options) { o.MaxHeaderBytes = limit })
	s := ts.session(t)
	if err := s.Macros(gomilter.CodeMail, "{mail_addr}", "x@client-n.example"); err != nil {
		t.Fatal(err)
	}
	if a, err := s.Mail("x@client-n.example", nil); err != nil || a.Code != gomilter.ActContinue {
		t.Fatalf("MAIL: %+v %v", a, err)
	}
	value := strings.Repeat("v", 8<<10)
	sent := 0
	for i := range 100 {
		if _, err := s.HeaderField(fmt.Sprintf("X-Big-%d", i), value); err != nil {
			break
		}
		sent += len(value)
	}
	if sent > limit {
		t.Fatalf("%d bytes of header fields were taken, limit %d", sent, limit)
	}
	ts.wantLog(t, "header fields exceed")
}

// The limit is per message: go-milter's header map is cleared at every new message even when the
// client sends no abort in between.
func TestHeaderLimitIsPerMessage(t *testing.T) {
	t.Parallel()
	const limit = 16 << 10
	ts := start(t, "unix", func(o *milter.Options) { o.MaxHeaderBytes = limit })
	s := ts.session(t)
	headers := append(from("x@client-n.example"), [2]string{"X-Filler", strings.Repeat("f", limit/2)})
	for i := range 5 {
		o := transact(t, s, message{sender: "x@client-n.example", rcpts: recipients(1), headers: headers})
		if o.code != gomilter.ActAccept {
			t.Fatalf("message %d: %+v, want accepted", i+1, o)
		}
	}
}

// A packet must arrive whole within the packet timeout, however slowly its bytes trickle in.
func TestSlowPacketIsCutOff(t *testing.T) {
	t.Parallel()
	ts := start(t, "unix", func(o *milter.Options) {
		o.PacketTimeout = 100 * time.Millisecond
		o.IdleTimeout = time.Hour
	})
	c := ts.dialRaw(t)
	// A length of 1000 and one byte, then one more byte every 20ms: each read renews no deadline.
	if _, err := c.Write([]byte{0, 0, 0x03, 0xe8, 'L'}); err != nil {
		t.Fatal(err)
	}
	stop := make(chan struct{})
	defer close(stop)
	go func() {
		for {
			select {
			case <-stop:
				return
			case <-time.After(20 * time.Millisecond):
				if _, err := c.Write([]byte("x")); err != nil {
					return
				}
			}
		}
	}()
	wantClosed(t, c, "a packet slower than the packet timeout")
	ts.wantLog(t, "packet timeout")
}

// A declared length over the limit is refused at once, before any of it is read or allocated
// (go-milter itself allocates up to 1 MiB and waits for it).
func TestOverlongPacketIsRefused(t *testing.T) {
	t.Parallel()
	ts := start(t, "unix", nil)
	for _, length := range []uint32{512 << 10, 0x7fffffff, 0} {
		c := ts.dialRaw(t)
		if _, err := c.Write(binary.BigEndian.AppendUint32(nil, length)); err != nil {
			t.Fatal(err)
		}
		wantClosed(t, c, fmt.Sprintf("declared length %d", length))
	}
	ts.wantLog(t, "declared length is out of bounds")
}
