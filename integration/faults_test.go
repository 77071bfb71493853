//go:build integration

package integration

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/postern/postern/integration/harness"
	"github.com/postern/postern/sidecar/project"
	"github.com/postern/postern/sidecar/secret"
	"github.com/postern/postern/sidecar/store/boltstore"
)

// The fault matrix: each case submits a numbered batch through the front Postfix, injects its fault
// in the middle of the batch, ends it, lets the front retry (short back-off times, and flushes, as
// an operator would), and counts what became of every message by its Message-ID. A case passes
// when every message arrived exactly once or is still queued, none bounced, and duplicates appear
// only where SMTP itself cannot avoid them (the client lost the reply to the final dot).

// faultBatch is the size of each case's batch.
const faultBatch = 200

// faultEnv starts the real parts (the harness's Postfix retries deferred mail within seconds)
// with a short down_backoff in Postern, plus extra upstream settings.
func faultEnv(t *testing.T, posternConfig string) *harness.Env {
	t.Helper()
	conf := "upstream: {down_backoff: 1s" + posternConfig + "}"
	return startEnv(t, harness.Options{PosternConfig: conf, LogLevel: "info"})
}

// submitBatch submits n messages (from, to) to b, calling at(i) before message i when set.
func submitBatch(t *testing.T, ctx context.Context, b *harness.Batch, n int, mail func(i int) *harness.Mail, at func(i int)) {
	t.Helper()
	for i := 0; i < n; i++ {
		if at != nil {
			at(i)
		}
		if err := b.Submit(ctx, mail(i)); err != nil {
			t.Fatal(err)
		}
	}
}

// printCounts logs a case's row and summary line, and appends the row to fault-matrix.md in the
// artefact directory, which `make test-integration` prints after the suite: go test shows a passing
// test's log only with -v, and the matrix's counts are wanted on every run.
func printCounts(t *testing.T, name string, c harness.BatchCounts) {
	t.Helper()
	t.Logf("\n%s\n%s", harness.RowHeader, c.Row(name))
	t.Log(c.Line(name))
	f, err := os.OpenFile(filepath.Join(artifactDir(t), "fault-matrix.md"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		t.Errorf("recording the counts: %v", err)
		return
	}
	defer f.Close()
	if _, err := fmt.Fprintln(f, c.Row(name)); err != nil {
		t.Errorf("recording the counts: %v", err)
	}
}

// settle flushes the front until its queue is empty (or a minute passed), waits for the upstream
// to deliver what it accepted, then counts the batch in the mailboxes, prints the case's row and
// summary line, and checks that nothing was lost or bounced.
func settle(t *testing.T, ctx context.Context, e *harness.Env, name string, b *harness.Batch, mailboxes ...string) harness.BatchCounts {
	t.Helper()
	wait, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	stop := e.Front.KeepFlushing(wait, 2*time.Second)
	err := e.Front.WaitQueueEmpty(wait)
	stop()
	if err != nil {
		t.Errorf("after the fault: %v", err)
	}
	// The upstream accepted the last messages a moment ago: they are in its queue until it has
	// written them to the mailboxes, and counting earlier would call them lost.
	if err := e.Upstream.WaitQueueEmpty(wait); err != nil {
		t.Errorf("waiting for the upstream to deliver what it accepted: %v", err)
	}
	var dirs []harness.Maildir
	for _, m := range mailboxes {
		dirs = append(dirs, e.Upstream.Mailbox(m))
	}
	c, cerr := b.Count(ctx, dirs...)
	if cerr != nil {
		t.Fatal(cerr)
	}
	printCounts(t, name, c)
	if !c.OK() {
		t.Errorf("case %s: delivered %d + queued %d != sent %d, or bounced %d (lost: %v)",
			name, c.Delivered, c.Queued, c.Sent, c.Bounced, c.Lost)
	}
	return c
}

// Case 1: Postern is SIGKILLed under load and restarted a few seconds later. Mail in flight is lost
// by no one: the front defers it (the connection was lost) and delivers it once Postern is back.
// A message whose upstream accepted it just before the kill, before Postern could pass the
// reply on, may arrive twice; those are counted.
func TestFaultPosternKilledUnderLoad(t *testing.T) {
	t.Parallel()
	e := faultEnv(t, "")
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	a := e.Upstream.Org("client-a")
	user, _ := a.User()
	addProjects(t, ctx, e, harness.ProjectOptions{Name: "client-a", Org: "client-a"})

	b := harness.NewBatch("kill", e.Front)
	restarted := make(chan error, 1)
	submitBatch(t, ctx, b, faultBatch, func(int) *harness.Mail {
		return &harness.Mail{From: user, To: []string{"alice@dest.test"}}
	}, func(i int) {
		if i != faultBatch/3 {
			return
		}
		if err := e.Postern.Kill(); err != nil {
			t.Fatal(err)
		}
		t.Logf("postern killed after %d messages", i)
		go func() {
			time.Sleep(3 * time.Second)
			restarted <- e.Postern.Start(ctx)
		}()
	})
	if err := <-restarted; err != nil {
		t.Fatalf("restarting postern: %v", err)
	}
	c := settle(t, ctx, e, "postern-sigkill", b, "alice@dest.test")
	if c.Deferred == 0 && c.SubmitRetries == 0 {
		t.Errorf("no message was deferred and no submission refused: the kill hit nothing")
	}
}

// upstreamFaultCase runs one fault of the upstream's, injected by a proxy in front of client-a's
// server from a third of the batch until two thirds, and at least for minWindow.
func upstreamFaultCase(t *testing.T, name string, f harness.Fault, minWindow time.Duration) (harness.BatchCounts, *harness.FaultProxy) {
	t.Helper()
	e := faultEnv(t, "")
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	a := e.Upstream.Org("client-a")
	user, _ := a.User()
	proxy := harness.StartFaultProxy(t, e.CA, a.Addr())
	addProjects(t, ctx, e, harness.ProjectOptions{Name: "client-a", Org: "client-a", Port: proxy.Port})

	b := harness.NewBatch(name, e.Front)
	var began time.Time
	submitBatch(t, ctx, b, faultBatch, func(int) *harness.Mail {
		return &harness.Mail{From: user, To: []string{"alice@dest.test"}}
	}, func(i int) {
		switch i {
		case faultBatch / 3:
			proxy.SetFault(f)
			began = time.Now()
		case 2 * faultBatch / 3:
			if d := minWindow - time.Since(began); d > 0 {
				time.Sleep(d)
			}
			proxy.SetFault(harness.FaultNone)
		}
	})
	c := settle(t, ctx, e, name, b, "alice@dest.test")
	t.Logf("the proxy injected %q %d times", f, proxy.Injected(f))
	if proxy.Injected(f) == 0 {
		t.Errorf("the fault %q was never injected", f)
	}
	if c.Deferred == 0 {
		t.Errorf("no message was deferred: the fault reached no delivery")
	}
	return c, proxy
}

// Case 2a: the upstream's connection is cut in the middle of DATA. The upstream never saw the end
// of the message, so nothing may arrive twice.
func TestFaultUpstreamCutMidData(t *testing.T) {
	t.Parallel()
	c, _ := upstreamFaultCase(t, "upstream-cut-mid-data", harness.FaultCutData, 3*time.Second)
	if c.Duplicates != 0 {
		t.Errorf("%d duplicates, want none: the upstream never had the whole message", c.Duplicates)
	}
}

// Case 2b: the upstream answers 421 to everything for a while.
func TestFaultUpstream421(t *testing.T) {
	t.Parallel()
	c, _ := upstreamFaultCase(t, "upstream-421", harness.Fault421, 5*time.Second)
	if c.Duplicates != 0 {
		t.Errorf("%d duplicates, want none", c.Duplicates)
	}
}

// Case 2c: the upstream accepts the data and the connection closes before its reply arrives. The
// upstream has the message; the front cannot know and retries. Each such cut may give one
// duplicate, never more, and the front must retry rather than bounce.
func TestFaultUpstreamNoReplyAfterData(t *testing.T) {
	t.Parallel()
	c, proxy := upstreamFaultCase(t, "upstream-no-reply-after-data", harness.FaultNoReplyAfterData, 3*time.Second)
	if n := proxy.Injected(harness.FaultNoReplyAfterData); c.Duplicates > n {
		t.Errorf("%d duplicates, more than the %d replies lost", c.Duplicates, n)
	}
}

// Case 7: one project's upstream is black-holed (accepts TCP, never answers) while another project
// sends. The other project's mail arrives while the black hole lasts; the black-holed project's
// mail is deferred, not bounced, holds no more upstream connections than its limit, and arrives
// once the upstream answers again.
func TestFaultUpstreamBlackHoled(t *testing.T) {
	t.Parallel()
	e := faultEnv(t, ", greeting_timeout: 5s, command_timeout: 5s")
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	a, bo := e.Upstream.Org("client-a"), e.Upstream.Org("client-b")
	userA, _ := a.User()
	userB, _ := bo.User()
	proxy := harness.StartFaultProxy(t, e.CA, a.Addr())
	addProjects(t, ctx, e,
		harness.ProjectOptions{Name: "client-a", Org: "client-a", Port: proxy.Port},
		harness.ProjectOptions{Name: "client-b", Org: "client-b"})

	b := harness.NewBatch("blackhole", e.Front)
	submitted := map[string]time.Time{}
	submitBatch(t, ctx, b, faultBatch, func(i int) *harness.Mail {
		m := &harness.Mail{From: userA, To: []string{"alice@dest.test"}}
		if i%2 == 1 {
			m = &harness.Mail{From: userB, To: []string{"bob@dest.test"}}
		}
		return m
	}, func(i int) {
		if i == faultBatch/5 {
			proxy.SetFault(harness.FaultBlackHole)
		}
		// Message i is numbered i: remember when each of client-b's was submitted.
		if i%2 == 1 {
			submitted[fmt.Sprintf("blackhole-%04d", i)] = time.Now()
		}
	})

	// While the black hole lasts, every one of client-b's messages arrives.
	wantB := faultBatch / 2
	wait, cancelWait := context.WithTimeout(ctx, 30*time.Second)
	defer cancelWait()
	var slowest time.Duration
	var slowestID string
	err := pollUntil(wait, func() bool {
		msgs, err := e.Upstream.Mailbox("bob@dest.test").Messages()
		if err != nil || len(msgs) < wantB {
			return false
		}
		slowest, slowestID = 0, ""
		for _, m := range msgs {
			st, err := fileModTime(m.Path)
			if err != nil {
				continue
			}
			if d := st.Sub(submitted[m.ID()]); d > slowest {
				slowest, slowestID = d, m.ID()
			}
		}
		return true
	})
	if err != nil {
		n, _ := e.Upstream.Mailbox("bob@dest.test").Count(nil)
		t.Fatalf("client-b's mail was held back by client-a's black-holed upstream: %d of %d arrived", n, wantB)
	}
	t.Logf("client-b: all %d messages arrived during client-a's black hole; the slowest (%s) %s after its submission",
		wantB, slowestID, slowest.Round(time.Millisecond))
	// No bound is asserted on the latency (no timed assertions); the slowest is logged above.
	// Callers of client-a are turned away at once while its upstream is silent (the pool's
	// probing), so they do not hold the slots of the one postern destination that Postfix
	// shares among all projects.
	if n, _ := e.Upstream.Mailbox("alice@dest.test").Count(nil); n > faultBatch/5 {
		t.Errorf("%d of client-a's messages arrived through a black hole", n)
	}
	// client-a's mail waits deferred in the queue, not bounced.
	if _, err := e.Front.WaitQueue(ctx, func(q []harness.QueuedMessage) bool {
		for _, m := range q {
			for _, r := range m.Recipients {
				if r.DelayReason != "" {
					return true
				}
			}
		}
		return false
	}); err != nil {
		t.Errorf("client-a's mail was not deferred: %v", err)
	}
	proxy.SetFault(harness.FaultNone)
	c := settle(t, ctx, e, "one-upstream-black-holed", b, "alice@dest.test", "bob@dest.test")
	if c.Duplicates != 0 {
		t.Errorf("%d duplicates, want none", c.Duplicates)
	}
	// The limit (3, the default) counts connections in use; one more may be closing (QUIT) in the
	// background while its slot is opened again.
	if limit := 3; proxy.MaxOpen() > limit+1 {
		t.Errorf("client-a had %d connections open at once, more than its limit of %d", proxy.MaxOpen(), limit)
	}
	t.Logf("client-a: at most %d upstream connections at once; %d sessions black-holed", proxy.MaxOpen(), proxy.Injected(harness.FaultBlackHole))
}

// pollUntil calls cond every 100ms until it holds or ctx ends.
func pollUntil(ctx context.Context, cond func() bool) error {
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-tick.C:
		}
	}
	return nil
}

// fileModTime is when a file was last written: for a Maildir message, when it was delivered.
func fileModTime(path string) (time.Time, error) {
	st, err := os.Stat(path)
	if err != nil {
		return time.Time{}, err
	}
	return st.ModTime(), nil
}

// Case 3: Vault is stopped (its process ended, not paused) in the middle of a batch and started
// again a few seconds later. The dev server keeps its data in memory, so the restart comes back
// empty and the administrator restores the project, as after restoring a backup. Meanwhile the
// credentials Postern holds keep the mail flowing; Postern never mistakes the empty Vault for "no
// projects" (store.ErrProjectsLost). Then Postern itself is started while Vault is down: it
// serves, mail waits with a temporary reply, and it recovers by itself once Vault is back.
func TestFaultVaultStoppedAndRestarted(t *testing.T) {
	t.Parallel()
	harness.Require(t)
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	v := harness.StartVault(t)
	e := startEnv(t, harness.Options{PosternStore: v.StoreYAML(mustTokenFile(t, v)), LogLevel: "info"})
	e.Secrets.Add("Vault root token", v.RootToken)
	admin := vaultAdmin(t, v, v.Addr, filepath.Join(e.Dir, "admin"))
	a := e.Upstream.Org("client-a")
	user, _ := a.User()
	project := harness.ProjectOptions{Name: "client-a", Org: "client-a"}
	vaultAddProject(t, ctx, e, admin, project, e.Postern)

	b := harness.NewBatch("vault", e.Front)
	mail := func(int) *harness.Mail { return &harness.Mail{From: user, To: []string{"alice@dest.test"}} }
	submitBatch(t, ctx, b, faultBatch, mail, func(i int) {
		switch i {
		case faultBatch / 3:
			v.Stop()
			t.Logf("vault stopped after %d messages", i)
		case 2 * faultBatch / 3:
			time.Sleep(3 * time.Second)
			if err := v.Start(); err != nil {
				t.Fatal(err)
			}
			vaultAddProject(t, ctx, e, admin, project, e.Postern)
			t.Logf("vault started and restored after %d messages", i)
		}
	})
	settle(t, ctx, e, "vault-stopped", b, "alice@dest.test")

	// A Postern started while Vault is down serves, and defers mail until Vault is back.
	if err := e.Postern.Kill(); err != nil {
		t.Fatal(err)
	}
	v.Stop()
	if err := e.Postern.Start(ctx); err != nil {
		t.Fatalf("postern started while vault is down: %v", err)
	}
	// Its socketmap cannot say where the mail goes. Postfix then either refuses at RCPT (451 4.3.0,
	// its resolver's lookup failed; the application tries again) or, when its resolver answered
	// from before the restart, accepts and hands the message to Postern, which defers it (4.3.0).
	// Either way a 4xx, never a bounce; the batch counts both.
	b2 := harness.NewBatch("vault-down-at-start", e.Front)
	restored := make(chan struct{})
	go func() {
		defer close(restored)
		time.Sleep(3 * time.Second)
		if err := v.Start(); err != nil {
			t.Error(err)
			return
		}
		vaultAddProject(t, ctx, e, admin, project)
	}()
	// Submitted while Vault is still down: each is tried until Postern routes it again.
	submitBatch(t, ctx, b2, 20, mail, nil)
	<-restored
	if err := e.Postern.WaitRouted(ctx, user, true); err != nil {
		t.Fatal(err)
	}
	c := settle(t, ctx, e, "postern-started-vault-down", b2, "alice@dest.test")
	if c.SubmitRetries == 0 && c.Deferred == 0 {
		t.Errorf("with vault down since postern started, no message was refused at submission or deferred: %+v", c)
	}
}

// Case 4: the OAuth server is down (hung: it accepts connections and never answers) for longer
// than an access token lives. Mail submitted meanwhile waits with a temporary reply, nothing is
// bounced, the grant survives, and everything flows once the server is back. Each message signs
// in anew (a short idle timeout), so the token in use is judged every time.
func TestFaultOAuthServerDownLongerThanTokenLife(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	const ttl = 20 * time.Second
	w := oauthStart(t, ctx, oauthWorldOptions{accessTTL: ttl, idleTimeout: time.Second})
	w.signInOK(t, ctx, w.link(t, ctx))

	const n = 100
	b := harness.NewBatch("oauth-down", w.e.Front)
	var paused time.Time
	resumed := false
	t.Cleanup(func() {
		if !resumed {
			_ = w.idp.Resume()
		}
	})
	submitBatch(t, ctx, b, n, func(int) *harness.Mail {
		return &harness.Mail{From: oauthMailbox, To: []string{oauthRcpt}}
	}, func(i int) {
		switch i {
		case n / 3:
			if err := w.idp.Pause(); err != nil {
				t.Fatal(err)
			}
			paused = time.Now()
			t.Logf("the OAuth server hangs after %d messages", i)
		case 2 * n / 3:
			// Down for longer than a token lives: the token in hand when it went down expired.
			time.Sleep(ttl + 5*time.Second - time.Since(paused))
			if err := w.idp.Resume(); err != nil {
				t.Fatal(err)
			}
			resumed = true
			t.Logf("the OAuth server answers again after %s", time.Since(paused).Round(time.Second))
		}
	})
	c := settle(t, ctx, w.e, "oauth-server-down", b, oauthRcpt)
	if c.Duplicates != 0 {
		t.Errorf("%d duplicates, want none", c.Duplicates)
	}
	// Mail submitted during the outage either waited in Postern for the server (an upstream
	// sign-in that cannot be judged) or was deferred: the count says which, both are fine.
	if s := w.status(t, ctx); s.State != "ok" {
		t.Errorf("after the OAuth server came back: state %q (%s), want ok (the grant survives)", s.State, s.Reason)
	}
}

// Case 5: the grant is revoked at the OAuth server in the middle of a batch. The mail after it is
// held (4xx, needs re-authorisation), none is bounced; the owner signs in again through a new link
// and the queue drains.
func TestFaultGrantRevokedMidBatch(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	const idle = 100 * time.Millisecond
	w := oauthStart(t, ctx, oauthWorldOptions{idleTimeout: idle})
	w.signInOK(t, ctx, w.link(t, ctx))

	const n = 100
	b := harness.NewBatch("revoked", w.e.Front)
	submitBatch(t, ctx, b, n, func(int) *harness.Mail {
		return &harness.Mail{From: oauthMailbox, To: []string{oauthRcpt}}
	}, func(i int) {
		if i != n/3 {
			return
		}
		// A session signed in before the revocation may go on sending (as Exchange's do): the
		// grant is revoked once the first third is delivered and Postern's pooled sessions have
		// idled out, so the rest needs a new sign-in and meets the revocation.
		if err := w.e.Front.WaitQueueEmpty(ctx); err != nil {
			t.Fatal(err)
		}
		time.Sleep(10 * idle)
		res, err := w.idp.Revoke(ctx, oauthMailbox)
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("the grant (%d) revoked after %d messages", res.Grants, i)
	})
	s := w.waitState(t, ctx, "needs_reauth")
	t.Logf("status: %s: %s", s.State, s.Reason)
	held, err := b.Count(ctx, w.e.Upstream.Mailbox(oauthRcpt))
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("held until the owner signs in again: %d of %d queued, %d bounced", held.Queued, held.Sent, held.Bounced)
	if held.Queued == 0 {
		t.Errorf("no message was held after the revocation")
	}
	w.signInOK(t, ctx, w.link(t, ctx))
	c := settle(t, ctx, w.e, "grant-revoked-then-signed-in", b, oauthRcpt)
	if c.Duplicates != 0 {
		t.Errorf("%d duplicates, want none", c.Duplicates)
	}
}

// Case 8: a project's credential provider (the example plugin, handing out the password with an
// expiry close enough that Postern asks it for every message) is killed in the middle of a batch,
// and later hangs (SIGSTOP). That project's mail waits (a hung provider is given call_timeout, then
// ended and started afresh) and flows once the provider is back; the other project's mail is
// unaffected.
func TestFaultCredentialProviderKilledAndHung(t *testing.T) {
	t.Parallel()
	harness.Require(t)
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	root, err := harness.ModuleRoot()
	if err != nil {
		t.Fatal(err)
	}
	dir := harness.TempDir(t)
	bin := filepath.Join(dir, "postern-credential-example")
	build := exec.CommandContext(ctx, "go", "build", "-o", bin, "./plugin/example/cmd/postern-credential-example")
	build.Dir = root
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("building the example provider: %v\n%s", err, out)
	}
	raw, err := os.ReadFile(bin)
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(raw)
	e := faultEnv(t, "}\ncredential_providers: {file: {path: "+bin+", sha256: "+hex.EncodeToString(sum[:])+", call_timeout: 2s}")
	a, bo := e.Upstream.Org("client-a"), e.Upstream.Org("client-b")
	userA, passwordA := a.User()
	userB, _ := bo.User()
	creds := filepath.Join(dir, "credentials.json")
	// An expiry within Postern's one-minute margin: every message asks the provider again.
	body := fmt.Sprintf(`{"projects": {"client-a": {"mechanism": "PLAIN", "username": %q, "secret": %q, "expiry": %q}}}`,
		userA, passwordA, time.Now().Add(30*time.Second).UTC().Format(time.RFC3339))
	if err := os.WriteFile(creds, []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := e.Postern.CLI(ctx, "", "project", "add", "--sender", userA, "--host", "127.0.0.1",
		"--port", strconv.Itoa(a.Port), "--tls", "starttls", "--ca-file", e.CA.CAFile, "--username", userA,
		"--auth", "plugin", "--plugin-provider", "file", "--plugin-config", "file="+creds, "client-a"); err != nil {
		t.Fatal(err)
	}
	if err := e.Postern.WaitRouted(ctx, userA, true); err != nil {
		t.Fatal(err)
	}
	addProjects(t, ctx, e, harness.ProjectOptions{Name: "client-b", Org: "client-b"})

	b := harness.NewBatch("plugin", e.Front)
	var hung int
	submitBatch(t, ctx, b, faultBatch, func(i int) *harness.Mail {
		if i%2 == 1 {
			return &harness.Mail{From: userB, To: []string{"bob@dest.test"}}
		}
		return &harness.Mail{From: userA, To: []string{"alice@dest.test"}}
	}, func(i int) {
		switch i {
		case faultBatch / 3:
			pid := providerPID(t, bin)
			if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
				t.Fatal(err)
			}
			t.Logf("credential provider (pid %d) killed after %d messages", pid, i)
		case 2 * faultBatch / 3:
			hung = providerPID(t, bin)
			if err := syscall.Kill(hung, syscall.SIGSTOP); err != nil {
				t.Fatal(err)
			}
			t.Logf("credential provider (pid %d) hangs after %d messages", hung, i)
		}
	})
	// While the provider hangs, client-b's mail all arrives.
	wait, cancelWait := context.WithTimeout(ctx, 30*time.Second)
	defer cancelWait()
	if err := pollUntil(wait, func() bool {
		n, _ := e.Upstream.Mailbox("bob@dest.test").Count(nil)
		return n >= faultBatch/2
	}); err != nil {
		n, _ := e.Upstream.Mailbox("bob@dest.test").Count(nil)
		t.Errorf("client-b's mail was held back by client-a's hung credential provider: %d of %d arrived", n, faultBatch/2)
	}
	// The hung process is ended after call_timeout, and a fresh one serves the rest.
	if err := pollUntil(wait, func() bool { return processGone(hung) }); err != nil {
		_ = syscall.Kill(hung, syscall.SIGKILL)
		t.Errorf("the hung credential provider (pid %d) was never ended", hung)
	}
	c := settle(t, ctx, e, "credential-provider-killed-hung", b, "alice@dest.test", "bob@dest.test")
	if c.Duplicates != 0 {
		t.Errorf("%d duplicates, want none", c.Duplicates)
	}
	if now := providerPID(t, bin); now == hung {
		t.Errorf("the hung provider (pid %d) still serves", hung)
	}
}

// processGone reports whether pid has ended (absent, or a zombie).
func processGone(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return true
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	return i > 0 && i+2 < len(s) && s[i+2] == 'Z'
}

// providerPID finds the running process of the credential provider binary bin.
func providerPID(t *testing.T, bin string) int {
	t.Helper()
	var pid int
	err := pollUntil(t.Context(), func() bool {
		entries, _ := os.ReadDir("/proc")
		for _, d := range entries {
			p, err := strconv.Atoi(d.Name())
			if err != nil {
				continue
			}
			if exe, err := os.Readlink(filepath.Join("/proc", d.Name(), "exe")); err == nil && exe == bin {
				pid = p
				return true
			}
		}
		return false
	})
	if err != nil {
		t.Fatalf("no process runs %s", bin)
	}
	return pid
}

// Case 9: the file store's data file is corrupted, then cut to nothing (as a full disk leaves a
// file), in the middle of a batch. Postern says so in its log, keeps the last good state, never
// writes over the damaged file, and mail keeps flowing; once the file is restored, nothing
// changed.
func TestFaultFileStoreCorrupted(t *testing.T) {
	t.Parallel()
	e := faultEnv(t, "")
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	a := e.Upstream.Org("client-a")
	user, _ := a.User()
	addProjects(t, ctx, e, harness.ProjectOptions{Name: "client-a", Org: "client-a"})
	dataFile := filepath.Join(e.Postern.Dir, "store.db")
	good, err := os.ReadFile(dataFile)
	if err != nil {
		t.Fatal(err)
	}
	damage := map[int][]byte{
		faultBatch / 4:     append([]byte("not a store: "), good[len(good)/2:]...),
		faultBatch / 2:     {},
		3 * faultBatch / 4: good,
	}
	var damaged []byte
	b := harness.NewBatch("store", e.Front)
	submitBatch(t, ctx, b, faultBatch, func(int) *harness.Mail {
		return &harness.Mail{From: user, To: []string{"alice@dest.test"}}
	}, func(i int) {
		content, ok := damage[i]
		if !ok {
			return
		}
		if i != faultBatch/4 {
			// What Postern left of the damage: exactly what was written.
			if now, err := os.ReadFile(dataFile); err != nil || string(now) != string(damaged) {
				t.Errorf("postern changed the damaged store file (%d bytes, want %d): %v", len(now), len(damaged), err)
			}
		}
		if err := os.WriteFile(dataFile, content, 0o600); err != nil {
			t.Fatal(err)
		}
		damaged = content
		t.Logf("store file now %d bytes after %d messages", len(content), i)
		time.Sleep(2 * time.Second) // a few reloads (reload_interval 1s)
	})
	c := settle(t, ctx, e, "file-store-corrupted", b, "alice@dest.test")
	if c.Duplicates != 0 {
		t.Errorf("%d duplicates, want none", c.Duplicates)
	}
	if lines := regexp.MustCompile(`(?m)^.*level=(WARN|ERROR).*store.*$`).FindAllString(e.Postern.Log(), 3); len(lines) == 0 {
		t.Errorf("postern did not say the store was damaged")
	} else {
		t.Logf("postern said: %s", strings.Join(lines, "\n"))
	}
	if r, err := e.Postern.Lookup(ctx, user); err != nil || !strings.HasPrefix(r, "OK ") {
		t.Errorf("after the store was restored, the socketmap answers %q, %v", r, err)
	}
}

// requireRoot fails t unless the test runs as root, naming why it needs to; with
// POSTERN_IT_SKIP_ROOT=1 it skips instead.
func requireRoot(t *testing.T, why string) {
	t.Helper()
	if os.Geteuid() == 0 {
		return
	}
	if os.Getenv("POSTERN_IT_SKIP_ROOT") == "1" {
		t.Skipf("not root: %s (POSTERN_IT_SKIP_ROOT=1)", why)
	}
	t.Fatalf("this test must run as root: %s; set POSTERN_IT_SKIP_ROOT=1 to skip it", why)
}

// mountTmpfs mounts a tmpfs of the given size (mount(8)'s size=, e.g. "1m") on dir, made if
// missing, and unmounts it when the test ends (so mount it before starting what uses it: cleanups
// run last first).
func mountTmpfs(t *testing.T, dir, size string) {
	t.Helper()
	requireRoot(t, "it mounts a small tmpfs to fill")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size="+size+",mode=0700", "tmpfs", dir).CombinedOutput(); err != nil {
		if os.Getenv("POSTERN_IT_SKIP_ROOT") == "1" {
			t.Skipf("mounting a tmpfs on %s: %v: %s (POSTERN_IT_SKIP_ROOT=1)", dir, err, out)
		}
		t.Fatalf("mounting a tmpfs on %s: %v: %s (set POSTERN_IT_SKIP_ROOT=1 to skip)", dir, err, out)
	}
	t.Cleanup(func() {
		if out, err := exec.Command("umount", "-l", dir).CombinedOutput(); err != nil {
			t.Errorf("unmounting %s: %v: %s", dir, err, out)
		}
	})
}

// remount remounts the tmpfs on dir read-only ("ro") or read-write ("rw").
func remount(t *testing.T, dir, mode string) {
	t.Helper()
	if out, err := exec.Command("mount", "-o", "remount,"+mode, dir).CombinedOutput(); err != nil {
		t.Fatalf("remounting %s %s: %v: %s", dir, mode, err, out)
	}
}

// fillDisk writes the file path until its file system is full, and returns how much it wrote.
func fillDisk(t *testing.T, path string) int64 {
	t.Helper()
	f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	chunk := make([]byte, 4096)
	var n int64
	for {
		w, err := f.Write(chunk)
		n += int64(w)
		if errors.Is(err, syscall.ENOSPC) {
			return n
		}
		if err != nil {
			t.Fatalf("filling %s: %v", path, err)
		}
	}
}

// readyz reads Postern's /readyz: whether it is ready, and the degraded checks with their text.
func readyz(ctx context.Context, p *harness.Postern) (ready bool, degraded map[string]string, err error) {
	body, err := p.Get(ctx, "/readyz")
	var rz struct {
		Ready  bool `json:"ready"`
		Checks []struct {
			Name     string `json:"name"`
			Degraded bool   `json:"degraded"`
			Error    string `json:"error"`
		} `json:"checks"`
	}
	if jerr := json.Unmarshal([]byte(body), &rz); jerr != nil {
		return false, nil, fmt.Errorf("decoding /readyz (%v): %w: %s", err, jerr, body)
	}
	degraded = map[string]string{}
	for _, c := range rz.Checks {
		if c.Degraded {
			degraded[c.Name] = c.Error
		}
	}
	return rz.Ready, degraded, nil
}

// Case 9, the disk: the embedded store lives on a small file system that fills up in the middle of
// a batch, while an OAuth project's tokens (living 8 s) come due for refreshes every few seconds;
// halfway through it also turns read-only, so that every write fails. Postern says so (log, /readyz), serves the projects it has, keeps each refreshed token it cannot
// write and retries it, and writes it once space is back: the refresh token in the store at the end
// is the one the OAuth server issued last (it redeems there, with reuse detection on). The
// database is never cut short. Then the database is made unreadable (a directory takes its place:
// no file mode keeps root out): Postern says so and serves the projects it has.
func TestFaultFileStoreDiskFull(t *testing.T) {
	t.Parallel()
	requireRoot(t, "it mounts a small tmpfs for the store and fills it")
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	fs := filepath.Join(t.TempDir(), "storefs")
	mountTmpfs(t, fs, "1m")
	idp := harness.StartIdP(t, harness.IdPOptions{AccessTTL: 8 * time.Second})
	e := faultEnv(t, "")
	sub := harness.StartXOAUTH2Submission(t, harness.XOAUTH2SubmissionOptions{IdP: idp, RelayPort: e.Upstream.DirectPort})

	// Move the store onto a tmpfs of its own.
	if err := e.Postern.Stop(); err != nil {
		t.Fatal(err)
	}
	conf, err := os.ReadFile(e.Postern.Config)
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"store.db", "store.key", "store.db.index"} {
		raw, err := os.ReadFile(filepath.Join(e.Postern.Dir, name))
		if errors.Is(err, os.ErrNotExist) && name == "store.db.index" {
			continue
		}
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(fs, name), raw, 0o600); err != nil {
			t.Fatal(err)
		}
		conf = []byte(strings.ReplaceAll(string(conf), filepath.Join(e.Postern.Dir, name)+",", filepath.Join(fs, name)+","))
		conf = []byte(strings.ReplaceAll(string(conf), filepath.Join(e.Postern.Dir, name)+"}", filepath.Join(fs, name)+"}"))
	}
	if !strings.Contains(string(conf), filepath.Join(fs, "store.db")) {
		t.Fatalf("the store's path is not in postern's config:\n%s", conf)
	}
	if err := os.WriteFile(e.Postern.Config, conf, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := e.Postern.Start(ctx); err != nil {
		t.Fatal(err)
	}
	dbPath, keyPath := filepath.Join(fs, "store.db"), filepath.Join(fs, "store.key")

	// A basic project and an OAuth project, signed in as the callback would store it.
	a := e.Upstream.Org("client-a")
	userA, _ := a.User()
	addProjects(t, ctx, e, harness.ProjectOptions{Name: "client-a", Org: "client-a"})
	caFile := filepath.Join(e.Dir, "submission-ca.pem")
	if err := os.WriteFile(caFile, sub.CAPEM, 0o644); err != nil {
		t.Fatal(err)
	}
	_, port, _ := strings.Cut(sub.Addr, ":")
	client, _ := idp.Client(harness.IdPDefaultClientID)
	e.Secrets.Add("OAuth client secret", client.Secret.Reveal())
	if _, err := e.Postern.CLI(ctx, client.Secret.Reveal()+"\n", "project", "add",
		"--sender", vaultOAuthMailbox, "--host", "127.0.0.1", "--port", port, "--tls", "starttls", "--ca-file", caFile,
		"--auth", "oauth2", "--provider", "generic", "--client-id", client.ID, "--client-secret-stdin",
		"--auth-url", idp.AuthorizeURL, "--token-url", idp.TokenURL, "--scopes", harness.IdPScopes,
		"--username", vaultOAuthMailbox, "oauth-a"); err != nil {
		t.Fatal(err)
	}
	grant, err := idp.SignIn(ctx, harness.IdPSignInOptions{Login: vaultOAuthMailbox, Password: secret.New("password")})
	if err != nil {
		t.Fatal(err)
	}
	var issued []string
	issued = append(issued, grant.AccessToken.Reveal(), grant.RefreshToken.Reveal())
	e.Secrets.AddLazy("OAuth token", func() []string { return issued })
	st, err := boltstore.Open(ctx, boltstore.Options{Path: dbPath, KeyFile: keyPath})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := st.PutToken(ctx, "oauth-a", project.Token{
		AccessToken: grant.AccessToken, TokenType: grant.TokenType, Expiry: grant.Expiry, RefreshToken: grant.RefreshToken,
		Account: vaultOAuthMailbox, State: project.TokenOK, RefreshedBy: "signin", UpdatedAt: time.Now(),
	}); err != nil {
		t.Fatal(err)
	}
	for _, u := range []string{userA, vaultOAuthMailbox} {
		if err := e.Postern.WaitRouted(ctx, u, true); err != nil {
			t.Fatal(err)
		}
	}
	dbInfo, err := os.Stat(dbPath)
	if err != nil {
		t.Fatal(err)
	}

	// The batch: one message every 200 ms, every other one the OAuth project's, over several
	// token lives; the disk is full from a quarter to three quarters of it (at least 20 s).
	const n = 160
	var (
		full       time.Time
		readOnly   time.Time
		maxPending float64
		sawDegrade = map[string]string{}
		fill       = filepath.Join(fs, "fill")
	)
	watch := func() {
		if v, err := vaultMetric(ctx, e.Postern, "postern_token_pending_writes"); err == nil && v > maxPending {
			maxPending = v
		}
		if ready, deg, err := readyz(ctx, e.Postern); err == nil {
			if !ready {
				t.Errorf("/readyz says not ready while the disk is full: %v", deg)
			}
			for k, v := range deg {
				sawDegrade[k] = v
			}
		}
	}
	b := harness.NewBatch("diskfull", e.Front)
	submitBatch(t, ctx, b, n, func(i int) *harness.Mail {
		if i%2 == 1 {
			return &harness.Mail{From: vaultOAuthMailbox, To: []string{"carol@dest.test"}}
		}
		return &harness.Mail{From: userA, To: []string{"alice@dest.test"}}
	}, func(i int) {
		time.Sleep(200 * time.Millisecond)
		switch {
		case i == n/4:
			t.Logf("the store's file system is full after %d messages (%d bytes of filler)", i, fillDisk(t, fill))
			full = time.Now()
		case i == n/2:
			// A full disk still lets bbolt rewrite the pages it has; a file system that takes no
			// write at all (remounted read-only, still full) fails every write.
			remount(t, fs, "ro")
			readOnly = time.Now()
			t.Logf("the store's file system is read-only after %d messages", i)
		case i == 3*n/4:
			for time.Since(full) < 20*time.Second || time.Since(readOnly) < 12*time.Second {
				watch()
				time.Sleep(500 * time.Millisecond)
			}
			watch()
			remount(t, fs, "rw")
			if err := os.Remove(fill); err != nil {
				t.Fatal(err)
			}
			t.Logf("space is back after %d messages", i)
		case i > n/4 && i < 3*n/4:
			watch()
		}
	})
	t.Logf("while the disk was full: at most %v refreshed token(s) waiting to be written; /readyz degraded: %v", maxPending, sawDegrade)
	if maxPending < 1 {
		t.Errorf("no refreshed token waited to be written while the disk was full (postern_token_pending_writes stayed 0)")
	}
	if _, ok := sawDegrade["token_writes"]; !ok {
		t.Errorf("/readyz did not report the token waiting to be written (degraded checks: %v)", sawDegrade)
	}
	for _, why := range []string{"no space left on device", "read-only file system"} {
		if l := regexp.MustCompile(`(?m)^.*level=(WARN|ERROR).*` + why + `.*$`).FindString(e.Postern.Log()); l == "" {
			t.Errorf("postern's log does not say %q", why)
		} else {
			t.Logf("postern said: %s", l)
		}
	}
	wait, cancelWait := context.WithTimeout(ctx, time.Minute)
	defer cancelWait()
	if err := vaultWaitFor(wait, "the pending token write to land", func() (bool, error) {
		v, err := vaultMetric(wait, e.Postern, "postern_token_pending_writes")
		return err == nil && v == 0, err
	}); err != nil {
		t.Error(err)
	}
	c := settle(t, ctx, e, "file-store-disk-full", b, "alice@dest.test", "carol@dest.test")
	if c.Duplicates != 0 {
		t.Errorf("%d duplicates, want none", c.Duplicates)
	}
	if now, err := os.Stat(dbPath); err != nil || now.Size() < dbInfo.Size() {
		t.Errorf("the store's database shrank from %d bytes: %v, %v", dbInfo.Size(), now, err)
	}

	// The database made unreadable: a directory in its place (no file mode keeps root out).
	aside := dbPath + ".aside"
	if err := os.Rename(dbPath, aside); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(dbPath, 0o700); err != nil {
		t.Fatal(err)
	}
	time.Sleep(3 * time.Second) // reloads every second
	if r, err := e.Postern.Lookup(ctx, userA); err != nil || !strings.HasPrefix(r, "OK ") {
		t.Errorf("with the store unreadable, the socketmap answers %q, %v; want the projects it has", r, err)
	}
	if ready, deg, err := readyz(ctx, e.Postern); err != nil || !ready || deg["projects"] == "" {
		t.Errorf("/readyz with the store unreadable: ready %v, degraded %v, %v; want ready, projects degraded", ready, deg, err)
	} else {
		t.Logf("/readyz with the store unreadable: projects: %s", deg["projects"])
	}
	if err := os.Remove(dbPath); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(aside, dbPath); err != nil {
		t.Fatal(err)
	}

	// The token in the store is the grant's live one: redeemed now (Postern stopped, so it does not
	// race), it works, and the OAuth server never saw a refresh token replayed.
	if err := e.Postern.Stop(); err != nil {
		t.Fatal(err)
	}
	st, err = boltstore.Open(ctx, boltstore.Options{Path: dbPath, KeyFile: keyPath})
	if err != nil {
		t.Fatal(err)
	}
	tok, err := st.Token(ctx, "oauth-a")
	if err != nil {
		t.Fatal(err)
	}
	issued = append(issued, tok.AccessToken.Reveal(), tok.RefreshToken.Reveal())
	if tok.State != project.TokenOK {
		t.Errorf("the stored token's state is %q (%s), want ok", tok.State, tok.Reason)
	}
	next, err := idp.Refresh(ctx, client.ID, tok.RefreshToken)
	if err != nil {
		t.Errorf("the stored refresh token is not the grant's last one: %v", err)
	} else {
		issued = append(issued, next.AccessToken.Reveal(), next.RefreshToken.Reveal())
		tok.AccessToken, tok.RefreshToken, tok.Expiry, tok.UpdatedAt = next.AccessToken, next.RefreshToken, next.Expiry, time.Now()
		if _, err := st.PutToken(ctx, "oauth-a", tok); err != nil {
			t.Error(err)
		}
	}
	if err := e.Postern.Start(ctx); err != nil {
		t.Fatal(err)
	}
	if rotated := strings.Count(idp.Log(), "refresh token rotated"); strings.Contains(idp.Log(), "grant revoked") {
		t.Errorf("the OAuth server revoked the grant (a refresh token was replayed); %d rotations", rotated)
	} else {
		t.Logf("the OAuth server rotated the refresh token %d times, and revoked nothing", rotated)
	}
}

// Case 6: three Posterns share one Vault and one OAuth grant. The OAuth server rotates refresh
// tokens with reuse detection (a replayed refresh token revokes the grant) and its access tokens
// live 6 s, so the replicas refresh every few seconds (at half a token's life at the earliest).
// Replica 1 serves the front Postfix; replicas 2 and 3 take mail over SMTP straight from the test,
// as applications would. Two minutes of load (not five, to keep `make test` short); in the middle
// replica 1 is SIGKILLed and started again a few seconds later. At the end: the OAuth server
// revoked nothing, the refresh token in Vault is the one the server issued last (it redeems there),
// and every message arrived or is still queued.
func TestFaultThreeReplicasRotatingGrant(t *testing.T) {
	t.Parallel()
	harness.Require(t)
	const load = 2 * time.Minute
	ctx, cancel := context.WithTimeout(context.Background(), load+3*time.Minute)
	defer cancel()
	v := harness.StartVault(t)
	idp := harness.StartIdP(t, harness.IdPOptions{AccessTTL: 6 * time.Second})
	e := startEnv(t, harness.Options{PosternStore: v.StoreYAML(mustTokenFile(t, v)), LogLevel: "info",
		PosternConfig: "upstream: {down_backoff: 1s}"})
	e.Secrets.Add("Vault root token", v.RootToken)
	client, _ := idp.Client(harness.IdPDefaultClientID)
	e.Secrets.Add("OAuth client secret", client.Secret.Reveal())
	sub := harness.StartXOAUTH2Submission(t, harness.XOAUTH2SubmissionOptions{IdP: idp, RelayPort: e.Upstream.DirectPort})
	bin, err := buildPostern()
	if err != nil {
		t.Fatal(err)
	}
	replicas := []*harness.Postern{e.Postern}
	for i := 2; i <= 3; i++ {
		p, err := harness.NewPostern(harness.PosternOptions{Bin: bin, Dir: filepath.Join(e.Dir, fmt.Sprintf("postern%d", i)),
			Instance: fmt.Sprintf("it%d", i), SMTP: true, LogLevel: "info", Store: v.StoreYAML(mustTokenFile(t, v))})
		if err != nil {
			t.Fatal(err)
		}
		harness.StartPostern(t, p)
		replicas = append(replicas, p)
	}

	caFile := filepath.Join(e.Dir, "submission-ca.pem")
	if err := os.WriteFile(caFile, sub.CAPEM, 0o644); err != nil {
		t.Fatal(err)
	}
	_, port, _ := strings.Cut(sub.Addr, ":")
	if _, err := e.Postern.CLI(ctx, client.Secret.Reveal()+"\n", "project", "add",
		"--sender", vaultOAuthMailbox, "--host", "127.0.0.1", "--port", port, "--tls", "starttls", "--ca-file", caFile,
		"--auth", "oauth2", "--provider", "generic", "--client-id", client.ID, "--client-secret-stdin",
		"--auth-url", idp.AuthorizeURL, "--token-url", idp.TokenURL, "--scopes", harness.IdPScopes,
		"--username", vaultOAuthMailbox, "oauth-a"); err != nil {
		t.Fatal(err)
	}
	grant, err := idp.SignIn(ctx, harness.IdPSignInOptions{Login: vaultOAuthMailbox, Password: secret.New("password")})
	if err != nil {
		t.Fatal(err)
	}
	issued := []string{grant.AccessToken.Reveal(), grant.RefreshToken.Reveal()}
	var issuedMu sync.Mutex
	e.Secrets.AddLazy("OAuth token", func() []string {
		issuedMu.Lock()
		defer issuedMu.Unlock()
		return issued
	})
	rec, err := project.MarshalStoredToken(project.Token{
		AccessToken: grant.AccessToken, TokenType: grant.TokenType, Expiry: grant.Expiry, RefreshToken: grant.RefreshToken,
		Account: vaultOAuthMailbox, State: project.TokenOK, RefreshedBy: "signin", UpdatedAt: time.Now(),
	})
	if err != nil {
		t.Fatal(err)
	}
	var data map[string]any
	if err := json.Unmarshal(rec, &data); err != nil {
		t.Fatal(err)
	}
	const tokenPath = "postern/tokens/oauth-a"
	if _, err := v.KVPut(ctx, tokenPath, "", data); err != nil {
		t.Fatal(err)
	}
	for _, p := range replicas {
		if err := p.WaitRouted(ctx, vaultOAuthMailbox, true); err != nil {
			t.Fatal(err)
		}
	}
	v0, err := v.KVVersion(ctx, tokenPath)
	if err != nil {
		t.Fatal(err)
	}

	// The load: the front (replica 1) and replicas 2 and 3 each take a message every 250 ms.
	const rcpt = "carol@dest.test"
	b := harness.NewBatch("replicas", e.Front)
	var (
		wg       sync.WaitGroup
		mu       sync.Mutex
		direct   []string // IDs of the messages replicas 2 and 3 accepted
		refusals int      // direct submissions refused (4xx or a lost connection) and tried again
		killed   bool
	)
	end := time.Now().Add(load)
	wg.Go(func() {
		killAt := time.Now().Add(load / 2)
		for time.Now().Before(end) && ctx.Err() == nil {
			if !killed && time.Now().After(killAt) {
				killed = true
				if err := e.Postern.Kill(); err != nil {
					t.Error(err)
					return
				}
				t.Logf("replica 1 killed after %d messages through the front", b.Len())
				go func() {
					time.Sleep(3 * time.Second)
					if err := e.Postern.Start(ctx); err != nil {
						t.Errorf("restarting replica 1: %v", err)
					}
				}()
			}
			if err := b.Submit(ctx, &harness.Mail{From: vaultOAuthMailbox, To: []string{rcpt}}); err != nil {
				t.Error(err)
				return
			}
			time.Sleep(250 * time.Millisecond)
		}
	})
	for i, p := range replicas[1:] {
		wg.Go(func() {
			for n := 0; time.Now().Before(end) && ctx.Err() == nil; n++ {
				m := &harness.Mail{From: vaultOAuthMailbox, To: []string{rcpt}, ID: fmt.Sprintf("replicas-p%d-%04d", i+2, n)}
				for {
					if _, err := (harness.Client{Addr: p.SMTPAddr}).Send(ctx, m); err == nil {
						break
					} else if code, _ := harness.SMTPCode(err); code >= 500 {
						t.Errorf("replica %d refused %s for good: %v", i+2, m.ID, err)
						return
					}
					mu.Lock()
					refusals++
					mu.Unlock()
					if ctx.Err() != nil {
						return
					}
					time.Sleep(500 * time.Millisecond)
				}
				mu.Lock()
				direct = append(direct, m.ID)
				mu.Unlock()
				time.Sleep(250 * time.Millisecond)
			}
		})
	}
	wg.Wait()
	if !killed {
		t.Errorf("replica 1 was never killed")
	}

	c := settle(t, ctx, e, "three-replicas-front", b, rcpt)
	// The messages replicas 2 and 3 accepted were accepted by the upstream: each must be there.
	dc := harness.BatchCounts{Sent: len(direct), SubmitRetries: refusals}
	wait, cancelWait := context.WithTimeout(ctx, 30*time.Second)
	defer cancelWait()
	var copies map[string]int
	_ = pollUntil(wait, func() bool {
		msgs, err := e.Upstream.Mailbox(rcpt).Messages()
		if err != nil {
			return false
		}
		copies = map[string]int{}
		for _, m := range msgs {
			copies[m.ID()]++
		}
		for _, id := range direct {
			if copies[id] == 0 {
				return false
			}
		}
		return true
	})
	for _, id := range direct {
		switch n := copies[id]; {
		case n == 0:
			if len(dc.Lost) < 10 {
				dc.Lost = append(dc.Lost, id)
			}
		default:
			dc.Delivered++
			dc.Duplicates += n - 1
		}
	}
	printCounts(t, "three-replicas-direct", dc)
	total := harness.BatchCounts{Sent: c.Sent + dc.Sent, Delivered: c.Delivered + dc.Delivered, Queued: c.Queued,
		Bounced: c.Bounced, Duplicates: c.Duplicates + dc.Duplicates, Deferred: c.Deferred, SubmitRetries: c.SubmitRetries + dc.SubmitRetries}
	printCounts(t, "three-replicas-rotating-grant", total)
	if dc.Delivered != dc.Sent {
		t.Errorf("replicas 2 and 3 accepted %d messages and %d arrived (missing: %v)", dc.Sent, dc.Delivered, dc.Lost)
	}
	if dc.Duplicates != 0 {
		t.Errorf("%d duplicates of messages replicas 2 and 3 accepted, want none", dc.Duplicates)
	}

	// The grant: never revoked, rotated all along, and the refresh token in Vault is the live one.
	v1, err := v.KVVersion(ctx, tokenPath)
	if err != nil {
		t.Fatal(err)
	}
	rotations := strings.Count(idp.Log(), "refresh token rotated")
	t.Logf("the OAuth server rotated the refresh token %d times; the token record went from version %d to %d", rotations, v0, v1)
	if revoked := strings.Count(idp.Log(), "grant revoked"); revoked != 0 {
		t.Errorf("the OAuth server revoked the grant %d times (a refresh token was replayed)", revoked)
	}
	if rotations < int(load/(6*time.Second)) {
		t.Errorf("only %d rotations in %s of load with 6 s tokens", rotations, load)
	}
	for i, p := range replicas {
		if r, err := vaultProjectRow(ctx, p, "oauth-a"); err != nil || r.State != "ok" {
			t.Errorf("replica %d: oauth-a is %q (%s), %v; want ok", i+1, r.State, r.Reason, err)
		}
	}
	// Stop the replicas (so none refreshes meanwhile), then redeem the stored refresh token: with
	// reuse detection only the last one issued works.
	for _, p := range replicas {
		if err := p.Stop(); err != nil {
			t.Error(err)
		}
	}
	var out struct {
		Data struct {
			Data json.RawMessage `json:"data"`
		} `json:"data"`
	}
	if _, err := v.Request(ctx, http.MethodGet, "secret/data/"+tokenPath, "", nil, &out); err != nil {
		t.Fatal(err)
	}
	tok, err := project.UnmarshalStoredToken(out.Data.Data)
	if err != nil {
		t.Fatal(err)
	}
	issuedMu.Lock()
	issued = append(issued, tok.AccessToken.Reveal(), tok.RefreshToken.Reveal())
	issuedMu.Unlock()
	if tok.State != project.TokenOK || tok.RefreshingBy != "" {
		t.Errorf("the token record is in state %q (%s), claimed by %q; want ok and unclaimed", tok.State, tok.Reason, tok.RefreshingBy)
	}
	next, err := idp.Refresh(ctx, client.ID, tok.RefreshToken)
	if err != nil {
		t.Errorf("the refresh token in Vault is not the last one the OAuth server issued: %v", err)
	} else {
		issuedMu.Lock()
		issued = append(issued, next.AccessToken.Reveal(), next.RefreshToken.Reveal())
		issuedMu.Unlock()
	}
	// startEnv checks that replica 1 did not exit on its own: start it again for its cleanup.
	if err := e.Postern.Start(ctx); err != nil {
		t.Error(err)
	}
}
