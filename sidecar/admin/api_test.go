package admin

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/postern/postern/sidecar/project"
	"github.com/postern/postern/sidecar/secret"
	"github.com/postern/postern/sidecar/store"
	"github.com/postern/postern/sidecar/store/boltstore"
)

// Secret values of the test projects: none may appear in an answer or a log line.
const (
	apiToken  = "test-api-token-0123456789abcdef"
	pwA       = "pw-A-5ecret-value"
	pwB       = "pw-B-5ecret-value"
	pwNew     = "pw-NEW-5ecret-value"
	csO       = "cs-O-5ecret-value"
	badSecret = "pw-TRUNCATED-5ecret"
)

var allSecrets = []string{apiToken, pwA, pwB, pwNew, csO, badSecret}

// syncBuffer is a log destination the handlers and the test share.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

func basicProject(name, sender, pw string) project.Project {
	return project.Project{
		Name: name, Enabled: true, Senders: []string{sender},
		Upstream: project.Upstream{Host: "smtp." + name + ".example", Port: 587, TLS: project.TLSStartTLS},
		Auth:     project.Auth{Type: project.AuthBasic, Username: sender, Password: secret.New(pw)},
	}
}

func oauthProject() project.Project {
	return project.Project{
		Name: "o", Enabled: true, Senders: []string{"noreply@o.example"},
		Upstream: project.Upstream{Host: "smtp.office365.com", Port: 587, TLS: project.TLSStartTLS},
		Auth: project.Auth{Type: project.AuthOAuth2, Username: "noreply@o.example", OAuth: &project.OAuth{
			Provider: "microsoft", Tenant: "o.example", ClientID: "cid-1", ClientSecret: secret.New(csO),
		}},
	}
}

type apiEnv struct {
	url  string
	st   *boltstore.Store
	logs *syncBuffer
}

// newAPIEnv serves the admin handler with the API on over loopback, on a new file store holding
// the projects a (basic), b (basic) and o (OAuth), each at version 1.
func newAPIEnv(t *testing.T) *apiEnv {
	t.Helper()
	dir := t.TempDir()
	st, err := boltstore.Open(t.Context(), boltstore.Options{
		Path: filepath.Join(dir, "store.db"), KeyFile: filepath.Join(dir, "store.key"), Create: true,
	})
	if err != nil {
		t.Fatalf("opening the store: %v", err)
	}
	t.Cleanup(func() { st.Close() })
	for _, p := range []project.Project{
		basicProject("a", "noreply@a.example", pwA),
		basicProject("b", "news@b.example", pwB),
		oauthProject(),
	} {
		if _, err := st.PutProject(t.Context(), p); err != nil {
			t.Fatalf("seeding %s: %v", p.Name, err)
		}
	}
	logs := &syncBuffer{}
	log := slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	srv := httptest.NewServer(New(Options{Logger: log, API: &APIOptions{Store: st, Token: secret.New(apiToken)}}).Handler())
	t.Cleanup(srv.Close)
	return &apiEnv{url: srv.URL, st: st, logs: logs}
}

type apiAnswer struct {
	code   int
	header http.Header
	body   string
	obj    map[string]any
}

func (a apiAnswer) problems() []string {
	var out []string
	list, _ := a.obj["problems"].([]any)
	for _, p := range list {
		s, _ := p.(string)
		out = append(out, s)
	}
	return out
}

// call makes one request; every answer must be JSON.
func call(t *testing.T, url, method, path, token, body string, header map[string]string) apiAnswer {
	t.Helper()
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, err := http.NewRequestWithContext(t.Context(), method, url+path, rd)
	if err != nil {
		t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	for k, v := range header {
		req.Header.Set(k, v)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	a := apiAnswer{code: resp.StatusCode, header: resp.Header, body: string(b)}
	if ct := resp.Header.Get("Content-Type"); ct != "application/json" {
		t.Errorf("%s %s: Content-Type %q, want application/json", method, path, ct)
	}
	if err := json.Unmarshal(b, &a.obj); err != nil {
		t.Fatalf("%s %s answered no JSON object (%v): %s", method, path, err, b)
	}
	return a
}

func mustProject(t *testing.T, st store.Admin, name string) project.Project {
	t.Helper()
	p, err := st.Project(t.Context(), name)
	if err != nil {
		t.Fatalf("reading project %s: %v", name, err)
	}
	return p
}

func TestAPI(t *testing.T) {
	t.Parallel()
	const newC = `{"senders": ["noreply@C.Example"],
		"upstream": {"host": "smtp.c.example", "port": 587, "tls": "starttls"},
		"auth": {"type": "basic", "username": "noreply@c.example", "password": "` + pwNew + `"}}`
	// a's settings with another upstream and no password.
	const aNewHost = `{"senders": ["noreply@a.example"],
		"upstream": {"host": "smtp2.a.example", "port": 465, "tls": "implicit"},
		"auth": {"type": "basic", "username": "noreply@a.example"}}`
	unchanged := func(name string, version int) func(*testing.T, store.Admin) {
		return func(t *testing.T, st store.Admin) {
			if p := mustProject(t, st, name); p.Version != version {
				t.Errorf("project %s is at version %d, want %d: it was written", name, p.Version, version)
			}
		}
	}
	tests := []struct {
		name         string
		method, path string
		token        string // "" sends no Authorization header
		body         string
		header       map[string]string
		code         int
		want         []string // in the answer
		problems     int      // at least this many problems listed
		writes       string   // the action logged, "" for none
		check        func(t *testing.T, st store.Admin)
	}{
		{name: "no token", method: "GET", path: "/api/v1/projects/a", code: 401, want: []string{"no bearer token", "api.token_file"}},
		{name: "wrong token", method: "PUT", path: "/api/v1/projects/a", token: "not-the-token-at-all", body: aNewHost, code: 401,
			want: []string{"the bearer token is wrong"}, check: unchanged("a", 1)},
		{name: "basic auth instead of a bearer token", method: "DELETE", path: "/api/v1/projects/a",
			header: map[string]string{"Authorization": "Basic " + apiToken}, code: 401, check: unchanged("a", 1)},
		{name: "get", method: "GET", path: "/api/v1/projects/a", token: apiToken, code: 200,
			want: []string{`"password": "[set]"`, `"version": 1`, `"host": "smtp.a.example"`}},
		{name: "get oauth", method: "GET", path: "/api/v1/projects/o", token: apiToken, code: 200,
			want: []string{`"client_secret": "[set]"`, `"client_id": "cid-1"`}},
		{name: "get missing", method: "GET", path: "/api/v1/projects/nope", token: apiToken, code: 404,
			want: []string{"no project named nope", "PUT /api/v1/projects/nope"}},
		{name: "bad name", method: "GET", path: "/api/v1/projects/Not%20A%20Name", token: apiToken, code: 400, want: []string{"project name"}},
		{name: "method not allowed", method: "PATCH", path: "/api/v1/projects/a", token: apiToken, body: "{}", code: 405, want: []string{"use GET, PUT or DELETE"}},
		{name: "unknown action", method: "POST", path: "/api/v1/projects/a/pause", token: apiToken, code: 404, want: []string{"enable or /disable"}},

		{name: "create", method: "PUT", path: "/api/v1/projects/c", token: apiToken, body: newC, code: 201, writes: "create",
			want: []string{`"password": "[set]"`, `"version": 1`, `"enabled": true`, `"noreply@c.example"`},
			check: func(t *testing.T, st store.Admin) {
				p := mustProject(t, st, "c")
				if !p.Enabled || p.Auth.Password.Reveal() != pwNew || p.Senders[0] != "noreply@c.example" || p.Name != "c" {
					t.Errorf("stored %+v (password kept: %v)", p, p.Auth.Password.Reveal() == pwNew)
				}
			}},
		{name: "create disabled", method: "PUT", path: "/api/v1/projects/c", token: apiToken,
			body: strings.Replace(newC, `{"senders"`, `{"name": "c", "enabled": false, "senders"`, 1), code: 201, writes: "create",
			check: func(t *testing.T, st store.Admin) {
				if mustProject(t, st, "c").Enabled {
					t.Error("created enabled")
				}
			}},
		{name: "update keeps the password", method: "PUT", path: "/api/v1/projects/a", token: apiToken, body: aNewHost, code: 200, writes: "update",
			want: []string{`"password": "[set]"`, `"version": 2`, `"host": "smtp2.a.example"`},
			check: func(t *testing.T, st store.Admin) {
				p := mustProject(t, st, "a")
				if p.Auth.Password.Reveal() != pwA || p.Upstream.Host != "smtp2.a.example" || p.Upstream.Port != 465 || !p.Enabled {
					t.Errorf("stored %+v (password kept: %v)", p, p.Auth.Password.Reveal() == pwA)
				}
			}},
		{name: "update sets a new password", method: "PUT", path: "/api/v1/projects/a", token: apiToken,
			body: strings.Replace(aNewHost, `"username": "noreply@a.example"`, `"username": "noreply@a.example", "password": "`+pwNew+`"`, 1),
			code: 200, writes: "update",
			check: func(t *testing.T, st store.Admin) {
				if mustProject(t, st, "a").Auth.Password.Reveal() != pwNew {
					t.Error("the new password was not stored")
				}
			}},
		{name: "new username needs its password", method: "PUT", path: "/api/v1/projects/a", token: apiToken,
			body: strings.Replace(aNewHost, `"username": "noreply@a.example"`, `"username": "other@a.example"`, 1), code: 422,
			want: []string{`auth.username changed from \"noreply@a.example\", so send its password`}, problems: 1, check: unchanged("a", 1)},
		{name: "if-match", method: "PUT", path: "/api/v1/projects/a", token: apiToken, body: aNewHost,
			header: map[string]string{"If-Match": `"1"`}, code: 200, writes: "update", want: []string{`"version": 2`}},
		{name: "if-match conflict", method: "PUT", path: "/api/v1/projects/a", token: apiToken, body: aNewHost,
			header: map[string]string{"If-Match": "7"}, code: 409, want: []string{"is at version 1, not 7", "GET it again"}, check: unchanged("a", 1)},
		{name: "body version conflict", method: "PUT", path: "/api/v1/projects/a", token: apiToken,
			body: strings.Replace(aNewHost, `{"senders"`, `{"version": 3, "senders"`, 1), code: 409, want: []string{"not 3"}, check: unchanged("a", 1)},
		{name: "if-match and body version differ", method: "PUT", path: "/api/v1/projects/a", token: apiToken,
			body: strings.Replace(aNewHost, `{"senders"`, `{"version": 1, "senders"`, 1), header: map[string]string{"If-Match": "2"}, code: 400, check: unchanged("a", 1)},
		{name: "if-match on a missing project", method: "PUT", path: "/api/v1/projects/c", token: apiToken, body: newC,
			header: map[string]string{"If-Match": "1"}, code: 409, want: []string{"does not exist"}},
		{name: "bad if-match", method: "PUT", path: "/api/v1/projects/a", token: apiToken, body: aNewHost,
			header: map[string]string{"If-Match": "*"}, code: 400, want: []string{"If-Match"}},
		{name: "invalid project lists every problem", method: "PUT", path: "/api/v1/projects/c", token: apiToken,
			body: `{"name": "d", "senders": [], "upstream": {"host": "", "port": 0, "tls": "ssl"}, "auth": {"type": "basic", "username": "", "password": "[set]"}}`,
			code: 422, problems: 6,
			want: []string{"is not valid; nothing was changed", `name \"d\" in the body differs`, "senders: at least one", "upstream.host is empty",
				"upstream.port 0", `upstream.tls \"ssl\"`, "auth.username is empty", "auth.password holds what GET shows"}},
		{name: "oauth problems", method: "PUT", path: "/api/v1/projects/g", token: apiToken,
			body: `{"senders": ["x@g.example"], "upstream": {"host": "smtp.gmail.com", "port": 587, "tls": "starttls"},
				"auth": {"type": "oauth2", "username": "x@g.example", "oauth": {"provider": "google", "client_id": "g1", "grant": "device_code"}}}`,
			code: 422, want: []string{"Google offers no device flow"}},
		{name: "sender clash", method: "PUT", path: "/api/v1/projects/c", token: apiToken,
			body: strings.Replace(newC, `"noreply@C.Example"`, `"noreply@C.Example", "News@B.example"`, 1), code: 409,
			want: []string{"sender News@b.example already belongs to project b"}, problems: 1},
		{name: "sender clash with a problem", method: "PUT", path: "/api/v1/projects/a", token: apiToken,
			body: strings.Replace(aNewHost, `"noreply@a.example"]`, `"news@b.example"], "send_as": ["bad"]`, 1), code: 422, problems: 2,
			want: []string{"already belongs to project b", "send_as"}, check: unchanged("a", 1)},
		{name: "unknown top-level key", method: "PUT", path: "/api/v1/projects/a", token: apiToken,
			body: strings.Replace(aNewHost, `{"senders"`, `{"colour": "blue", "senders"`, 1), code: 400, want: []string{`unknown key \"colour\"`}, check: unchanged("a", 1)},
		{name: "unknown nested key", method: "PUT", path: "/api/v1/projects/a", token: apiToken,
			body: strings.Replace(aNewHost, `"type": "basic"`, `"type": "basic", "pasword": "`+pwNew+`"`, 1), code: 400, want: []string{`unknown key \"pasword\"`}, check: unchanged("a", 1)},
		{name: "not JSON", method: "PUT", path: "/api/v1/projects/a", token: apiToken,
			body: `{"auth": {"password": "` + badSecret, code: 400, want: []string{"not valid JSON"}, check: unchanged("a", 1)},
		{name: "wrong type", method: "PUT", path: "/api/v1/projects/a", token: apiToken,
			body: `{"senders": "noreply@a.example"}`, code: 400, want: []string{"senders: a JSON string where []string belongs"}, check: unchanged("a", 1)},
		{name: "empty body", method: "PUT", path: "/api/v1/projects/a", token: apiToken, code: 400, check: unchanged("a", 1)},
		{name: "password on an oauth project", method: "PUT", path: "/api/v1/projects/o", token: apiToken,
			body: `{"senders": ["noreply@o.example"], "upstream": {"host": "smtp.office365.com", "port": 587, "tls": "starttls"},
				"auth": {"type": "oauth2", "username": "noreply@o.example", "password": "` + pwNew + `", "oauth": {"provider": "microsoft", "tenant": "o.example", "client_id": "cid-1"}}}`,
			code: 422, want: []string{"a password is used only with auth.type basic"}, check: unchanged("o", 1)},
		{name: "oauth update keeps the client secret", method: "PUT", path: "/api/v1/projects/o", token: apiToken,
			body: `{"senders": ["noreply@o.example", "@o.example"], "upstream": {"host": "smtp.office365.com", "port": 587, "tls": "starttls"},
				"auth": {"type": "oauth2", "username": "noreply@o.example", "oauth": {"provider": "microsoft", "tenant": "o.example", "client_id": "cid-1"}}}`,
			code: 200, writes: "update", want: []string{`"client_secret": "[set]"`},
			check: func(t *testing.T, st store.Admin) {
				if p := mustProject(t, st, "o"); p.Auth.OAuth.ClientSecret.Reveal() != csO || len(p.Senders) != 2 {
					t.Errorf("stored %+v (secret kept: %v)", p, p.Auth.OAuth.ClientSecret.Reveal() == csO)
				}
			}},
		{name: "new client id drops the client secret", method: "PUT", path: "/api/v1/projects/o", token: apiToken,
			body: `{"senders": ["noreply@o.example"], "upstream": {"host": "smtp.office365.com", "port": 587, "tls": "starttls"},
				"auth": {"type": "oauth2", "username": "noreply@o.example", "oauth": {"provider": "microsoft", "tenant": "o.example", "client_id": "cid-2"}}}`,
			code: 200, writes: "update", want: []string{`"client_secret": "[not set]"`}},
		{name: "secret marks are refused", method: "PUT", path: "/api/v1/projects/o", token: apiToken,
			body: `{"senders": ["noreply@o.example"], "upstream": {"host": "smtp.office365.com", "port": 587, "tls": "starttls"},
				"auth": {"type": "oauth2", "username": "noreply@o.example", "oauth": {"provider": "microsoft", "tenant": "o.example", "client_id": "cid-1", "client_secret": "[set]"}}}`,
			code: 422, want: []string{"auth.oauth.client_secret holds what GET shows"}, check: unchanged("o", 1)},

		{name: "delete leaves a tombstone", method: "DELETE", path: "/api/v1/projects/b", token: apiToken, code: 200, writes: "remove", want: []string{`"removed": "b"`},
			check: func(t *testing.T, st store.Admin) {
				p, err := st.Project(t.Context(), "b")
				if err != nil || !p.IsRemoved() || p.Enabled || len(p.Senders) == 0 || !p.Auth.Password.IsZero() || p.Auth.Type != project.AuthNone {
					t.Errorf("after delete: %+v, %v; want a tombstone with the senders and no password", p, err)
				}
			}},
		{name: "delete with purge", method: "DELETE", path: "/api/v1/projects/b?purge=true", token: apiToken, code: 200, writes: "purge", want: []string{`"deleted": "b"`},
			check: func(t *testing.T, st store.Admin) {
				if _, err := st.Project(t.Context(), "b"); !errors.Is(err, store.ErrNotFound) {
					t.Errorf("after purge: %v", err)
				}
			}},
		{name: "delete missing", method: "DELETE", path: "/api/v1/projects/nope", token: apiToken, code: 404, want: []string{"no project named nope"}},
		{name: "delete with a stale version", method: "DELETE", path: "/api/v1/projects/b", token: apiToken,
			header: map[string]string{"If-Match": "2"}, code: 409, check: unchanged("b", 1)},
		{name: "disable", method: "POST", path: "/api/v1/projects/a/disable", token: apiToken, code: 200, writes: "disable",
			want: []string{`"enabled": false`, `"version": 2`},
			check: func(t *testing.T, st store.Admin) {
				if p := mustProject(t, st, "a"); p.Enabled || p.Auth.Password.Reveal() != pwA {
					t.Errorf("stored %+v", p)
				}
			}},
		{name: "enable an enabled project writes nothing", method: "POST", path: "/api/v1/projects/a/enable", token: apiToken, code: 200,
			want: []string{`"enabled": true`, `"version": 1`}, check: unchanged("a", 1)},
		{name: "enable missing", method: "POST", path: "/api/v1/projects/nope/enable", token: apiToken, code: 404},
		{name: "enable with GET", method: "GET", path: "/api/v1/projects/a/enable", token: apiToken, code: 405, want: []string{"use POST"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			env := newAPIEnv(t)
			a := call(t, env.url, tc.method, tc.path, tc.token, tc.body, tc.header)
			if a.code != tc.code {
				t.Fatalf("%s %s: code %d, want %d: %s", tc.method, tc.path, a.code, tc.code, a.body)
			}
			for _, w := range tc.want {
				if !strings.Contains(a.body, w) {
					t.Errorf("the answer does not say %q: %s", w, a.body)
				}
			}
			if tc.code >= 400 {
				if msg, _ := a.obj["error"].(string); msg == "" {
					t.Errorf("an error answer without \"error\": %s", a.body)
				}
				if _, ok := a.obj["problems"].([]any); !ok {
					t.Errorf("an error answer without a \"problems\" list: %s", a.body)
				}
			}
			if got := len(a.problems()); got < tc.problems {
				t.Errorf("%d problems listed, want at least %d: %s", got, tc.problems, a.body)
			}
			if tc.code == 401 && a.header.Get("WWW-Authenticate") == "" {
				t.Error("401 without WWW-Authenticate")
			}
			logs := env.logs.String()
			written := strings.Count(logs, "project written")
			switch {
			case tc.writes == "" && written != 0:
				t.Errorf("a write was logged: %s", logs)
			case tc.writes != "" && (written != 1 || !strings.Contains(logs, "action="+tc.writes) ||
				!strings.Contains(logs, "remote=127.0.0.1:") || !strings.Contains(logs, "project="+strings.Split(strings.Split(tc.path, "?")[0], "/")[4])):
				t.Errorf("want one %s logged with project and remote address: %s", tc.writes, logs)
			}
			for _, s := range allSecrets {
				if strings.Contains(a.body, s) || strings.Contains(logs, s) || strings.Contains(a.header.Get("WWW-Authenticate"), s) {
					t.Fatalf("a secret is in the answer or the log")
				}
			}
			if tc.check != nil {
				tc.check(t, env.st)
			}
		})
	}
}

// A PUT without "enabled" keeps the stored state; "version" from GET asks for a check-and-set.
func TestAPIKeepsEnabledWhenLeftOut(t *testing.T) {
	t.Parallel()
	env := newAPIEnv(t)
	if a := call(t, env.url, "POST", "/api/v1/projects/a/disable", apiToken, "", nil); a.code != 200 {
		t.Fatalf("disable: %d %s", a.code, a.body)
	}
	got := call(t, env.url, "GET", "/api/v1/projects/a", apiToken, "", nil)
	if got.header.Get("ETag") != `"2"` {
		t.Errorf("ETag %q, want \"2\"", got.header.Get("ETag"))
	}
	// What GET answered, back with another host and without the password mark.
	obj := got.obj
	delete(obj["auth"].(map[string]any), "password")
	delete(obj, "enabled")
	obj["upstream"].(map[string]any)["host"] = "smtp3.a.example"
	body, _ := json.Marshal(obj)
	a := call(t, env.url, "PUT", "/api/v1/projects/a", apiToken, string(body), nil)
	if a.code != 200 {
		t.Fatalf("PUT of GET's answer: %d %s", a.code, a.body)
	}
	p := mustProject(t, env.st, "a")
	if p.Enabled || p.Upstream.Host != "smtp3.a.example" || p.Auth.Password.Reveal() != pwA || p.Version != 3 {
		t.Errorf("stored enabled=%v host=%s version=%d password kept=%v", p.Enabled, p.Upstream.Host, p.Version, p.Auth.Password.Reveal() == pwA)
	}
	// The same body again carries version 2, now stale.
	if a := call(t, env.url, "PUT", "/api/v1/projects/a", apiToken, string(body), nil); a.code != 409 {
		t.Fatalf("a stale version in the body: %d %s", a.code, a.body)
	}
	if a := call(t, env.url, "POST", "/api/v1/projects/a/enable", apiToken, "", map[string]string{"If-Match": "3"}); a.code != 200 || !mustProject(t, env.st, "a").Enabled {
		t.Fatalf("enable: %d %s", a.code, a.body)
	}
}

func TestAPIOff(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	st, err := boltstore.Open(t.Context(), boltstore.Options{Path: filepath.Join(dir, "db"), KeyFile: filepath.Join(dir, "key"), Create: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	for name, opts := range map[string]Options{
		"not configured": {},
		"no token":       {API: &APIOptions{Store: st}},
		"no store":       {API: &APIOptions{Token: secret.New(apiToken)}},
	} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			srv := httptest.NewServer(New(opts).Handler())
			t.Cleanup(srv.Close)
			for _, r := range []struct{ method, path string }{
				{"GET", "/api/v1/projects/a"}, {"PUT", "/api/v1/projects/a"}, {"DELETE", "/api/v1/projects/a"},
				{"POST", "/api/v1/projects/a/enable"}, {"POST", "/api/v1/projects/a/disable"},
			} {
				a := call(t, srv.URL, r.method, r.path, apiToken, `{}`, nil)
				if a.code != 404 || !strings.Contains(a.body, "api.token_file") {
					t.Errorf("%s %s: %d %s", r.method, r.path, a.code, a.body)
				}
			}
		})
	}
}

func TestLoadAPIToken(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	path := filepath.Join(dir, "sub", "api.token")
	tok, err := LoadAPIToken(path)
	if err != nil {
		t.Fatalf("creating: %v", err)
	}
	fi, err := os.Stat(path)
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("token file %v, %v", fi, err)
	}
	if len(tok.Reveal()) < 40 {
		t.Errorf("the created token has %d characters", len(tok.Reveal()))
	}
	again, err := LoadAPIToken(path)
	if err != nil || !again.Equal(tok) {
		t.Fatalf("the second load gave another token (%v)", err)
	}

	write := func(name, content string, mode os.FileMode) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), mode); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(p, mode); err != nil {
			t.Fatal(err)
		}
		return p
	}
	handMade := write("hand", "  "+apiToken+"\n", 0o600)
	if got, err := LoadAPIToken(handMade); err != nil || got.Reveal() != apiToken {
		t.Errorf("a token written by hand: %v", err)
	}
	for _, tc := range []struct{ name, path, want string }{
		{"group readable", write("group", apiToken, 0o640), "readable by group or others"},
		{"world readable", write("world", apiToken, 0o604), "chmod 600"},
		{"too short", write("short", "abc", 0o600), "at least 16 characters"},
		{"two tokens", write("two", apiToken+" "+apiToken, 0o600), "one token"},
		{"a directory", dir, "not a regular file"},
	} {
		_, err := LoadAPIToken(tc.path)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want %q", tc.name, err, tc.want)
		}
		if err != nil && strings.Contains(err.Error(), apiToken) {
			t.Errorf("%s: the error holds the token", tc.name)
		}
	}
}

// racingStore changes a project behind the API's back just before the API's first write, as
// another administrator would.
type racingStore struct {
	store.Admin
	once sync.Once
	race func()
}

func (s *racingStore) PutProject(ctx context.Context, p project.Project) (int, error) {
	s.once.Do(s.race)
	return s.Admin.PutProject(ctx, p)
}

func TestAPIConcurrentChange(t *testing.T) {
	t.Parallel()
	const body = `{"senders": ["noreply@a.example"], "upstream": {"host": "smtp2.a.example", "port": 587, "tls": "starttls"},
		"auth": {"type": "basic", "username": "noreply@a.example"}}`
	tests := []struct {
		name, method, path, body string
		header                   map[string]string
		code                     int
		check                    func(t *testing.T, p project.Project)
	}{
		{"put re-reads and keeps the other change", "PUT", "/api/v1/projects/a", body, nil, 200, func(t *testing.T, p project.Project) {
			// The PUT replaces the project but keeps the password the other writer set.
			if p.Version != 3 || p.Upstream.Host != "smtp2.a.example" || p.Auth.Password.Reveal() != pwNew {
				t.Errorf("version %d host %s, the other writer's password kept: %v", p.Version, p.Upstream.Host, p.Auth.Password.Reveal() == pwNew)
			}
		}},
		{"put with if-match conflicts", "PUT", "/api/v1/projects/a", body, map[string]string{"If-Match": "1"}, 409, func(t *testing.T, p project.Project) {
			if p.Version != 2 || p.Upstream.Host != "smtp.a.example" {
				t.Errorf("version %d host %s: the API wrote over the other change", p.Version, p.Upstream.Host)
			}
		}},
		{"disable re-reads", "POST", "/api/v1/projects/a/disable", "", nil, 200, func(t *testing.T, p project.Project) {
			if p.Version != 3 || p.Enabled || p.Auth.Password.Reveal() != pwNew {
				t.Errorf("version %d enabled %v", p.Version, p.Enabled)
			}
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			env := newAPIEnv(t)
			racing := &racingStore{Admin: env.st, race: func() {
				p := basicProject("a", "noreply@a.example", pwNew)
				if _, err := env.st.PutProject(context.Background(), p); err != nil {
					t.Errorf("the other writer: %v", err)
				}
			}}
			srv := httptest.NewServer(New(Options{API: &APIOptions{Store: racing, Token: secret.New(apiToken)}}).Handler())
			t.Cleanup(srv.Close)
			a := call(t, srv.URL, tc.method, tc.path, apiToken, tc.body, tc.header)
			if a.code != tc.code {
				t.Fatalf("code %d, want %d: %s", a.code, tc.code, a.body)
			}
			tc.check(t, mustProject(t, env.st, "a"))
		})
	}
}

// DELETE leaves a tombstone that enable refuses; PUT over it adds the project again, enabled.
func TestAPIAddsARemovedProjectAgain(t *testing.T) {
	t.Parallel()
	env := newAPIEnv(t)
	if a := call(t, env.url, "DELETE", "/api/v1/projects/b", apiToken, "", nil); a.code != 200 {
		t.Fatalf("DELETE: %d %s", a.code, a.body)
	}
	if a := call(t, env.url, "POST", "/api/v1/projects/b/enable", apiToken, "", nil); a.code != 409 || !strings.Contains(a.body, "was removed") {
		t.Errorf("enable of a removed project: %d %s", a.code, a.body)
	}
	body := `{"senders": ["news@b.example"],
		"upstream": {"host": "smtp.b.example", "port": 587, "tls": "starttls"},
		"auth": {"type": "basic", "username": "news@b.example", "password": "` + pwNew + `"}}`
	a := call(t, env.url, "PUT", "/api/v1/projects/b", apiToken, body, nil)
	if a.code != 200 {
		t.Fatalf("PUT over the tombstone: %d %s", a.code, a.body)
	}
	if p := mustProject(t, env.st, "b"); p.IsRemoved() || !p.Enabled || p.Auth.Type != project.AuthBasic {
		t.Errorf("after PUT over the tombstone: %+v", p)
	}
}

// The read token reads a project through the API, and writes nothing.
func TestAPIReadToken(t *testing.T) {
	t.Parallel()
	env := newAPIEnv(t)
	h := New(Options{ReadToken: secret.New(readToken), API: &APIOptions{Store: env.st, Token: secret.New(apiToken)}}).Handler()
	do := func(method, path, auth string) int {
		rec := httptest.NewRecorder()
		req := httptest.NewRequest(method, path, strings.NewReader(`{"enabled": false}`))
		req.Header.Set("Authorization", auth)
		h.ServeHTTP(rec, req)
		return rec.Code
	}
	if code := do(http.MethodGet, "/api/v1/projects/a", "Bearer "+readToken); code != 200 {
		t.Errorf("GET with the read token: %d, want 200", code)
	}
	if code := do(http.MethodGet, "/api/v1/projects/a", "Bearer wrong-token-0123456789"); code != 401 {
		t.Errorf("GET with a wrong token: %d, want 401", code)
	}
	for _, m := range []struct{ method, path string }{
		{http.MethodPut, "/api/v1/projects/a"}, {http.MethodDelete, "/api/v1/projects/a"}, {http.MethodPost, "/api/v1/projects/a/disable"},
	} {
		if code := do(m.method, m.path, "Bearer "+readToken); code != 401 {
			t.Errorf("%s %s with the read token: %d, want 401", m.method, m.path, code)
		}
	}
	if p, err := env.st.Project(t.Context(), "a"); err != nil || !p.Enabled {
		t.Errorf("project a after writes with the read token: %+v, %v", p, err)
	}
}
