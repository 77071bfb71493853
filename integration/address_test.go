//go:build integration

package integration

import (
	"context"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/postern/postern/integration/harness"
)

// Quoted local parts pass through Postern as the one mailbox Postfix named. A recipient made to
// end the address early and add parameters reaches the upstream as one quoted mailbox at its own
// domain, with no parameter; a local part with a space is delivered.
func TestRelayQuotedRecipients(t *testing.T) {
	t.Parallel()
	e := startEnv(t, harness.Options{Upstream: harness.UpstreamOptions{CatchAll: []string{"customer.test"}, RecordRcpt: true}})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	a := e.Upstream.Org("client-a")
	user, _ := a.User()
	addProjects(t, ctx, e, harness.ProjectOptions{Name: "client-a", Org: "client-a"})

	for _, rcpt := range []string{
		`"attacker@evil.test> NOTIFY=NEVER ORCPT=rfc822;x"@customer.test`,
		`"john doe"@customer.test`,
	} {
		before := len(e.Upstream.RcptCommands(a.Name))
		m := &harness.Mail{From: user, To: []string{rcpt}}
		sent := submit(t, ctx, e, m)
		line, err := e.Front.WaitLog(ctx, regexp.MustCompile(`\b`+sent.QueueID+`: to=<.*status=(sent|bounced|deferred)`))
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(line, "status=sent") || !strings.Contains(line, "postfix/postern/lmtp[") {
			t.Errorf("%s: the front logged %s, want status=sent through Postern", rcpt, line)
		}
		// The upstream heard exactly one RCPT, for the quoted mailbox at customer.test.
		got := e.Upstream.RcptCommands(a.Name)[before:]
		if want := []string{"RCPT TO:<" + rcpt + ">"}; !slices.Equal(got, want) {
			t.Errorf("%s: the upstream received %q, want %q", rcpt, got, want)
		}
		// Delivered there once the front has logged it sent: a bound shorter than the test's.
		wctx, wcancel := context.WithTimeout(ctx, 20*time.Second)
		if _, err := e.Upstream.CatchAll("customer.test").WaitFor(wctx, harness.WithID(m.ID)); err != nil {
			t.Errorf("%s: %v", rcpt, err)
		}
		wcancel()
	}
	if lines := e.Upstream.LogLines(regexp.MustCompile(`to=<attacker@evil\.test>`)); len(lines) > 0 {
		t.Errorf("the upstream handled mail for attacker@evil.test: %q", lines)
	}
}
