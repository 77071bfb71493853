package reply

import (
	"strings"
	"testing"
)

// TestTable: every state has its reply; faults are temporary; no reply carries what is meant for
// the operator (a command to run, an identity provider's reason).
func TestTable(t *testing.T) {
	t.Parallel()
	f := Facts{Sender: "a@b.example", Project: "client-a", Address: "x@b.example", Reason: "r", Upstream: "upstream h:587", Said: "535 5.7.3 no", Limit: 10}
	for s := ShuttingDown; s <= Temporary; s++ {
		e, ok := table[s]
		if !ok {
			t.Fatalf("state %d has no reply", s)
		}
		r := For(s, f)
		if r.Code != e.code || r.Text == "" || r.Enhanced[0] != r.Code/100 {
			t.Errorf("state %d: %v", s, r)
		}
		if strings.Contains(r.Text, "postern ") || strings.Contains(r.Text, "AADSTS") {
			t.Errorf("state %d: operator text in a reply: %q", s, r.Text)
		}
	}
	for _, s := range []State{ShuttingDown, Unavailable, Disabled, RateLimited, QuotaPaused, RecipientsPerDay, NeedsSignIn, CredentialRefused, Temporary} {
		if r := For(s, f); r.Code/100 != 4 {
			t.Errorf("state %d is an operational fault, but %v is not temporary", s, r)
		}
	}
	if got := For(State(999), f); got != For(Temporary, f) {
		t.Errorf("unknown state: %v", got)
	}
	if got := For(NoProject, Facts{Sender: "a\r\nRCPT TO:<x>@b"}).Text; strings.ContainsRune(got, '\r') {
		t.Errorf("control characters in a reply: %q", got)
	}
}
