package upstream_test

import (
	"fmt"
	"slices"
	"strings"
	"testing"

	"github.com/emersion/go-smtp"

	"github.com/postern/postern/sidecar/upstream"
	"github.com/postern/postern/sidecar/upstream/upstreamtest"
)

// injected is what go-smtp's server hands on for the recipient
// `"attacker@evil.example> NOTIFY=NEVER ORCPT=rfc822;x"@customer.example`: the quotes are gone.
const injected = "attacker@evil.example> NOTIFY=NEVER ORCPT=rfc822;x@customer.example"

// commands returns every command line the scripted upstream has received so far.
func commands(s *scripted) []string {
	var all []string
	for {
		select {
		case b := <-s.batches:
			all = append(all, b...)
		default:
			return all
		}
	}
}

// Local parts that are not dot-atoms go upstream quoted: an address cannot end early and add
// parameters, and a local part with a space is one mailbox. The null sender stays <>.
func TestAddressesAreQuoted(t *testing.T) {
	t.Parallel()
	for _, pipelining := range []bool{true, false} {
		t.Run(fmt.Sprintf("pipelining=%v", pipelining), func(t *testing.T) {
			t.Parallel()
			srv := startScripted(t, pipelining, acceptAllBut())
			ctx := ctxFor(t)
			c := srv.dial(ctx)
			for _, tc := range []struct {
				from, wantMail string
			}{
				{"no reply@client.example", `MAIL FROM:<"no reply"@client.example> BODY=8BITMIME`},
				{"", "MAIL FROM:<> BODY=8BITMIME"},
			} {
				if err := c.Mail(ctx, tc.from, nil); err != nil {
					t.Fatal(err)
				}
				refused, err := c.Send(ctx, []string{injected, "john doe@customer.example", "plain.one@customer.example"}, strings.NewReader(body))
				if err != nil || slices.ContainsFunc(refused, func(e *upstream.Error) bool { return e != nil }) {
					t.Fatalf("Send = %v, %v", refused, err)
				}
				<-srv.bodies
				want := []string{
					tc.wantMail,
					`RCPT TO:<"attacker@evil.example> NOTIFY=NEVER ORCPT=rfc822;x"@customer.example>`,
					`RCPT TO:<"john doe"@customer.example>`,
					`RCPT TO:<plain.one@customer.example>`,
					"DATA",
				}
				if got := commands(srv); !slices.Equal(got, want) {
					t.Errorf("the upstream got\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
				}
			}
		})
	}
}

// A real SMTP server reads each quoted address back as the one mailbox Postern was given.
func TestQuotedAddressesReadBack(t *testing.T) {
	t.Parallel()
	ctx := ctxFor(t)
	srv := upstreamtest.NewServer(t, upstreamtest.Options{})
	pools, _ := newPools(t, upstream.Options{})
	c, err := pools.Acquire(ctx, proj("client-a", srv), upstream.Auth{})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Release()
	rcpts := []string{injected, "john doe@customer.example", `a"b\c@customer.example`}
	sender := `"odd" sender@client.example`
	if err := c.Mail(ctx, sender, nil); err != nil {
		t.Fatal(err)
	}
	for _, r := range rcpts {
		if err := c.Rcpt(ctx, r, nil); err != nil {
			t.Fatalf("Rcpt(%q): %v", r, err)
		}
	}
	if err := c.Data(ctx, strings.NewReader(body)); err != nil {
		t.Fatal(err)
	}
	m := srv.Messages()[0]
	if m.From != sender || !slices.Equal(m.To, rcpts) {
		t.Fatalf("upstream got MAIL %q RCPT %q, want %q %q", m.From, m.To, sender, rcpts)
	}
}

// What no quoting can carry is refused before it reaches the upstream: the sender with 553
// 5.1.7, a recipient with 553 5.1.3 while the others go on.
func TestUnsendableAddressesRefused(t *testing.T) {
	t.Parallel()
	srv := startScripted(t, true, acceptAllBut())
	ctx := ctxFor(t)
	c := srv.dial(ctx)

	err := c.Mail(ctx, "nul\x00@client.example", nil)
	if e := asError(t, err); e.Code != 553 || e.Enhanced != (smtp.EnhancedCode{5, 1, 7}) || !e.Local || e.Temporary() {
		t.Fatalf("sender with NUL: %#v, want a permanent local 553 5.1.7", e)
	}
	if err := c.Mail(ctx, from, nil); err != nil {
		t.Fatal(err)
	}
	bad := []string{"nul\x00@customer.example", "cr\r\nRSET@customer.example", "x@evil.example> NOTIFY=NEVER"}
	refused, err := c.Send(ctx, append(slices.Clone(bad), "ok@customer.example"), strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	for i := range bad {
		if e := refused[i]; e == nil || e.Code != 553 || e.Enhanced != (smtp.EnhancedCode{5, 1, 3}) || !e.Local || e.Temporary() {
			t.Errorf("recipient %q: %#v, want a permanent local 553 5.1.3", bad[i], e)
		}
	}
	if refused[len(bad)] != nil {
		t.Errorf("the good recipient was refused: %v", refused[len(bad)])
	}
	<-srv.bodies
	want := []string{"MAIL FROM:<" + from + "> BODY=8BITMIME", "RCPT TO:<ok@customer.example>", "DATA"}
	if got := commands(srv); !slices.Equal(got, want) {
		t.Errorf("the upstream got %q, want %q", got, want)
	}

	// No recipient left: nothing goes out.
	if err := c.Mail(ctx, from, nil); err != nil {
		t.Fatal(err)
	}
	refused, err = c.Send(ctx, bad[:1], strings.NewReader(body))
	if e := asError(t, err); len(refused) != 1 || refused[0] == nil || e.Code/100 != 5 {
		t.Fatalf("Send with only a bad recipient = %v, %v", refused, err)
	}
	if got := commands(srv); len(got) != 0 {
		t.Errorf("the upstream got %q for a transaction without a recipient", got)
	}
}

// SMTPUTF8 goes with MAIL when any address of the transaction needs it, and an address that
// needs it is refused (553 5.6.7) by an upstream that does not offer it.
func TestSMTPUTF8ForInternationalAddresses(t *testing.T) {
	t.Parallel()
	ctx := ctxFor(t)
	const utf8Rcpt = "jörg@bücher.example"

	t.Run("offered", func(t *testing.T) {
		t.Parallel()
		srv := upstreamtest.NewServer(t, upstreamtest.Options{SMTPUTF8: true})
		pools, _ := newPools(t, upstream.Options{})
		c, err := pools.Acquire(ctx, proj("client-a", srv), upstream.Auth{})
		if err != nil {
			t.Fatal(err)
		}
		defer c.Release()
		for i, tc := range []struct {
			from  string
			rcpts []string
			utf8  bool
		}{
			{from, []string{to}, false},
			{from, []string{to, utf8Rcpt}, true}, // the second recipient decides
			{"jörg@client.example", []string{to}, true},
		} {
			if err := c.Mail(ctx, tc.from, nil); err != nil {
				t.Fatal(err)
			}
			refused, err := c.Send(ctx, tc.rcpts, strings.NewReader(body))
			if err != nil || slices.ContainsFunc(refused, func(e *upstream.Error) bool { return e != nil }) {
				t.Fatalf("message %d: %v, %v", i, refused, err)
			}
			m := srv.Messages()[i]
			if m.Opts.UTF8 != tc.utf8 || !slices.Equal(m.To, tc.rcpts) {
				t.Errorf("message %d: upstream got SMTPUTF8=%v to %q, want %v to %q", i, m.Opts.UTF8, m.To, tc.utf8, tc.rcpts)
			}
		}
	})

	t.Run("not offered", func(t *testing.T) {
		t.Parallel()
		srv := upstreamtest.NewServer(t, upstreamtest.Options{})
		pools, _ := newPools(t, upstream.Options{})
		c, err := pools.Acquire(ctx, proj("client-a", srv), upstream.Auth{})
		if err != nil {
			t.Fatal(err)
		}
		defer c.Release()
		err = c.Mail(ctx, "jörg@client.example", nil)
		if e := asError(t, err); e.Code != 553 || e.Enhanced != (smtp.EnhancedCode{5, 6, 7}) || !e.Local || e.Temporary() {
			t.Fatalf("international sender: %#v, want a permanent local 553 5.6.7", e)
		}
		if err := c.Mail(ctx, from, nil); err != nil {
			t.Fatal(err)
		}
		refused, err := c.Send(ctx, []string{utf8Rcpt, to}, strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		if e := refused[0]; e == nil || e.Code != 553 || e.Enhanced != (smtp.EnhancedCode{5, 6, 7}) || !e.Local {
			t.Errorf("international recipient: %#v, want a local 553 5.6.7", e)
		}
		if m := srv.Messages()[0]; m.Opts.UTF8 || !slices.Equal(m.To, []string{to}) {
			t.Errorf("upstream got SMTPUTF8=%v to %q", m.Opts.UTF8, m.To)
		}
	})
}
