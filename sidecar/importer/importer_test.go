package importer

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/postern/postern/sidecar/project"
)

func read(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// saslInput reads the sasl-xoauth2 fixtures; sasl_passwd names the token files under /etc/tokens.
func saslInput(t *testing.T) SASLInput {
	t.Helper()
	conf, err := ParseSASLConfig("sasl-xoauth2.conf", read(t, "testdata/sasl/sasl-xoauth2.conf"))
	if err != nil {
		t.Fatal(err)
	}
	in := SASLInput{Config: conf, PasswdFile: "sasl_passwd", RelayFile: "sender_relay",
		SamePath: func(p, file string) bool { return p == "/etc/tokens/"+filepath.Base(file) }}
	for _, n := range []string{"noreply@client.co.uk", "billing@client.co.uk", "alerts@gmail-client.com", "external@client.co.uk"} {
		path := "testdata/sasl/tokens/" + n
		tok, err := ParseSASLToken(path, read(t, path))
		if err != nil {
			t.Fatal(err)
		}
		in.Tokens = append(in.Tokens, tok)
	}
	if in.Passwd, err = ParsePostfixMap("sasl_passwd", read(t, "testdata/sasl/sasl_passwd")); err != nil {
		t.Fatal(err)
	}
	if in.Relay, err = ParsePostfixMap("sender_relay", read(t, "testdata/sasl/sender_relay")); err != nil {
		t.Fatal(err)
	}
	return in
}

func byName(t *testing.T, accounts []Account) map[string]Account {
	t.Helper()
	m := map[string]Account{}
	for _, a := range accounts {
		m[a.Project.Name] = a
		if a.Skipped == "" {
			if errs := a.Project.Validate(); len(errs) != 0 {
				t.Errorf("%s: the imported project is not valid: %v", a.Project.Name, errs)
			}
		}
	}
	return m
}

func TestSASLXOAuth2(t *testing.T) {
	t.Parallel()
	accounts, err := SASLXOAuth2(saslInput(t))
	if err != nil {
		t.Fatal(err)
	}
	m := byName(t, accounts)
	if len(m) != 4 {
		t.Fatalf("got %d accounts, want 4", len(m))
	}

	noreply := m["noreply-at-client.co.uk"]
	p := noreply.Project
	if p.Upstream != (project.Upstream{Host: "smtp.office365.com", Port: 587, TLS: project.TLSStartTLS}) ||
		p.Auth.OAuth.Provider != "microsoft" || p.Auth.OAuth.Tenant != "client.co.uk" ||
		p.Auth.OAuth.ClientID != "11111111-2222-3333-4444-555555555555" || p.Auth.OAuth.ClientSecret.Reveal() != "conf-secret-Aa1" ||
		strings.Join(p.Senders, ",") != "noreply@client.co.uk" || p.Auth.Username != "noreply@client.co.uk" {
		t.Errorf("noreply: %+v %+v", p, p.Auth.OAuth)
	}
	if tok := noreply.Token; tok == nil || tok.RefreshToken.Reveal() != "refresh-Noreply-0001" || tok.AccessToken.Reveal() != "access-Noreply-0001" ||
		!tok.Expiry.Equal(time.Unix(1767225600, 0)) || tok.Account != "noreply@client.co.uk" || len(noreply.Todo) != 0 {
		t.Errorf("noreply token %+v, todo %q", tok, noreply.Todo)
	}

	billing := m["billing-at-client.co.uk"]
	if billing.Project.Upstream.Host != "smtp.office365.com" || strings.Join(billing.Project.Senders, ",") != "billing@client.co.uk" ||
		billing.Token == nil || !billing.Token.Expiry.IsZero() {
		t.Errorf("billing: %+v token %+v", billing.Project, billing.Token)
	}

	alerts := m["alerts-at-gmail-client.com"]
	o := alerts.Project.Auth.OAuth
	if alerts.Project.Upstream != (project.Upstream{Host: "smtp.gmail.com", Port: 465, TLS: project.TLSImplicit}) ||
		o.Provider != "google" || o.ClientID != "999.apps.googleusercontent.com" || o.ClientSecret.Reveal() != "google-secret-Bb2" ||
		alerts.Token == nil || !alerts.Token.AccessToken.IsZero() {
		t.Errorf("alerts (token file overrides the configuration, relay by @domain): %+v %+v", alerts.Project, o)
	}

	ext := m["external-at-client.co.uk"]
	if ext.Token != nil || len(ext.Todo) != 1 || !strings.Contains(ext.Todo[0], "signed in") {
		t.Errorf("external: token %v todo %q", ext.Token, ext.Todo)
	}
	if len(ext.Notes) == 0 {
		t.Errorf("external: no note that the upstream is the provider's default")
	}

	// Secrets never show in what is printed of an account.
	for _, a := range accounts {
		for _, s := range []string{fmt.Sprintf("%v", a), fmt.Sprintf("%+v", a), fmt.Sprintf("%#v", a)} {
			for _, leak := range []string{"Aa1", "Bb2", "refresh-", "access-"} {
				if strings.Contains(s, leak) {
					t.Fatalf("%s leaks %q: %s", a.Project.Name, leak, s)
				}
			}
		}
	}
}

func TestSASLXOAuth2Errors(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name   string
		change func(in *SASLInput)
		want   string
	}{
		{"no client id", func(in *SASLInput) { in.Config.ClientID = "" }, "testdata/sasl/tokens/noreply@client.co.uk: no client_id"},
		{"unknown provider", func(in *SASLInput) { in.Config.TokenEndpoint = "https://idp.example/token" }, "neither Microsoft's nor Google's"},
		{"no mailbox", func(in *SASLInput) { in.Passwd = nil }, "noreply@client.co.uk: no mailbox"},
		{"bad relay", func(in *SASLInput) { in.Relay[0].Value = "smtp.office365.com:x" }, "sender_relay: line 1: relay host"},
		{"bad key", func(in *SASLInput) { in.Passwd[0].Key = "[smtp.office365.com" }, "sasl_passwd: line 2: key"},
		{"user differs from the file's", func(in *SASLInput) { in.Passwd[1].Value = "other@client.co.uk:/etc/tokens/billing@client.co.uk" }, "sasl_passwd: line 5: user other@client.co.uk"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			in := saslInput(t)
			tc.change(&in)
			_, err := SASLXOAuth2(in)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v does not say %q", err, tc.want)
			}
			var ie *Error
			if !errors.As(err, &ie) {
				t.Fatalf("error %v is not an *Error", err)
			}
		})
	}
}

func TestParseSASLTokenErrors(t *testing.T) {
	t.Parallel()
	tests := []struct{ name, json, want string }{
		{"syntax", "{\n  \"refresh_token\": \"x\",\n  oops\n}", "tok: line 3: not JSON"},
		{"wrong type", "{\"refresh_token\": [1]}", "key \"refresh_token\""},
		{"bad expiry", "{\"refresh_token\": \"x\", \"expiry\": \"soon\"}", "expiry \"soon\""},
		{"no token", "{\"client_id\": \"x\"}", "neither refresh_token nor access_token"},
		{"two values", "{\"refresh_token\": \"x\"}\n{}", "more than one JSON value"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			_, err := ParseSASLToken("tok", []byte(tc.json))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v does not say %q", err, tc.want)
			}
		})
	}
}

func TestParsePostfixMap(t *testing.T) {
	t.Parallel()
	got, err := ParsePostfixMap("m", []byte("# c\n\na  b\n  c\nd\te:f\n"))
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 || got[0] != (MapEntry{Line: 3, Key: "a", Value: "b c"}) || got[1] != (MapEntry{Line: 5, Key: "d", Value: "e:f"}) {
		t.Fatalf("got %+v", got)
	}
	for _, bad := range []string{" x y\n", "lonely\n"} {
		if _, err := ParsePostfixMap("m", []byte(bad)); err == nil || !strings.Contains(err.Error(), "m: line 1") {
			t.Errorf("%q: error %v", bad, err)
		}
	}
}

func TestEmailOAuth2Proxy(t *testing.T) {
	t.Parallel()
	accounts, err := EmailOAuth2Proxy("emailproxy.config", read(t, "testdata/emailproxy.config"))
	if err != nil {
		t.Fatal(err)
	}
	if len(accounts) != 3 {
		t.Fatalf("got %d accounts, want 3", len(accounts))
	}
	m := byName(t, accounts)
	noreply := m["noreply-at-client.co.uk"]
	p := noreply.Project
	if p.Upstream != (project.Upstream{Host: "smtp.office365.com", Port: 587, TLS: project.TLSStartTLS}) ||
		p.Auth.OAuth.Provider != "microsoft" || p.Auth.OAuth.Tenant != "client.co.uk" || p.Auth.OAuth.ClientSecret.Reveal() != "proxy-secret-Cc3" {
		t.Errorf("noreply: %+v %+v", p, p.Auth.OAuth)
	}
	if noreply.Token != nil || len(noreply.Todo) != 1 || !strings.Contains(noreply.Todo[0], "encrypted") {
		t.Errorf("noreply: encrypted tokens imported? token %v todo %q", noreply.Token, noreply.Todo)
	}
	alerts := m["alerts-at-gmail-client.com"]
	if alerts.Project.Upstream != (project.Upstream{Host: "smtp.gmail.com", Port: 465, TLS: project.TLSImplicit}) ||
		alerts.Project.Auth.OAuth.Provider != "google" || !alerts.Project.Auth.OAuth.ClientSecret.IsZero() {
		t.Errorf("alerts: %+v", alerts.Project)
	}
	if len(alerts.Todo) != 2 || !strings.Contains(alerts.Todo[0], "--client-secret-stdin") {
		t.Errorf("alerts todo %q", alerts.Todo)
	}
	var skipped int
	for _, a := range accounts {
		if a.Skipped != "" {
			skipped++
			if !strings.Contains(a.Source, "[@catchall.example]") {
				t.Errorf("skipped %s", a.Source)
			}
		}
	}
	if skipped != 1 {
		t.Errorf("%d skipped, want the catch-all", skipped)
	}
}

func TestEmailOAuth2ProxyPlainToken(t *testing.T) {
	t.Parallel()
	conf := "[SMTP-1587]\nserver_address = smtp.office365.com\nserver_port = 587\nstarttls = True\n\n" +
		"[a@b.example]\ntoken_url = https://login.microsoftonline.com/common/oauth2/v2.0/token\nclient_id = c\n" +
		"refresh_token = plain-Refresh-1\naccess_token_expiry = 1767225600\n"
	accounts, err := EmailOAuth2Proxy("c", []byte(conf))
	if err != nil {
		t.Fatal(err)
	}
	if len(accounts) != 1 || accounts[0].Token == nil || accounts[0].Token.RefreshToken.Reveal() != "plain-Refresh-1" {
		t.Fatalf("got %+v", accounts)
	}
}

func TestEmailOAuth2ProxyErrors(t *testing.T) {
	t.Parallel()
	acct := "[a@b.example]\ntoken_url = https://login.microsoftonline.com/common/oauth2/v2.0/token\nclient_id = c\n"
	tests := []struct{ name, conf, want string }{
		{"no accounts", "[SMTP-1587]\nserver_address = x\nserver_port = 587\n", "no account sections"},
		{"bad port", "[SMTP-1587]\nserver_address = x\nserver_port = big\n" + acct, "c: section [SMTP-1587]: server_port"},
		{"no address", "[SMTP-1587]\nserver_port = 587\n" + acct, "section [SMTP-1587]: server_address is empty"},
		{"bad starttls", "[SMTP-1587]\nserver_address = x\nserver_port = 587\nstarttls = maybe\n" + acct, "starttls"},
		{"no token url", "[a@b.example]\nclient_id = c\n", "section [a@b.example]: token_url is empty"},
		{"no client id", "[a@b.example]\ntoken_url = https://oauth2.googleapis.com/token\n", "client_id is empty"},
		{"bad mailbox", "[a@@b]\ntoken_url = https://oauth2.googleapis.com/token\nclient_id = c\n", "not a mail address"},
		{"generic without server", "[a@b.example]\ntoken_url = https://idp.example/token\npermission_url = https://idp.example/auth\nclient_id = c\n", "no [SMTP-...] server section"},
		{"bad expiry", "[a@b.example]\ntoken_url = https://oauth2.googleapis.com/token\nclient_id = c\nrefresh_token = r\naccess_token_expiry = later\n", "access_token_expiry"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			_, err := EmailOAuth2Proxy("c", []byte(tc.conf))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v does not say %q", err, tc.want)
			}
		})
	}
}

func TestProjectName(t *testing.T) {
	t.Parallel()
	for in, want := range map[string]string{
		"noreply@client.co.uk":       "noreply-at-client.co.uk",
		"First.Last+tag@Example.COM": "first.last-tag-at-example.com",
		"@@@":                        "at--at--at-",
		strings.Repeat("a", 80):      strings.Repeat("a", 63),
	} {
		if got := ProjectName(in); got != want || !project.ValidName(got) {
			t.Errorf("ProjectName(%q) = %q, want %q", in, got, want)
		}
	}
}

func FuzzParseSASLToken(f *testing.F) {
	for _, n := range []string{"noreply@client.co.uk", "billing@client.co.uk", "alerts@gmail-client.com", "external@client.co.uk"} {
		b, err := os.ReadFile("testdata/sasl/tokens/" + n)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		tok, err := ParseSASLToken("f", b)
		if err == nil && tok.RefreshToken.IsZero() && tok.AccessToken.IsZero() && !tok.UseClientCredentials {
			t.Fatal("a token file with no token was accepted")
		}
	})
}

func FuzzParsePostfixMap(f *testing.F) {
	b, err := os.ReadFile("testdata/sasl/sasl_passwd")
	if err != nil {
		f.Fatal(err)
	}
	f.Add(b)
	f.Add([]byte("@d.example [smtp.gmail.com]:465\n  continued\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		entries, err := ParsePostfixMap("f", b)
		if err != nil {
			return
		}
		for _, e := range entries {
			if e.Key == "" || e.Value == "" || strings.ContainsAny(e.Key, " \t") {
				t.Fatalf("bad entry %+v", e)
			}
			nexthop(e.Value)
		}
	})
}

func FuzzEmailOAuth2Proxy(f *testing.F) {
	b, err := os.ReadFile("testdata/emailproxy.config")
	if err != nil {
		f.Fatal(err)
	}
	f.Add(b)
	f.Fuzz(func(t *testing.T, b []byte) {
		accounts, err := EmailOAuth2Proxy("f", b)
		if err != nil {
			return
		}
		for _, a := range accounts {
			if a.Skipped == "" && !project.ValidName(a.Project.Name) {
				t.Fatalf("invalid project name %q", a.Project.Name)
			}
		}
	})
}
