//go:build integration

package integration

import (
	"context"
	"fmt"
	"os"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/postern/postern/integration/harness"
)

// Removing a project never sends the mail Postfix already holds for it elsewhere:
//
//  1. mail for client-a is queued in the front Postfix (its postern transport held back with
//     defer_transports);
//  2. `postern project remove client-a` says that Postfix holds one message for it (postqueue -j
//     in the front's configuration directory);
//  3. once Postern has read the removal, the transport is released: Postfix retries, the socketmap
//     still routes client-a's sender to Postern, which defers the mail with 451 4.7.0 naming the
//     removal. The mail is neither bounced nor delivered through the front's relayhost (the
//     upstream's direct listener, which must receive nothing);
//  4. `postern project add client-a` again: the mail leaves through client-a's own server.
func TestRemovedProjectKeepsItsMailQueued(t *testing.T) {
	t.Parallel()
	e := startEnv(t, harness.Options{})
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	a := e.Upstream.Org("client-a")
	user, _ := a.User()
	addProjects(t, ctx, e, harness.ProjectOptions{Name: "client-a", Org: "client-a"})
	f, err := os.OpenFile(e.Postern.Config, os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteString("postfix: {config_directory: " + e.Front.ConfigDir + "}\n"); err != nil {
		t.Fatal(err)
	}
	f.Close()

	// 1. Mail for client-a waits in the front's queue.
	if err := e.Front.Postconf(ctx, "defer_transports=postern"); err != nil {
		t.Fatal(err)
	}
	if err := e.Front.Reload(ctx); err != nil {
		t.Fatal(err)
	}
	m := &harness.Mail{From: user, To: []string{"alice@dest.test"}}
	sent := submit(t, ctx, e, m)
	if _, err := e.Front.WaitQueue(ctx, func(q []harness.QueuedMessage) bool {
		return len(q) == 1 && q[0].QueueID == sent.QueueID
	}); err != nil {
		t.Fatalf("the mail is not queued: %v", err)
	}

	// 2. Remove the project: it says what Postfix holds for it.
	out, err := e.Postern.CLI(ctx, "", "project", "remove", "client-a")
	if err != nil {
		t.Fatalf("project remove: %v\n%s", err, out)
	}
	t.Logf("project remove:\n%s", out)
	if !strings.Contains(out, "holds 1 message(s) from its senders") {
		t.Errorf("project remove does not count the queued message:\n%s", out)
	}
	body, err := waitProjects(ctx, e, func(body string) bool { return !strings.Contains(body, `"state":"ok"`) })
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(body, `"state":"removed"`) {
		t.Errorf("/api/v1/projects does not show client-a removed: %s", body)
	}

	// 3. Released, the mail is deferred by Postern: not bounced, not relayed elsewhere.
	if err := e.Front.Postconf(ctx, "defer_transports="); err != nil {
		t.Fatal(err)
	}
	if err := e.Front.Reload(ctx); err != nil {
		t.Fatal(err)
	}
	stop := e.Front.KeepFlushing(ctx, time.Second)
	q, err := e.Front.WaitQueue(ctx, func(q []harness.QueuedMessage) bool {
		return len(q) == 1 && len(q[0].Recipients) == 1 && strings.Contains(q[0].Recipients[0].DelayReason, "was removed")
	})
	stop()
	if err != nil {
		t.Fatalf("want the mail deferred by Postern for the removed project: %v\n%s", err, e.Front.Log())
	}
	t.Logf("deferred: %s", q[0].Recipients[0].DelayReason)
	if q[0].QueueID != sent.QueueID || !strings.Contains(q[0].Recipients[0].DelayReason, "4.7.0") {
		t.Fatalf("queue: %+v", q)
	}
	if lines := e.Front.LogLines(regexp.MustCompile(sent.QueueID + `: .*status=(bounced|sent)`)); len(lines) > 0 {
		t.Fatalf("the mail of a removed project left the queue: %v", lines)
	}
	if n := countByID(t, e, "alice@dest.test", m.ID); n != 0 {
		t.Fatalf("%d copies of a removed project's mail were delivered elsewhere", n)
	}

	// 4. Added again, the project's mail flows through its own server.
	addProjects(t, ctx, e, harness.ProjectOptions{Name: "client-a", Org: "client-a"})
	stop = e.Front.KeepFlushing(ctx, time.Second)
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

// waitProjects waits until Postern's /api/v1/projects answers a body cond accepts, and returns it.
func waitProjects(ctx context.Context, e *harness.Env, cond func(body string) bool) (string, error) {
	for {
		body, err := e.Postern.Get(ctx, "/api/v1/projects")
		if err == nil && cond(body) {
			return body, nil
		}
		select {
		case <-ctx.Done():
			return "", fmt.Errorf("waiting for /api/v1/projects: %w; last answer: %s %v", context.Cause(ctx), body, err)
		case <-time.After(200 * time.Millisecond):
		}
	}
}
