package route

import (
	"fmt"
	"testing"

	"github.com/postern/postern/sidecar/project"
)

// benchProjects returns n projects, each with one address and one @domain.
func benchProjects(n int) []project.Project {
	ps := make([]project.Project, n)
	for i := range ps {
		ps[i] = project.Project{
			Name:    fmt.Sprintf("p%05d", i),
			Enabled: true,
			Senders: []string{fmt.Sprintf("noreply@p%05d.example", i), fmt.Sprintf("@d%05d.example", i)},
		}
	}
	return ps
}

// BenchmarkNew builds the table of 10,000 projects, as every directory reload does.
func BenchmarkNew(b *testing.B) {
	ps := benchProjects(10000)
	b.ReportAllocs()
	for b.Loop() {
		if _, errs := New(ps); len(errs) > 0 {
			b.Fatal(errs)
		}
	}
}

// BenchmarkLookup is one routing decision in a table of 10,000 projects.
func BenchmarkLookup(b *testing.B) {
	t, errs := New(benchProjects(10000))
	if len(errs) > 0 {
		b.Fatal(errs)
	}
	for _, tc := range []struct {
		name, sender string
		found        bool
	}{
		{"exact", "NoReply@P04711.example", true},
		{"domain", "billing@d04711.example", true},
		{"miss", "someone@elsewhere.example", false},
	} {
		b.Run(tc.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if _, ok := t.Lookup(tc.sender); ok != tc.found {
					b.Fatalf("Lookup(%q) found %v", tc.sender, ok)
				}
			}
		})
	}
}
