package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/postern/postern/sidecar/config"
	"github.com/postern/postern/sidecar/project"
	"github.com/postern/postern/sidecar/secret"
	"github.com/postern/postern/sidecar/store"
	"github.com/postern/postern/sidecar/store/boltstore"
	"github.com/postern/postern/sidecar/store/filestore"
)

// harness runs commands against a configuration in a temporary directory.
type harness struct {
	t       *testing.T
	dir     string
	cfgPath string
	app     *App
	// seen collects all output, to check that no secret was ever printed.
	seen bytes.Buffer
}

type result struct {
	code           int
	stdout, stderr string
}

func (r result) String() string {
	return fmt.Sprintf("exit %d\nstdout:\n%s\nstderr:\n%s", r.code, r.stdout, r.stderr)
}

// currentGroup names a group that exists here, for listen.socket_group.
func currentGroup(t *testing.T) string {
	t.Helper()
	g, err := user.LookupGroupId(strconv.Itoa(os.Getgid()))
	if err != nil {
		t.Skipf("cannot name the current group: %v", err)
	}
	return g.Name
}

func newHarness(t *testing.T, extraConfig string) *harness {
	t.Helper()
	dir := t.TempDir()
	cfg := fmt.Sprintf("listen:\n  socket_group: %s\nstore:\n  file:\n    path: %s\n    key_file: %s\n%s",
		currentGroup(t), filepath.Join(dir, "store.db"), filepath.Join(dir, "store.key"), extraConfig)
	path := filepath.Join(dir, "postern.yaml")
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	return &harness{t: t, dir: dir, cfgPath: path, app: &App{ConfigPath: path, Version: "v1.2.3"}}
}

func (h *harness) run(stdin string, args ...string) result {
	h.t.Helper()
	var out, errOut bytes.Buffer
	app := *h.app
	app.Stdin, app.Stdout, app.Stderr = strings.NewReader(stdin), &out, &errOut
	code := app.Run(h.t.Context(), args)
	h.seen.WriteString(out.String() + errOut.String())
	return result{code: code, stdout: out.String(), stderr: errOut.String()}
}

func (h *harness) mustRun(stdin string, args ...string) result {
	h.t.Helper()
	r := h.run(stdin, args...)
	if r.code != ExitOK {
		h.t.Fatalf("postern %s: %v", strings.Join(args, " "), r)
	}
	return r
}

// store opens the harness's store directly, as `postern serve` would.
func (h *harness) store() store.Store {
	h.t.Helper()
	cfg, err := config.Load(h.cfgPath)
	if err != nil {
		h.t.Fatal(err)
	}
	s, err := OpenStore(h.t.Context(), cfg)
	if err != nil {
		h.t.Fatal(err)
	}
	h.t.Cleanup(func() { s.Close() })
	return s
}

func (h *harness) project(name string) project.Project {
	h.t.Helper()
	p, err := h.store().Project(h.t.Context(), name)
	if err != nil {
		h.t.Fatalf("Project(%s): %v", name, err)
	}
	return p
}

// initStore makes the harness's embedded store, as `postern init` does.
func (h *harness) initStore() {
	h.t.Helper()
	s, err := boltstore.Create(h.t.Context(), boltstore.Options{Path: filepath.Join(h.dir, "store.db"), KeyFile: filepath.Join(h.dir, "store.key")})
	if err != nil {
		h.t.Fatal(err)
	}
	s.Close()
}

// projectCount counts the stored projects; a store never made holds none.
func (h *harness) projectCount() int {
	h.t.Helper()
	if _, err := os.Stat(filepath.Join(h.dir, "store.db")); errors.Is(err, fs.ErrNotExist) {
		return 0
	}
	ps, err := h.store().Projects(h.t.Context())
	if err != nil {
		h.t.Fatal(err)
	}
	n := 0
	for _, p := range ps {
		if !p.IsRemoved() {
			n++
		}
	}
	return n
}

func (h *harness) neverPrinted(secrets ...string) {
	h.t.Helper()
	for _, s := range secrets {
		if strings.Contains(h.seen.String(), s) {
			h.t.Errorf("a password was printed (length %d)", len(s))
		}
	}
}

var addClientA = []string{
	"project", "add", "client-a",
	"--sender", "noreply@client.co.uk", "--sender", "@Client.CO.uk",
	"--send-as", "noreply@client.co.uk,@client.co.uk",
	"--host", "smtp.client.co.uk", "--port", "587", "--tls", "starttls",
	"--username", "noreply@client.co.uk", "--password-stdin",
	"--mechanism", "login", "--max-connections", "2", "--messages-per-minute", "30",
}

func TestProjectLifecycle(t *testing.T) {
	t.Parallel()
	h := newHarness(t, "")
	const pw1, pw2 = "first-Password-123", "second-Password-456"

	r := h.mustRun(pw1+"\n", addClientA...)
	if !strings.Contains(r.stdout, "added project client-a") {
		t.Fatalf("add: %v", r)
	}
	p := h.project("client-a")
	if p.Auth.Password.Reveal() != pw1 {
		t.Fatal("the stored password is not the one given on standard input (the newline must be trimmed)")
	}
	if !p.Enabled || p.Auth.Type != project.AuthBasic || p.Auth.Mechanism != "LOGIN" || p.Upstream.Port != 587 ||
		p.Limits.MaxConnections != 2 || p.Limits.MessagesPerMinute != 30 {
		t.Fatalf("stored project %+v", p)
	}
	if strings.Join(p.Senders, " ") != "noreply@client.co.uk @client.co.uk" || len(p.SendAs) != 2 {
		t.Fatalf("senders %v send-as %v", p.Senders, p.SendAs)
	}

	r = h.mustRun("", "project", "list")
	for _, want := range []string{"NAME", "TOKEN", "client-a", "yes", "basic", "smtp.client.co.uk:587 starttls", "noreply@client.co.uk, @client.co.uk"} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("list lacks %q:\n%s", want, r.stdout)
		}
	}

	r = h.mustRun("", "project", "show", "client-a")
	for _, want := range []string{"password:", "[set]", "mechanism:", "LOGIN", "messages per minute:", "30", "verify certificate:", "yes"} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("show lacks %q:\n%s", want, r.stdout)
		}
	}

	r = h.mustRun("", "project", "show", "--json", "client-a")
	var shown struct {
		Name    string `json:"name"`
		Version int    `json:"version"`
		Auth    struct {
			Password string `json:"password"`
			Username string `json:"username"`
		} `json:"auth"`
	}
	if err := json.Unmarshal([]byte(r.stdout), &shown); err != nil {
		t.Fatalf("show --json is not JSON: %v\n%s", err, r.stdout)
	}
	if shown.Name != "client-a" || shown.Auth.Password != "[set]" || shown.Auth.Username != "noreply@client.co.uk" || shown.Version != p.Version {
		t.Fatalf("show --json: %+v", shown)
	}

	// A wrong password is fixed without touching anything else.
	r = h.mustRun(pw2, "project", "update", "client-a", "--password-stdin")
	p2 := h.project("client-a")
	if p2.Auth.Password.Reveal() != pw2 {
		t.Fatal("update --password-stdin did not change the password")
	}
	p2.Auth.Password, p.Auth.Password = p.Auth.Password, p2.Auth.Password
	if p2.Version <= p.Version {
		t.Fatalf("version %d after update, was %d", p2.Version, p.Version)
	}

	// Only the flags given change; the port follows a change of TLS mode.
	h.mustRun("", "project", "update", "client-a", "--tls", "implicit", "--messages-per-minute", "10")
	p3 := h.project("client-a")
	if p3.Upstream.TLS != project.TLSImplicit || p3.Upstream.Port != 465 || p3.Limits.MessagesPerMinute != 10 ||
		p3.Limits.MaxConnections != 2 || p3.Auth.Password.Reveal() != pw2 || len(p3.SendAs) != 2 {
		t.Fatalf("after a partial update: %+v", p3)
	}

	r = h.mustRun("", "project", "disable", "client-a")
	if !strings.Contains(r.stdout, "disabled project client-a") || h.project("client-a").Enabled {
		t.Fatalf("disable: %v", r)
	}
	if r := h.mustRun("", "project", "list"); !strings.Contains(r.stdout, "client-a  no") {
		t.Errorf("list after disable:\n%s", r.stdout)
	}
	r = h.mustRun("", "project", "disable", "client-a")
	if !strings.Contains(r.stdout, "already disabled") {
		t.Errorf("second disable: %v", r)
	}
	h.mustRun("", "project", "enable", "client-a")
	if !h.project("client-a").Enabled {
		t.Fatal("enable did not enable")
	}

	// remove leaves a tombstone that still routes the senders; purge deletes it.
	r = h.mustRun("", "project", "remove", "client-a")
	if !strings.Contains(r.stdout, "removed project client-a") || !strings.Contains(r.stdout, "deferred until") {
		t.Errorf("remove: %v", r)
	}
	if p := h.project("client-a"); !p.IsRemoved() || p.Enabled || !p.Auth.Password.IsZero() || len(p.Senders) != 2 {
		t.Fatalf("after remove: %+v; want a tombstone with the senders and no password", p)
	}
	if r := h.mustRun("", "project", "list"); !strings.Contains(r.stdout, "client-a  removed ") {
		t.Errorf("list after remove: %v", r)
	}
	for _, cmd := range [][]string{{"project", "enable", "client-a"}, {"project", "update", "client-a", "--port", "465"}} {
		if r := h.run("", cmd...); r.code != ExitFail || !strings.Contains(r.stderr, "was removed at") || !strings.Contains(r.stderr, "postern project purge client-a") {
			t.Errorf("%v on a removed project: %v", cmd, r)
		}
	}
	r = h.mustRun("", "project", "purge", "client-a")
	if !strings.Contains(r.stdout, "purged project client-a") {
		t.Errorf("purge: %v", r)
	}
	if n := h.projectCount(); n != 0 {
		t.Fatalf("%d projects after purge", n)
	}
	if r := h.mustRun("", "project", "list"); !strings.Contains(r.stdout, "no projects") {
		t.Errorf("list after purge: %v", r)
	}
	r = h.run("", "project", "remove", "client-a")
	if r.code != ExitFail || !strings.Contains(r.stderr, "no project named client-a") {
		t.Errorf("removing a missing project: %v", r)
	}

	h.neverPrinted(pw1, pw2)
}

func TestAddRejectsBadInputAndChangesNothing(t *testing.T) {
	t.Parallel()
	h := newHarness(t, "")
	caFile := filepath.Join(h.dir, "not-a-ca.pem")
	if err := os.WriteFile(caFile, []byte("hello\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	r := h.run("secret-Password-789\n", "project", "add", "Bad_Name",
		"--sender", "not an address", "--send-as", "@nodot",
		"--tls", "weird", "--port", "70000", "--mechanism", "cram-md5",
		"--ca-file", caFile, "--max-connections", "-1", "--password-stdin")
	if r.code != ExitFail {
		t.Fatalf("bad add: %v", r)
	}
	for _, want := range []string{
		"nothing was changed",
		`name "Bad_Name"`,
		`senders: "not an address"`,
		`send_as: "@nodot"`,
		"upstream.host is empty",
		"upstream.port 70000",
		`upstream.tls "weird"`,
		"auth.username is empty",
		`auth.mechanism "CRAM-MD5"`,
		"holds no PEM certificate",
		"limits: negative",
	} {
		if !strings.Contains(r.stderr, want) {
			t.Errorf("the problems do not include %q:\n%s", want, r.stderr)
		}
	}
	if n := h.projectCount(); n != 0 {
		t.Fatalf("a refused add stored %d projects", n)
	}
	h.neverPrinted("secret-Password-789")
}

func TestUpdateRejectsBadInputAndChangesNothing(t *testing.T) {
	t.Parallel()
	h := newHarness(t, "")
	h.mustRun("pw-Initial-1\n", addClientA...)
	before := h.project("client-a")
	r := h.run("pw-Second-2", "project", "update", "client-a", "--host", "", "--tls", "none", "--sender", "x", "--password-stdin")
	if r.code != ExitFail {
		t.Fatalf("bad update: %v", r)
	}
	for _, want := range []string{"upstream.host is empty", `senders: "x"`} {
		if !strings.Contains(r.stderr, want) {
			t.Errorf("the problems do not include %q:\n%s", want, r.stderr)
		}
	}
	after := h.project("client-a")
	if after.Version != before.Version || !after.Auth.Password.Equal(before.Auth.Password) || after.Upstream != before.Upstream {
		t.Fatal("a refused update changed the project")
	}
	r = h.run("", "project", "update", "nobody", "--port", "25")
	if r.code != ExitFail || !strings.Contains(r.stderr, "no project named nobody") {
		t.Errorf("update of a missing project: %v", r)
	}
	h.neverPrinted("pw-Initial-1", "pw-Second-2")
}

func TestAddRefusesDuplicates(t *testing.T) {
	t.Parallel()
	h := newHarness(t, "")
	h.mustRun("pw-a", addClientA...)
	r := h.run("pw-a", addClientA...)
	if r.code != ExitFail || !strings.Contains(r.stderr, "project client-a exists") {
		t.Fatalf("second add: %v", r)
	}
	r = h.run("pw-b", "project", "add", "client-b", "--sender", "NoReply@CLIENT.co.uk", "--host", "smtp.b.example",
		"--username", "u", "--password-stdin")
	if r.code != ExitFail || !strings.Contains(r.stderr, "sender NoReply@client.co.uk already belongs to project client-a") {
		t.Fatalf("add with another project's sender: %v", r)
	}
	if n := h.projectCount(); n != 1 {
		t.Fatalf("%d projects", n)
	}
}

func TestPasswordPrompt(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		answers []string
		want    string // stored password, or "" when the add must fail
		errText string
	}{
		{name: "typed twice", answers: []string{"typed-Pw-1", "typed-Pw-1"}, want: "typed-Pw-1"},
		{name: "typed differently", answers: []string{"typed-Pw-1", "typed-Pw-2"}, errText: "the passwords differ"},
		{name: "empty", answers: []string{""}, errText: "the password is empty"},
		{name: "no terminal", errText: "not a terminal"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			h := newHarness(t, "")
			var prompts []string
			var mu sync.Mutex
			h.app.ReadPassword = func(prompt string) (string, error) {
				mu.Lock()
				defer mu.Unlock()
				prompts = append(prompts, prompt)
				if len(tc.answers) == 0 {
					return "", errors.New("standard input is not a terminal: pipe the password in with --password-stdin")
				}
				a := tc.answers[0]
				tc.answers = tc.answers[1:]
				return a, nil
			}
			args := []string{"project", "add", "client-a", "--sender", "a@client.example", "--host", "smtp.client.example", "--username", "a@client.example"}
			r := h.run("", args...)
			if tc.want == "" {
				if r.code != ExitFail || !strings.Contains(r.stderr, tc.errText) || !strings.Contains(r.stderr, "nothing was changed") {
					t.Fatalf("add: %v", r)
				}
				if n := h.projectCount(); n != 0 {
					t.Fatalf("%d projects stored", n)
				}
				return
			}
			if r.code != ExitOK {
				t.Fatalf("add: %v", r)
			}
			if p := h.project("client-a"); p.Auth.Password.Reveal() != tc.want {
				t.Fatal("the stored password is not the typed one")
			}
			if len(prompts) != 2 || !strings.Contains(prompts[0], "a@client.example at smtp.client.example") {
				t.Fatalf("prompts %q", prompts)
			}
			h.neverPrinted(tc.want)
		})
	}
}

func TestUpdatePasswordPrompt(t *testing.T) {
	t.Parallel()
	h := newHarness(t, "")
	h.mustRun("old-Pw-1", addClientA...)
	h.app.ReadPassword = func(string) (string, error) { return "new-Pw-2", nil }
	h.mustRun("", "project", "update", "client-a", "--password-prompt")
	if h.project("client-a").Auth.Password.Reveal() != "new-Pw-2" {
		t.Fatal("update --password-prompt did not change the password")
	}
	r := h.run("x", "project", "update", "client-a", "--password-prompt", "--password-stdin")
	if r.code != ExitFail || !strings.Contains(r.stderr, "give one") {
		t.Fatalf("both password flags: %v", r)
	}
}

func TestAuthNoneNeedsNoPassword(t *testing.T) {
	t.Parallel()
	h := newHarness(t, "")
	h.mustRun("", "project", "add", "relay", "--sender", "@relay.example", "--host", "127.0.0.1", "--tls", "none", "--auth", "none")
	p := h.project("relay")
	if p.Auth.Type != project.AuthNone || p.Upstream.Port != 25 || !p.Auth.Password.IsZero() {
		t.Fatalf("project %+v", p)
	}
	r := h.mustRun("", "project", "show", "--json", "relay")
	if strings.Contains(r.stdout, "password") {
		t.Errorf("show --json mentions a password for auth none:\n%s", r.stdout)
	}
}

func TestOAuthProjectShowsTokenState(t *testing.T) {
	t.Parallel()
	h := newHarness(t, "")
	h.initStore()
	ctx := t.Context()
	st := h.store()
	p := project.Project{
		Name: "m365", Enabled: true, Senders: []string{"@m365.example"},
		Upstream: project.Upstream{Host: "smtp.office365.com", Port: 587, TLS: project.TLSStartTLS},
		Auth: project.Auth{Type: project.AuthOAuth2, Username: "noreply@m365.example", OAuth: &project.OAuth{
			Provider: "microsoft", Tenant: "m365.example", ClientID: "cid", ClientSecret: secret.New("client-Secret-9"),
		}},
	}
	if _, err := st.PutProject(ctx, p); err != nil {
		t.Fatal(err)
	}
	if r := h.mustRun("", "project", "list"); !strings.Contains(r.stdout, "not signed in") {
		t.Errorf("list before sign-in:\n%s", r.stdout)
	}
	tok := project.Token{AccessToken: secret.New("access-Token-9"), RefreshToken: secret.New("refresh-Token-9"),
		State: project.TokenNeedsReauth, Reason: "AADSTS700082", Account: "noreply@m365.example", Expiry: time.Now()}
	if _, err := st.PutToken(ctx, "m365", tok); err != nil {
		t.Fatal(err)
	}
	if r := h.mustRun("", "project", "list"); !strings.Contains(r.stdout, "needs_reauth") || !strings.Contains(r.stdout, "oauth2") {
		t.Errorf("list:\n%s", r.stdout)
	}
	r := h.mustRun("", "project", "show", "m365")
	for _, want := range []string{"oauth client secret:", "needs_reauth (AADSTS700082)", "refresh token:", "[set]"} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("show lacks %q:\n%s", want, r.stdout)
		}
	}
	r = h.mustRun("", "project", "show", "m365", "--json")
	var shown map[string]any
	if err := json.Unmarshal([]byte(r.stdout), &shown); err != nil {
		t.Fatal(err)
	}
	token, _ := shown["token"].(map[string]any)
	if token["refresh_token"] != "[set]" || token["state"] != "needs_reauth" {
		t.Errorf("token in show --json: %v", token)
	}
	// A password change is refused for an OAuth project.
	if r := h.run("pw", "project", "update", "m365", "--password-stdin"); r.code != ExitFail {
		t.Errorf("password for an oauth project: %v", r)
	}
	h.neverPrinted("client-Secret-9", "access-Token-9", "refresh-Token-9")
}

func TestFlagsAfterAndBeforeTheName(t *testing.T) {
	t.Parallel()
	h := newHarness(t, "")
	h.mustRun("pw", "project", "add", "--sender", "a@b.example", "client-a", "--host", "smtp.b.example", "--username", "u", "--password-stdin")
	if p := h.project("client-a"); p.Upstream.Host != "smtp.b.example" {
		t.Fatalf("project %+v", p)
	}
	r := h.run("", "project", "show", "client-a", "client-b")
	if r.code != ExitUsage {
		t.Errorf("two names: %v", r)
	}
	r = h.run("", "project", "show")
	if r.code != ExitUsage || !strings.Contains(r.stderr, "missing argument") {
		t.Errorf("no name: %v", r)
	}
}

func TestExplicitConfigFlag(t *testing.T) {
	t.Parallel()
	h := newHarness(t, "")
	h.app.ConfigPath = filepath.Join(h.dir, "elsewhere.yaml") // the default path does not exist
	r := h.run("pw", append(append([]string{}, addClientA...), "--config", h.cfgPath)...)
	if r.code != ExitOK {
		t.Fatalf("add with --config: %v", r)
	}
	h.app.ConfigPath = h.cfgPath
	if h.projectCount() != 1 {
		t.Fatal("--config was not used")
	}
	r = h.run("", "project", "list", "--config", filepath.Join(h.dir, "missing.yaml"))
	if r.code != ExitFail || !strings.Contains(r.stderr, "missing.yaml") {
		t.Fatalf("an explicit missing config: %v", r)
	}
}

func TestHelp(t *testing.T) {
	t.Parallel()
	h := newHarness(t, "")
	tests := []struct {
		args []string
		code int
		out  string // in stdout when code is 0, else in stderr
	}{
		{[]string{"help"}, ExitOK, "postfix-config"},
		{[]string{"--help"}, ExitOK, "Commands:"},
		{nil, ExitUsage, "Usage:"},
		{[]string{"frobnicate"}, ExitUsage, `unknown command "frobnicate"`},
		{[]string{"help", "project", "add"}, ExitOK, "Usage: postern project add NAME [flags]"},
		{[]string{"project", "add", "-h"}, ExitOK, "-password-stdin"},
		{[]string{"project", "update", "--help"}, ExitOK, "-password-prompt"},
		{[]string{"project", "help", "show"}, ExitOK, "-json"},
		{[]string{"project", "-h"}, ExitOK, "disable"},
		{[]string{"project"}, ExitUsage, "Commands:"},
		{[]string{"project", "bogus"}, ExitUsage, `unknown command "bogus"`},
		{[]string{"serve", "-h"}, ExitOK, "-check-config"},
		{[]string{"help", "postfix-config"}, ExitOK, "master.cf"},
		{[]string{"project", "list", "--bogus"}, ExitUsage, "unknown flag: --bogus"},
		{[]string{"version"}, ExitOK, "postern v1.2.3 (go"},
		{[]string{"--version"}, ExitOK, "postern v1.2.3 (go"},
		{[]string{"-version"}, ExitOK, "postern v1.2.3 (go"},
		{[]string{"help", "check"}, ExitOK, "sign in upstream on a new connection"},
		{[]string{"send-test", "-h"}, ExitOK, "-to"},
		{[]string{"send-test", "client-a"}, ExitUsage, "--to must be the recipient's address"},
		{[]string{"send-test", "--to", "x@dest.example"}, ExitUsage, "missing argument"},
		{[]string{"check"}, ExitFail, "create the store with `postern init`"},
	}
	for _, tc := range tests {
		r := h.run("", tc.args...)
		out := r.stdout
		if tc.code != ExitOK {
			out = r.stderr
		}
		if r.code != tc.code || !strings.Contains(out, tc.out) {
			t.Errorf("postern %s: want exit %d and %q, got %v", strings.Join(tc.args, " "), tc.code, tc.out, r)
		}
	}
}

func TestCheckConfig(t *testing.T) {
	t.Parallel()
	t.Run("valid", func(t *testing.T) {
		t.Parallel()
		h := newHarness(t, "upstream:\n  data_timeout: 2m\n")
		r := h.run("", "serve", "--check-config")
		if r.code != ExitOK || r.stdout != "config OK\n" {
			t.Fatalf("%v", r)
		}
	})
	t.Run("unknown keys", func(t *testing.T) {
		t.Parallel()
		h := newHarness(t, "upstreem:\n  x: 1\nlog:\n  levle: debug\n")
		r := h.run("", "serve", "--check-config")
		if r.code != ExitFail {
			t.Fatalf("%v", r)
		}
		for _, want := range []string{h.cfgPath + `: line 7: unknown key "upstreem"`, h.cfgPath + `: line 10: unknown key "levle"`} {
			if !strings.Contains(r.stderr, want) {
				t.Errorf("stderr lacks %q:\n%s", want, r.stderr)
			}
		}
	})
	t.Run("invalid values", func(t *testing.T) {
		t.Parallel()
		h := newHarness(t, `log:
  level: loud
  format: xml
upstream:
  dial_timeout: 0s
limits:
  max_recipients: 0
reload_interval: -1s
transport: nocolon
`)
		// socket settings come first in the harness's file; break them through the flag's file.
		b, _ := os.ReadFile(h.cfgPath)
		b = bytes.Replace(b, []byte("listen:\n"), []byte("listen:\n  lmtp: relative.sock\n  admin: 0.0.0.0:8025\n  socket_mode: rwx\n"), 1)
		os.WriteFile(h.cfgPath, b, 0o600)
		r := h.run("", "serve", "--check-config", "--config", h.cfgPath)
		if r.code != ExitFail {
			t.Fatalf("%v", r)
		}
		wants := []string{`log.level "loud"`, `log.format "xml"`, "listen.lmtp:", "listen.admin:", "listen.socket_mode", "upstream.dial_timeout", "limits.max_recipients", "reload_interval", `transport "nocolon"`}
		for _, want := range wants {
			if !strings.Contains(r.stderr, h.cfgPath+": "+want) {
				t.Errorf("stderr lacks %q:\n%s", want, r.stderr)
			}
		}
		if lines := strings.Count(r.stderr, "\n"); lines != len(wants) {
			t.Errorf("%d lines for %d problems:\n%s", lines, len(wants), r.stderr)
		}
		if strings.Contains(r.stdout, "OK") {
			t.Errorf("stdout says OK: %s", r.stdout)
		}
	})
	t.Run("no file at the default path", func(t *testing.T) {
		t.Parallel()
		h := newHarness(t, "")
		h.app.ConfigPath = filepath.Join(h.dir, "absent.yaml")
		r := h.run("", "serve", "--check-config")
		// Valid when this host has Postfix's group; either way the defaults are what was checked.
		if !strings.Contains(r.stdout+r.stderr, "built-in defaults") {
			t.Fatalf("%v", r)
		}
	})
}

func TestServeRunsTheRunner(t *testing.T) {
	t.Parallel()
	h := newHarness(t, "instance: test-instance\nlog:\n  format: json\n")
	var got *config.Config
	h.app.Serve = func(ctx context.Context, cfg *config.Config, log *slog.Logger, _ <-chan *config.Config) error {
		got = cfg
		log.Info("running")
		<-ctx.Done()
		return ctx.Err()
	}
	ctx, cancel := context.WithCancel(t.Context())
	var out, errOut bytes.Buffer
	app := *h.app
	app.Stdin, app.Stdout, app.Stderr = strings.NewReader(""), &out, &errOut
	done := make(chan int)
	go func() { done <- app.Run(ctx, []string{"serve"}) }()
	cancel()
	if code := <-done; code != ExitOK {
		t.Fatalf("serve stopped by its context: exit %d, %s", code, errOut.String())
	}
	if got == nil || got.Instance != "test-instance" {
		t.Fatalf("the runner got %+v", got)
	}
	if !strings.Contains(errOut.String(), `"msg":"running"`) {
		t.Errorf("the runner's logger does not follow log.format: %q", errOut.String())
	}

	h.app.Serve = func(context.Context, *config.Config, *slog.Logger, <-chan *config.Config) error {
		return errors.New("listening: address in use")
	}
	r := h.run("", "serve")
	if r.code != ExitFail || !strings.Contains(r.stderr, "address in use") {
		t.Fatalf("a failing runner: %v", r)
	}

	h.app.Serve = nil
	if r := h.run("", "serve"); r.code != ExitFail {
		t.Fatalf("no runner: %v", r)
	}

	h2 := newHarness(t, "log:\n  level: loud\n")
	called := false
	h2.app.Serve = func(context.Context, *config.Config, *slog.Logger, <-chan *config.Config) error {
		called = true
		return nil
	}
	if r := h2.run("", "serve"); r.code != ExitFail || called {
		t.Fatalf("serve with an invalid config: %v (runner called: %v)", r, called)
	}
}

func TestOpenStoreVault(t *testing.T) {
	t.Parallel()
	cfg, err := config.Parse([]byte("store:\n  vault:\n    address: http://127.0.0.1:1\n    auth:\n      token_file: /t\n"))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), time.Second)
	defer cancel()
	if _, err := OpenStore(ctx, cfg); err == nil || !strings.Contains(err.Error(), "Vault") {
		t.Fatalf("OpenStore(vault): %v", err)
	}
}

func TestUpdateOfAProjectWithoutPassword(t *testing.T) {
	t.Parallel()
	h := newHarness(t, "")
	h.mustRun("", "project", "add", "relay", "--sender", "@relay.example", "--host", "127.0.0.1", "--tls", "none", "--auth", "none")
	r := h.run("", "project", "update", "relay", "--auth", "basic", "--username", "u")
	if r.code != ExitFail || strings.Count(r.stderr, "auth.password is empty") != 1 || !strings.Contains(r.stderr, "--password-stdin") {
		t.Fatalf("switching to basic auth without a password: %v", r)
	}
	h.mustRun("pw-Relay-1", "project", "update", "relay", "--auth", "basic", "--username", "u", "--password-stdin")
	if p := h.project("relay"); p.Auth.Type != project.AuthBasic || p.Auth.Password.Reveal() != "pw-Relay-1" {
		t.Fatalf("project %+v", p)
	}
}

func TestDefaultStoreLocationsAgree(t *testing.T) {
	t.Parallel()
	if config.DefaultStorePath != filestore.DefaultPath || config.DefaultStoreKeyFile != filestore.DefaultKeyFile {
		t.Fatal("config and filestore disagree on the default store files")
	}
	if config.DefaultStorePath != boltstore.DefaultPath || config.DefaultStoreKeyFile != boltstore.DefaultKeyFile {
		t.Fatal("config and boltstore disagree on the default store files")
	}
}

func TestProjectWithCredentialProvider(t *testing.T) {
	t.Parallel()
	h := newHarness(t, "")
	h.mustRun("pw-Basic-12345", "project", "add", "acme", "--sender", "noreply@acme.example", "--host", "smtp.acme.example",
		"--username", "noreply@acme.example", "--password-stdin")
	h.mustRun("", "project", "update", "acme", "--auth", "plugin", "--plugin-provider", "hsm",
		"--plugin-config", "path=mail/acme", "--plugin-config", "slot=3")
	p := h.project("acme")
	if p.Auth.Type != project.AuthPlugin || p.Auth.Plugin == nil || p.Auth.Plugin.Provider != "hsm" ||
		p.Auth.Plugin.Config["path"] != "mail/acme" || p.Auth.Plugin.Config["slot"] != "3" || !p.Auth.Password.IsZero() {
		t.Fatalf("project after switching to a provider: %+v", p.Auth)
	}
	if r := h.mustRun("", "project", "show", "acme"); !strings.Contains(r.stdout, "hsm") || !strings.Contains(r.stdout, "mail/acme") {
		t.Fatalf("show:\n%s", r.stdout)
	}
	if r := h.run("", "project", "update", "acme", "--auth", "plugin", "--plugin-config", "novalue"); r.code != ExitFail ||
		!strings.Contains(r.stderr, "KEY=VALUE") {
		t.Fatalf("bad --plugin-config: %v", r)
	}
	if r := h.run("", "project", "update", "acme", "--auth", "none", "--plugin-provider", "x"); r.code != ExitFail ||
		!strings.Contains(r.stderr, "--auth plugin") {
		t.Fatalf("--plugin-provider on a non-plugin project: %v", r)
	}
}

// project remove counts the mail Postfix holds for the project's senders (postqueue -j, in the
// configured Postfix directory), and says so when it cannot; add brings a removed project back.
func TestRemoveCountsQueuedMailAndAddBringsItBack(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	fake := filepath.Join(dir, "postqueue")
	script := `#!/bin/sh
[ "$1 $2 $3" = "-c /etc/postfix-out -j" ] || { echo "postqueue: fatal: usage" >&2; exit 64; }
echo '{"queue_name": "deferred", "queue_id": "A1", "sender": "noreply@client.co.uk", "recipients": [{"address": "x@dest.test"}]}'
echo '{"queue_name": "active", "queue_id": "A2", "sender": "billing@client.co.uk", "recipients": [{"address": "y@dest.test"}]}'
echo '{"queue_name": "deferred", "queue_id": "A3", "sender": "other@elsewhere.test", "recipients": [{"address": "z@dest.test"}]}'
`
	if err := os.WriteFile(fake, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	h := newHarness(t, fmt.Sprintf("postfix: {postqueue: %s, config_directory: /etc/postfix-out, queue_lifetime: 48h}\n", fake))
	h.mustRun("pw\n", addClientA...)
	r := h.mustRun("", "project", "remove", "client-a")
	if !strings.Contains(r.stdout, "Postfix (/etc/postfix-out) holds 2 message(s) from its senders") {
		t.Errorf("remove does not count the queued mail: %v", r)
	}
	removed := h.project("client-a").Removed
	if !strings.Contains(r.stdout, removed.Add(48*time.Hour+4000*time.Second).Local().Format(time.RFC1123)) {
		t.Errorf("remove does not say until when the mail is deferred (queue_lifetime + backoff_time): %v", r)
	}
	r = h.mustRun("", "project", "remove", "client-a")
	if !strings.Contains(r.stdout, "was removed already") || h.project("client-a").Removed != removed {
		t.Errorf("second remove: %v", r)
	}

	r = h.mustRun("pw\n", addClientA...)
	if p := h.project("client-a"); !strings.Contains(r.stdout, "added project client-a") || p.IsRemoved() || !p.Enabled || p.Auth.Password.Reveal() != "pw" {
		t.Fatalf("adding the removed project again: %v, %+v", r, p)
	}

	// Without postqueue, remove says it could not count.
	if err := os.Remove(fake); err != nil {
		t.Fatal(err)
	}
	r = h.mustRun("", "project", "remove", "--purge", "client-a")
	if !strings.Contains(r.stdout, "purged project client-a") || !strings.Contains(r.stdout, "could not count the mail Postfix holds for it") {
		t.Errorf("remove --purge without postqueue: %v", r)
	}
	if h.projectCount() != 0 {
		t.Error("remove --purge left the project")
	}
}

// --client-secret-expires is stored by add and update (a date or an RFC 3339 time), cleared by an
// empty value, dropped with the old secret by a new one given without it, shown by show with the
// days left, and refused for projects without OAuth or in another form.
func TestClientSecretExpires(t *testing.T) {
	t.Parallel()
	h := newHarness(t, "")
	day := time.Now().UTC().AddDate(0, 0, 40).Format(time.DateOnly)
	h.mustRun("client-Secret-1", "project", "add", "m365", "--sender", "@m365.example", "--host", "smtp.office365.com",
		"--username", "noreply@m365.example", "--auth", "oauth2", "--provider", "microsoft", "--tenant", "m365.example",
		"--client-id", "cid", "--client-secret-stdin", "--client-secret-expires", day)
	want, _ := time.Parse(time.DateOnly, day)
	if got := h.project("m365").Auth.OAuth.ClientSecretExpires; !got.Equal(want) {
		t.Fatalf("after add: expires %v, want %v", got, want)
	}
	r := h.mustRun("", "project", "show", "m365")
	if w := "oauth client secret expiry:  expires " + day + " (in 39 days)"; !strings.Contains(r.stdout, w) {
		t.Errorf("show lacks %q:\n%s", w, r.stdout)
	}
	var shown struct {
		Auth struct {
			OAuth map[string]any `json:"oauth"`
		} `json:"auth"`
	}
	if err := json.Unmarshal([]byte(h.mustRun("", "project", "show", "m365", "--json").stdout), &shown); err != nil {
		t.Fatal(err)
	}
	if o := shown.Auth.OAuth; o["client_secret_expires"] != want.Format(time.RFC3339) || o["client_secret_days_left"] != 39.0 {
		t.Errorf("show --json: expires %v, days left %v", o["client_secret_expires"], o["client_secret_days_left"])
	}

	r = h.mustRun("", "project", "update", "m365", "--client-secret-expires", "2031-05-06T07:08:09+02:00")
	if strings.Contains(r.stdout, "next:") {
		t.Errorf("a new date asks for a sign-in:\n%s", r.stdout)
	}
	if got, w := h.project("m365").Auth.OAuth.ClientSecretExpires, time.Date(2031, 5, 6, 5, 8, 9, 0, time.UTC); !got.Equal(w) {
		t.Errorf("after update: expires %v, want %v", got, w)
	}
	h.mustRun("", "project", "update", "m365", "--messages-per-minute", "5")
	if got := h.project("m365").Auth.OAuth.ClientSecretExpires; got.IsZero() {
		t.Error("an update of another setting cleared the date")
	}
	h.mustRun("", "project", "update", "m365", "--client-secret-expires", "")
	if got := h.project("m365").Auth.OAuth.ClientSecretExpires; !got.IsZero() {
		t.Errorf("after --client-secret-expires '': expires %v", got)
	}
	h.mustRun("", "project", "update", "m365", "--client-secret-expires", day)
	if r := h.mustRun("client-Secret-2", "project", "update", "m365", "--client-secret-stdin"); !strings.Contains(r.stdout, "expiry date was dropped") {
		t.Errorf("a new secret without a date:\n%s", r.stdout)
	}
	if got := h.project("m365").Auth.OAuth.ClientSecretExpires; !got.IsZero() {
		t.Errorf("a new secret kept the old one's date %v", got)
	}
	h.mustRun("client-Secret-3", "project", "update", "m365", "--client-secret-stdin", "--client-secret-expires", day)
	if got := h.project("m365").Auth.OAuth.ClientSecretExpires; !got.Equal(want) {
		t.Errorf("a new secret with its date: expires %v, want %v", got, want)
	}

	for _, args := range [][]string{
		{"project", "update", "m365", "--client-secret-expires", "31.12.2030"},
		{"project", "add", "basic", "--sender", "@basic.example", "--host", "smtp.basic.example", "--username", "u", "--password-stdin", "--client-secret-expires", day},
	} {
		if r := h.run("pw", args...); r.code == ExitOK || !strings.Contains(r.stderr, "--client-secret-expires") {
			t.Errorf("postern %s: %v", strings.Join(args, " "), r)
		}
	}
	if got := h.project("m365").Auth.OAuth.ClientSecretExpires; !got.Equal(want) {
		t.Errorf("a refused update changed the date to %v", got)
	}
	h.neverPrinted("client-Secret-1", "client-Secret-2", "client-Secret-3")
}
