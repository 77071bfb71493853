package sidecar

import (
	"context"
	"log/slog"
	"strings"
	"testing"

	"github.com/postern/postern/sidecar/advice"
	"github.com/postern/postern/sidecar/config"
	"github.com/postern/postern/sidecar/directory"
	"github.com/postern/postern/sidecar/limits"
	"github.com/postern/postern/sidecar/project"
	"github.com/postern/postern/sidecar/token"
)

type staticProjects []project.Project

func (s staticProjects) Projects(context.Context) ([]project.Project, error) { return s, nil }

// TestProjectStatusNamesQuotaPause: a project paused after its upstream's quota reply shows as
// quota_paused on /status and in the API, with the quota named; another project stays ok.
func TestProjectStatusNamesQuotaPause(t *testing.T) {
	t.Parallel()
	ps := staticProjects{
		{Name: "a", Enabled: true, Senders: []string{"@a.example"}, Upstream: project.Upstream{Host: "127.0.0.1", Port: 2525}, Auth: project.Auth{Type: project.AuthNone}},
		{Name: "b", Enabled: true, Senders: []string{"@b.example"}, Upstream: project.Upstream{Host: "127.0.0.1", Port: 2526}, Auth: project.Auth{Type: project.AuthNone}},
	}
	dir := directory.New(ps, directory.Options{})
	if err := dir.Load(t.Context()); err != nil {
		t.Fatal(err)
	}
	broker := token.New(token.Options{})
	t.Cleanup(broker.Close)
	lim := limits.New(limits.Options{})
	lim.Pause("a", "Exchange Online submission quota")

	ph, err := newProjectHealth(config.Default(), dir, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	rows := ph.status(t.Context(), dir, broker, lim)
	if len(rows) != 2 {
		t.Fatalf("%d rows, want 2", len(rows))
	}
	for _, r := range rows {
		switch r.Name {
		case "a":
			if r.State != advice.StateQuotaPaused || !strings.Contains(r.Reason, "Exchange Online submission quota") || r.Action == "" {
				t.Errorf("paused project: %+v", r)
			}
		case "b":
			if r.State != "ok" {
				t.Errorf("project b: %+v, want ok", r)
			}
		}
	}
}
