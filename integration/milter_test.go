//go:build integration

package integration

import (
	"context"
	"net/textproto"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/postern/postern/integration/harness"
	"github.com/postern/postern/sidecar/project"
	"github.com/postern/postern/sidecar/secret"
	"github.com/postern/postern/sidecar/store/boltstore"
)

// milterAddProject adds a basic-auth project like Env.AddProject, with extra flags of
// `postern project add` (e.g. --max-recipients 2) placed before the project's name.
func milterAddProject(t *testing.T, ctx context.Context, e *harness.Env, po harness.ProjectOptions, extra ...string) {
	t.Helper()
	args, password, senders, err := e.ProjectAddArgs(po)
	if err != nil {
		t.Fatal(err)
	}
	name := args[len(args)-1]
	args = append(append(args[:len(args)-1:len(args)-1], extra...), name)
	if _, err := e.Postern.CLI(ctx, password+"\n", args...); err != nil {
		t.Fatalf("adding project %s: %v", po.Name, err)
	}
	for _, s := range senders {
		if err := e.Postern.WaitRouted(ctx, s, true); err != nil {
			t.Fatal(err)
		}
	}
}

// milterAddOAuthProject adds an OAuth project for sender whose token record says that the mailbox
// must be signed in again. Its identity provider is never asked: the broker reads the record
// first and stops there.
func milterAddOAuthProject(t *testing.T, ctx context.Context, e *harness.Env, name, sender string) {
	t.Helper()
	org := e.Upstream.Org("client-a")
	user, _ := org.User()
	if _, err := e.Postern.CLI(ctx, "",
		"project", "add",
		"--sender", sender,
		"--host", "127.0.0.1", "--port", strconv.Itoa(org.Port), "--tls", "starttls", "--ca-file", e.CA.CAFile,
		"--username", user,
		"--auth", "oauth2", "--provider", "generic", "--client-id", "postern-it",
		"--auth-url", "https://idp.invalid/authorize", "--token-url", "https://idp.invalid/token",
		name); err != nil {
		t.Fatal(err)
	}
	st, err := boltstore.Open(ctx, boltstore.Options{
		Path:    filepath.Join(e.Postern.Dir, "store.db"),
		KeyFile: filepath.Join(e.Postern.Dir, "store.key"),
	})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	if _, err := st.PutToken(ctx, name, project.Token{
		RefreshToken: secret.New("revoked-refresh-token"),
		Account:      user,
		State:        project.TokenNeedsReauth,
		Reason:       "invalid_grant: the refresh token was revoked",
		UpdatedAt:    time.Now(),
	}); err != nil {
		t.Fatalf("writing the token record of %s: %v", name, err)
	}
	if err := e.Postern.WaitRouted(ctx, sender, true); err != nil {
		t.Fatal(err)
	}
}

// milterTransact submits m and fails t on anything but an SMTP reply.
func milterTransact(t *testing.T, ctx context.Context, e *harness.Env, m *harness.Mail) harness.Transaction {
	t.Helper()
	tx, err := e.Front.Transact(ctx, m)
	if err != nil {
		t.Fatalf("submitting mail from %s: %v", m.From, err)
	}
	t.Logf("MAIL %s; RCPT %v; DATA %s", tx.Mail, tx.Rcpt, tx.Data)
	return tx
}

// milterWantReply fails t unless r has the code and enhanced code and its text contains every
// one of texts.
func milterWantReply(t *testing.T, stage string, r harness.Reply, code int, enhanced string, texts ...string) {
	t.Helper()
	if r.Code != code || r.Enhanced != enhanced {
		t.Errorf("%s: reply %q, want %d %s", stage, r, code, enhanced)
		return
	}
	for _, s := range texts {
		if !strings.Contains(r.Text, s) {
			t.Errorf("%s: reply %q does not say %q", stage, r, s)
		}
	}
}

// milterFlushAndSettle waits until the front's queue is empty: every accepted message was
// delivered or bounced, so a mailbox that lacks a message now will not get it later. It asks for
// a queue run every second: a flush that meets a message still being delivered leaves it in the
// incoming queue until the queue manager's next scan.
func milterFlushAndSettle(t *testing.T, ctx context.Context, e *harness.Env) {
	t.Helper()
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	var last []harness.QueuedMessage
	for {
		q, err := e.Front.Queue(ctx)
		if err == nil && len(q) == 0 {
			return
		}
		last = q
		if err := e.Front.Flush(ctx); err != nil && ctx.Err() == nil {
			t.Fatal(err)
		}
		select {
		case <-ctx.Done():
			t.Fatalf("the front's queue did not empty: %v", last)
		case <-time.After(time.Second):
		}
	}
}

// With contrib/postfix/main-milter.cf, Postfix asks Postern's milter at submission time, and the
// application hears what the upstream would refuse while it is still connected.
func TestMilterChecksAtSubmission(t *testing.T) {
	t.Parallel()
	e := startEnv(t, harness.Options{Milter: true})
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	a, b := e.Upstream.Org("client-a"), e.Upstream.Org("client-b")
	userA, _ := a.User()
	userB, _ := b.User()
	milterAddProject(t, ctx, e, harness.ProjectOptions{Name: "client-a", Org: "client-a"}, "--max-recipients", "2")
	milterAddProject(t, ctx, e, harness.ProjectOptions{Name: "paused", Org: "client-b"})
	if _, err := e.Postern.CLI(ctx, "", "project", "disable", "paused"); err != nil {
		t.Fatal(err)
	}
	milterAddOAuthProject(t, ctx, e, "oauth-app", "app@oauth.test")
	if err := e.Postern.WaitRouted(ctx, userB, true); err != nil {
		t.Fatal(err)
	}

	// Each case submits one message; afterwards every accepted message must have left the
	// queue, so a missing copy is missing for good.
	t.Run("From header the mailbox may not send as", func(t *testing.T) {
		m := &harness.Mail{From: userA, To: []string{"alice@dest.test"},
			Header: map[string]string{"From": "Boss <boss@elsewhere.test>"}}
		tx := milterTransact(t, ctx, e, m)
		if !tx.Mail.OK() || len(tx.Rcpt) != 1 || !tx.Rcpt[0].OK() {
			t.Fatalf("MAIL %s, RCPT %v: want both accepted (the From header is checked at the end of data)", tx.Mail, tx.Rcpt)
		}
		milterWantReply(t, "end of data", tx.Data, 550, "5.7.60",
			"From <boss@elsewhere.test> is not allowed for client-a", "the mailbox may send as", userA)
		milterFlushAndSettle(t, ctx, e)
		if n := countByID(t, e, "alice@dest.test", m.ID); n != 0 {
			t.Errorf("%d copies reached the upstream, want none", n)
		}
		if d := e.Postern.MilterDecisions("action=reject", "project=client-a"); len(d) == 0 {
			t.Errorf("postern logged no reject decision for client-a")
		}
	})

	t.Run("sender of a routed domain in no project", func(t *testing.T) {
		m := &harness.Mail{From: "stranger@client-a.test", To: []string{"alice@dest.test"}}
		tx := milterTransact(t, ctx, e, m)
		milterWantReply(t, "MAIL FROM", tx.Mail, 550, "5.7.1", "sender <stranger@client-a.test> is not served by Postern")
		if len(tx.Rcpt) != 0 {
			t.Errorf("RCPT was sent after MAIL FROM was refused")
		}
	})

	t.Run("too many recipients", func(t *testing.T) {
		m := &harness.Mail{From: userA, To: []string{"alice@dest.test", "bob@dest.test", "carol@dest.test"}}
		tx := milterTransact(t, ctx, e, m)
		if len(tx.Rcpt) != 3 {
			t.Fatalf("RCPT replies %v, want 3", tx.Rcpt)
		}
		for i, r := range tx.Rcpt[:2] {
			if !r.OK() {
				t.Errorf("RCPT %s: %s, want accepted", m.To[i], r)
			}
		}
		milterWantReply(t, "third RCPT", tx.Rcpt[2], 452, "4.5.3", "too many recipients", "client-a allows at most 2 per message")
		if !tx.Data.OK() || tx.QueueID == "" {
			t.Fatalf("end of data: %s, want the message queued for the two accepted recipients", tx.Data)
		}
		for _, rcpt := range []string{"alice@dest.test", "bob@dest.test"} {
			got, err := e.Upstream.WaitForMessage(ctx, rcpt, harness.WithID(m.ID))
			if err != nil {
				t.Fatal(err)
			}
			if !got.PassedThrough(a.Hostname) {
				t.Errorf("%s: Received by %v, want %s", rcpt, got.ReceivedBy(), a.Hostname)
			}
		}
		milterFlushAndSettle(t, ctx, e)
		for rcpt, want := range map[string]int{"alice@dest.test": 1, "bob@dest.test": 1, "carol@dest.test": 0} {
			if n := countByID(t, e, rcpt, m.ID); n != want {
				t.Errorf("%s has %d copies, want %d", rcpt, n, want)
			}
		}
	})

	t.Run("disabled project", func(t *testing.T) {
		m := &harness.Mail{From: userB, To: []string{"bob@dest.test"}}
		tx := milterTransact(t, ctx, e, m)
		milterWantReply(t, "MAIL FROM", tx.Mail, 451, "4.7.0", "project paused is disabled")
		if len(tx.Rcpt) != 0 {
			t.Errorf("RCPT was sent after MAIL FROM was refused")
		}
	})

	t.Run("ordinary mail passes unchanged", func(t *testing.T) {
		m := &harness.Mail{From: userA, To: []string{"alice@dest.test"},
			Header: map[string]string{"From": "Client A <" + userA + ">", "X-Application": "invoices", "Date": milterDate},
			Body:   "Line one.\nLine two, with trailing space \n\n-- \nsignature\n"}
		other := &harness.Mail{From: "app@other.test", To: []string{"carol@dest.test"}, Header: map[string]string{"Date": milterDate}}
		for _, mm := range []*harness.Mail{m, other} {
			tx := milterTransact(t, ctx, e, mm)
			if !tx.Data.OK() || tx.QueueID == "" {
				t.Fatalf("mail from %s: %s, want queued", mm.From, tx.Data)
			}
		}
		got, err := e.Upstream.WaitForMessage(ctx, "alice@dest.test", harness.WithID(m.ID))
		if err != nil {
			t.Fatal(err)
		}
		if !got.PassedThrough(a.Hostname) {
			t.Errorf("Received by %v, want %s", got.ReceivedBy(), a.Hostname)
		}
		milterSameMessage(t, m.Bytes(), got)
		gotOther, err := e.Upstream.WaitForMessage(ctx, "carol@dest.test", harness.WithID(other.ID))
		if err != nil {
			t.Fatal(err)
		}
		if !gotOther.PassedThrough(e.Upstream.DirectHostname) {
			t.Errorf("unrelated mail: Received by %v, want %s", gotOther.ReceivedBy(), e.Upstream.DirectHostname)
		}
		milterSameMessage(t, other.Bytes(), gotOther)
		if d := e.Postern.MilterDecisions("action=accept", "project=client-a", "stage=eoh"); len(d) == 0 {
			t.Errorf("postern logged no accept decision for client-a")
		}
		milterFlushAndSettle(t, ctx, e)
	})

	t.Run("credential needs re-authorisation", func(t *testing.T) {
		// The milter asks the broker, which reads the project's token record the first time.
		m := &harness.Mail{From: "app@oauth.test", To: []string{"carol@dest.test"}}
		tx := milterTransact(t, ctx, e, m)
		milterWantReply(t, "MAIL FROM", tx.Mail, 451, "4.7.0", "project oauth-app needs re-authorisation", "sign in again")
		if strings.Contains(tx.Mail.Text, "revoked") || strings.Contains(tx.Mail.Text, "invalid_grant") {
			t.Errorf("the reply shows the provider's reason: %s", tx.Mail)
		}
		if len(tx.Rcpt) != 0 {
			t.Errorf("RCPT was sent after MAIL FROM was refused")
		}
		q, err := e.Front.Queue(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if len(q) != 0 {
			t.Errorf("queue %v, want nothing queued", q)
		}
		if bounced := e.Front.LogLines(regexp.MustCompile(`status=bounced`)); len(bounced) > 0 {
			t.Errorf("mail bounced: %v", bounced)
		}
	})
}

// milterDate is a fixed Date field, so that a message renders the same when submitted and when
// compared with what arrived.
const milterDate = "Mon, 02 Nov 2026 10:00:00 +0000"

// milterTraceFields are what Postfix adds on the way; everything else must arrive as submitted.
var milterTraceFields = map[string]bool{"Received": true, "Return-Path": true, "Delivered-To": true, "X-Original-To": true}

// milterSameMessage checks that the delivered message has exactly the submitted header fields
// (besides trace fields) with their values, and the same body.
func milterSameMessage(t *testing.T, sent []byte, got *harness.Message) {
	t.Helper()
	want, err := harness.ParseMessage("submitted", sent)
	if err != nil {
		t.Fatal(err)
	}
	for k, vs := range want.Header {
		if g := got.Header.Values(k); strings.Join(g, "\n") != strings.Join(vs, "\n") {
			t.Errorf("header %s: got %q, want %q", k, g, vs)
		}
	}
	for k, vs := range got.Header {
		if _, ok := want.Header[textproto.CanonicalMIMEHeaderKey(k)]; !ok && !milterTraceFields[k] {
			t.Errorf("header %s: %q was added on the way", k, vs)
		}
	}
	if g, w := strings.ReplaceAll(string(got.Body), "\r\n", "\n"), strings.ReplaceAll(string(want.Body), "\r\n", "\n"); g != w {
		t.Errorf("body changed:\n got  %q\n want %q", g, w)
	}
}

// contrib/postfix/main-milter.cf sets default_action=accept: while Postern's milter cannot be
// reached, Postfix accepts mail without the early checks and Postern enforces what it can at
// delivery. When Postern is down altogether, its socketmap decides instead: Postfix refuses new
// mail of every sender with 451 4.3.0, and mail already queued waits until Postern is back.
func TestMilterUnreachable(t *testing.T) {
	t.Parallel()
	// dave and erin receive only mail submitted while Postern is stopped: Postfix's smtpd
	// remembers its last address resolution, and a fresh sender and recipient pair makes it ask.
	e := startEnv(t, harness.Options{Milter: true, Upstream: harness.UpstreamOptions{
		Mailboxes: append(harness.DefaultMailboxes(), "dave@dest.test", "erin@dest.test")}})
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	a := e.Upstream.Org("client-a")
	userA, _ := a.User()
	milterAddProject(t, ctx, e, harness.ProjectOptions{Name: "client-a", Org: "client-a"}, "--max-recipients", "2")
	if err := e.Postern.CutMilter(); err != nil {
		t.Fatal(err)
	}

	t.Run("milter socket gone", func(t *testing.T) {
		other := &harness.Mail{From: "app@other.test", To: []string{"carol@dest.test"}}
		tooMany := &harness.Mail{From: userA, To: []string{"alice@dest.test", "bob@dest.test", "carol@dest.test"}}
		// The upstream of these tests does not check From headers; Exchange Online would refuse
		// this one after DATA (5.7.60), and Postern would pass that refusal on as a bounce.
		foreignFrom := &harness.Mail{From: userA, To: []string{"alice@dest.test"},
			Header: map[string]string{"From": "boss@elsewhere.test"}}
		for _, m := range []*harness.Mail{other, tooMany, foreignFrom} {
			tx := milterTransact(t, ctx, e, m)
			for i, r := range tx.Rcpt {
				if !r.OK() {
					t.Errorf("mail from %s: RCPT %s: %s, want accepted (no milter)", m.From, m.To[i], r)
				}
			}
			if !tx.Mail.OK() || !tx.Data.OK() || tx.QueueID == "" {
				t.Fatalf("mail from %s: MAIL %s, DATA %s; want it queued without the milter", m.From, tx.Mail, tx.Data)
			}
		}
		if _, err := e.Front.WaitLog(ctx, regexp.MustCompile(`warning: connect to Milter service unix:`+
			regexp.QuoteMeta(e.Postern.MilterSocket)+`: No such file or directory`)); err != nil {
			t.Errorf("postfix did not log the unreachable milter: %v", err)
		}
		milterFlushAndSettle(t, ctx, e)
		// Postern's LMTP server still allows two recipients per transaction: it answers 452 4.5.3
		// to the third and Postfix delivers it in another transaction.
		for _, rcpt := range tooMany.To {
			if n := countByID(t, e, rcpt, tooMany.ID); n != 1 {
				t.Errorf("%s has %d copies, want 1", rcpt, n)
			}
		}
		if l := e.Front.LogLines(regexp.MustCompile(`postfix/postern/lmtp\[.*said: 452 4\.5\.3`)); len(l) == 0 {
			t.Errorf("Postern did not refuse the third recipient at delivery")
		}
		if n := countByID(t, e, "carol@dest.test", other.ID); n != 1 {
			t.Errorf("unrelated mail: %d copies, want 1", n)
		}
		if n := countByID(t, e, "alice@dest.test", foreignFrom.ID); n != 1 {
			t.Errorf("mail with a foreign From: %d copies, want 1 (accepted without the milter)", n)
		}
		if d := e.Postern.MilterDecisions(); len(d) != 0 {
			t.Errorf("the milter decided although its socket was gone: %v", d)
		}
	})

	t.Run("postern stopped", func(t *testing.T) {
		// A message waits in the queue for the upstream ...
		if err := e.Upstream.StopOrg(ctx, "client-a"); err != nil {
			t.Fatal(err)
		}
		queued := &harness.Mail{From: userA, To: []string{"alice@dest.test"}}
		if tx := milterTransact(t, ctx, e, queued); !tx.Data.OK() {
			t.Fatalf("%s, want queued", tx.Data)
		}
		if _, err := e.Front.WaitQueue(ctx, func(q []harness.QueuedMessage) bool {
			return len(q) == 1 && len(q[0].Recipients) == 1 && q[0].Recipients[0].DelayReason != ""
		}); err != nil {
			t.Fatal(err)
		}
		// ... when Postern stops.
		if err := e.Postern.Stop(); err != nil {
			t.Fatal(err)
		}
		if err := e.Upstream.StartOrg(ctx, "client-a"); err != nil {
			t.Fatal(err)
		}
		// New mail of every sender, routed or not, is refused for now: the socketmap cannot
		// answer, whatever the milter's default_action says.
		for from, rcpt := range map[string]string{userA: "dave@dest.test", "app@other.test": "erin@dest.test"} {
			tx := milterTransact(t, ctx, e, &harness.Mail{From: from, To: []string{rcpt}})
			if !tx.Mail.OK() || len(tx.Rcpt) != 1 {
				t.Fatalf("mail from %s: MAIL %s, RCPT %v", from, tx.Mail, tx.Rcpt)
			}
			milterWantReply(t, "RCPT from "+from, tx.Rcpt[0], 451, "4.3.0", "Temporary lookup failure")
		}
		if err := e.Front.Flush(ctx); err != nil {
			t.Fatal(err)
		}
		wait, cancelWait := context.WithTimeout(ctx, time.Minute)
		defer cancelWait()
		if _, err := e.Front.WaitQueue(wait, func(q []harness.QueuedMessage) bool {
			return len(q) == 1 && len(q[0].Recipients) == 1 && strings.Contains(q[0].Recipients[0].DelayReason, "address resolver failure")
		}); err != nil {
			t.Errorf("want the queued message deferred with \"address resolver failure\" while Postern is down: %v", err)
		}

		if err := e.Postern.Start(ctx); err != nil {
			t.Fatal(err)
		}
		if err := e.Postern.WaitRouted(ctx, userA, true); err != nil {
			t.Fatal(err)
		}
		milterFlushAndSettle(t, ctx, e)
		if n := countByID(t, e, "alice@dest.test", queued.ID); n != 1 {
			t.Errorf("the queued message: %d copies, want exactly 1", n)
		}
		if bounced := e.Front.LogLines(regexp.MustCompile(`status=bounced`)); len(bounced) > 0 {
			t.Errorf("mail bounced: %v", bounced)
		}
		// The milter is back with Postern.
		tx := milterTransact(t, ctx, e, &harness.Mail{From: userA, To: []string{"alice@dest.test"},
			Header: map[string]string{"From": "boss@elsewhere.test"}})
		milterWantReply(t, "end of data", tx.Data, 550, "5.7.60", "not allowed for client-a")
	})
}
