//go:build integration

package harness_test

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/postern/postern/integration/harness"
)

// The upstream Postfix plays the client organisations' servers: STARTTLS and AUTH (PLAIN and
// LOGIN, checked by Dovecot) are required, mail lands in Maildirs, the Received header names the
// organisation's server and the signed-in user, and unknown recipients are refused with 550 5.1.1.
func TestUpstreamRequiresTLSAndAuth(t *testing.T) {
	t.Parallel()
	harness.Require(t)
	dir := harness.TempDir(t)
	ca, err := harness.NewCA(filepath.Join(dir, "ca"), "mx.client-a.test", "mx.client-b.test")
	if err != nil {
		t.Fatal(err)
	}
	started := time.Now()
	u := harness.StartUpstream(t, dir, ca, nil, harness.UpstreamOptions{})
	t.Logf("dovecot and upstream postfix started in %s", time.Since(started).Round(time.Millisecond))
	a, b := u.Org("client-a"), u.Org("client-b")
	userA, _ := a.User()
	userB, _ := b.User()

	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	for _, tc := range []struct {
		name string
		org  *harness.Org
		user string
		mech string
	}{
		{"plain at client-a", a, userA, "PLAIN"},
		{"login at client-a", a, userA, "LOGIN"},
		{"plain at client-b", b, userB, "PLAIN"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := u.Client(tc.org, tc.user)
			c.Mechanism = tc.mech
			m := &harness.Mail{From: tc.user, To: []string{"alice@dest.test"}}
			if _, err := c.Send(ctx, m); err != nil {
				t.Fatalf("sending through %s: %v", tc.org.Name, err)
			}
			got, err := u.WaitForMessage(ctx, "alice@dest.test", harness.WithID(m.ID))
			if err != nil {
				t.Fatal(err)
			}
			if by := got.ReceivedBy(); len(by) == 0 || by[0] != tc.org.Hostname {
				t.Errorf("Received by %v, want %s first", by, tc.org.Hostname)
			}
			if as := got.AuthenticatedSenders(); len(as) != 1 || as[0] != tc.user {
				t.Errorf("authenticated senders %v, want [%s]", as, tc.user)
			}
			if r := got.Received()[0]; !strings.Contains(r, "using TLS") || !strings.Contains(r, "ESMTPSA") {
				t.Errorf("Received %q does not show TLS and AUTH", r)
			}
		})
	}

	refusals := []struct {
		name     string
		client   harness.Client
		to       string
		wantCode int
		wantEnh  string
	}{
		{"unknown recipient", u.Client(a, userA), "nobody@dest.test", 550, "5.1.1"},
		{"wrong password", harness.Client{Addr: a.Addr(), StartTLS: ca.ClientTLS("127.0.0.1"), Username: userA, Password: "wrong"}, "alice@dest.test", 535, "5.7.8"},
		{"no STARTTLS", harness.Client{Addr: a.Addr()}, "alice@dest.test", 530, "5.7.0"},
		{"no AUTH", harness.Client{Addr: a.Addr(), StartTLS: ca.ClientTLS("127.0.0.1")}, "alice@dest.test", 554, "5.7.1"},
		{"another organisation's user", harness.Client{Addr: a.Addr(), StartTLS: ca.ClientTLS("127.0.0.1"), Username: userB, Password: b.Users[userB]}, "alice@dest.test", 554, "5.7.1"},
		{"direct: unknown recipient", harness.Client{Addr: u.DirectAddr()}, "nobody@dest.test", 550, "5.1.1"},
		{"direct: foreign domain", harness.Client{Addr: u.DirectAddr()}, "someone@elsewhere.test", 554, "5.7.1"},
	}
	for _, tc := range refusals {
		t.Run(tc.name, func(t *testing.T) {
			_, err := tc.client.Send(ctx, &harness.Mail{From: userA, To: []string{tc.to}})
			code, enh := harness.SMTPCode(err)
			if code != tc.wantCode || enh != tc.wantEnh {
				t.Fatalf("got %d %s (%v), want %d %s", code, enh, err, tc.wantCode, tc.wantEnh)
			}
		})
	}

	t.Run("direct listener", func(t *testing.T) {
		m := &harness.Mail{From: "app@front.test", To: []string{"bob@dest.test"}}
		if _, err := (harness.Client{Addr: u.DirectAddr()}).Send(ctx, m); err != nil {
			t.Fatal(err)
		}
		got, err := u.WaitForMessage(ctx, "bob@dest.test", harness.WithID(m.ID))
		if err != nil {
			t.Fatal(err)
		}
		if !got.PassedThrough(u.DirectHostname) || len(got.AuthenticatedSenders()) != 0 {
			t.Errorf("Received %v: want %s without an authenticated sender", got.Received(), u.DirectHostname)
		}
	})

	t.Run("organisation down and back", func(t *testing.T) {
		started := time.Now()
		if err := u.StopOrg(ctx, "client-a"); err != nil {
			t.Fatal(err)
		}
		t.Logf("client-a stopped in %s", time.Since(started).Round(time.Millisecond))
		if c, err := net.DialTimeout("tcp", a.Addr(), time.Second); err == nil {
			c.Close()
			t.Fatalf("client-a still accepts connections after StopOrg")
		}
		m := &harness.Mail{From: userB, To: []string{"carol@dest.test"}}
		if _, err := u.Client(b, userB).Send(ctx, m); err != nil {
			t.Fatalf("client-b must keep working while client-a is down: %v", err)
		}
		started = time.Now()
		if err := u.StartOrg(ctx, "client-a"); err != nil {
			t.Fatal(err)
		}
		t.Logf("client-a started again in %s", time.Since(started).Round(time.Millisecond))
		m = &harness.Mail{From: userA, To: []string{"carol@dest.test"}}
		if _, err := u.Client(a, userA).Send(ctx, m); err != nil {
			t.Fatalf("client-a after StartOrg: %v", err)
		}
		if _, err := u.WaitForMessage(ctx, "carol@dest.test", harness.WithID(m.ID)); err != nil {
			t.Fatal(err)
		}
	})

	// The refusals above log warnings of their own; anything else is a configuration problem.
	expected := regexp.MustCompile(`SASL (PLAIN|LOGIN) authentication failed|non-SMTP command from .*: \*$`)
	var w []string
	for _, l := range u.LogWarnings() {
		if !expected.MatchString(l) {
			w = append(w, l)
		}
	}
	if len(w) > 0 {
		t.Errorf("the upstream postfix logged warnings:\n%s", strings.Join(w, "\n"))
	}
}

// The front Postfix loads contrib/postfix/main.cf and master.cf verbatim without a warning, asks
// the socketmap "senders" for every sender, delivers the routed ones to the LMTP socket through
// the "postern" transport, and relays everything else to the direct destination.
func TestFrontRoutesThroughContribSnippets(t *testing.T) {
	t.Parallel()
	e := harness.Start(t, harness.Options{})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	if v, err := e.Front.Param(ctx, "sender_dependent_default_transport_maps"); err != nil {
		t.Fatal(err)
	} else if want := "socketmap:unix:" + e.Postern.Dir + "/socketmap.sock:senders"; v != want {
		t.Fatalf("sender_dependent_default_transport_maps = %q, want %q", v, want)
	}

	fake := startFakePostern(t, e.Postern.SocketmapSocket, e.Postern.LMTPSocket, map[string]string{
		"routed@client-a.test": "postern:unix:" + e.Postern.LMTPSocket,
	})

	routed := &harness.Mail{From: "routed@client-a.test", To: []string{"alice@dest.test", "bob@dest.test"}}
	if _, err := e.Front.Submit(ctx, routed); err != nil {
		t.Fatal(err)
	}
	direct := &harness.Mail{From: "app@other.test", To: []string{"alice@dest.test"}}
	sent, err := e.Front.Submit(ctx, direct)
	if err != nil {
		t.Fatal(err)
	}
	if sent.QueueID == "" {
		t.Errorf("no queue ID in the reply %q", sent.Reply)
	}

	got, err := e.Upstream.WaitForMessage(ctx, "alice@dest.test", harness.WithID(direct.ID))
	if err != nil {
		t.Fatal(err)
	}
	if !got.PassedThrough(e.Upstream.DirectHostname) || !got.PassedThrough("front.test") {
		t.Errorf("unrouted mail: Received by %v, want front.test then %s", got.ReceivedBy(), e.Upstream.DirectHostname)
	}
	if _, err := e.Front.WaitLog(ctx, regexp.MustCompile(sent.QueueID+`: to=<alice@dest.test>, relay=127\.0\.0\.1\[127\.0\.0\.1\]:`+
		fmt.Sprint(e.Upstream.DirectPort)+`,.*status=sent`)); err != nil {
		t.Error(err)
	}
	if err := e.Front.WaitQueueEmpty(ctx); err != nil {
		t.Fatal(err)
	}
	msgs := fake.messages()
	if len(msgs) != 1 || msgs[0].from != "routed@client-a.test" || strings.Join(msgs[0].to, ",") != "alice@dest.test,bob@dest.test" ||
		!strings.Contains(msgs[0].data, routed.ID) {
		t.Fatalf("LMTP got %+v, want one message from routed@client-a.test to alice and bob", msgs)
	}
	if n, _ := e.Upstream.Mailbox("alice@dest.test").Count(harness.WithID(routed.ID)); n != 0 {
		t.Errorf("routed mail also reached the direct destination")
	}
	if _, err := e.Front.WaitLog(ctx, regexp.MustCompile(`postfix/postern/lmtp\[\d+\]: \w+: to=<alice@dest.test>, relay=\S*\[`+
		regexp.QuoteMeta(e.Postern.LMTPSocket)+`\].*status=sent`)); err != nil {
		t.Error(err)
	}
	if keys := fake.keys(); !contains(keys, "routed@client-a.test") || !contains(keys, "app@other.test") {
		t.Errorf("socketmap was asked %v, want both senders", keys)
	}
	if w := e.Front.LogWarnings(); len(w) > 0 {
		t.Errorf("the front postfix logged warnings:\n%s", strings.Join(w, "\n"))
	}
}

// While Postern is down nothing bounces: without its socketmap the front Postfix refuses new mail
// with 451 4.3.0 at RCPT, for every sender; without its LMTP socket the routed mail waits in the
// queue; once Postern is back, the mail flows, exactly once.
func TestFrontKeepsMailWhilePosternIsDown(t *testing.T) {
	t.Parallel()
	e := harness.Start(t, harness.Options{})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	_, err := e.Front.Submit(ctx, &harness.Mail{From: "app@other.test", To: []string{"alice@dest.test"}})
	if code, enh := harness.SMTPCode(err); code != 451 || enh != "4.3.0" {
		t.Fatalf("submission without a socketmap: %v, want 451 4.3.0", err)
	}

	fake := &fakePostern{routes: map[string]string{"routed@client-a.test": "postern:unix:" + e.Postern.LMTPSocket}}
	fake.serveSocketmap(t, e.Postern.SocketmapSocket)
	routed := &harness.Mail{From: "routed@client-a.test", To: []string{"alice@dest.test"}}
	if _, err := e.Front.Submit(ctx, routed); err != nil {
		t.Fatalf("submission with the socketmap back: %v", err)
	}
	q, err := e.Front.WaitQueue(ctx, func(q []harness.QueuedMessage) bool {
		return len(q) == 1 && len(q[0].Recipients) == 1 && q[0].Recipients[0].DelayReason != ""
	})
	if err != nil {
		t.Fatal(err)
	}
	if r := q[0].Recipients[0].DelayReason; !strings.Contains(r, e.Postern.LMTPSocket) {
		t.Errorf("delay reason %q does not name the LMTP socket", r)
	}
	unrouted := &harness.Mail{From: "app@other.test", To: []string{"bob@dest.test"}}
	if _, err := e.Front.Submit(ctx, unrouted); err != nil {
		t.Fatal(err)
	}
	if _, err := e.Upstream.WaitForMessage(ctx, "bob@dest.test", harness.WithID(unrouted.ID)); err != nil {
		t.Fatal(err)
	}

	fake.serveLMTP(t, e.Postern.LMTPSocket)
	if err := e.Front.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	if err := e.Front.WaitQueueEmpty(ctx); err != nil {
		t.Fatal(err)
	}
	if msgs := fake.messages(); len(msgs) != 1 || !strings.Contains(msgs[0].data, routed.ID) {
		t.Fatalf("LMTP got %d messages, want the routed one once", len(msgs))
	}
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// fakePostern answers socketmap lookups from a fixed table and accepts everything over LMTP.
type fakePostern struct {
	routes map[string]string

	mu     sync.Mutex
	asked  []string
	stored []fakeMessage
}

type fakeMessage struct {
	from string
	to   []string
	data string
}

func (f *fakePostern) keys() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.asked...)
}

func (f *fakePostern) messages() []fakeMessage {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]fakeMessage(nil), f.stored...)
}

func startFakePostern(t *testing.T, socketmapPath, lmtpPath string, routes map[string]string) *fakePostern {
	t.Helper()
	f := &fakePostern{routes: routes}
	f.serveSocketmap(t, socketmapPath)
	f.serveLMTP(t, lmtpPath)
	return f
}

// serveSocketmap answers socketmap requests on a unix socket until the test ends.
func (f *fakePostern) serveSocketmap(t *testing.T, path string) {
	ln := listenUnix(t, path)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go f.answer(c)
		}
	}()
}

// serveLMTP accepts every message over LMTP on a unix socket until the test ends.
func (f *fakePostern) serveLMTP(t *testing.T, path string) {
	srv := smtp.NewServer(smtp.BackendFunc(func(*smtp.Conn) (smtp.Session, error) {
		return &fakeSession{f: f}, nil
	}))
	srv.LMTP = true
	srv.Domain = "fake-postern.test"
	srv.ErrorLog = testLogger{t}
	ln := listenUnix(t, path)
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { srv.Close() })
}

func listenUnix(t *testing.T, path string) net.Listener {
	t.Helper()
	ln, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(path, 0o666); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	return ln
}

func (f *fakePostern) answer(c net.Conn) {
	defer c.Close()
	r := bufio.NewReader(c)
	for {
		req, err := harness.ReadNetstring(r)
		if err != nil {
			return
		}
		name, key, _ := strings.Cut(req, " ")
		f.mu.Lock()
		f.asked = append(f.asked, key)
		f.mu.Unlock()
		reply := "NOTFOUND "
		if v, ok := f.routes[key]; ok && name == "senders" {
			reply = "OK " + v
		}
		if _, err := fmt.Fprintf(c, "%d:%s,", len(reply), reply); err != nil {
			return
		}
	}
}

type fakeSession struct {
	f   *fakePostern
	msg fakeMessage
}

func (s *fakeSession) Reset()        { s.msg = fakeMessage{} }
func (s *fakeSession) Logout() error { return nil }
func (s *fakeSession) Mail(from string, _ *smtp.MailOptions) error {
	s.msg.from = from
	return nil
}
func (s *fakeSession) Rcpt(to string, _ *smtp.RcptOptions) error {
	s.msg.to = append(s.msg.to, to)
	return nil
}
func (s *fakeSession) Data(r io.Reader) error {
	b, err := io.ReadAll(r)
	if err != nil {
		return &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 3, 0}, Message: "read failed"}
	}
	s.msg.data = string(b)
	s.f.mu.Lock()
	s.f.stored = append(s.f.stored, s.msg)
	s.f.mu.Unlock()
	return nil
}

type testLogger struct{ t *testing.T }

func (l testLogger) Printf(format string, v ...any) { l.t.Logf(format, v...) }
func (l testLogger) Println(v ...any)               { l.t.Log(v...) }

// contrib/postfix/master-smtp.cf, the SMTP variant of the postern service, loads without a warning
// too.
func TestContribSMTPVariantLoads(t *testing.T) {
	t.Parallel()
	harness.Require(t)
	dir := harness.TempDir(t)
	f := harness.StartFront(t, dir, harness.FrontOptions{
		MasterFile: "master-smtp.cf",
		RunDir:     filepath.Join(dir, "postern"),
		RelayAddr:  "127.0.0.1:1",
	})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, err := f.Param(ctx, "postern_destination_concurrency_limit")
	if err != nil || out != "50" {
		t.Errorf("postern_destination_concurrency_limit = %q, %v", out, err)
	}
	if w := f.LogWarnings(); len(w) > 0 {
		t.Errorf("the front postfix logged warnings:\n%s", strings.Join(w, "\n"))
	}
}
