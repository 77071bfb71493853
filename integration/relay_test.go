//go:build integration

package integration

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/postern/postern/integration/harness"
)

// binDir holds the postern binary built for this test run.
var binDir string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "postern-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	binDir = dir
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// buildPostern builds postern once per test run, unless POSTERN_BIN names a binary.
var buildPostern = sync.OnceValues(func() (string, error) {
	if p := os.Getenv("POSTERN_BIN"); p != "" {
		return p, nil
	}
	out := filepath.Join(binDir, "postern")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	return out, harness.BuildPostern(ctx, "", out)
})

// startEnv starts the real parts with Postern running; opts.PosternBin is filled in.
func startEnv(t *testing.T, opts harness.Options) *harness.Env {
	t.Helper()
	harness.Require(t)
	bin, err := buildPostern()
	if err != nil {
		t.Fatal(err)
	}
	opts.PosternBin = bin
	e := harness.Start(t, opts)
	t.Cleanup(func() {
		if exited, err := e.Postern.Exited(); exited {
			t.Errorf("postern exited during the test: %v", err)
		}
	})
	return e
}

func addProjects(t *testing.T, ctx context.Context, e *harness.Env, projects ...harness.ProjectOptions) {
	t.Helper()
	for _, p := range projects {
		if err := e.AddProject(ctx, p); err != nil {
			t.Fatal(err)
		}
	}
}

func submit(t *testing.T, ctx context.Context, e *harness.Env, m *harness.Mail) harness.Sent {
	t.Helper()
	s, err := e.Front.Submit(ctx, m)
	if err != nil {
		t.Fatalf("submitting mail from %s: %v", m.From, err)
	}
	if s.QueueID == "" {
		t.Fatalf("no queue ID in the front's reply %q", s.Reply)
	}
	return s
}

// deliveryLines returns the front Postfix's delivery log lines of one queue ID.
func deliveryLines(e *harness.Env, queueID string) []string {
	return e.Front.LogLines(regexp.MustCompile(`\b` + queueID + `: to=<`))
}

// countByID counts the copies of a message in a mailbox.
func countByID(t *testing.T, e *harness.Env, addr, id string) int {
	t.Helper()
	n, err := e.Upstream.Mailbox(addr).Count(harness.WithID(id))
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// Mail from two projects' senders leaves through each project's own upstream, signed in with the
// project's credentials; mail from a sender of no project never touches Postern.
func TestRelayRoutesEachProjectToItsUpstream(t *testing.T) {
	t.Parallel()
	e := startEnv(t, harness.Options{})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	a, b := e.Upstream.Org("client-a"), e.Upstream.Org("client-b")
	userA, _ := a.User()
	userB, _ := b.User()
	addProjects(t, ctx, e,
		harness.ProjectOptions{Name: "client-a", Org: "client-a"},
		harness.ProjectOptions{Name: "client-b", Org: "client-b"})

	mailA := &harness.Mail{From: userA, To: []string{"alice@dest.test"}}
	mailB := &harness.Mail{From: userB, To: []string{"bob@dest.test"}}
	other := &harness.Mail{From: "app@other.test", To: []string{"carol@dest.test"}}
	submit(t, ctx, e, mailA)
	submit(t, ctx, e, mailB)
	otherSent := submit(t, ctx, e, other)

	for _, tc := range []struct {
		name     string
		mail     *harness.Mail
		rcpt     string
		via      string
		user     string
		notVia   []string
		wantAuth bool
	}{
		{"project client-a", mailA, "alice@dest.test", a.Hostname, userA, []string{b.Hostname, e.Upstream.DirectHostname}, true},
		{"project client-b", mailB, "bob@dest.test", b.Hostname, userB, []string{a.Hostname, e.Upstream.DirectHostname}, true},
		{"no project", other, "carol@dest.test", e.Upstream.DirectHostname, "", []string{a.Hostname, b.Hostname}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m, err := e.Upstream.WaitForMessage(ctx, tc.rcpt, harness.WithID(tc.mail.ID))
			if err != nil {
				t.Fatal(err)
			}
			if !m.PassedThrough(tc.via) {
				t.Errorf("Received by %v, want %s", m.ReceivedBy(), tc.via)
			}
			for _, h := range tc.notVia {
				if m.PassedThrough(h) {
					t.Errorf("Received by %v, must not include %s", m.ReceivedBy(), h)
				}
			}
			auth := m.AuthenticatedSenders()
			switch {
			case tc.wantAuth && (len(auth) != 1 || auth[0] != tc.user):
				t.Errorf("authenticated senders %v, want [%s]", auth, tc.user)
			case !tc.wantAuth && len(auth) != 0:
				t.Errorf("authenticated senders %v, want none", auth)
			}
		})
	}

	// What contrib/postfix/README.md tells the operator to check.
	table := "socketmap:unix:" + e.Postern.SocketmapSocket + ":senders"
	if v, found, err := e.Front.PostmapQuery(ctx, userA, table); err != nil || !found || v != "postern:unix:"+e.Postern.LMTPSocket {
		t.Errorf("postmap -q %s %s: %q, %v, %v; want postern:unix:%s", userA, table, v, found, err, e.Postern.LMTPSocket)
	}
	if v, found, err := e.Front.PostmapQuery(ctx, "app@other.test", table); err != nil || found {
		t.Errorf("postmap -q app@other.test %s: %q, %v, %v; want not found", table, v, found, err)
	}
	lines := deliveryLines(e, otherSent.QueueID)
	if len(lines) != 1 || !strings.Contains(lines[0], "postfix/smtp[") ||
		!strings.Contains(lines[0], "relay=127.0.0.1[127.0.0.1]:"+fmt.Sprint(e.Upstream.DirectPort)) {
		t.Errorf("the mail of a sender of no project was delivered by %q, want postfix/smtp to the direct destination", lines)
	}
	for _, l := range e.Front.LogLines(regexp.MustCompile(`postfix/postern/lmtp\[`)) {
		if strings.Contains(l, otherSent.QueueID) {
			t.Errorf("Postern had a transaction for the mail of a sender of no project: %s", l)
		}
	}
}

// A wrong password keeps the mail queued with a temporary reason; once the project's password is
// fixed, the mail leaves, exactly once.
func TestRelayWrongPasswordKeepsMailQueued(t *testing.T) {
	t.Parallel()
	e := startEnv(t, harness.Options{})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	a := e.Upstream.Org("client-a")
	user, password := a.User()
	addProjects(t, ctx, e, harness.ProjectOptions{Name: "client-a", Org: "client-a", Password: "not-the-password"})

	m := &harness.Mail{From: user, To: []string{"alice@dest.test"}}
	sent := submit(t, ctx, e, m)
	q, err := e.Front.WaitQueue(ctx, func(q []harness.QueuedMessage) bool {
		return len(q) == 1 && len(q[0].Recipients) == 1 &&
			strings.Contains(q[0].Recipients[0].DelayReason, "4.7.0")
	})
	if err != nil {
		t.Fatalf("want the mail deferred with 4.7.0: %v", err)
	}
	t.Logf("deferred: %s", q[0].Recipients[0].DelayReason)
	if strings.Contains(q[0].Recipients[0].DelayReason, "not-the-password") {
		t.Errorf("the delay reason shows the password")
	}
	if bounced := e.Front.LogLines(regexp.MustCompile(sent.QueueID + `: .*status=bounced`)); len(bounced) > 0 {
		t.Fatalf("a wrong password bounced the mail: %v", bounced)
	}

	// postern check says what is wrong and what to do.
	out, err := e.Postern.CLI(ctx, "", "check", "client-a")
	if err == nil || !strings.Contains(err.Error(), "client-a: basic upstream") || !strings.Contains(err.Error(), "FAILED") ||
		!strings.Contains(err.Error(), "next: the upstream refused the username or password: postern project update client-a --password-stdin") {
		t.Errorf("postern check with the wrong password: %v\n%s", err, out)
	}

	if err := e.SetProjectPassword(ctx, "client-a", password); err != nil {
		t.Fatal(err)
	}
	if out, err := e.Postern.CLI(ctx, "", "check"); err != nil || !strings.Contains(out, "client-a: basic upstream") || !strings.Contains(out, "all checked projects can deliver") {
		t.Errorf("postern check with the right password: %v\n%s", err, out)
	}
	// postern send-test goes straight to the upstream.
	if out, err := e.Postern.CLI(ctx, "", "send-test", "--to", "alice@dest.test", "client-a"); err != nil || !strings.Contains(out, "the upstream said: ") {
		t.Errorf("postern send-test: %v\n%s", err, out)
	}
	tm, err := e.Upstream.WaitForMessage(ctx, "alice@dest.test", harness.Subject("Postern test message (project client-a)"))
	if err != nil {
		t.Fatal(err)
	}
	if !tm.PassedThrough(a.Hostname) {
		t.Errorf("the test message was received by %v, want %s", tm.ReceivedBy(), a.Hostname)
	}

	stop := e.Front.KeepFlushing(ctx, 2*time.Second)
	defer stop()
	got, err := e.Upstream.WaitForMessage(ctx, "alice@dest.test", harness.WithID(m.ID))
	if err != nil {
		t.Fatal(err)
	}
	if !got.PassedThrough(a.Hostname) {
		t.Errorf("Received by %v, want %s", got.ReceivedBy(), a.Hostname)
	}
	if err := e.Front.WaitQueueEmpty(ctx); err != nil {
		t.Fatal(err)
	}
	if n := countByID(t, e, "alice@dest.test", m.ID); n != 1 {
		t.Errorf("%d copies delivered, want exactly 1", n)
	}
}

// While the project's upstream is down the mail waits in Postfix's queue with a temporary reason;
// when it is back, the mail leaves.
func TestRelayUpstreamDownThenBack(t *testing.T) {
	t.Parallel()
	// Postern answers at once, without trying, for down_backoff after a failed connection (15s by
	// default); a short one keeps the test short.
	e := startEnv(t, harness.Options{PosternConfig: "upstream: {down_backoff: 2s}"})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	a := e.Upstream.Org("client-a")
	user, _ := a.User()
	addProjects(t, ctx, e, harness.ProjectOptions{Name: "client-a", Org: "client-a"})
	if err := e.Upstream.StopOrg(ctx, "client-a"); err != nil {
		t.Fatal(err)
	}

	m := &harness.Mail{From: user, To: []string{"alice@dest.test"}}
	sent := submit(t, ctx, e, m)
	temporary := regexp.MustCompile(`\b4\d\d\b|\b4\.\d{1,3}\.\d{1,3}\b`)
	q, err := e.Front.WaitQueue(ctx, func(q []harness.QueuedMessage) bool {
		return len(q) == 1 && len(q[0].Recipients) == 1 &&
			temporary.MatchString(q[0].Recipients[0].DelayReason)
	})
	if err != nil {
		t.Fatalf("want the mail deferred with a 4xx reason: %v", err)
	}
	t.Logf("deferred: %s", q[0].Recipients[0].DelayReason)

	if err := e.Upstream.StartOrg(ctx, "client-a"); err != nil {
		t.Fatal(err)
	}
	stop := e.Front.KeepFlushing(ctx, 2*time.Second)
	defer stop()
	if _, err := e.Upstream.WaitForMessage(ctx, "alice@dest.test", harness.WithID(m.ID)); err != nil {
		t.Fatal(err)
	}
	if err := e.Front.WaitQueueEmpty(ctx); err != nil {
		t.Fatal(err)
	}
	if n := countByID(t, e, "alice@dest.test", m.ID); n != 1 {
		t.Errorf("%d copies delivered, want exactly 1", n)
	}
	if bounced := e.Front.LogLines(regexp.MustCompile(sent.QueueID + `: .*status=bounced`)); len(bounced) > 0 {
		t.Errorf("an unreachable upstream bounced the mail: %v", bounced)
	}
}

// When the upstream refuses one recipient with 550 5.1.1, only that recipient bounces (the
// bounce goes to the sender); the other is delivered.
func TestRelayRejectedRecipientBouncesAlone(t *testing.T) {
	t.Parallel()
	e := startEnv(t, harness.Options{})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	a := e.Upstream.Org("client-a")
	user, _ := a.User()
	addProjects(t, ctx, e, harness.ProjectOptions{Name: "client-a", Org: "client-a"})

	m := &harness.Mail{From: user, To: []string{"alice@dest.test", "nobody@dest.test"}}
	sent := submit(t, ctx, e, m)
	got, err := e.Upstream.WaitForMessage(ctx, "alice@dest.test", harness.WithID(m.ID))
	if err != nil {
		t.Fatal(err)
	}
	if !got.PassedThrough(a.Hostname) {
		t.Errorf("Received by %v, want %s", got.ReceivedBy(), a.Hostname)
	}
	bounced, err := e.Front.WaitLog(ctx, regexp.MustCompile(sent.QueueID+`: to=<nobody@dest.test>, .*dsn=5\.1\.1, status=bounced`))
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("bounced: %s", bounced)
	delivered := e.Front.LogLines(regexp.MustCompile(sent.QueueID + `: to=<alice@dest.test>, .*status=sent`))
	if len(delivered) != 1 {
		t.Errorf("log lines for the delivered recipient: %v, want one status=sent", delivered)
	}

	// The bounce goes to the sender, with the null sender, so Postern does not route it.
	notice, err := e.Upstream.WaitForMessage(ctx, user, func(n *harness.Message) bool {
		return strings.Contains(string(n.Body), "nobody@dest.test") && strings.Contains(string(n.Body), m.ID)
	})
	if err != nil {
		t.Fatalf("the sender got no bounce: %v", err)
	}
	body := string(notice.Body)
	if !strings.Contains(body, "Final-Recipient: rfc822; nobody@dest.test") || !strings.Contains(body, "Status: 5.1.1") {
		t.Errorf("the bounce does not report nobody@dest.test with 5.1.1:\n%s", body)
	}
	if strings.Contains(body, "Final-Recipient: rfc822; alice@dest.test") {
		t.Errorf("the bounce reports the delivered recipient too:\n%s", body)
	}
	if err := e.Front.WaitQueueEmpty(ctx); err != nil {
		t.Fatal(err)
	}
	if n := countByID(t, e, "alice@dest.test", m.ID); n != 1 {
		t.Errorf("%d copies delivered to alice, want exactly 1", n)
	}
}

// A project whose upstream accepts connections but never answers must not hold back the mail of
// another project.
func TestRelayHangingUpstreamDoesNotHoldBackOthers(t *testing.T) {
	t.Parallel()
	e := startEnv(t, harness.Options{})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	hang := startHangingServer(t)
	a, b := e.Upstream.Org("client-a"), e.Upstream.Org("client-b")
	userA, _ := a.User()
	userB, _ := b.User()
	addProjects(t, ctx, e,
		harness.ProjectOptions{Name: "client-a", Org: "client-a", Port: hang.port},
		harness.ProjectOptions{Name: "client-b", Org: "client-b"})

	for i := 0; i < 3; i++ {
		submit(t, ctx, e, &harness.Mail{From: userA, To: []string{"alice@dest.test"}})
	}
	if err := hang.waitConnected(ctx); err != nil {
		t.Fatalf("postern never connected to client-a's hanging upstream: %v", err)
	}

	mailB := &harness.Mail{From: userB, To: []string{"bob@dest.test"}}
	submit(t, ctx, e, mailB)
	// A generous deadline: this checks that B is not held back, not how fast it goes.
	wait, cancelWait := context.WithTimeout(ctx, 30*time.Second)
	defer cancelWait()
	got, err := e.Upstream.WaitForMessage(wait, "bob@dest.test", harness.WithID(mailB.ID))
	if err != nil {
		t.Fatalf("client-b's mail was held back by client-a's hanging upstream: %v", err)
	}
	if !got.PassedThrough(b.Hostname) {
		t.Errorf("Received by %v, want %s", got.ReceivedBy(), b.Hostname)
	}
	if n, _ := e.Upstream.Mailbox("alice@dest.test").Count(nil); n != 0 {
		t.Errorf("%d messages reached alice through a server that never answers", n)
	}
}

// Postfix can deliver to Postern over SMTP on loopback instead of LMTP (contrib master-smtp.cf).
func TestRelayOverSMTP(t *testing.T) {
	t.Parallel()
	e := startEnv(t, harness.Options{SMTP: true})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	a := e.Upstream.Org("client-a")
	user, _ := a.User()
	addProjects(t, ctx, e, harness.ProjectOptions{Name: "client-a", Org: "client-a"})
	if r, err := e.Postern.Lookup(ctx, user); err != nil || r != "OK postern:["+strings.Replace(e.Postern.SMTPAddr, ":", "]:", 1) {
		t.Errorf("socketmap answer %q, %v; want OK postern:[host]:port of the SMTP listener", r, err)
	}

	m := &harness.Mail{From: user, To: []string{"alice@dest.test", "nobody@dest.test"}}
	sent := submit(t, ctx, e, m)
	got, err := e.Upstream.WaitForMessage(ctx, "alice@dest.test", harness.WithID(m.ID))
	if err != nil {
		t.Fatal(err)
	}
	if !got.PassedThrough(a.Hostname) {
		t.Errorf("Received by %v, want %s", got.ReceivedBy(), a.Hostname)
	}
	if _, err := e.Front.WaitLog(ctx, regexp.MustCompile(sent.QueueID+`: to=<alice@dest.test>, relay=\S+\[`+
		regexp.QuoteMeta(strings.Replace(e.Postern.SMTPAddr, ":", "]:", 1))+`,.*status=sent`)); err != nil {
		t.Error(err)
	}
	if _, err := e.Front.WaitLog(ctx, regexp.MustCompile(sent.QueueID+`: to=<nobody@dest.test>, .*dsn=5\.1\.1, status=bounced`)); err != nil {
		t.Error(err)
	}
	if err := e.Front.WaitQueueEmpty(ctx); err != nil {
		t.Fatal(err)
	}
}

// hangingServer accepts TCP connections on 127.0.0.1 and never says a word.
type hangingServer struct {
	port      int
	connected chan struct{}
}

func startHangingServer(t *testing.T) *hangingServer {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	h := &hangingServer{port: ln.Addr().(*net.TCPAddr).Port, connected: make(chan struct{})}
	var (
		mu    sync.Mutex
		conns []net.Conn
		once  sync.Once
	)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
			once.Do(func() { close(h.connected) })
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		defer mu.Unlock()
		for _, c := range conns {
			c.Close()
		}
	})
	return h
}

func (h *hangingServer) waitConnected(ctx context.Context) error {
	select {
	case <-h.connected:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}
