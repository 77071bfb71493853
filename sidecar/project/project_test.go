package project

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/postern/postern/sidecar/secret"
)

func basicProject() Project {
	return Project{
		Name:     "client-a",
		Enabled:  true,
		Senders:  []string{"noreply@client-a.example", "@mail.client-a.example"},
		Upstream: Upstream{Host: "smtp.client-a.example", Port: 587, TLS: TLSStartTLS},
		Auth:     Auth{Type: AuthBasic, Username: "noreply@client-a.example", Password: secret.New("pw-123456")},
	}
}

func TestStoredRoundTripKeepsSecrets(t *testing.T) {
	t.Parallel()
	p := basicProject()
	p.Auth.OAuth = &OAuth{Provider: "generic", ClientID: "id", ClientSecret: secret.New("cs-abcdef"), TokenURL: "http://127.0.0.1/token"}
	b, err := MarshalStored(p)
	if err != nil {
		t.Fatal(err)
	}
	got, err := UnmarshalStored(b)
	if err != nil {
		t.Fatal(err)
	}
	if got.Auth.Password.Reveal() != "pw-123456" || got.Auth.OAuth.ClientSecret.Reveal() != "cs-abcdef" {
		t.Fatalf("secrets lost in the round trip")
	}
	if got.Name != p.Name || got.Upstream != p.Upstream || len(got.Senders) != 2 {
		t.Fatalf("round trip changed the project: %+v", got)
	}

	// The ordinary JSON form never carries them.
	plain, _ := json.Marshal(p)
	if strings.Contains(string(plain), "pw-123456") || strings.Contains(string(plain), "cs-abcdef") {
		t.Fatalf("json.Marshal leaks a secret: %s", plain)
	}
}

func TestStoredRejectsUnknownKeys(t *testing.T) {
	t.Parallel()
	if _, err := UnmarshalStored([]byte(`{"name":"a","sendrs":["x@y.z"]}`)); err == nil {
		t.Fatal("a misspelt key was accepted")
	}
}

func TestTokenRoundTrip(t *testing.T) {
	t.Parallel()
	tok := Token{AccessToken: secret.New("at"), RefreshToken: secret.New("rt"), State: TokenOK, Account: "a@b.example"}
	b, err := MarshalStoredToken(tok)
	if err != nil {
		t.Fatal(err)
	}
	got, err := UnmarshalStoredToken(b)
	if err != nil {
		t.Fatal(err)
	}
	if got.AccessToken.Reveal() != "at" || got.RefreshToken.Reveal() != "rt" || got.Account != tok.Account {
		t.Fatalf("token round trip: %+v", got)
	}
}

func TestValidate(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name   string
		mutate func(*Project)
		want   []string // substrings, one per expected error
	}{
		{"valid", func(*Project) {}, nil},
		{"bad name and no senders", func(p *Project) { p.Name = "Client A"; p.Senders = nil }, []string{"name", "senders"}},
		{"bad sender", func(p *Project) { p.Senders = []string{"not an address"} }, []string{"senders"}},
		{"plain text off loopback", func(p *Project) { p.Upstream.TLS = TLSNone }, []string{"loopback"}},
		{"plain text on loopback", func(p *Project) { p.Upstream.TLS = TLSNone; p.Upstream.Host = "127.0.0.1" }, nil},
		{"plain text on ::1", func(p *Project) { p.Upstream.TLS = TLSNone; p.Upstream.Host = "::1" }, nil},
		{"plain text on localhost", func(p *Project) { p.Upstream.TLS = TLSNone; p.Upstream.Host = "localhost" }, nil},
		{"plain text on a name starting with 127.", func(p *Project) { p.Upstream.TLS = TLSNone; p.Upstream.Host = "127.evil.example" }, []string{"loopback"}},
		{"plain text on 127.0.0.1.evil.example", func(p *Project) { p.Upstream.TLS = TLSNone; p.Upstream.Host = "127.0.0.1.evil.example" }, []string{"loopback"}},
		{"no password", func(p *Project) { p.Auth.Password = secret.Secret{} }, []string{"password"}},
		{"bad port and mechanism", func(p *Project) { p.Upstream.Port = 0; p.Auth.Mechanism = "CRAM-MD5" }, []string{"port", "mechanism"}},
		{"oauth without settings", func(p *Project) { p.Auth.Type = AuthOAuth2 }, []string{"oauth"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			p := basicProject()
			c.mutate(&p)
			errs := p.Validate()
			if len(errs) != len(c.want) {
				t.Fatalf("got %d errors %v, want %d", len(errs), errs, len(c.want))
			}
			for i, w := range c.want {
				if !strings.Contains(errs[i].Error(), w) {
					t.Errorf("error %d = %q, want it to mention %q", i, errs[i], w)
				}
			}
		})
	}
}

func TestMaySendAs(t *testing.T) {
	t.Parallel()
	p := basicProject()
	for addr, want := range map[string]bool{
		"noreply@client-a.example":    true,
		"NoReply@Client-A.example":    true,
		"x@mail.client-a.example":     true,
		"other@client-a.example":      false,
		"noreply@client-b.example":    false,
		"x@sub.mail.client-a.example": false,
	} {
		if got := p.MaySendAs(addr); got != want {
			t.Errorf("MaySendAs(%q) = %v, want %v", addr, got, want)
		}
	}
}

func TestUsedSignIns(t *testing.T) {
	t.Parallel()
	now := time.Unix(1_800_000_000, 0)
	var rec Token
	rec.UseSignIn("old", now.Add(time.Minute), now)
	rec.UseSignIn("new", now.Add(time.Hour), now)
	shared := rec
	rec.UseSignIn("later", now.Add(2*time.Hour), now.Add(2*time.Minute))
	switch {
	case rec.SignInUsed("old"):
		t.Error("an expired link is kept")
	case !rec.SignInUsed("new") || !rec.SignInUsed("later"):
		t.Errorf("used links %v", rec.UsedSignIns)
	case shared.SignInUsed("later"):
		t.Error("UseSignIn changed the map of a copy")
	case rec.SignInUsed(""):
		t.Error("the empty nonce counts as used")
	}
	legacy := Token{SignInNonce: "legacy"}
	legacy.KeepSignIns(rec, now)
	if !legacy.SignInUsed("legacy") || !legacy.SignInUsed("new") || !legacy.SignInUsed("later") {
		t.Errorf("KeepSignIns: %+v", legacy)
	}
}
