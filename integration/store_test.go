//go:build integration

package integration

import (
	"context"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/postern/postern/integration/harness"
)

// A state volume that lost Postern's store never turns into a new, empty store, and mail Postfix
// already holds for a project is never bounced or sent without the project's credentials:
//
//  1. mail for client-a is queued in the front Postfix (its postern transport held back with
//     defer_transports);
//  2. with the store's data file gone, `postern serve` refuses to start and names the file and the
//     fix, and makes no new store;
//  3. with an empty copy of the data file put back (made right after `postern init`), while the
//     index file beside it records one project, Postern starts but answers TEMP: once the transport
//     is released, Postfix defers the mail, which stays queued (postqueue -j), is not bounced and
//     does not leave through the default transport;
//  4. with the real data file restored, the mail leaves through client-a's own server.
func TestStoreLostKeepsMailQueued(t *testing.T) {
	t.Parallel()
	e := startEnv(t, harness.Options{})
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	dataFile := filepath.Join(e.Postern.Dir, "store.db")
	empty, err := os.ReadFile(dataFile)
	if err != nil {
		t.Fatal(err)
	}
	a := e.Upstream.Org("client-a")
	user, _ := a.User()
	addProjects(t, ctx, e, harness.ProjectOptions{Name: "client-a", Org: "client-a"})

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

	// 2. The data file is gone: serve refuses, naming it, and makes nothing.
	if err := e.Postern.Stop(); err != nil {
		t.Fatal(err)
	}
	saved := dataFile + ".saved"
	if err := os.Rename(dataFile, saved); err != nil {
		t.Fatal(err)
	}
	err = e.Postern.Start(ctx)
	if err == nil || !strings.Contains(err.Error(), "store "+dataFile+" does not exist") ||
		!strings.Contains(err.Error(), "restore the data file from backup or mount the volume") {
		t.Fatalf("postern serve without its data file: %v", err)
	}
	if _, err := os.Stat(dataFile); !os.IsNotExist(err) {
		t.Fatalf("postern serve made a data file: %v", err)
	}

	// 3. An empty data file in its place: mail is deferred, not rerouted, not bounced.
	if err := os.WriteFile(dataFile, empty, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := e.Postern.Start(ctx); err != nil {
		t.Fatal(err)
	}
	if r, err := e.Postern.Lookup(ctx, user); err != nil || !strings.HasPrefix(r, "TEMP ") {
		t.Fatalf("socketmap lookup of %s with the projects lost: %q, %v; want TEMP", user, r, err)
	}
	if err := e.Front.Postconf(ctx, "defer_transports="); err != nil {
		t.Fatal(err)
	}
	if err := e.Front.Reload(ctx); err != nil {
		t.Fatal(err)
	}
	stop := e.Front.KeepFlushing(ctx, time.Second)
	q, err := e.Front.WaitQueue(ctx, func(q []harness.QueuedMessage) bool {
		return len(q) == 1 && len(q[0].Recipients) == 1 && q[0].Recipients[0].DelayReason != "" &&
			!strings.Contains(q[0].Recipients[0].DelayReason, "deferred transport")
	})
	stop()
	if err != nil {
		t.Fatalf("want the mail deferred by the lookup: %v", err)
	}
	t.Logf("deferred: %s", q[0].Recipients[0].DelayReason)
	if q[0].QueueID != sent.QueueID || q[0].QueueName != "deferred" {
		t.Fatalf("queue: %+v", q)
	}
	if lines := e.Front.LogLines(regexp.MustCompile(sent.QueueID + `: .*status=(bounced|sent)`)); len(lines) > 0 {
		t.Fatalf("the mail left the queue while the store had lost its projects: %v", lines)
	}
	if n := countByID(t, e, "alice@dest.test", m.ID); n != 0 {
		t.Fatalf("%d copies delivered while the store had lost its projects", n)
	}
	if !strings.Contains(e.Postern.Log(), "store.db.index") {
		t.Errorf("postern's log does not name the index file that caught it:\n%s", e.Postern.Log())
	}

	// 4. The real data file is back: the mail leaves through client-a's server.
	if err := os.Rename(saved, dataFile); err != nil {
		t.Fatal(err)
	}
	if err := e.Postern.WaitRouted(ctx, user, true); err != nil {
		t.Fatal(err)
	}
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
}
