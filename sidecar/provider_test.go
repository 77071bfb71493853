package sidecar

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/emersion/go-smtp"

	"github.com/postern/postern/sidecar/config"
	"github.com/postern/postern/sidecar/project"
	"github.com/postern/postern/sidecar/store/boltstore"
	"github.com/postern/postern/sidecar/upstream/upstreamtest"
)

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
	st, err := boltstore.Open(context.Background(), boltstore.Options{Path: dir + "/store.db", KeyFile: dir + "/store.key", Create: true})
	if err != nil {
		t.Fatal(err)
	}
	u := up.Upstream()
	u.CAPEM = string(up.CAPEM())
	p := project.Project{Name: "acme", Auth: project.Auth{Type: project.AuthPlugin, Username: "noreply@acme.example",
		Plugin: &project.PluginAuth{Provider: "vault-of-acme", Config: map[string]string{"path": "acme"}}}}
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
