//go:build integration

package integration

import (
	"context"
	"fmt"
	"net/textproto"
	"os"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/postern/postern/integration/harness"
)

// SIGHUP to `postern serve` reads the configuration again: the process keeps running, a changed
// log level applies at once, and a changed listener is named as needing a restart.
func TestSIGHUPReloadsTheConfiguration(t *testing.T) {
	t.Parallel()
	e := startEnv(t, harness.Options{LogLevel: "info"})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	user, _ := e.Upstream.Org("client-a").User()
	addProjects(t, ctx, e, harness.ProjectOptions{Name: "client-a", Org: "client-a"})
	if _, err := e.Postern.Lookup(ctx, user); err != nil {
		t.Fatal(err)
	}
	if strings.Contains(e.Postern.Log(), "socketmap: found") {
		t.Fatal("a debug line at level info")
	}

	b, err := os.ReadFile(e.Postern.Config)
	if err != nil {
		t.Fatal(err)
	}
	// The level changes, and the admin listener moves, which needs a restart.
	changed := strings.Replace(string(b), "log: {level: info,", "log: {level: debug,", 1)
	changed = regexp.MustCompile(`(?m)^  admin: 127\.0\.0\.1:\d+$`).ReplaceAllString(changed, "  admin: 127.0.0.1:1")
	if err := os.WriteFile(e.Postern.Config, []byte(changed), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := e.Postern.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	if err := waitLog(ctx, e, "configuration reloaded"); err != nil {
		t.Fatal(err)
	}
	if exited, err := e.Postern.Exited(); exited {
		t.Fatalf("postern exited on SIGHUP: %v\n%s", err, e.Postern.Log())
	}
	var reloaded string
	for _, l := range strings.Split(e.Postern.Log(), "\n") {
		if strings.Contains(l, "configuration reloaded") {
			reloaded = l
		}
	}
	t.Logf("%s", reloaded)
	if !strings.Contains(reloaded, "applied=[log.level]") || !strings.Contains(reloaded, "needs_restart=[listen.admin]") {
		t.Errorf("the reload line does not say what applied and what needs a restart: %s", reloaded)
	}
	if _, err := e.Postern.Lookup(ctx, user); err != nil {
		t.Fatal(err)
	}
	if err := waitLog(ctx, e, "socketmap: found"); err != nil {
		t.Errorf("the new log level does not apply: %v", err)
	}
	if _, err := e.Postern.Get(ctx, "/api/v1/projects"); err != nil {
		t.Errorf("the admin listener moved without a restart: %v", err)
	}
}

// SIGTERM in the middle of a transaction lets it finish (the message is delivered and Postfix hears
// 250), then Postern exits and its unix sockets are gone.
func TestSIGTERMDrains(t *testing.T) {
	t.Parallel()
	e := startEnv(t, harness.Options{})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	user, _ := e.Upstream.Org("client-a").User()
	addProjects(t, ctx, e, harness.ProjectOptions{Name: "client-a", Org: "client-a"})

	c, err := textproto.Dial("unix", e.Postern.LMTPSocket)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	expect := func(code int) {
		t.Helper()
		if _, msg, err := c.ReadResponse(code); err != nil {
			t.Fatalf("want %d: %v %s", code, err, msg)
		}
	}
	send := func(format string, args ...any) {
		t.Helper()
		if err := c.PrintfLine(format, args...); err != nil {
			t.Fatal(err)
		}
	}
	expect(220)
	send("LHLO front.test")
	expect(250)
	send("MAIL FROM:<%s>", user)
	expect(250)
	send("RCPT TO:<alice@dest.test>")
	expect(250)
	send("DATA")
	expect(354)
	id := fmt.Sprintf("drain-%d", time.Now().UnixNano())
	send("From: <%s>\r\nTo: <alice@dest.test>\r\nSubject: drain\r\n%s: %s\r\n\r\nfirst half", user, harness.TestIDHeader, id)

	if err := e.Postern.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if err := waitLog(ctx, e, "shutting down"); err != nil {
		t.Fatal(err)
	}
	send("second half\r\n.")
	expect(250) // LMTP: one reply per recipient
	if err := e.Postern.Wait(ctx); err != nil {
		t.Fatal(err)
	}
	for _, s := range []string{e.Postern.LMTPSocket, e.Postern.SocketmapSocket} {
		if _, err := os.Lstat(s); !os.IsNotExist(err) {
			t.Errorf("%s is left behind after SIGTERM: %v", s, err)
		}
	}
	if _, err := e.Upstream.WaitForMessage(ctx, "alice@dest.test", harness.WithID(id)); err != nil {
		t.Errorf("the message in flight at SIGTERM was not delivered: %v", err)
	}
	// startEnv's clean-up complains about an exited postern: start it again.
	if err := e.Postern.Start(ctx); err != nil {
		t.Fatal(err)
	}
}

// waitLog waits until Postern's output holds s.
func waitLog(ctx context.Context, e *harness.Env, s string) error {
	for !strings.Contains(e.Postern.Log(), s) {
		select {
		case <-ctx.Done():
			return fmt.Errorf("postern never logged %q: %w\n%s", s, context.Cause(ctx), e.Postern.Log())
		case <-time.After(50 * time.Millisecond):
		}
	}
	return nil
}
