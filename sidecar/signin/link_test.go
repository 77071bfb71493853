package signin_test

import (
	"bytes"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/postern/postern/sidecar/oauth"
	"github.com/postern/postern/sidecar/project"
	"github.com/postern/postern/sidecar/signin"
)

func newKey(t *testing.T) []byte {
	t.Helper()
	k := make([]byte, signin.KeySize)
	if _, err := rand.Read(k); err != nil {
		t.Fatal(err)
	}
	return k
}

func oauthProject(name, mailbox string) project.Project {
	return project.Project{
		Name: name, Enabled: true, Senders: []string{mailbox},
		Upstream: project.Upstream{Host: "127.0.0.1", Port: 25, TLS: project.TLSNone},
		Auth: project.Auth{Type: project.AuthOAuth2, Username: mailbox, OAuth: &project.OAuth{
			Provider: oauth.Microsoft, Tenant: "client.example", ClientID: "cid",
		}},
	}
}

func TestLinkRoundTrip(t *testing.T) {
	t.Parallel()
	links, err := signin.NewLinks(newKey(t), "https://postern.example.com/")
	if err != nil {
		t.Fatal(err)
	}
	now := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	p := oauthProject("client-a", "noreply@client.example")
	u, link, err := links.New(p, 72*time.Hour, now)
	if err != nil {
		t.Fatal(err)
	}
	if link.Project != "client-a" || link.Mailbox != "noreply@client.example" || !link.Expiry.Equal(now.Add(72*time.Hour)) || len(link.Nonce) < 20 {
		t.Fatalf("link %+v", link)
	}
	parsed, err := url.Parse(u)
	if err != nil || parsed.Scheme != "https" || parsed.Host != "postern.example.com" || parsed.Path != "/signin" {
		t.Fatalf("url %q", u)
	}
	got, err := links.Verify(parsed.Query().Get("l"), now.Add(71*time.Hour))
	if err != nil {
		t.Fatalf("Verify: %v", err)
	}
	if got.Project != link.Project || got.Mailbox != link.Mailbox || got.Nonce != link.Nonce || !got.Expiry.Equal(link.Expiry) {
		t.Fatalf("verified %+v, made %+v", got, link)
	}
	_, other, _ := links.New(p, time.Hour, now)
	if other.Nonce == link.Nonce {
		t.Fatal("two links share a nonce")
	}
}

func TestLinkVerifyRefuses(t *testing.T) {
	t.Parallel()
	key := newKey(t)
	links, _ := signin.NewLinks(key, "http://127.0.0.1:8025")
	otherKey, _ := signin.NewLinks(newKey(t), "http://127.0.0.1:8025")
	now := time.Now()
	link := signin.Link{Project: "client-a", Mailbox: "noreply@client.example", Expiry: now.Add(time.Hour).Truncate(time.Second), Nonce: "nonce-1"}
	signed := links.Sign(link)
	payload, sig, _ := strings.Cut(signed, ".")
	raw, _ := base64.RawURLEncoding.DecodeString(payload)
	forged := base64.RawURLEncoding.EncodeToString(bytes.Replace(raw, []byte("client-a"), []byte("client-b"), 1)) + "." + sig

	tests := []struct {
		name   string
		signed string
		now    time.Time
		want   error
	}{
		{"empty", "", now, signin.ErrLinkInvalid},
		{"no signature", payload, now, signin.ErrLinkInvalid},
		{"another project under the same signature", forged, now, signin.ErrLinkInvalid},
		{"signature cut short", signed[:len(signed)-2], now, signin.ErrLinkInvalid},
		{"signed with another key", otherKey.Sign(link), now, signin.ErrLinkInvalid},
		{"not base64", "!!!.???", now, signin.ErrLinkInvalid},
		{"huge", strings.Repeat("a", 5000) + "." + sig, now, signin.ErrLinkInvalid},
		{"at its expiry", signed, link.Expiry, signin.ErrLinkExpired},
		{"after its expiry", signed, now.Add(2 * time.Hour), signin.ErrLinkExpired},
		{"valid", signed, now, nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			got, err := links.Verify(tc.signed, tc.now)
			if !errors.Is(err, tc.want) || (tc.want == nil && err != nil) {
				t.Fatalf("Verify = %v, want %v", err, tc.want)
			}
			if errors.Is(err, signin.ErrLinkExpired) && got.Project != "client-a" {
				t.Errorf("an expired link does not say what it was for: %+v", got)
			}
		})
	}
}

func TestNewLinkRefuses(t *testing.T) {
	t.Parallel()
	links, _ := signin.NewLinks(newKey(t), "http://127.0.0.1:8025")
	basic := oauthProject("basic", "a@client.example")
	basic.Auth = project.Auth{Type: project.AuthBasic, Username: "a@client.example"}
	cc := oauthProject("cc", "a@client.example")
	cc.Auth.OAuth.Grant = oauth.GrantClientCredentials
	device := oauthProject("device", "a@client.example")
	device.Auth.OAuth.Grant = oauth.GrantDeviceCode
	nobody := oauthProject("nobody", "")
	tests := []struct {
		name string
		p    project.Project
		ttl  time.Duration
		want string
	}{
		{"basic auth", basic, time.Hour, "--auth oauth2"},
		{"client credentials", cc, time.Hour, "postern authorize cc"},
		{"device code", device, time.Hour, "postern authorize --device device"},
		{"no mailbox", nobody, time.Hour, "names no mailbox"},
		{"zero ttl", oauthProject("a", "a@client.example"), 0, "more than 0"},
		{"ttl too long", oauthProject("a", "a@client.example"), 31 * 24 * time.Hour, "at most"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			if _, _, err := links.New(tc.p, tc.ttl, time.Now()); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("New = %v, want an error saying %q", err, tc.want)
			}
		})
	}
	if _, err := signin.NewLinks(make([]byte, 16), "http://127.0.0.1:8025"); err == nil {
		t.Error("a 16-byte key was accepted")
	}
	if _, err := signin.NewLinks(newKey(t), "postern.example.com"); err == nil {
		t.Error("a base URL without scheme was accepted")
	}
}

func TestLoadKey(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	path := filepath.Join(dir, "sub", "signin.key")

	// Concurrent first uses agree on one key.
	keys := make([][]byte, 8)
	var wg sync.WaitGroup
	for i := range keys {
		wg.Go(func() {
			k, err := signin.LoadKey(path)
			if err != nil {
				t.Errorf("LoadKey: %v", err)
			}
			keys[i] = k
		})
	}
	wg.Wait()
	for _, k := range keys[1:] {
		if !bytes.Equal(k, keys[0]) || len(k) != signin.KeySize {
			t.Fatal("concurrent LoadKey calls returned different keys")
		}
	}
	fi, err := os.Stat(path)
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("key file mode %v, %v", fi.Mode(), err)
	}
	if left, _ := filepath.Glob(filepath.Join(dir, "sub", ".*")); len(left) != 0 {
		t.Errorf("temporary files left behind: %v", left)
	}

	if err := os.Chmod(path, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := signin.LoadKey(path); err == nil || !strings.Contains(err.Error(), "chmod 600") {
		t.Errorf("a world-readable key file: %v", err)
	}
	short := filepath.Join(dir, "short.key")
	if err := os.WriteFile(short, []byte("too short"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := signin.LoadKey(short); err == nil || !strings.Contains(err.Error(), "fewer than 32") {
		t.Errorf("a short key file: %v", err)
	}
}

// FuzzLinkVerify feeds the sign-in link's parameter: verifying never panics, and whatever verifies
// is exactly what the key signed.
func FuzzLinkVerify(f *testing.F) {
	key := make([]byte, signin.KeySize)
	links, err := signin.NewLinks(key, "https://postern.example.com/")
	if err != nil {
		f.Fatal(err)
	}
	now := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	u, _, err := links.New(oauthProject("client-a", "noreply@client.example"), time.Hour, now)
	if err != nil {
		f.Fatal(err)
	}
	parsed, err := url.Parse(u)
	if err != nil {
		f.Fatal(err)
	}
	signed := parsed.Query().Get("l")
	f.Add(signed)
	f.Add("")
	f.Add(".")
	f.Add(signed + "x")
	f.Add(strings.Repeat("A", 4096))
	f.Fuzz(func(t *testing.T, s string) {
		link, err := links.Verify(s, now)
		if err != nil {
			return
		}
		if again := links.Sign(link); again != s && s != signed {
			t.Fatalf("verified %q (%+v), which the key signs as %q", s, link, again)
		}
	})
}
