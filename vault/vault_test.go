package vault_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/vault/api"

	"github.com/postern/postern/vault"
	"github.com/postern/postern/vault/vaulttest"
)

// logBuffer collects a client's log for inspection.
type logBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *logBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *logBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// harness is one fake Vault and what a test's clients logged and returned.
type harness struct {
	t    *testing.T
	srv  *vaulttest.Server
	logs *logBuffer
	dir  string

	mu   sync.Mutex
	errs []string
}

func newHarness(t *testing.T) *harness {
	t.Helper()
	h := &harness{t: t, srv: vaulttest.New(t, vaulttest.Options{}), logs: &logBuffer{}, dir: t.TempDir()}
	t.Cleanup(h.checkNoSecrets)
	return h
}

// options returns client options for the fake with fast retries and a debug logger.
func (h *harness) options(a vault.Auth) vault.Options {
	return vault.Options{
		Address:  h.srv.URL,
		Auth:     a,
		RetryMin: 10 * time.Millisecond, // also spaces token checks after a 403
		RetryMax: 50 * time.Millisecond,
		Timeout:  5 * time.Second,
		Logger:   slog.New(slog.NewTextHandler(h.logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
	}
}

// note keeps an error's text for the leak check.
func (h *harness) note(err error) error {
	if err != nil {
		h.mu.Lock()
		h.errs = append(h.errs, err.Error(), fmt.Sprintf("%+v", err))
		h.mu.Unlock()
	}
	return err
}

func (h *harness) newClient(a vault.Auth) *vault.Client {
	h.t.Helper()
	c, err := vault.New(h.t.Context(), h.options(a))
	if h.note(err) != nil {
		h.t.Fatalf("vault.New: %v", err)
	}
	return c
}

// run runs the client's upkeep until the test ends.
func (h *harness) run(c *vault.Client) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := c.Run(ctx); err != nil {
			h.t.Errorf("Run: %v", err)
		}
	}()
	h.t.Cleanup(func() { cancel(); <-done })
}

func (h *harness) file(name, content string) string {
	h.t.Helper()
	p := filepath.Join(h.dir, name)
	writeFile(h.t, p, content)
	return p
}

func writeFile(t *testing.T, p, content string) {
	t.Helper()
	tmp := p + ".tmp"
	if err := os.WriteFile(tmp, []byte(content+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, p); err != nil {
		t.Fatal(err)
	}
}

func (h *harness) checkNoSecrets() {
	h.mu.Lock()
	texts := append([]string{h.logs.String()}, h.errs...)
	h.mu.Unlock()
	for _, secret := range h.srv.Issued() {
		for _, s := range texts {
			if strings.Contains(s, secret) {
				h.t.Errorf("a credential issued by vault appears in a log or an error:\n%s", s)
			}
		}
	}
}

// eventually polls cond until it holds or 10 s pass.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting until %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func roundTrip(t *testing.T, h *harness, c *vault.Client, p string) {
	t.Helper()
	ctx := t.Context()
	v, err := c.Write(ctx, p, map[string]any{"n": 1, "s": "x"}, -1)
	if h.note(err) != nil {
		t.Fatalf("Write: %v", err)
	}
	data, got, err := c.Read(ctx, p)
	if h.note(err) != nil {
		t.Fatalf("Read: %v", err)
	}
	if got != v || data["s"] != "x" || fmt.Sprint(data["n"]) != "1" {
		t.Fatalf("Read = %v version %d, want n=1 s=x version %d", data, got, v)
	}
}

func TestLoginMethods(t *testing.T) {
	t.Parallel()
	role := vaulttest.TokenOptions{TTL: time.Hour, Renewable: true}
	tests := []struct {
		name       string
		auth       func(h *harness) vault.Auth
		wantLogins int
		wantUnwrap int
	}{
		{"token", func(h *harness) vault.Auth {
			return vault.Auth{Token: vault.Secret(h.srv.CreateToken(role))}
		}, 0, 0},
		{"root token", func(h *harness) vault.Auth {
			return vault.Auth{Method: vault.MethodToken, Token: vault.Secret(h.srv.RootToken)}
		}, 0, 0},
		{"token file", func(h *harness) vault.Auth {
			return vault.Auth{Method: vault.MethodTokenFile, TokenFile: h.file("token", h.srv.CreateToken(role))}
		}, 0, 0},
		{"approle", func(h *harness) vault.Auth {
			h.srv.AddAppRole("role-1", role)
			return vault.Auth{Method: vault.MethodAppRole, RoleID: "role-1", SecretIDFile: h.file("sid", h.srv.NewSecretID("role-1"))}
		}, 1, 0},
		{"approle with role id file and mount path", func(h *harness) vault.Auth {
			h.srv.AddAppRole("role-2", role)
			return vault.Auth{Method: vault.MethodAppRole, MountPath: "/auth-approle/", RoleIDFile: h.file("rid", "role-2"),
				SecretIDFile: h.file("sid", h.srv.NewSecretID("role-2"))}
		}, 1, 0},
		{"approle wrapped", func(h *harness) vault.Auth {
			h.srv.AddAppRole("role-3", role)
			return vault.Auth{Method: vault.MethodAppRole, RoleID: "role-3", SecretIDFile: h.file("sid", h.srv.WrapSecretID("role-3")), SecretIDWrapped: true}
		}, 1, 1},
		{"kubernetes", func(h *harness) vault.Auth {
			h.srv.AddKubernetesRole("postern", "jwt-of-the-pod", role)
			return vault.Auth{Method: vault.MethodKubernetes, Role: "postern", ServiceAccountTokenFile: h.file("sa", "jwt-of-the-pod")}
		}, 1, 0},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			h := newHarness(t)
			c := h.newClient(tc.auth(h))
			if err := c.Healthy(); err != nil {
				t.Fatalf("Healthy after New: %v", err)
			}
			roundTrip(t, h, c, "app/one")
			st := h.srv.Stats()
			if st.Logins != tc.wantLogins || st.Unwraps != tc.wantUnwrap {
				t.Errorf("logins %d unwraps %d, want %d and %d", st.Logins, st.Unwraps, tc.wantLogins, tc.wantUnwrap)
			}
			if cs := c.Stats(); cs.Reads != 1 || cs.Writes != 1 || cs.Total() != int64(st.Total()) {
				t.Errorf("client stats %+v (total %d), server saw %+v (total %d)", cs, cs.Total(), st, st.Total())
			}
		})
	}
}

func TestLoginFromEnvironment(t *testing.T) {
	srv := vaulttest.New(t, vaulttest.Options{})
	t.Setenv("VAULT_ADDR", srv.URL)
	t.Setenv("VAULT_TOKEN", srv.RootToken)
	t.Setenv("VAULT_AGENT_ADDR", "")
	c, err := vault.New(t.Context(), vault.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if c.Address() != srv.URL || c.Mount() != "secret" {
		t.Fatalf("address %s mount %s, want %s and secret", c.Address(), c.Mount(), srv.URL)
	}
	if _, err := c.Write(t.Context(), "x", map[string]any{"a": "b"}, 0); err != nil {
		t.Fatal(err)
	}

	// Options win over the environment.
	other := vaulttest.New(t, vaulttest.Options{Mount: "kv"})
	c2, err := vault.New(t.Context(), vault.Options{Address: other.URL, Mount: "kv", Auth: vault.Auth{Token: vault.Secret(other.RootToken)}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c2.Write(t.Context(), "x", map[string]any{"a": "b"}, 0); err != nil {
		t.Fatal(err)
	}
	if _, _, ok := other.Get("x"); !ok {
		t.Fatal("the write did not reach the server named in Options")
	}
}

func TestOptionsAreValidated(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		o    vault.Options
		want []string
	}{
		{"unknown method", vault.Options{Auth: vault.Auth{Method: "ldap"}}, []string{`"ldap"`}},
		{"token file without file", vault.Options{Auth: vault.Auth{Method: vault.MethodTokenFile}}, []string{"token file"}},
		{"approle without anything", vault.Options{Auth: vault.Auth{Method: vault.MethodAppRole}}, []string{"role id", "secret id file"}},
		{"approle with two role ids", vault.Options{Auth: vault.Auth{Method: vault.MethodAppRole, RoleID: "a", RoleIDFile: "b", SecretIDFile: "c"}}, []string{"not both"}},
		{"kubernetes without role", vault.Options{Auth: vault.Auth{Method: vault.MethodKubernetes}}, []string{"a role"}},
		{"backwards retry bounds", vault.Options{RetryMin: time.Minute, RetryMax: time.Second, Auth: vault.Auth{Token: "x"}}, []string{"retry bounds"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			tc.o.Address = "http://127.0.0.1:1"
			_, err := vault.New(t.Context(), tc.o)
			if err == nil {
				t.Fatal("New accepted the options")
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not mention %q", err, w)
				}
			}
		})
	}
}

func TestRefusedLoginIsNotRetried(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		auth func(h *harness) vault.Auth
		want error
	}{
		{"wrong secret id", func(h *harness) vault.Auth {
			h.srv.AddAppRole("r", vaulttest.TokenOptions{TTL: time.Hour})
			return vault.Auth{Method: vault.MethodAppRole, RoleID: "r", SecretIDFile: h.file("sid", "not-a-secret-id")}
		}, nil},
		{"wrong service account token", func(h *harness) vault.Auth {
			h.srv.AddKubernetesRole("r", "the-right-jwt", vaulttest.TokenOptions{TTL: time.Hour})
			return vault.Auth{Method: vault.MethodKubernetes, Role: "r", ServiceAccountTokenFile: h.file("sa", "a-wrong-jwt")}
		}, vault.ErrForbidden},
		{"revoked static token", func(h *harness) vault.Auth {
			tok := h.srv.CreateToken(vaulttest.TokenOptions{TTL: time.Hour})
			h.srv.Revoke(tok)
			return vault.Auth{Token: vault.Secret(tok)}
		}, vault.ErrForbidden},
		{"used wrapping token", func(h *harness) vault.Auth {
			h.srv.AddAppRole("r", vaulttest.TokenOptions{TTL: time.Hour})
			w := h.srv.WrapSecretID("r")
			c := h.newClient(vault.Auth{Method: vault.MethodAppRole, RoleID: "r", SecretIDFile: h.file("sid", w), SecretIDWrapped: true})
			_ = c
			return vault.Auth{Method: vault.MethodAppRole, RoleID: "r", SecretIDFile: h.file("sid2", w), SecretIDWrapped: true}
		}, nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			h := newHarness(t)
			a := tc.auth(h)
			before := h.srv.Stats().Total()
			_, err := vault.New(t.Context(), h.options(a))
			h.note(err)
			if err == nil {
				t.Fatal("New succeeded")
			}
			if errors.Is(err, vault.ErrUnavailable) {
				t.Errorf("a refusal is reported as unavailability: %v", err)
			}
			if tc.want != nil && !errors.Is(err, tc.want) {
				t.Errorf("error %v, want %v", err, tc.want)
			}
			if n := h.srv.Stats().Total() - before; n > 2 {
				t.Errorf("New made %d requests for a refused sign-in: it retried", n)
			}
		})
	}
}

func TestTokenFileRotation(t *testing.T) {
	t.Parallel()

	t.Run("picked up by polling", func(t *testing.T) {
		t.Parallel()
		h := newHarness(t)
		old := h.srv.CreateToken(vaulttest.TokenOptions{TTL: time.Hour})
		a := vault.Auth{Method: vault.MethodTokenFile, TokenFile: h.file("token", old), PollInterval: 10 * time.Millisecond}
		c := h.newClient(a)
		h.run(c)
		roundTrip(t, h, c, "p")

		// The agent re-authenticates: a new token in the file, the old one revoked. Nothing reads
		// Vault meanwhile; the poll alone must pick the new token up.
		writeFile(t, a.TokenFile, h.srv.CreateToken(vaulttest.TokenOptions{TTL: time.Hour}))
		h.srv.Revoke(old)
		eventually(t, "the client reads the new token", func() bool {
			return strings.Count(h.logs.String(), "read a new vault token from the token file") == 2
		})
		before := h.srv.Stats()
		roundTrip(t, h, c, "p")
		if st := h.srv.Stats(); st.Total()-before.Total() != 2 {
			t.Errorf("a round trip after the rotation took %d requests, want 2 (no 403 first)", st.Total()-before.Total())
		}
	})

	t.Run("re-read on a 403", func(t *testing.T) {
		t.Parallel()
		h := newHarness(t)
		old := h.srv.CreateToken(vaulttest.TokenOptions{TTL: time.Hour})
		a := vault.Auth{Method: vault.MethodTokenFile, TokenFile: h.file("token", old), PollInterval: time.Hour}
		c := h.newClient(a) // no Run: only the 403 can make it look at the file again
		roundTrip(t, h, c, "p")
		writeFile(t, a.TokenFile, h.srv.CreateToken(vaulttest.TokenOptions{TTL: time.Hour}))
		h.srv.Revoke(old)
		roundTrip(t, h, c, "p")

		// A 403 with an unchanged file is the caller's: ErrForbidden, no retry; Healthy says why.
		h.srv.RevokeAll()
		time.Sleep(20 * time.Millisecond) // past RetryMin, which spaces the token checks
		_, _, err := c.Read(t.Context(), "p")
		h.note(err)
		if !errors.Is(err, vault.ErrForbidden) {
			t.Fatalf("Read with a revoked token and no new one: %v, want ErrForbidden", err)
		}
		if err := h.note(c.Healthy()); err == nil || !strings.Contains(err.Error(), "waiting for a new one") {
			t.Fatalf("Healthy with a refused token file: %v", err)
		}
		writeFile(t, a.TokenFile, h.srv.CreateToken(vaulttest.TokenOptions{TTL: time.Hour}))
		roundTrip(t, h, c, "p")
		if err := c.Healthy(); err != nil {
			t.Fatalf("Healthy after a new token was written: %v", err)
		}
	})
}

func TestAppRoleWrappedSecretIDSurvivesRelogin(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	h.srv.AddAppRole("role", vaulttest.TokenOptions{TTL: time.Hour, Renewable: true})
	c := h.newClient(vault.Auth{Method: vault.MethodAppRole, RoleID: "role", SecretIDFile: h.file("sid", h.srv.WrapSecretID("role")), SecretIDWrapped: true})
	h.run(c)
	roundTrip(t, h, c, "p")

	// Vault revokes the token. The next request signs in again and succeeds: the wrapping token was
	// single-use, so signing in again must use the secret id kept in memory.
	h.srv.RevokeAll()
	if _, _, err := c.Read(t.Context(), "p"); h.note(err) != nil {
		t.Fatalf("Read after the token was revoked: %v", err)
	}
	if st := h.srv.Stats(); st.Logins != 2 || st.Unwraps != 1 || st.Lookups != 1 {
		t.Errorf("logins %d unwraps %d lookups %d, want 2, 1 and 1", st.Logins, st.Unwraps, st.Lookups)
	}

	// A new wrapping token in the file is unwrapped at the next sign-in.
	writeFile(t, filepath.Join(h.dir, "sid"), h.srv.WrapSecretID("role"))
	h.srv.RevokeAll()
	time.Sleep(20 * time.Millisecond) // past RetryMin, which spaces the token checks
	if _, _, err := c.Read(t.Context(), "p"); h.note(err) != nil {
		t.Fatalf("Read after the second revocation: %v", err)
	}
	if st := h.srv.Stats(); st.Logins != 3 || st.Unwraps != 2 {
		t.Errorf("logins %d unwraps %d, want 3 and 2", st.Logins, st.Unwraps)
	}
}

func TestRenewalThenReloginAtMaxTTL(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	// TTL 2 s, max 3 s: one renewal (cut short by the max TTL), then a new sign-in before the end.
	h.srv.AddAppRole("role", vaulttest.TokenOptions{TTL: 2 * time.Second, MaxTTL: 3 * time.Second, Renewable: true})
	c := h.newClient(vault.Auth{Method: vault.MethodAppRole, RoleID: "role", SecretIDFile: h.file("sid", h.srv.NewSecretID("role"))})
	h.run(c)
	eventually(t, "the token is renewed", func() bool { return h.srv.Stats().Renewals >= 1 })
	eventually(t, "the client signs in again before the max TTL", func() bool { return h.srv.Stats().Logins >= 2 })
	// The client never let its token lapse: a read works at once and the server holds a valid token.
	roundTrip(t, h, c, "p")
	if err := c.Healthy(); err != nil {
		t.Fatalf("Healthy: %v", err)
	}
	if h.srv.ValidTokens() == 0 {
		t.Fatal("no valid token")
	}
}

func TestStaticTokenIsRenewedAndReportedWhenRevoked(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	tok := h.srv.CreateToken(vaulttest.TokenOptions{TTL: 2 * time.Second, Renewable: true})
	c := h.newClient(vault.Auth{Token: vault.Secret(tok)})
	h.run(c)
	eventually(t, "the token is renewed", func() bool { return h.srv.Stats().Renewals >= 1 })
	h.srv.Revoke(tok)
	_, _, err := c.Read(t.Context(), "p")
	if !errors.Is(h.note(err), vault.ErrForbidden) {
		t.Fatalf("Read with a revoked token: %v, want ErrForbidden", err)
	}
	eventually(t, "Healthy says the static token cannot be replaced", func() bool {
		err := h.note(c.Healthy())
		return err != nil && strings.Contains(err.Error(), "static token")
	})
	if h.srv.Stats().Logins != 0 {
		t.Error("a static-token client tried to sign in")
	}
}

func TestForbiddenPathDoesNotRelogin(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	policy := &vaulttest.Policy{Rules: []vaulttest.Rule{
		{Path: "secret/data/postern/tokens/*", Capabilities: []string{"create", "read", "update"}},
		{Path: "secret/data/postern/projects/*", Capabilities: []string{"read"}},
	}}
	h.srv.AddAppRole("role", vaulttest.TokenOptions{TTL: time.Hour, Renewable: true, Policy: policy})
	// Token checks after a 403 are spaced by RetryMin: a minute, so that "right away" below does
	// not depend on how fast this machine is.
	o := h.options(vault.Auth{Method: vault.MethodAppRole, RoleID: "role", SecretIDFile: h.file("sid", h.srv.NewSecretID("role"))})
	o.RetryMin, o.RetryMax = time.Minute, time.Minute
	c, err := vault.New(t.Context(), o)
	if h.note(err) != nil {
		t.Fatalf("vault.New: %v", err)
	}
	h.run(c)
	h.srv.Put("postern/projects/a", map[string]any{"x": "y"})
	if _, _, err := c.Read(t.Context(), "postern/projects/a"); h.note(err) != nil {
		t.Fatal(err)
	}
	_, err = c.Write(t.Context(), "postern/projects/a", map[string]any{"x": "z"}, -1)
	h.note(err)
	if !errors.Is(err, vault.ErrForbidden) || !strings.Contains(err.Error(), "secret/data/postern/projects/a") {
		t.Fatalf("Write to a read-only path: %v, want ErrForbidden naming the path", err)
	}
	if st := h.srv.Stats(); st.Lookups != 1 {
		t.Errorf("%d token lookups after a 403, want 1", st.Lookups)
	}
	// A second refusal right away does not check the token again.
	c.Write(t.Context(), "postern/projects/a", map[string]any{"x": "z"}, -1)
	if st := h.srv.Stats(); st.Lookups != 1 {
		t.Errorf("%d token lookups after two quick 403s, want 1", st.Lookups)
	}
	if _, err := c.Write(t.Context(), "postern/tokens/a", map[string]any{"x": "z"}, 0); h.note(err) != nil {
		t.Fatal(err)
	}
	if st := h.srv.Stats(); st.Logins != 1 {
		t.Errorf("%d sign-ins: a policy refusal made the client sign in again", st.Logins)
	}
}

func TestKV(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	c := h.newClient(vault.Auth{Token: vault.Secret(h.srv.RootToken)})
	ctx := t.Context()

	_, v, err := c.Read(ctx, "a/b")
	if !errors.Is(h.note(err), vault.ErrNotFound) || v != 0 {
		t.Fatalf("Read of a missing path: version %d, %v; want 0 and ErrNotFound", v, err)
	}
	if _, err := c.Metadata(ctx, "a/b"); !errors.Is(h.note(err), vault.ErrNotFound) {
		t.Fatalf("Metadata of a missing path: %v", err)
	}
	if keys, err := c.List(ctx, "a"); err != nil || len(keys) != 0 {
		t.Fatalf("List of a missing directory: %v, %v", keys, err)
	}

	casSteps := []struct {
		name    string
		cas     int
		want    int
		wantErr error
	}{
		{"create must not exist", 0, 1, nil},
		{"create again conflicts", 0, 0, vault.ErrConflict},
		{"update at the current version", 1, 2, nil},
		{"update at a stale version conflicts", 1, 0, vault.ErrConflict},
		{"update at a future version conflicts", 7, 0, vault.ErrConflict},
		{"unconditional", -1, 3, nil},
	}
	for _, s := range casSteps {
		got, err := c.Write(ctx, "a/b", map[string]any{"step": s.name, "n": 42, "nested": map[string]any{"k": []any{"x"}}}, s.cas)
		h.note(err)
		if s.wantErr != nil {
			if !errors.Is(err, s.wantErr) {
				t.Fatalf("%s: %v, want %v", s.name, err, s.wantErr)
			}
			var re *api.ResponseError
			if !errors.As(err, &re) || re.StatusCode != 400 {
				t.Errorf("%s: the api's *ResponseError is not reachable through errors.As", s.name)
			}
			if !strings.Contains(err.Error(), "secret/data/a/b") || strings.Contains(err.Error(), "\n") {
				t.Errorf("%s: error %q should be one line naming the path", s.name, err)
			}
			continue
		}
		if err != nil || got != s.want {
			t.Fatalf("%s: version %d, %v; want %d", s.name, got, err, s.want)
		}
	}
	data, v, err := c.Read(ctx, "a/b")
	if h.note(err) != nil || v != 3 {
		t.Fatalf("Read: version %d, %v", v, err)
	}
	want := map[string]any{"step": "unconditional", "n": "42", "nested": map[string]any{"k": []any{"x"}}}
	data["n"] = fmt.Sprint(data["n"])
	if !reflect.DeepEqual(data, want) {
		t.Fatalf("Read = %#v, want %#v", data, want)
	}

	c.Write(ctx, "a/c/d", map[string]any{"x": "y"}, -1)
	keys, err := c.List(ctx, "a")
	if err != nil || !reflect.DeepEqual(keys, []string{"b", "c/"}) {
		t.Fatalf("List = %v, %v; want [b c/]", keys, err)
	}

	m, err := c.Metadata(ctx, "a/b")
	if err != nil || m.CurrentVersion != 3 || !m.Live || len(m.Versions) != 3 || m.Created.IsZero() {
		t.Fatalf("Metadata = %+v, %v", m, err)
	}
	if err := c.Destroy(ctx, "a/b", []int{1, 2, 3}); err != nil {
		t.Fatal(err)
	}
	_, v, err = c.Read(ctx, "a/b")
	if !errors.Is(h.note(err), vault.ErrNotFound) || v != 3 {
		t.Fatalf("Read of a destroyed version: version %d, %v; want 3 and ErrNotFound", v, err)
	}
	if m, err := c.Metadata(ctx, "a/b"); err != nil || m.Live || !m.Versions[3].Destroyed {
		t.Fatalf("Metadata after destroy: %+v, %v", m, err)
	}
	// Writing over a destroyed version takes its number.
	if _, err := c.Write(ctx, "a/b", map[string]any{"x": "y"}, 0); !errors.Is(h.note(err), vault.ErrConflict) {
		t.Fatalf("cas 0 over a destroyed version: %v", err)
	}
	if v, err := c.Write(ctx, "a/b", map[string]any{"x": "y"}, 3); err != nil || v != 4 {
		t.Fatalf("cas 3 over a destroyed version 3: %d, %v", v, err)
	}

	if err := c.Delete(ctx, "a/b"); err != nil {
		t.Fatal(err)
	}
	if err := c.Delete(ctx, "a/b"); err != nil {
		t.Fatalf("Delete of a deleted path: %v", err)
	}
	if v, err := c.Write(ctx, "a/b", map[string]any{"x": "y"}, 0); err != nil || v != 1 {
		t.Fatalf("cas 0 after Delete: %d, %v; want version 1", v, err)
	}
}

func TestUnavailable(t *testing.T) {
	t.Parallel()
	for _, mode := range []struct {
		name string
		m    vaulttest.Mode
	}{{"sealed", vaulttest.Sealed}, {"dropping connections", vaulttest.Dropping}} {
		t.Run(mode.name, func(t *testing.T) {
			t.Parallel()
			h := newHarness(t)
			h.srv.AddAppRole("role", vaulttest.TokenOptions{TTL: 2 * time.Second, Renewable: true})
			a := vault.Auth{Method: vault.MethodAppRole, RoleID: "role", SecretIDFile: h.file("sid", h.srv.NewSecretID("role"))}

			// New keeps trying while Vault is down, and succeeds once it is back.
			h.srv.SetMode(mode.m)
			type result struct {
				c   *vault.Client
				err error
			}
			done := make(chan result, 1)
			go func() {
				c, err := vault.New(t.Context(), h.options(a))
				done <- result{c, err}
			}()
			eventually(t, "New has tried a few times", func() bool { return h.srv.Stats().Logins >= 3 })
			h.srv.SetMode(vaulttest.Up)
			r := <-done
			if h.note(r.err) != nil {
				t.Fatalf("New after Vault came back: %v", r.err)
			}
			c := r.c
			h.run(c)

			// Requests fail with ErrUnavailable, and so does the upkeep; both recover.
			h.srv.SetMode(mode.m)
			_, _, err := c.Read(t.Context(), "p")
			h.note(err)
			if !errors.Is(err, vault.ErrUnavailable) || !strings.Contains(err.Error(), "secret/data/p") {
				t.Fatalf("Read while down: %v, want ErrUnavailable naming the path", err)
			}
			// The renewal fails, then sign-ins are retried with the backoff.
			logins := h.srv.Stats().Logins
			eventually(t, "the renewal and a few sign-ins fail", func() bool {
				st := h.srv.Stats()
				return st.Renewals >= 1 && st.Logins >= logins+3
			})
			if err := h.note(c.Healthy()); !errors.Is(err, vault.ErrUnavailable) {
				t.Fatalf("Healthy while down: %v", err)
			}
			h.srv.SetMode(vaulttest.Up)
			roundTrip(t, h, c, "p")
			eventually(t, "Healthy recovers", func() bool { return c.Healthy() == nil })
		})
	}
}

func TestNewGivesUpWhenContextEnds(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	h.srv.SetMode(vaulttest.Sealed)
	ctx, cancel := context.WithTimeout(t.Context(), 200*time.Millisecond)
	defer cancel()
	_, err := vault.New(ctx, h.options(vault.Auth{Token: vault.Secret(h.srv.RootToken)}))
	h.note(err)
	if !errors.Is(err, vault.ErrUnavailable) {
		t.Fatalf("New against a sealed vault: %v, want ErrUnavailable", err)
	}
}

func TestSecretRedacts(t *testing.T) {
	t.Parallel()
	s := vault.Secret("hvs.very-secret")
	var buf bytes.Buffer
	slog.New(slog.NewJSONHandler(&buf, nil)).Info("x", "token", s, "auth", vault.Auth{Token: s})
	out := fmt.Sprintf("%v %+v %#v %s", s, vault.Auth{Token: s}, s, s) + buf.String()
	if strings.Contains(out, "very-secret") {
		t.Fatalf("a Secret printed its value: %s", out)
	}
}
