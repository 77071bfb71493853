package project_test

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/postern/postern/sidecar/project"
	"github.com/postern/postern/sidecar/secret"
)

func TestPublicMapShowsNoSecret(t *testing.T) {
	p := project.Project{
		Name: "m365", Enabled: true, Senders: []string{"noreply@client.example"}, Version: 7,
		Upstream: project.Upstream{Host: "smtp.office365.com", Port: 587, TLS: project.TLSStartTLS},
		Auth: project.Auth{Type: project.AuthOAuth2, Username: "noreply@client.example",
			OAuth: &project.OAuth{Provider: "microsoft", Tenant: "client.example", ClientID: "app", ClientSecret: secret.New("client-secret-value")}},
	}
	obj, err := project.PublicMap(p)
	if err != nil {
		t.Fatal(err)
	}
	tok, err := project.PublicTokenMap(project.Token{AccessToken: secret.New("access-value"), Version: 3})
	if err != nil {
		t.Fatal(err)
	}
	b, _ := json.Marshal(map[string]any{"project": obj, "token": tok})
	got := string(b)
	for _, leak := range []string{"client-secret-value", "access-value"} {
		if strings.Contains(got, leak) {
			t.Fatalf("a secret shows: %s", got)
		}
	}
	auth := obj["auth"].(map[string]any)
	if _, ok := auth["password"]; ok {
		t.Errorf("an OAuth project without a password shows one: %v", auth["password"])
	}
	if c := auth["oauth"].(map[string]any)["client_secret"]; c != "[set]" || obj["version"] != 7 {
		t.Errorf("client_secret %v, version %v", c, obj["version"])
	}
	if tok["access_token"] != "[set]" || tok["refresh_token"] != "[not set]" || tok["version"] != 3 {
		t.Errorf("token shows %v", tok)
	}
	if got := project.NormalizeSenders([]string{" A@Client.Example ", "@Mail.Example"}); strings.Join(got, ",") != "A@client.example,@mail.example" {
		t.Errorf("NormalizeSenders = %q", got)
	}
	if project.NormalizeSenders([]string{}) != nil {
		t.Error("NormalizeSenders of an empty list is not nil")
	}
}

func TestExpiryText(t *testing.T) {
	now := time.Date(2026, 1, 10, 12, 0, 0, 0, time.UTC)
	for _, tc := range []struct {
		exp  time.Time
		want string
	}{
		{time.Date(2026, 2, 20, 0, 0, 0, 0, time.UTC), "expires 2026-02-20 (in 40 days)"},
		{time.Date(2026, 1, 12, 0, 0, 0, 0, time.UTC), "expires 2026-01-12 (in 1 day)"},
		{time.Date(2026, 1, 11, 0, 0, 0, 0, time.UTC), "expires 2026-01-11 (today)"},
		{time.Date(2026, 1, 10, 0, 0, 0, 0, time.UTC), "expired 2026-01-10 (today)"},
		{time.Date(2026, 1, 7, 0, 0, 0, 0, time.UTC), "expired 2026-01-07 (3 days ago)"},
	} {
		if got := project.ExpiryText(tc.exp, now); got != tc.want {
			t.Errorf("ExpiryText(%s) = %q, want %q", tc.exp, got, tc.want)
		}
	}
}
