//go:build integration

package integration

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/postern/postern/integration/harness"
)

// The container scenarios: the operator's Postfix runs in the container built from
// contrib/postfix/Dockerfile, configured only by Postern's snippets, and talks to Postern on the
// host across the container boundary. They run whenever a container engine answers or Podman can be
// installed (harness.RequireEngine); POSTERN_IT_SKIP_CONTAINERS=1 skips them.

// containerRelay submits mail of two projects' senders and of a sender of no project through the
// containerised Postfix and checks that each arrived through the right server.
func containerRelay(t *testing.T, ctx context.Context, e *harness.Env, front *harness.ContainerFront) {
	t.Helper()
	a, b := e.Upstream.Org("client-a"), e.Upstream.Org("client-b")
	userA, _ := a.User()
	userB, _ := b.User()
	mailA := &harness.Mail{From: userA, To: []string{"alice@dest.test"}}
	mailB := &harness.Mail{From: userB, To: []string{"bob@dest.test"}}
	other := &harness.Mail{From: "app@other.test", To: []string{"carol@dest.test"}}
	for _, m := range []*harness.Mail{mailA, mailB, other} {
		if s, err := front.Submit(ctx, m); err != nil || s.QueueID == "" {
			t.Fatalf("submitting mail from %s to the postfix container: %v (%q)", m.From, err, s.Reply)
		}
	}
	for _, tc := range []struct {
		name string
		mail *harness.Mail
		rcpt string
		via  string
		user string
	}{
		{"project client-a", mailA, "alice@dest.test", a.Hostname, userA},
		{"project client-b", mailB, "bob@dest.test", b.Hostname, userB},
		{"no project", other, "carol@dest.test", e.Upstream.DirectHostname, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m, err := e.Upstream.WaitForMessage(ctx, tc.rcpt, harness.WithID(tc.mail.ID))
			if err != nil {
				t.Fatal(err)
			}
			if !m.PassedThrough(tc.via) {
				t.Errorf("Received by %v, want %s", m.ReceivedBy(), tc.via)
			}
			if auth := m.AuthenticatedSenders(); (tc.user == "" && len(auth) != 0) || (tc.user != "" && (len(auth) != 1 || auth[0] != tc.user)) {
				t.Errorf("authenticated senders %v, want [%s]", auth, tc.user)
			}
			if n := countByID(t, e, tc.rcpt, tc.mail.ID); n != 1 {
				t.Errorf("%d copies at the upstream, want 1", n)
			}
		})
	}
}

// Postfix in the container reaches Postern's socketmap and LMTP socket through the shared socket
// directory (a volume at the same path), with the image's snippets as shipped.
func TestContainerRelayOverSocketVolume(t *testing.T) {
	t.Parallel()
	e := startEnv(t, harness.Options{})
	eng := harness.RequireEngine(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	if err := e.Postern.OpenSockets(); err != nil {
		t.Fatal(err)
	}
	addProjects(t, ctx, e,
		harness.ProjectOptions{Name: "client-a", Org: "client-a"},
		harness.ProjectOptions{Name: "client-b", Org: "client-b"})
	front := harness.StartContainerFront(t, eng, harness.ContainerFrontOptions{RunDir: e.Postern.Dir, RelayAddr: e.Upstream.DirectAddr()})
	containerRelay(t, ctx, e, front)
}

// The alternative contrib/postfix/README.md documents: Postern's socketmap and SMTP listener on
// loopback TCP, and the container's Postfix configured by what `postern postfix-config` prints for
// that config, mounted at /etc/postfix/postern. No socket is shared.
func TestContainerRelayOverLoopbackTCP(t *testing.T) {
	t.Parallel()
	e := startEnv(t, harness.Options{SMTP: true, SocketmapTCP: true})
	eng := harness.RequireEngine(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	addProjects(t, ctx, e,
		harness.ProjectOptions{Name: "client-a", Org: "client-a"},
		harness.ProjectOptions{Name: "client-b", Org: "client-b"})
	snippets := filepath.Join(e.Dir, "postfix-config")
	if err := os.Mkdir(snippets, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, part := range []string{"main", "master"} {
		out, err := e.Postern.CLI(ctx, "", "postfix-config", "--"+part)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(snippets, part+".cf"), []byte(out), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	front := harness.StartContainerFront(t, eng, harness.ContainerFrontOptions{Snippets: snippets, RelayAddr: e.Upstream.DirectAddr()})
	containerRelay(t, ctx, e, front)
}

// The image applies main.cf, main-milter.cf and master.cf as shipped: the milter refuses at
// submission what the upstream would refuse, across the socket volume.
func TestContainerMilter(t *testing.T) {
	t.Parallel()
	e := startEnv(t, harness.Options{Milter: true})
	eng := harness.RequireEngine(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	if err := e.Postern.OpenSockets(); err != nil {
		t.Fatal(err)
	}
	a := e.Upstream.Org("client-a")
	userA, _ := a.User()
	milterAddProject(t, ctx, e, harness.ProjectOptions{Name: "client-a", Org: "client-a"}, "--max-recipients", "2")
	front := harness.StartContainerFront(t, eng, harness.ContainerFrontOptions{RunDir: e.Postern.Dir, RelayAddr: e.Upstream.DirectAddr()})

	unknown := &harness.Mail{From: "stranger@" + a.Domain, To: []string{"alice@dest.test"}}
	// The milter hears about senders of the domains Postern serves.
	tx, err := front.Transact(ctx, unknown)
	if err != nil {
		t.Fatal(err)
	}
	milterWantReply(t, "MAIL FROM of a sender of no project", tx.Mail, 550, "5.7.1", "is not served by Postern")

	refused := &harness.Mail{From: userA, To: []string{"alice@dest.test"}, Header: map[string]string{"From": "boss@elsewhere.test"}}
	if tx, err = front.Transact(ctx, refused); err != nil {
		t.Fatal(err)
	}
	milterWantReply(t, "end of data", tx.Data, 550, "5.7.60", "not allowed for client-a")

	many := &harness.Mail{From: userA, To: []string{"alice@dest.test", "bob@dest.test", "carol@dest.test"}}
	if tx, err = front.Transact(ctx, many); err != nil {
		t.Fatal(err)
	}
	milterWantReply(t, "the third RCPT TO", tx.Rcpt[2], 452, "4.5.3", "at most 2")

	ok := &harness.Mail{From: userA, To: []string{"alice@dest.test"}}
	if tx, err = front.Transact(ctx, ok); err != nil || !tx.Data.OK() {
		t.Fatalf("%v, %s: want the message queued", err, tx.Data)
	}
	got, err := e.Upstream.WaitForMessage(ctx, "alice@dest.test", harness.WithID(ok.ID))
	if err != nil {
		t.Fatal(err)
	}
	if !got.PassedThrough(a.Hostname) {
		t.Errorf("Received by %v, want %s", got.ReceivedBy(), a.Hostname)
	}
	if _, err := e.Upstream.WaitForMessage(ctx, "bob@dest.test", harness.WithID(many.ID)); err != nil {
		t.Fatalf("the two accepted recipients of a message with one too many: %v", err)
	}
	if n := countByID(t, e, "carol@dest.test", many.ID); n != 0 {
		t.Errorf("%d copies reached the recipient over the limit", n)
	}
	if n := countByID(t, e, "alice@dest.test", refused.ID); n != 0 {
		t.Errorf("%d copies of the refused message arrived", n)
	}
}
