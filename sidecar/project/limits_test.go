package project_test

import (
	"testing"

	"github.com/postern/postern/sidecar/project"
)

// TestEffectiveLimits: a limit a project leaves at zero is its provider's, found by OAuth
// provider or by upstream host; a project's own limit wins.
func TestEffectiveLimits(t *testing.T) {
	t.Parallel()
	ms := project.Project{Auth: project.Auth{Type: project.AuthOAuth2, OAuth: &project.OAuth{Provider: "microsoft"}}}
	if got := ms.EffectiveLimits(); got != project.MicrosoftLimits {
		t.Errorf("microsoft: %+v", got)
	}
	ms.Limits.MessagesPerMinute = 10
	if got := ms.EffectiveLimits(); got.MessagesPerMinute != 10 || got.RecipientsPerDay != 10000 {
		t.Errorf("microsoft with its own per-minute limit: %+v", got)
	}
	g := project.Project{Upstream: project.Upstream{Host: "smtp.gmail.com"}}
	if got := g.EffectiveLimits(); got.MaxRecipients != 100 {
		t.Errorf("gmail: %+v", got)
	}
	if got := (project.Project{Upstream: project.Upstream{Host: "mail.example"}}).EffectiveLimits(); got != (project.Limits{}) {
		t.Errorf("other: %+v", got)
	}
}
