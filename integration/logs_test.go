//go:build integration

package integration

import (
	"context"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/postern/postern/integration/harness"
)

// Postern's delivery line carries Postfix's queue id (XFORWARD IDENT, turned on by the shipped
// master.cf), so that an operator joins the two logs on it: the front Postfix's "status=sent" line
// and Postern's "delivered" line name the same queue id, with the project, the sender, the
// upstream's queue id, the outcome and the duration.
func TestDeliveryLogCarriesPostfixQueueID(t *testing.T) {
	t.Parallel()
	e := startEnv(t, harness.Options{})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	a := e.Upstream.Org("client-a")
	user, _ := a.User()
	addProjects(t, ctx, e, harness.ProjectOptions{Name: "client-a", Org: "client-a"})

	m := &harness.Mail{From: user, To: []string{"alice@dest.test"}}
	sent := submit(t, ctx, e, m)
	if _, err := e.Upstream.WaitForMessage(ctx, "alice@dest.test", harness.WithID(m.ID)); err != nil {
		t.Fatal(err)
	}
	postfixLine, err := e.Front.WaitLog(ctx, regexp.MustCompile(`postfix/postern/lmtp\[\d+\]: `+sent.QueueID+`: to=<alice@dest.test>.*status=sent`))
	if err != nil {
		t.Fatalf("no status=sent line for %s in the front's log: %v\n%s", sent.QueueID, err, e.Front.Log())
	}
	t.Logf("postfix: %s", postfixLine)
	var posternLine string
	for deadline := time.Now().Add(10 * time.Second); posternLine == "" && time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		for _, l := range strings.Split(e.Postern.Log(), "\n") {
			if strings.Contains(l, "msg=delivered") && strings.Contains(l, "queue_id="+sent.QueueID+" ") {
				posternLine = l
			}
		}
	}
	if posternLine == "" {
		t.Fatalf("no delivered line with queue_id=%s in Postern's log:\n%s", sent.QueueID, e.Postern.Log())
	}
	t.Logf("postern: %s", posternLine)
	for _, want := range []string{"project=client-a", "sender=" + user, "outcome=delivered", "upstream_id=", "duration="} {
		if !strings.Contains(posternLine, want) {
			t.Errorf("Postern's delivered line lacks %s", want)
		}
	}
	if regexp.MustCompile(`upstream_id=(\s|"")`).MatchString(posternLine) {
		t.Errorf("Postern's delivered line has no upstream queue id")
	}
}
