//go:build integration

package integration

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"regexp"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/postern/postern/integration/harness"
)

// limitsAddProject adds a project with `postern project add` and extra flags (limits), through
// admin, and waits until every Postern given routes its sender.
func limitsAddProject(t *testing.T, ctx context.Context, e *harness.Env, admin *harness.Postern, po harness.ProjectOptions, extra []string, routers ...*harness.Postern) {
	t.Helper()
	args, password, senders, err := e.ProjectAddArgs(po)
	if err != nil {
		t.Fatal(err)
	}
	name := args[len(args)-1]
	args = append(append(append([]string{}, args[:len(args)-1]...), extra...), name)
	if _, err := admin.CLI(ctx, password+"\n", args...); err != nil {
		t.Fatalf("adding project %s: %v", po.Name, err)
	}
	for _, p := range routers {
		for _, s := range senders {
			if err := p.WaitRouted(ctx, s, true); err != nil {
				t.Fatalf("adding project %s: %v", po.Name, err)
			}
		}
	}
}

// sendUntilAccepted sends m to addr as Postfix would: a temporary refusal is tried again after a
// moment, a permanent one is a bounce and fails the test.
func sendUntilAccepted(ctx context.Context, addr string, m *harness.Mail) error {
	for {
		_, err := harness.Client{Addr: addr}.Send(ctx, m)
		var se *smtp.SMTPError
		switch {
		case err == nil:
			return nil
		case errors.As(err, &se) && se.Code >= 500:
			return fmt.Errorf("bounced: %w", err)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("never accepted: %w (last: %v)", ctx.Err(), err)
		case <-time.After(500 * time.Millisecond):
		}
	}
}

// limitsDelivered waits, flushing the front as an operator would, until every message of mails
// is in mailbox exactly once, and checks that the front bounced nothing.
func limitsDelivered(t *testing.T, ctx context.Context, e *harness.Env, mailbox string, mails []*harness.Mail) {
	t.Helper()
	wait, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	stop := e.Front.KeepFlushing(wait, 2*time.Second)
	defer stop()
	for _, m := range mails {
		if _, err := e.Upstream.WaitForMessage(wait, mailbox, harness.WithID(m.ID)); err != nil {
			t.Fatalf("message %s: %v", m.ID, err)
		}
		if n := countByID(t, e, mailbox, m.ID); n != 1 {
			t.Errorf("message %s arrived %d times, want 1", m.ID, n)
		}
	}
	if bounced := e.Front.LogLines(regexp.MustCompile(`status=bounced`)); len(bounced) > 0 {
		t.Errorf("the front bounced mail: %q", bounced)
	}
}

// limitsSubmit submits n messages from sender to rcpt through the front and returns them.
func limitsSubmit(t *testing.T, ctx context.Context, e *harness.Env, name, sender, rcpt string, n int) []*harness.Mail {
	t.Helper()
	b := harness.NewBatch(name, e.Front)
	var mails []*harness.Mail
	for range n {
		m := &harness.Mail{From: sender, To: []string{rcpt}}
		if err := b.Submit(ctx, m); err != nil {
			t.Fatal(err)
		}
		mails = append(mails, m)
	}
	return mails
}

// Two Postern replicas share one Vault store (limits.replicas: 2) and one project whose mailbox
// allows 3 connections (the default). Both deliver a burst at once: one from the front Postfix,
// the other from direct SMTP clients. The upstream, behind a proxy that counts the sessions open
// at once, never sees more than 3; every message arrives, none bounced.
func TestLimitsTwoReplicasShareConnections(t *testing.T) {
	t.Parallel()
	harness.Require(t)
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	const replicas = "limits: {replicas: 2}"
	v := harness.StartVault(t)
	e := startEnv(t, harness.Options{PosternStore: v.StoreYAML(mustTokenFile(t, v)), PosternConfig: replicas, LogLevel: "info"})
	e.Secrets.Add("Vault root token", v.RootToken)
	bin, err := buildPostern()
	if err != nil {
		t.Fatal(err)
	}
	p2, err := harness.NewPostern(harness.PosternOptions{Bin: bin, Dir: filepath.Join(e.Dir, "postern2"), Instance: "it2", SMTP: true,
		LogLevel: "info", Store: v.StoreYAML(mustTokenFile(t, v)), ExtraConfig: replicas})
	if err != nil {
		t.Fatal(err)
	}
	harness.StartPostern(t, p2)

	a := e.Upstream.Org("client-a")
	user, _ := a.User()
	proxy := harness.StartFaultProxy(t, e.CA, a.Addr())
	limitsAddProject(t, ctx, e, e.Postern, harness.ProjectOptions{Name: "client-a", Org: "client-a", Port: proxy.Port}, nil, e.Postern, p2)

	const perReplica = 40
	var direct []*harness.Mail
	for i := range perReplica {
		direct = append(direct, &harness.Mail{ID: fmt.Sprintf("direct-%04d", i), From: user, To: []string{"alice@dest.test"}})
	}
	var wg sync.WaitGroup
	errs := make(chan error, perReplica)
	work := make(chan *harness.Mail)
	for range 8 { // eight clients at once on the second replica
		wg.Go(func() {
			for m := range work {
				if err := sendUntilAccepted(ctx, p2.SMTPAddr, m); err != nil {
					errs <- err
				}
			}
		})
	}
	wg.Go(func() {
		for _, m := range direct {
			work <- m
		}
		close(work)
	})
	viaFront := limitsSubmit(t, ctx, e, "two-replicas", user, "alice@dest.test", perReplica)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Errorf("direct to the second replica: %v", err)
	}
	limitsDelivered(t, ctx, e, "alice@dest.test", append(viaFront, direct...))
	t.Logf("client-a: at most %d upstream connections open at once across both replicas", proxy.MaxOpen())
	if limit := 3; proxy.MaxOpen() > limit {
		t.Errorf("the upstream saw %d connections at once from two replicas, more than the mailbox's limit of %d", proxy.MaxOpen(), limit)
	}
	if proxy.MaxOpen() < 2 {
		t.Errorf("the upstream saw at most %d connection at once: the burst did not reach both replicas", proxy.MaxOpen())
	}
}

// A project over its messages-per-minute limit: Postern waits limits.rate_wait (1 s) for a slot,
// then defers the message with 451 4.7.0; Postfix keeps it and retries, and every message is
// delivered in the end, none bounced. A project over its recipients per day has its mail
// deferred with the reason, never bounced, and it flows once the limit is raised.
func TestLimitsPerMinuteDelaysMail(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	e := startEnv(t, harness.Options{PosternConfig: "limits: {rate_wait: 1s}", LogLevel: "info"})
	a, bo := e.Upstream.Org("client-a"), e.Upstream.Org("client-b")
	userA, _ := a.User()
	userB, _ := bo.User()
	// One message every 5 seconds.
	limitsAddProject(t, ctx, e, e.Postern, harness.ProjectOptions{Name: "client-a", Org: "client-a"},
		[]string{"--messages-per-minute", "12"}, e.Postern)
	limitsAddProject(t, ctx, e, e.Postern, harness.ProjectOptions{Name: "client-b", Org: "client-b"},
		[]string{"--recipients-per-day", "2"}, e.Postern)

	t.Run("per minute: delayed, then delivered", func(t *testing.T) {
		mails := limitsSubmit(t, ctx, e, "per-minute", userA, "alice@dest.test", 4)
		limitsDelivered(t, ctx, e, "alice@dest.test", mails)
		deferred := e.Front.LogLines(regexp.MustCompile(`status=deferred .*451 4\.7\.0 rate limit reached for project client-a`))
		if len(deferred) == 0 {
			t.Errorf("no message was deferred by the rate limit; the front's log:\n%s", e.Front.Log())
		}
		t.Logf("%d deferrals by the rate limit before every message was delivered", len(deferred))
	})

	t.Run("recipients per day: deferred, then delivered once raised", func(t *testing.T) {
		mails := limitsSubmit(t, ctx, e, "per-day", userB, "bob@dest.test", 3)
		wait, stop := context.WithTimeout(ctx, time.Minute)
		defer stop()
		if _, err := e.Front.WaitLog(wait, regexp.MustCompile(`status=deferred .*451 4\.7\.0 daily recipient limit reached for project client-b \(2 recipients a day\)`)); err != nil {
			t.Fatalf("the third recipient of the day was not deferred with the reason: %v", err)
		}
		if q, err := e.Front.Queue(ctx); err != nil || len(q) != 1 {
			t.Fatalf("the front's queue: %v, %v; want the third message held", q, err)
		}
		if _, err := e.Postern.CLI(ctx, "", "project", "update", "--recipients-per-day", "10", "client-b"); err != nil {
			t.Fatal(err)
		}
		limitsDelivered(t, ctx, e, "bob@dest.test", mails)
	})
}
