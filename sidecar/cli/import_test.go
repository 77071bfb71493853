package cli

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// saslFixtures copies the importer's sasl-xoauth2 fixtures into a Postfix chroot under the
// harness's directory, as a Debian Postfix keeps them: sasl_passwd names /etc/tokens/..., the files
// are in <root>/etc/tokens/.
func saslFixtures(t *testing.T, h *harness) (root string) {
	t.Helper()
	src := "../importer/testdata/sasl"
	root = filepath.Join(h.dir, "spool")
	tokens := filepath.Join(root, "etc", "tokens")
	if err := os.MkdirAll(tokens, 0o700); err != nil {
		t.Fatal(err)
	}
	entries, err := os.ReadDir(filepath.Join(src, "tokens"))
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		b, err := os.ReadFile(filepath.Join(src, "tokens", e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(tokens, e.Name()), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	for _, n := range []string{"sasl-xoauth2.conf", "sasl_passwd", "sender_relay"} {
		b, err := os.ReadFile(filepath.Join(src, n))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(h.dir, n), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return root
}

var fixtureSecrets = []string{"conf-secret-Aa1", "google-secret-Bb2", "proxy-secret-Cc3", "refresh-Noreply-0001", "access-Noreply-0001", "refresh-Billing-0002", "refresh-Alerts-0003"}

func TestImportSASLXOAuth2(t *testing.T) {
	t.Parallel()
	h := newHarness(t, "")
	root := saslFixtures(t, h)
	args := []string{"import", "sasl-xoauth2", "--sasl-config", filepath.Join(h.dir, "sasl-xoauth2.conf"),
		"--sasl-passwd", filepath.Join(h.dir, "sasl_passwd"), "--sender-relay", filepath.Join(h.dir, "sender_relay"), "--postfix-root", root}

	r := h.mustRun("", append(args, "--dry-run")...)
	if !strings.Contains(r.stdout, "would create project noreply-at-client.co.uk") || !strings.Contains(r.stdout, "nothing was written") || h.projectCount() != 0 {
		t.Fatalf("dry run: %v", r)
	}

	r = h.mustRun("", args...)
	for _, want := range []string{
		"created project noreply-at-client.co.uk: mailbox noreply@client.co.uk via smtp.office365.com:587 starttls (microsoft), token imported",
		"created project alerts-at-gmail-client.com: mailbox alerts@gmail-client.com via smtp.gmail.com:465 implicit (google), token imported",
		"to do: nothing: the token was imported",
		"then: stop sasl-xoauth2",
	} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("output lacks %q:\n%v", want, r)
		}
	}
	// A token file named on the command line, with its mailbox in the file and no refresh token.
	r = h.mustRun("", "import", "sasl-xoauth2", "--sasl-config", filepath.Join(h.dir, "sasl-xoauth2.conf"), filepath.Join(root, "etc", "tokens", "external@client.co.uk"))
	if !strings.Contains(r.stdout, "created project external-at-client.co.uk") || !strings.Contains(r.stdout, "token none") ||
		!strings.Contains(r.stdout, "postern authorize-link external-at-client.co.uk") || !strings.Contains(r.stdout, "note: no relay host") {
		t.Errorf("external: %v", r)
	}
	st := h.store()
	tok, err := st.Token(t.Context(), "noreply-at-client.co.uk")
	if err != nil || tok.RefreshToken.Reveal() != "refresh-Noreply-0001" || tok.State != "ok" || tok.Account != "noreply@client.co.uk" {
		t.Fatalf("imported token %+v, %v", tok, err)
	}
	if _, err := st.Token(t.Context(), "external-at-client.co.uk"); err == nil {
		t.Errorf("a token was stored for the account without a refresh token")
	}
	p := h.project("billing-at-client.co.uk")
	if p.Auth.OAuth.ClientSecret.Reveal() != "conf-secret-Aa1" || strings.Join(p.Senders, ",") != "billing@client.co.uk" {
		t.Errorf("billing: %+v", p)
	}

	// Again, with one project removed meanwhile: refused for the others, and the removed one is not
	// written either; with --replace: all replaced, the tokens too.
	h.mustRun("", "project", "remove", "billing-at-client.co.uk")
	r = h.run("", args...)
	if r.code != ExitFail || !strings.Contains(r.stderr, "project noreply-at-client.co.uk exists: give --replace") || !strings.Contains(r.stderr, "nothing was imported") {
		t.Fatalf("second import: %v", r)
	}
	if n := h.projectCount(); n != 3 {
		t.Fatalf("a refused import wrote projects: %d, want 3", n)
	}
	r = h.mustRun("", append(args, "--replace", "--json")...)
	var out struct {
		DryRun   bool `json:"dry_run"`
		Accounts []struct {
			Project, Action, Token string
			Todo                   []string
		} `json:"accounts"`
	}
	if err := json.Unmarshal([]byte(r.stdout), &out); err != nil {
		t.Fatalf("--json: %v\n%s", err, r.stdout)
	}
	if len(out.Accounts) != 3 || out.Accounts[0].Action != "replaced" || h.projectCount() != 4 {
		t.Fatalf("--replace --json: %+v", out)
	}
	h.neverPrinted(fixtureSecrets...)
}

// One bad file among good ones: every problem is reported and nothing is written.
func TestImportSASLXOAuth2WritesNothingOnABadFile(t *testing.T) {
	t.Parallel()
	h := newHarness(t, "")
	root := saslFixtures(t, h)
	bad := filepath.Join(root, "etc", "tokens", "billing@client.co.uk")
	if err := os.WriteFile(bad, []byte("{\n \"refresh_token\": \"refresh-Billing-0002\",\n}\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	r := h.run("", "import", "sasl-xoauth2", "--sasl-config", filepath.Join(h.dir, "sasl-xoauth2.conf"),
		"--sasl-passwd", filepath.Join(h.dir, "sasl_passwd"), "--postfix-root", root)
	if r.code != ExitFail || !strings.Contains(r.stderr, bad+": line 3: not JSON") || !strings.Contains(r.stderr, "nothing was imported") {
		t.Fatalf("%v", r)
	}
	if n := h.projectCount(); n != 0 {
		t.Fatalf("%d projects written", n)
	}
	h.neverPrinted(fixtureSecrets...)
}

func TestImportEmailOAuth2Proxy(t *testing.T) {
	t.Parallel()
	h := newHarness(t, "")
	r := h.mustRun("", "import", "email-oauth2-proxy", "../importer/testdata/emailproxy.config")
	for _, want := range []string{
		"created project noreply-at-client.co.uk: mailbox noreply@client.co.uk via smtp.office365.com:587 starttls (microsoft), token none",
		"encrypted with the password the mail client uses",
		"postern authorize-link noreply-at-client.co.uk",
		"postern project update alerts-at-gmail-client.com --client-secret-stdin",
		"skipped ../importer/testdata/emailproxy.config section [@catchall.example]",
	} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("output lacks %q:\n%v", want, r)
		}
	}
	if h.projectCount() != 2 {
		t.Fatalf("%d projects", h.projectCount())
	}
	h.neverPrinted(fixtureSecrets...)

	r = h.run("", "import", "email-oauth2-proxy", "../importer/testdata/sasl/sasl_passwd")
	if r.code != ExitFail || !strings.Contains(r.stderr, "no account sections") {
		t.Fatalf("not an emailproxy.config: %v", r)
	}
}
