package cli

import (
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"testing"
)

// Bad command lines exit 2 with the reason and the usage on standard error, nothing on standard
// output; failures exit 1.
func TestUsageErrorsExit2(t *testing.T) {
	t.Parallel()
	h := newHarness(t, "")
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"project", "show"}, "postern project show: missing argument"},
		{[]string{"project", "list", "extra"}, "postern project list: 1 unexpected arguments"},
		{[]string{"project", "list", "--bogus"}, "postern project list: unknown flag: --bogus"},
		{[]string{"healthcheck", "--timeout", "soon"}, `invalid argument "soon" for "--timeout"`},
		{[]string{"store", "migrate", "--to", "tape"}, "postern store migrate: --to must be vault or file"},
		{[]string{"store", "frobnicate"}, `postern store: unknown command "frobnicate"`},
		{[]string{"serve", "--json"}, "--json is for --check-config"},
		{[]string{"help", "frobnicate"}, `unknown command "frobnicate"`},
	} {
		r := h.run("", tc.args...)
		if r.code != ExitUsage || !strings.Contains(r.stderr, tc.want) || !strings.Contains(r.stderr, "\nUsage: postern") || r.stdout != "" {
			t.Errorf("postern %s: want exit 2, %q and the usage on stderr; got %v", strings.Join(tc.args, " "), tc.want, r)
		}
	}
	if r := h.run("", "project", "show", "nobody"); r.code != ExitFail || strings.Contains(r.stderr, "Usage:") {
		t.Errorf("a failure, not a usage error: %v", r)
	}
}

func TestExitCode(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		err  error
		want int
	}{
		{nil, ExitOK},
		{errors.New("failed"), ExitFail},
		{usageErrorf("bad"), ExitUsage},
		{fmt.Errorf("wrapped: %w", &UsageError{Err: errors.New("bad")}), ExitUsage},
		{&problems{errs: []error{errors.New("x")}}, ExitFail},
	} {
		if got := exitCode(tc.err); got != tc.want {
			t.Errorf("exitCode(%v) = %d, want %d", tc.err, got, tc.want)
		}
	}
}

// Flags written with one dash, as Go's flag package took them, keep working; a value that looks
// like a flag stays a value.
func TestSingleDashFlags(t *testing.T) {
	t.Parallel()
	h := newHarness(t, "")
	h.app.ConfigPath = h.dir + "/elsewhere.yaml"
	h.mustRun("pw", "project", "add", "client-a", "-config", h.cfgPath, "-sender", "a@b.example", "-host=smtp.b.example",
		"-username", "-config", "-password-stdin")
	h.app.ConfigPath = h.cfgPath
	if p := h.project("client-a"); p.Auth.Username != "-config" || p.Upstream.Host != "smtp.b.example" {
		t.Fatalf("project %+v", p)
	}
	if r := h.mustRun("", "-version"); !strings.HasPrefix(r.stdout, "postern v1.2.3") {
		t.Errorf("-version: %v", r)
	}
}

func TestProjectListJSON(t *testing.T) {
	t.Parallel()
	h := newHarness(t, "")
	h.mustRun("pw-List-1", addClientA...)
	h.mustRun("", "project", "add", "relay", "--sender", "@relay.example", "--host", "127.0.0.1", "--tls", "none", "--auth", "none")
	h.mustRun("", "project", "remove", "relay")
	r := h.mustRun("", "project", "list", "--json")
	var list []struct {
		Name     string   `json:"name"`
		Enabled  bool     `json:"enabled"`
		Senders  []string `json:"senders"`
		Token    *string  `json:"token_state"`
		Expired  bool     `json:"expired"`
		Removed  string   `json:"removed"`
		Upstream struct {
			Host string `json:"host"`
		} `json:"upstream"`
		Auth struct {
			Type     string `json:"type"`
			Password string `json:"password"`
		} `json:"auth"`
	}
	if err := json.Unmarshal([]byte(r.stdout), &list); err != nil {
		t.Fatalf("project list --json is not a JSON array: %v\n%s", err, r.stdout)
	}
	if len(list) != 2 {
		t.Fatalf("%d projects listed: %s", len(list), r.stdout)
	}
	a, relay := list[0], list[1]
	if a.Name != "client-a" || !a.Enabled || a.Auth.Type != "basic" || a.Auth.Password != "[set]" ||
		a.Upstream.Host != "smtp.client.co.uk" || len(a.Senders) != 2 || a.Token != nil || a.Removed != "" {
		t.Errorf("client-a: %+v", a)
	}
	if relay.Name != "relay" || relay.Removed == "" || relay.Expired {
		t.Errorf("the removed project: %+v", relay)
	}
	h.neverPrinted("pw-List-1")

	empty := newHarness(t, "")
	empty.initStore()
	if r := empty.mustRun("", "project", "list", "--json"); strings.TrimSpace(r.stdout) != "[]" {
		t.Errorf("no projects: %q, want []", r.stdout)
	}
}

func TestCompletion(t *testing.T) {
	t.Parallel()
	h := newHarness(t, "")
	for shell, want := range map[string]string{"bash": "__start_postern", "zsh": "#compdef postern", "fish": "complete -c postern"} {
		if r := h.mustRun("", "completion", shell); !strings.Contains(r.stdout, want) {
			t.Errorf("completion %s lacks %q:\n%.300s", shell, want, r.stdout)
		}
	}
	h.mustRun("pw", addClientA...)
	h.mustRun("", "project", "add", "relay", "--sender", "@relay.example", "--host", "127.0.0.1", "--tls", "none", "--auth", "none")
	r := h.mustRun("", "__complete", "project", "show", "--config", h.cfgPath, "c")
	if !strings.Contains(r.stdout, "client-a\n") || strings.Contains(r.stdout, "relay") {
		t.Errorf("project names completed: %q", r.stdout)
	}
	r = h.mustRun("", "__complete", "check", "client-a", "")
	if !strings.Contains(r.stdout, "relay\n") || strings.Contains(r.stdout, "client-a") {
		t.Errorf("check completes the names not given yet: %q", r.stdout)
	}
	if r := h.mustRun("", "__complete", "project", ""); !strings.Contains(r.stdout, "update") {
		t.Errorf("commands completed: %q", r.stdout)
	}
}

func TestStoreAndCheckConfigJSON(t *testing.T) {
	t.Parallel()
	h := newHarness(t, "")
	h.mustRun("pw", addClientA...)
	r := h.mustRun("", "store", "rekey", "--json")
	var rekey struct {
		Action  string `json:"action"`
		Records int    `json:"records"`
	}
	if err := json.Unmarshal([]byte(r.stdout), &rekey); err != nil || rekey.Action != "rekeyed" {
		t.Errorf("store rekey --json: %v %v", err, r)
	}
	r = h.mustRun("", "serve", "--check-config", "--json")
	var verdict struct {
		OK       bool     `json:"ok"`
		Problems []string `json:"problems"`
	}
	if err := json.Unmarshal([]byte(r.stdout), &verdict); err != nil || !verdict.OK || len(verdict.Problems) != 0 {
		t.Errorf("serve --check-config --json: %v %v", err, r)
	}
	bad := newHarness(t, "log:\n  level: loud\n")
	r = bad.run("", "serve", "--check-config", "--json")
	if err := json.Unmarshal([]byte(r.stdout), &verdict); r.code != ExitFail || err != nil || verdict.OK || len(verdict.Problems) != 1 {
		t.Errorf("an invalid config: %v %v", err, r)
	}
}
