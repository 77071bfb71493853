//go:build integration

package integration

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/postern/postern/integration/harness"
)

// The shipped compose stack (contrib/postfix/compose.yaml: Postfix, Postern with Vault as its
// store, a Vault dev server), brought up with the engine's compose tool: once the health checks
// say ready, a project is added in the Postern container, one message is relayed through it to the
// test upstream, and the stack is taken down. The suite's override (testdata/compose.hostnet.yaml)
// only moves the stack onto the host's network, to reach the test upstream on loopback.
func TestComposeStack(t *testing.T) {
	harness.Require(t)
	eng := harness.RequireEngine(t)
	harness.BuildImages(t, eng, harness.PostfixImage, harness.PosternImage, harness.VaultDevImage)
	e := harness.Start(t, harness.Options{}) // the test upstream; Postern runs in the stack
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	root, err := harness.ModuleRoot()
	if err != nil {
		t.Fatal(err)
	}
	smtpPort, err := harness.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	suffix := make([]byte, 4)
	rand.Read(suffix)
	project := "postern-it-" + hex.EncodeToString(suffix)
	files := []string{
		filepath.Join(root, "contrib", "postfix", "compose.yaml"),
		filepath.Join(root, "integration", "testdata", "compose.hostnet.yaml"),
	}
	env := []string{
		"POSTERN_POSTFIX_IMAGE=" + harness.PostfixImage,
		"POSTERN_IMAGE=" + harness.PosternImage,
		"POSTERN_VAULTDEV_IMAGE=" + harness.VaultDevImage,
		fmt.Sprintf("POSTERN_IT_SMTP_PORT=%d", smtpPort),
		fmt.Sprintf("POSTERN_IT_RELAY_PORT=%d", e.Upstream.DirectPort),
	}
	compose := func(ctx context.Context, args ...string) (string, error) {
		cmd, err := eng.Compose(ctx, project, files, env, args...)
		if err != nil {
			return "", err
		}
		cmd.Dir = filepath.Join(root, "contrib", "postfix")
		out, err := cmd.CombinedOutput()
		if err != nil {
			return string(out), fmt.Errorf("compose %s: %w\n%s", strings.Join(args, " "), err, lastLines(string(out), 40))
		}
		return string(out), nil
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
		defer cancel()
		if t.Failed() {
			for _, svc := range []string{"postfix", "postern", "vault"} {
				if id, err := eng.ComposeContainer(ctx, project, svc); err == nil {
					out, _ := eng.Command(ctx, "logs", id).CombinedOutput()
					t.Logf("--- %s log:\n%s", svc, lastLines(string(out), 80))
				}
			}
		}
		if out, err := compose(ctx, "down", "-v"); err != nil {
			t.Errorf("taking the stack down: %v\n%s", err, out)
		}
		if eng.Name == "podman" {
			// podman-compose 1.0.3 leaves the project's network behind.
			_, _ = eng.Output(ctx, "network", "rm", project+"_default")
		}
		if id, err := eng.ComposeContainer(ctx, project, "postern"); err == nil {
			t.Errorf("container %s of the stack is still there after down", id)
		}
	})
	if _, err := compose(ctx, "up", "-d"); err != nil {
		t.Fatal(err)
	}
	ids := map[string]string{}
	for _, svc := range []string{"postfix", "postern", "vault"} {
		if ids[svc], err = eng.ComposeContainer(ctx, project, svc); err != nil {
			t.Fatal(err)
		}
	}

	// The images' health checks: Postfix runs, and Postern's /readyz says ready (its store, Vault,
	// is open).
	for _, svc := range []string{"postfix", "postern"} {
		var last string
		deadline := time.Now().Add(2 * time.Minute)
		for last != "healthy" && time.Now().Before(deadline) {
			if last, err = eng.Health(ctx, ids[svc]); err != nil {
				t.Fatal(err)
			}
			if last != "healthy" {
				time.Sleep(2 * time.Second)
			}
		}
		if last != "healthy" {
			t.Fatalf("service %s: health %q after 2 minutes, want healthy", svc, last)
		}
	}

	// Postern runs as its own user on a read-only root file system.
	if out, err := eng.Output(ctx, "exec", ids["postern"], "sh", "-c", "id -un; touch /probe 2>&1 || true"); err != nil {
		t.Fatal(err)
	} else if !strings.HasPrefix(out, "postern\n") || !strings.Contains(out, "Read-only file system") {
		t.Errorf("in the postern container: %q, want user postern and a read-only root", out)
	}

	// Add a project as the README says: postern project add in the Postern container. The
	// upstream's CA goes in through the socket volume (the root file system is read-only).
	args, password, senders, err := e.ProjectAddArgs(harness.ProjectOptions{Name: "client-a", Org: "client-a"})
	if err != nil {
		t.Fatal(err)
	}
	ca, err := os.ReadFile(e.CA.CAFile)
	if err != nil {
		t.Fatal(err)
	}
	if err := execIn(ctx, eng, ids["postern"], ca, "sh", "-c", "cat >/run/postern/it-ca.pem"); err != nil {
		t.Fatal(err)
	}
	for i, a := range args {
		if a == e.CA.CAFile {
			args[i] = "/run/postern/it-ca.pem"
		}
	}
	add := append([]string{"postern"}, args[:2]...)
	add = append(append(add, "--config", "/etc/postern/postern.yaml"), args[2:]...)
	if err := execIn(ctx, eng, ids["postern"], []byte(password+"\n"), add...); err != nil {
		t.Fatal(err)
	}

	// One message through the stack's Postfix, routed by Postern to the project's upstream.
	a := e.Upstream.Org("client-a")
	m := &harness.Mail{From: senders[0], To: []string{"alice@dest.test"}}
	c := harness.Client{Addr: fmt.Sprintf("127.0.0.1:%d", smtpPort), HeloName: "app.test"}
	var sent harness.Sent
	// The project reaches Postern's cache within its reload interval; until then Postfix's
	// socketmap lookup answers NOTFOUND and the mail would take the relayhost: wait for the route.
	if err := waitRoutedIn(ctx, eng, ids["postfix"], senders[0]); err != nil {
		t.Fatal(err)
	}
	if sent, err = c.Send(ctx, m); err != nil || sent.QueueID == "" {
		t.Fatalf("submitting to the stack's postfix: %v (%q)", err, sent.Reply)
	}
	got, err := e.Upstream.WaitForMessage(ctx, "alice@dest.test", harness.WithID(m.ID))
	if err != nil {
		t.Fatal(err)
	}
	if !got.PassedThrough(a.Hostname) {
		t.Errorf("Received by %v, want %s", got.ReceivedBy(), a.Hostname)
	}
	if n := countByID(t, e, "alice@dest.test", m.ID); n != 1 {
		t.Errorf("%d copies at the upstream, want 1", n)
	}
	// Postfix's log reaches the engine's log (docker logs).
	out, _ := eng.Command(ctx, "logs", ids["postfix"]).CombinedOutput()
	if !strings.Contains(string(out), sent.QueueID+": to=<alice@dest.test>") || !strings.Contains(string(out), "status=sent") {
		t.Errorf("the postfix container's log has no delivery of %s:\n%s", sent.QueueID, lastLines(string(out), 30))
	}
}

// execIn runs a command in a container with stdin.
func execIn(ctx context.Context, eng *harness.Engine, id string, stdin []byte, args ...string) error {
	cmd := eng.Command(ctx, append([]string{"exec", "-i", id}, args...)...)
	cmd.Stdin = bytes.NewReader(stdin)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("exec %s in %s: %w\n%s", args[0], id, err, out)
	}
	return nil
}

// waitRoutedIn waits until Postern answers for sender, asked as the README says: postmap -q in
// the Postfix container, over the socket on the shared volume.
func waitRoutedIn(ctx context.Context, eng *harness.Engine, postfix, sender string) error {
	deadline := time.Now().Add(time.Minute)
	var last string
	for time.Now().Before(deadline) {
		out, err := eng.Output(ctx, "exec", postfix, "postmap", "-q", sender, "socketmap:unix:/run/postern/socketmap.sock:senders")
		if err == nil && strings.HasPrefix(out, "postern:") {
			return nil
		}
		last = strings.TrimSpace(out)
		if err != nil {
			last = err.Error()
		}
		time.Sleep(500 * time.Millisecond)
	}
	return fmt.Errorf("postern does not route %s (postmap -q: %s)", sender, last)
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
