package smtpd

import (
	"slices"
	"testing"

	"github.com/emersion/go-smtp"

	"github.com/postern/postern/sidecar/upstream/upstreamtest"
)

// Quoted local parts reach the upstream as the one mailbox Postfix named, and what cannot be
// written into an upstream command is refused at RCPT (over LMTP too), not after the message.
func TestQuotedRecipients(t *testing.T) {
	t.Parallel()
	up := fakeUpstream(t, upstreamtest.Options{}, "user@a.example")
	h := newHarness(t, Options{}, basicProject("a", "a.example", up))
	const (
		injected = `"attacker@evil.example> NOTIFY=NEVER ORCPT=rfc822;x"@customer.example`
		spaced   = `"john doe"@customer.example`
		nul      = "nul\x00@customer.example"
	)
	res := send(t, h.dial(), "noreply@a.example", []string{injected, spaced, nul}, body, nil)
	wantReply(t, "RCPT with NUL", res.rcpt[nul], 553, smtp.EnhancedCode{5, 1, 3}, "control character")
	if !res.delivered(injected) || !res.delivered(spaced) {
		t.Fatalf("not delivered: %+v", res)
	}
	msgs := up.Messages()
	want := []string{"attacker@evil.example> NOTIFY=NEVER ORCPT=rfc822;x@customer.example", "john doe@customer.example"}
	if len(msgs) != 1 || !slices.Equal(msgs[0].To, want) {
		t.Fatalf("upstream got %+v, want one message to %q", msgs, want)
	}
}

func TestUnsendableSenderRefused(t *testing.T) {
	t.Parallel()
	up := fakeUpstream(t, upstreamtest.Options{}, "user@a.example")
	h := newHarness(t, Options{}, basicProject("a", "a.example", up))
	res := send(t, h.dial(), "no\x00reply@a.example", []string{"x@dest.example"}, body, nil)
	wantReply(t, "MAIL with NUL", res.mail, 553, smtp.EnhancedCode{5, 1, 7}, "sender address rejected")
	if st := up.Stats(); st.Conns != 0 {
		t.Fatalf("the upstream was contacted for a sender that cannot go upstream: %+v", st)
	}
}

// An address beyond ASCII needs SMTPUTF8 on MAIL FROM, as Postfix's own server requires; with
// it, SMTPUTF8 goes upstream too.
func TestInternationalAddresses(t *testing.T) {
	t.Parallel()
	up := fakeUpstream(t, upstreamtest.Options{SMTPUTF8: true}, "user@a.example")
	h := newHarness(t, Options{}, basicProject("a", "a.example", up))
	c := h.dial()
	const rcpt = "jörg@bücher.example"
	res := send(t, c, "noreply@a.example", []string{rcpt, "x@dest.example"}, body, nil)
	wantReply(t, "RCPT without SMTPUTF8", res.rcpt[rcpt], 553, smtp.EnhancedCode{5, 6, 7}, "SMTPUTF8")
	if !res.delivered("x@dest.example") {
		t.Fatalf("the ASCII recipient was not delivered: %+v", res)
	}
	res = send(t, c, "noreply@a.example", []string{rcpt}, body, &smtp.MailOptions{UTF8: true})
	if !res.delivered(rcpt) {
		t.Fatalf("not delivered with SMTPUTF8: %+v", res)
	}
	msgs := up.Messages()
	if len(msgs) != 2 || msgs[0].Opts.UTF8 || !msgs[1].Opts.UTF8 || !slices.Equal(msgs[1].To, []string{rcpt}) {
		t.Fatalf("upstream got %+v", msgs)
	}
}
