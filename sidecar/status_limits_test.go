package sidecar

import (
	"context"
	"log/slog"
	"strings"
	"testing"
	"time"

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

// TestProjectStatusShowsClientSecretExpiry: /status and the API show each OAuth project's client
// secret expiry; one that expires within tokens.client_secret_warning is degraded and one expired
// is failing, each with the date and what to do; a project without a date or far from it is ok.
func TestProjectStatusShowsClientSecretExpiry(t *testing.T) {
	t.Parallel()
	day := 24 * time.Hour
	now := time.Now().UTC()
	oauthProject := func(name string, expires time.Time) project.Project {
		return project.Project{
			Name: name, Enabled: true, Senders: []string{"@" + name + ".example"},
			Upstream: project.Upstream{Host: "127.0.0.1", Port: 2525},
			Auth: project.Auth{Type: project.AuthOAuth2, Username: "noreply@" + name + ".example", OAuth: &project.OAuth{
				Provider: "microsoft", Tenant: name + ".example", ClientID: "id-" + name, ClientSecretExpires: expires,
			}},
		}
	}
	soon, gone, far := now.Add(10*day), now.Add(-2*day), now.Add(90*day)
	ps := staticProjects{oauthProject("soon", soon), oauthProject("gone", gone), oauthProject("far", far), oauthProject("nodate", time.Time{})}
	dir := directory.New(ps, directory.Options{})
	if err := dir.Load(t.Context()); err != nil {
		t.Fatal(err)
	}
	broker := token.New(token.Options{})
	t.Cleanup(broker.Close)
	ph, err := newProjectHealth(config.Default(), dir, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]struct {
		expires        time.Time
		health, reason string
		text           string
	}{
		"soon":   {soon, "degraded", "client_secret_expiring", "expires on " + soon.Format(time.DateOnly)},
		"gone":   {gone, "failing", "client_secret_expired", "expired on " + gone.Format(time.DateOnly)},
		"far":    {far, "ok", "", ""},
		"nodate": {time.Time{}, "ok", "", ""},
	}
	for _, r := range ph.status(t.Context(), dir, broker, limits.New(limits.Options{})) {
		w := want[r.Name]
		if !r.ClientSecretExpires.Equal(w.expires) || r.Health != w.health || r.HealthReason != w.reason {
			t.Errorf("%s: expires %v, health %s (%s); want %v, %s (%s)", r.Name, r.ClientSecretExpires, r.Health, r.HealthReason, w.expires, w.health, w.reason)
		}
		if w.text == "" {
			if r.Action != "" {
				t.Errorf("%s: action %q, want none", r.Name, r.Action)
			}
			continue
		}
		if r.State != w.reason || !strings.Contains(r.Reason, w.text) ||
			!strings.Contains(r.Action, "Certificates & secrets") || !strings.Contains(r.Action, "postern project update "+r.Name+" --client-secret-stdin") {
			t.Errorf("%s: state %q, reason %q, action %q", r.Name, r.State, r.Reason, r.Action)
		}
	}
}
