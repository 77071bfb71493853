package example

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/postern/postern/plugin"
)

const secretValue = "pa55-w0rd-nobody-may-see"

func writeFile(t *testing.T, body string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "credentials.json")
	if err := os.WriteFile(path, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

func TestFileProviderCredential(t *testing.T) {
	t.Parallel()
	good := writeFile(t, `{"projects": {
		"acme": {"mechanism": "LOGIN", "username": "svc", "secret": "`+secretValue+`", "expiry": "2030-06-01T00:00:00Z"},
		"defaults": {"secret": "`+secretValue+`"},
		"empty": {"mechanism": "PLAIN"}
	}}`)
	broken := writeFile(t, `{"projects": {"acme": {"secret": "`+secretValue+`"`)
	mistyped := writeFile(t, `{"projects": {"acme": {"secret": 12345}}}`)

	tests := []struct {
		name       string
		req        plugin.Request
		want       plugin.Credential
		wantReauth bool
		wantTemp   bool
	}{
		{
			name: "every field",
			req:  plugin.Request{Project: "acme", Username: "noreply@acme.example", Config: map[string]string{"file": good}},
			want: plugin.Credential{Mechanism: "LOGIN", Username: "svc", Secret: plugin.NewSecret(secretValue),
				Expiry: time.Date(2030, 6, 1, 0, 0, 0, 0, time.UTC)},
		},
		{
			name: "defaults: PLAIN and the project's mailbox",
			req:  plugin.Request{Project: "defaults", Username: "noreply@d.example", Config: map[string]string{"file": good}},
			want: plugin.Credential{Mechanism: "PLAIN", Username: "noreply@d.example", Secret: plugin.NewSecret(secretValue)},
		},
		{name: "no file key", req: plugin.Request{Project: "acme"}, wantReauth: true},
		{name: "project not in file", req: plugin.Request{Project: "nobody", Config: map[string]string{"file": good}}, wantReauth: true},
		{name: "empty secret", req: plugin.Request{Project: "empty", Config: map[string]string{"file": good}}, wantReauth: true},
		{name: "missing file", req: plugin.Request{Project: "acme", Config: map[string]string{"file": good + ".gone"}}, wantTemp: true},
		{name: "half-written file", req: plugin.Request{Project: "acme", Config: map[string]string{"file": broken}}, wantTemp: true},
		{name: "mistyped file", req: plugin.Request{Project: "acme", Config: map[string]string{"file": mistyped}}, wantTemp: true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			got, err := (&FileProvider{}).Credential(context.Background(), tc.req)
			var reauth *plugin.NeedsReauthError
			var temp *plugin.TemporaryError
			switch {
			case tc.wantReauth:
				if !errors.As(err, &reauth) {
					t.Fatalf("error = %#v, want *plugin.NeedsReauthError", err)
				}
			case tc.wantTemp:
				if !errors.As(err, &temp) {
					t.Fatalf("error = %#v, want *plugin.TemporaryError", err)
				}
			case err != nil:
				t.Fatalf("Credential: %v", err)
			default:
				if got.Mechanism != tc.want.Mechanism || got.Username != tc.want.Username ||
					got.Secret.Reveal() != tc.want.Secret.Reveal() || !got.Expiry.Equal(tc.want.Expiry) {
					t.Errorf("credential = %+v, want %+v", got, tc.want)
				}
			}
			if err != nil && strings.Contains(err.Error(), secretValue[:4]) {
				t.Errorf("error reveals part of the secret: %v", err)
			}
		})
	}
}

// A changed file is read again; ForceRefresh and Rejected re-read even when size and time match.
func TestFileProviderRereads(t *testing.T) {
	t.Parallel()
	path := writeFile(t, `{"projects": {"acme": {"secret": "aaaa"}}}`)
	info, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	cfg := map[string]string{"file": path}
	p := &FileProvider{}
	ctx := context.Background()
	secret := func(force bool) string {
		t.Helper()
		c, err := p.Credential(ctx, plugin.Request{Project: "acme", Username: "u", Config: cfg, ForceRefresh: force})
		if err != nil {
			t.Fatalf("Credential: %v", err)
		}
		return c.Secret.Reveal()
	}
	// rewrite replaces the secret with one of the same length and restores the modification
	// time, so only an explicit refresh can see the change.
	rewrite := func(s string) {
		t.Helper()
		if err := os.WriteFile(path, []byte(`{"projects": {"acme": {"secret": "`+s+`"}}}`), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Chtimes(path, info.ModTime(), info.ModTime()); err != nil {
			t.Fatal(err)
		}
	}

	if got := secret(false); got != "aaaa" {
		t.Fatalf("first read: got a different secret")
	}
	rewrite("bbbb")
	if got := secret(false); got != "aaaa" {
		t.Errorf("unchanged size and time: the cached parse should answer")
	}
	if got := secret(true); got != "bbbb" {
		t.Errorf("ForceRefresh did not re-read the file")
	}
	rewrite("cccc")
	if err := p.Rejected(ctx, plugin.RejectedRequest{Project: "acme", Config: cfg, Reply: "535 5.7.8"}); err != nil {
		t.Fatalf("Rejected: %v", err)
	}
	if got := secret(false); got != "cccc" {
		t.Errorf("after Rejected the file was not re-read")
	}
}
