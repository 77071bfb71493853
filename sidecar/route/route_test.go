package route

import (
	"errors"
	"slices"
	"strings"
	"testing"

	"github.com/postern/postern/sidecar/project"
)

func projects() []project.Project {
	return []project.Project{
		{Name: "client-a", Enabled: true, Senders: []string{"NoReply@Client-A.example", "@client-a.example"}},
		{Name: "client-b", Enabled: false, Senders: []string{"billing@client-b.example"}},
		{Name: "client-c", Enabled: true, Senders: []string{"@Mail.Client-C.example."}},
	}
}

func TestLookup(t *testing.T) {
	t.Parallel()
	table, errs := New(projects())
	if len(errs) != 0 {
		t.Fatalf("unexpected errors: %v", errs)
	}
	tests := []struct {
		name   string
		sender string
		want   string
	}{
		{"exact address", "noreply@client-a.example", "client-a"},
		{"exact address in other case", "NOREPLY@CLIENT-A.EXAMPLE", "client-a"},
		{"domain pattern", "someone@client-a.example", "client-a"},
		{"domain pattern in other case", "someone@CLIENT-A.Example", "client-a"},
		{"disabled project still routes", "billing@client-b.example", "client-b"},
		{"trailing dot on the domain", "x@mail.client-c.example.", "client-c"},
		{"pattern written with a trailing dot", "x@mail.client-c.example", "client-c"},
		{"address not listed in an address-only project", "other@client-b.example", ""},
		{"subdomain is not the domain", "x@sub.client-a.example", ""},
		{"parent domain is not the domain", "x@client-c.example", ""},
		{"unknown domain", "noreply@elsewhere.example", ""},
		{"empty sender (bounce)", "", ""},
		{"no at sign", "noreply", ""},
		{"empty local part", "@client-a.example", ""},
		{"empty domain", "noreply@", ""},
		{"angle brackets", "<noreply@client-a.example>", ""},
		{"blank inside", "no reply@client-a.example", ""},
		{"double dot in domain", "x@client-a..example", ""},
		{"invalid utf-8", "x\xff@client-a.example", ""},
		{"unquoted at sign in the local part", "@@client-a.example", ""},
		{"quoted local part with at sign", `"a@b"@client-a.example`, "client-a"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			got, ok := table.Lookup(tc.sender)
			if got != tc.want || ok != (tc.want != "") {
				t.Fatalf("Lookup(%q) = %q, %v; want %q", tc.sender, got, ok, tc.want)
			}
		})
	}
}

func TestExactAddressBeatsDomainOfAnotherProject(t *testing.T) {
	t.Parallel()
	table, errs := New([]project.Project{
		{Name: "domain-owner", Senders: []string{"@shared.example"}},
		{Name: "one-mailbox", Senders: []string{"ceo@shared.example"}},
	})
	if len(errs) != 0 {
		t.Fatalf("an address inside another project's domain is not a conflict: %v", errs)
	}
	if got, _ := table.Lookup("ceo@shared.example"); got != "one-mailbox" {
		t.Fatalf("exact address routed to %q, want one-mailbox", got)
	}
	if got, _ := table.Lookup("staff@shared.example"); got != "domain-owner" {
		t.Fatalf("domain routed to %q, want domain-owner", got)
	}
}

func TestConflicts(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name     string
		projects []project.Project
		sender   string
		winner   string
		conflict string
	}{
		{
			name: "same address",
			projects: []project.Project{
				{Name: "zeta", Senders: []string{"x@dup.example"}},
				{Name: "alpha", Senders: []string{"X@DUP.example"}},
			},
			sender: "x@dup.example", winner: "alpha", conflict: "x@dup.example",
		},
		{
			name: "same domain",
			projects: []project.Project{
				{Name: "beta", Senders: []string{"@dup.example"}},
				{Name: "alpha", Senders: []string{"@Dup.Example"}},
			},
			sender: "y@dup.example", winner: "alpha", conflict: "@dup.example",
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			// The winner must not depend on the order the store returned the projects in.
			for _, order := range [][]project.Project{tc.projects, reversed(tc.projects)} {
				table, errs := New(order)
				if len(errs) != 1 {
					t.Fatalf("want one conflict, got %v", errs)
				}
				var ce *ConflictError
				if !errors.As(errs[0], &ce) {
					t.Fatalf("error is %T, want *ConflictError", errs[0])
				}
				if ce.Sender != tc.conflict || ce.First != tc.winner {
					t.Fatalf("conflict = %+v, want sender %q kept by %q", ce, tc.conflict, tc.winner)
				}
				for _, p := range tc.projects {
					if !strings.Contains(errs[0].Error(), p.Name) {
						t.Fatalf("conflict %q does not name project %q", errs[0], p.Name)
					}
				}
				if got, _ := table.Lookup(tc.sender); got != tc.winner {
					t.Fatalf("Lookup = %q, want the first project %q", got, tc.winner)
				}
			}
		})
	}
}

func TestSameSenderTwiceInOneProjectIsNotAConflict(t *testing.T) {
	t.Parallel()
	_, errs := New([]project.Project{{Name: "a", Senders: []string{"x@a.example", "X@A.example", "@a.example", "@A.EXAMPLE"}}})
	if len(errs) != 0 {
		t.Fatalf("duplicates within one project reported: %v", errs)
	}
}

func TestMalformedSendersAreReportedAndSkipped(t *testing.T) {
	t.Parallel()
	table, errs := New([]project.Project{{Name: "broken", Senders: []string{"nobody", "@", "ok@fine.example", "a@"}}})
	if len(errs) != 3 {
		t.Fatalf("want 3 errors, got %v", errs)
	}
	for _, err := range errs {
		if !strings.Contains(err.Error(), `"broken"`) {
			t.Fatalf("error %q does not name the project", err)
		}
	}
	if got, ok := table.Lookup("ok@fine.example"); !ok || got != "broken" {
		t.Fatalf("the valid sender of the project was dropped: %q %v", got, ok)
	}
	if table.Len() != 1 {
		t.Fatalf("Len = %d, want 1", table.Len())
	}
}

func TestDomains(t *testing.T) {
	t.Parallel()
	table, _ := New(projects())
	want := []string{"client-a.example", "client-b.example", "mail.client-c.example"}
	if got := table.Domains(); !slices.Equal(got, want) {
		t.Fatalf("Domains = %v, want %v", got, want)
	}
	tests := []struct {
		domain string
		want   bool
	}{
		{"client-a.example", true},
		{"CLIENT-B.example", true},
		{"mail.client-c.example.", true},
		{"client-c.example", false},
		{"", false},
		{"@client-a.example", false},
	}
	for _, tc := range tests {
		if got := table.ServesDomain(tc.domain); got != tc.want {
			t.Errorf("ServesDomain(%q) = %v, want %v", tc.domain, got, tc.want)
		}
	}
	// Domains returns a copy.
	table.Domains()[0] = "changed"
	if table.Domains()[0] != "client-a.example" {
		t.Fatal("Domains exposes the table's own slice")
	}
}

func TestNilTableRoutesNothing(t *testing.T) {
	t.Parallel()
	var table *Table
	if _, ok := table.Lookup("a@b.example"); ok {
		t.Fatal("nil table matched")
	}
	if table.ServesDomain("b.example") || table.Domains() != nil || table.Len() != 0 {
		t.Fatal("nil table serves something")
	}
}

func reversed(ps []project.Project) []project.Project {
	out := slices.Clone(ps)
	slices.Reverse(out)
	return out
}
