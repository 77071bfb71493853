// Command demo shows Postern's main job on one machine, with real Postfix and Dovecot: a message
// submitted to the operator's Postfix from a project's sender leaves through that organisation's
// own mail server, signed in with the project's credentials.
//
//  1. It builds postern (or takes -postern), and starts in a temporary directory, on loopback only:
//     Dovecot (SASL), the organisation's server (a Postfix that requires STARTTLS and AUTH),
//     Postern with its embedded store, and the front Postfix with contrib/postfix/main.cf and
//     master.cf appended verbatim.
//  2. It adds a project with `postern project add`, submits one message to the front Postfix and
//     waits for it in the recipient's Maildir.
//  3. It prints where the message arrived and its Received headers, then stops everything.
//
// It needs root, Postfix and Dovecot: integration/scripts/demo.sh installs them first. Run it from
// the integration module (integration/go.mod):
//
//	cd integration && go run ./cmd/demo [-keep] [-postern PATH]
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"time"

	"github.com/postern/postern/integration/harness"
)

func main() {
	keep := flag.Bool("keep", false, "keep the temporary directory (configs, logs, Maildirs)")
	bin := flag.String("postern", "", "postern binary to use instead of building one")
	flag.Parse()
	if *keep {
		os.Setenv("POSTERN_IT_KEEP", "1")
	}
	r := &runner{start: time.Now()}
	go r.stopOnSignal()
	defer r.cleanup()
	r.run(*bin)
}

func (r *runner) run(bin string) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()

	r.step("checking that Postfix and Dovecot are installed")
	harness.Require(r)

	dir := harness.TempDir(r)
	r.detail("working directory %s", dir)
	if bin == "" {
		r.step("building postern (go build ./sidecar/cmd/postern)")
		bin = filepath.Join(dir, "bin", "postern")
		if err := harness.BuildPostern(ctx, "", bin); err != nil {
			r.Fatalf("%v", err)
		}
	}
	r.detail("postern binary %s", bin)

	r.step("making a test certificate authority")
	ca, err := harness.NewCA(filepath.Join(dir, "ca"), "mx.client-a.test")
	if err != nil {
		r.Fatalf("%v", err)
	}
	r.detail("CA certificate %s", ca.CAFile)

	r.step("starting Dovecot (SASL for the organisation's server)")
	dovecot := harness.StartDovecot(r, filepath.Join(dir, "dovecot"))
	r.detail("auth socket %s", dovecot.AuthSocket)

	r.step("starting the organisation's mail server (Postfix: STARTTLS and AUTH required)")
	up := harness.StartUpstream(r, dir, ca, dovecot, harness.UpstreamOptions{
		Orgs:      []harness.OrgOptions{{Name: "client-a"}},
		Mailboxes: []string{"alice@dest.test"},
	})
	org := up.Org("client-a")
	user, _ := org.User()
	r.detail("%s on %s (user %s); direct destination %s on %s", org.Hostname, org.Addr(), user, up.DirectHostname, up.DirectAddr())

	r.step("starting Postern (postern serve, embedded file store)")
	p, err := harness.NewPostern(harness.PosternOptions{Bin: bin, Dir: filepath.Join(dir, "postern"), LogLevel: "info"})
	if err != nil {
		r.Fatalf("%v", err)
	}
	harness.StartPostern(r, p)
	r.detail("config %s; LMTP %s; socketmap %s", p.Config, p.LMTPSocket, p.SocketmapSocket)

	r.step("starting the operator's Postfix with contrib/postfix/main.cf and master.cf")
	front := harness.StartFront(r, dir, harness.FrontOptions{RunDir: p.Dir, RelayAddr: up.DirectAddr()})
	r.detail("submission on %s; config %s", front.SMTPAddr(), front.ConfigDir)

	e := &harness.Env{Dir: dir, CA: ca, Dovecot: dovecot, Upstream: up, Front: front, Postern: p}
	project := harness.ProjectOptions{Name: "client-a", Org: "client-a"}
	args, _, _, err := e.ProjectAddArgs(project)
	if err != nil {
		r.Fatalf("%v", err)
	}
	shown := append(append(append([]string{}, args[:2]...), "--config", p.Config), args[2:]...)
	r.step("adding the project: postern %s  (the password comes on stdin)", strings.Join(shown, " "))
	if err := e.AddProject(ctx, project); err != nil {
		r.Fatalf("%v", err)
	}
	answer, err := p.Lookup(ctx, user)
	if err != nil {
		r.Fatalf("%v", err)
	}
	r.detail("Postern's socketmap now answers %q for %s", answer, user)

	r.step("submitting one message to the operator's Postfix from %s to alice@dest.test", user)
	m := &harness.Mail{From: user, To: []string{"alice@dest.test"}, Subject: "Hello from Postern's demo"}
	sent, err := front.Submit(ctx, m)
	if err != nil {
		r.Fatalf("%v", err)
	}
	r.detail("front Postfix: %s", sent.Reply)

	r.step("waiting for the message to arrive")
	got, err := up.WaitForMessage(ctx, "alice@dest.test", harness.WithID(m.ID))
	if err != nil {
		r.Fatalf("%v", err)
	}

	fmt.Printf("\nThe message arrived: %s\n", got.Path)
	fmt.Printf("Subject: %s\n", got.Header.Get("Subject"))
	for _, rcv := range got.Received() {
		fmt.Printf("Received: %s\n", rcv)
	}
	fmt.Printf("\nIt left the operator's Postfix through Postern:\n")
	for _, l := range front.LogLines(regexpQueueID(sent.QueueID)) {
		fmt.Printf("  %s\n", l)
	}
	if got.PassedThrough(org.Hostname) {
		fmt.Printf("\nand reached %s signed in as %s.\n\n", org.Hostname, strings.Join(got.AuthenticatedSenders(), ", "))
	} else {
		r.Fatalf("the message did not pass through %s: Received by %v", org.Hostname, got.ReceivedBy())
	}
	r.step("stopping everything")
}

// runner is the demo's harness.T: progress on stderr, cleanups run at the end or on a failure.
type runner struct {
	start time.Time
	harness.Cleanups
}

var _ harness.T = (*runner)(nil)

func (r *runner) step(format string, args ...any) {
	fmt.Printf("[%5.1fs] ==> %s\n", time.Since(r.start).Seconds(), fmt.Sprintf(format, args...))
}

func (r *runner) detail(format string, args ...any) {
	fmt.Printf("           %s\n", fmt.Sprintf(format, args...))
}

func (r *runner) Helper() {}

func (r *runner) Logf(format string, args ...any) { r.detail(format, args...) }

func (r *runner) Fatalf(format string, args ...any) {
	r.MarkFailed()
	fmt.Fprintf(os.Stderr, "demo failed: %s\n", fmt.Sprintf(format, args...))
	r.cleanup()
	os.Exit(1)
}

// cleanup runs the cleanups once, last registered first, then says so.
func (r *runner) cleanup() {
	r.RunCleanups()
	fmt.Printf("[%5.1fs] ==> stopped\n", time.Since(r.start).Seconds())
}

func (r *runner) stopOnSignal() {
	c := make(chan os.Signal, 1)
	signal.Notify(c, syscall.SIGINT, syscall.SIGTERM)
	s := <-c
	fmt.Fprintf(os.Stderr, "demo: %v, stopping\n", s)
	r.cleanup()
	os.Exit(130)
}

// regexpQueueID matches the log lines of one Postfix queue ID.
func regexpQueueID(id string) *regexp.Regexp {
	return regexp.MustCompile(`\b` + regexp.QuoteMeta(id) + `: `)
}
