package project

import (
	"errors"
	"testing"
)

func TestSenderConflicts(t *testing.T) {
	t.Parallel()
	others := []Project{
		{Name: "a", Senders: []string{"noreply@a.example", "@a.example"}},
		{Name: "b", Senders: []string{"News@B.example"}},
	}
	tests := []struct {
		name    string
		senders []string
		self    string
		want    string
	}{
		{"no clash", []string{"other@c.example"}, "c", ""},
		{"exact address", []string{"noreply@a.example"}, "c", "sender noreply@a.example already belongs to project a"},
		{"domain", []string{"@a.example"}, "c", "sender @a.example already belongs to project a"},
		{"case-insensitive", []string{"news@b.example"}, "c", "sender news@b.example already belongs to project b"},
		{"own earlier version", []string{"noreply@a.example"}, "a", ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			got := errors.Join(SenderConflicts(Project{Name: tc.self, Senders: tc.senders}, others)...)
			switch {
			case tc.want == "" && got != nil:
				t.Fatalf("conflicts %v, want none", got)
			case tc.want != "" && (got == nil || got.Error() != tc.want):
				t.Fatalf("conflicts %v, want %q", got, tc.want)
			}
		})
	}
}
