package sidecar

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/postern/postern/plugin"
	"github.com/postern/postern/sidecar/config"
	"github.com/postern/postern/sidecar/credential"
	"github.com/postern/postern/sidecar/project"
	"github.com/postern/postern/sidecar/store/filestore"
	"github.com/postern/postern/sidecar/upstream"
	"github.com/postern/postern/sidecar/upstream/upstreamtest"
)

// countingProvider is a plugin.Provider in memory.
type countingProvider struct {
	mu       sync.Mutex
	calls    []plugin.Request
	rejected []plugin.RejectedRequest
	answer   func(plugin.Request) (plugin.Credential, error)
}

func (c *countingProvider) Credential(_ context.Context, r plugin.Request) (plugin.Credential, error) {
	c.mu.Lock()
	c.calls = append(c.calls, r)
	c.mu.Unlock()
	return c.answer(r)
}

func (c *countingProvider) Rejected(_ context.Context, r plugin.RejectedRequest) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.rejected = append(c.rejected, r)
	return nil
}

func pluginProject() project.Project {
	return project.Project{Name: "acme", Auth: project.Auth{Type: project.AuthPlugin, Username: "noreply@acme.example",
		Plugin: &project.PluginAuth{Provider: "vault-of-acme", Config: map[string]string{"path": "acme"}}}}
}

func TestPluginCredentialsCacheAndErrors(t *testing.T) {
	t.Parallel()
	now := time.Date(2026, 11, 1, 12, 0, 0, 0, time.UTC)
	prov := &countingProvider{answer: func(r plugin.Request) (plugin.Credential, error) {
		return plugin.Credential{Mechanism: "plain", Username: r.Username, Secret: plugin.NewSecret("pw-from-provider")}, nil
	}}
	c := &pluginCredentials{providers: map[string]plugin.Provider{"vault-of-acme": prov}, log: slog.New(slog.DiscardHandler),
		now: func() time.Time { return now }, cache: map[string]pluginEntry{}}
	p := pluginProject()

	for range 3 {
		a, err := c.Credential(context.Background(), p, false)
		if err != nil || a.Mechanism != "PLAIN" || a.Username != "noreply@acme.example" || a.Secret.Reveal() != "pw-from-provider" {
			t.Fatalf("credential %+v, %v", a, err)
		}
	}
	if len(prov.calls) != 1 || prov.calls[0].Config["path"] != "acme" {
		t.Fatalf("provider asked %d times (%+v), want once", len(prov.calls), prov.calls)
	}
	now = now.Add(pluginCacheFor + time.Second)
	c.Credential(context.Background(), p, false)
	if _, err := c.Credential(context.Background(), p, true); err != nil {
		t.Fatal(err)
	}
	if len(prov.calls) != 3 || !prov.calls[2].ForceRefresh {
		t.Fatalf("after expiry and force: %d calls %+v", len(prov.calls), prov.calls)
	}

	c.Rejected(context.Background(), p, &upstream.Error{Stage: upstream.StageAuth, Code: 535, Message: "5.7.3 Authentication unsuccessful"})
	if len(prov.rejected) != 1 || !strings.HasPrefix(prov.rejected[0].Reply, "535") {
		t.Fatalf("rejected: %+v", prov.rejected)
	}

	prov.answer = func(plugin.Request) (plugin.Credential, error) {
		return plugin.Credential{}, &plugin.NeedsReauthError{Reason: "certificate expired"}
	}
	_, err := c.Credential(context.Background(), p, false)
	if !errors.Is(err, credential.ErrNeedsReauth) || credential.Reason(err) != "certificate expired" {
		t.Fatalf("needs reauth: %v", err)
	}
	if st, why := c.State(p); st != project.TokenNeedsReauth || why != "certificate expired" {
		t.Fatalf("state %s %q", st, why)
	}
	prov.answer = func(plugin.Request) (plugin.Credential, error) {
		return plugin.Credential{}, &plugin.TemporaryError{Reason: "backend down"}
	}
	if _, err := c.Credential(context.Background(), p, false); err == nil || errors.Is(err, credential.ErrNeedsReauth) {
		t.Fatalf("temporary: %v", err)
	}
	other := p
	other.Auth.Plugin = &project.PluginAuth{Provider: "undeclared"}
	if _, err := c.Credential(context.Background(), other, false); err == nil || !strings.Contains(err.Error(), "credential_providers") {
		t.Fatalf("undeclared provider: %v", err)
	}
}

// TestRunWithCredentialProvider delivers a message for a plugin project through `postern serve`,
// with the example provider running as a real child process.
func TestRunWithCredentialProvider(t *testing.T) {
	t.Parallel()
	if testing.Short() {
		t.Skip("builds the example provider")
	}
	const password = "pw-Plugin-9876543210"
	up := upstreamtest.NewServer(t, upstreamtest.Options{
		TLS: project.TLSStartTLS, Users: map[string]string{"noreply@acme.example": password},
	})
	dir, err := os.MkdirTemp("", "postern-plugin-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	bin := filepath.Join(dir, "provider")
	if out, err := exec.Command("go", "build", "-o", bin, "github.com/postern/postern/plugin/example/cmd/postern-credential-example").CombinedOutput(); err != nil {
		t.Fatalf("building the example provider: %v\n%s", err, out)
	}
	creds := filepath.Join(dir, "credentials.json")
	os.WriteFile(creds, fmt.Appendf(nil, `{"projects": {"acme": {"mechanism": "PLAIN", "username": "noreply@acme.example", "secret": %q}}}`, password), 0o600)

	cfg, err := config.Parse(fmt.Appendf(nil, `instance: plugin
listen: {lmtp: %[1]s/lmtp.sock, socketmap: %[1]s/socketmap.sock, admin: "", socket_group: ""}
store:
  file: {path: %[1]s/store.db, key_file: %[1]s/store.key}
credential_providers:
  vault-of-acme: {path: %[2]s, sha256: %[3]s}
reload_interval: 50ms
`, dir, bin, fileSHA256(t, bin)))
	if err != nil {
		t.Fatal(err)
	}
	st, err := filestore.Open(context.Background(), filestore.Options{Path: dir + "/store.db", KeyFile: dir + "/store.key", Create: true})
	if err != nil {
		t.Fatal(err)
	}
	u := up.Upstream()
	u.CAPEM = string(up.CAPEM())
	p := pluginProject()
	p.Enabled, p.Senders, p.Upstream = true, []string{"noreply@acme.example"}, u
	p.Auth.Plugin.Config = map[string]string{"file": creds}
	if _, err := st.PutProject(context.Background(), p); err != nil {
		t.Fatal(err)
	}
	st.Close()

	logs := &lockedBuffer{}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- Run(ctx, cfg, slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug})))
	}()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
		if strings.Contains(logs.String(), password) {
			t.Error("the password reached the logs")
		}
	}()
	waitUntil(t, "the LMTP socket", func() bool {
		c, err := net.Dial("unix", dir+"/lmtp.sock")
		if err == nil {
			c.Close()
		}
		return err == nil
	})
	conn, err := net.Dial("unix", dir+"/lmtp.sock")
	if err != nil {
		t.Fatal(err)
	}
	c := smtp.NewClientLMTP(conn)
	defer c.Close()
	if err := c.Hello("front.example"); err != nil {
		t.Fatal(err)
	}
	if err := c.Mail("noreply@acme.example", nil); err != nil {
		t.Fatalf("MAIL: %v\n%s", err, logs.String())
	}
	if err := c.Rcpt("alice@dest.example", nil); err != nil {
		t.Fatal(err)
	}
	w, err := c.Data()
	if err != nil {
		t.Fatal(err)
	}
	io.WriteString(w, "From: noreply@acme.example\r\nSubject: via a provider\r\n\r\nhello\r\n")
	if _, err := w.CloseWithLMTPResponse(); err != nil {
		t.Fatal(err)
	}
	if m := up.Messages(); len(m) != 1 || m[0].User != "noreply@acme.example" {
		t.Fatalf("upstream received %+v", m)
	}
}

// fileSHA256 is the SHA-256 of the file at path, in hex.
func fileSHA256(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	h := sha256.Sum256(b)
	return hex.EncodeToString(h[:])
}
