package route

import (
	"strings"
	"testing"

	"github.com/postern/postern/sidecar/project"
)

func FuzzLookup(f *testing.F) {
	for _, s := range []string{"", "a@b.example", "NoReply@Client-A.example", "@client-a.example", "x@", "@", "a@b@c.example",
		"<a@b.example>", "x\xff@client-a.example", `"q@x"@client-a.example`, "x@client-a.example."} {
		f.Add(s)
	}
	table, _ := New([]project.Project{
		{Name: "a", Senders: []string{"noreply@client-a.example", "@client-a.example"}},
		{Name: "b", Senders: []string{"Billing@Client-B.example"}},
	})
	f.Fuzz(func(t *testing.T, sender string) {
		name, ok := table.Lookup(sender)
		if ok != (name != "") {
			t.Fatalf("Lookup(%q) = %q, %v", sender, name, ok)
		}
		if sender == "" && ok {
			t.Fatal("the empty sender matched")
		}
		// ASCII case never changes the answer.
		upper := strings.Map(func(r rune) rune {
			if 'a' <= r && r <= 'z' {
				return r - 'a' + 'A'
			}
			return r
		}, sender)
		if n2, ok2 := table.Lookup(upper); n2 != name || ok2 != ok {
			t.Fatalf("Lookup(%q) = %q but Lookup(%q) = %q", sender, name, upper, n2)
		}
		// Any sender the table routes can also be configured: a table built from it routes it to
		// the same place, and ServesDomain agrees.
		if ok {
			at := strings.LastIndexByte(sender, '@')
			if !table.ServesDomain(sender[at+1:]) {
				t.Fatalf("Lookup(%q) matched but ServesDomain(%q) is false", sender, sender[at+1:])
			}
			t2, errs := New([]project.Project{{Name: "z", Senders: []string{sender}}})
			if len(errs) != 0 {
				t.Fatalf("a routable sender %q is not a valid pattern: %v", sender, errs)
			}
			if n, _ := t2.Lookup(sender); n != "z" {
				t.Fatalf("sender %q does not route to itself", sender)
			}
		}
	})
}
