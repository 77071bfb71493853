package sidecar

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/postern/postern/sidecar/buildinfo"
	"github.com/postern/postern/sidecar/config"
	"github.com/postern/postern/sidecar/project"
	"github.com/postern/postern/sidecar/secret"
	"github.com/postern/postern/sidecar/store/boltstore"
	"github.com/postern/postern/sidecar/upstream/upstreamtest"
)

// TestRunServesAMessage is the wiring test: `postern serve` in-process with the embedded store,
// a project added to the store while it runs, a socketmap lookup, one message over LMTP relayed to a
// STARTTLS + AUTH upstream, readiness, metrics, and an orderly shutdown.
func TestRunServesAMessage(t *testing.T) {
	t.Parallel()
	const password = "pw-Wiring-0123456789"
	up := upstreamtest.NewServer(t, upstreamtest.Options{
		TLS: project.TLSStartTLS, Users: map[string]string{"noreply@client-a.example": password},
	})
	dir, err := os.MkdirTemp("", "postern-run-") // short: unix socket paths are limited
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	admin := freeAddr(t)
	cfg, err := config.Parse(fmt.Appendf(nil, `instance: wiring
listen:
  lmtp: %[1]s/lmtp.sock
  socketmap: %[1]s/socketmap.sock
  admin: %[2]s
  socket_group: ""
store:
  file: {path: %[1]s/store.db, key_file: %[1]s/store.key}
reload_interval: 50ms
admin: {read_token_file: %[1]s/read.token}
`, dir, admin))
	if err != nil {
		t.Fatal(err)
	}
	initStore(t, dir)
	logs := &lockedBuffer{}
	log := slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))

	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- Run(ctx, cfg, log) }()
	t.Cleanup(func() {
		cancel()
		select {
		case <-done:
		case <-time.After(20 * time.Second):
			t.Error("Run did not return after cancel")
		}
	})
	waitUntil(t, "the admin listener", func() bool { return get(admin, "/healthz") == 200 })

	// An administrator adds the project while Postern runs.
	st, err := boltstore.Open(context.Background(), boltstore.Options{Path: dir + "/store.db", KeyFile: dir + "/store.key"})
	if err != nil {
		t.Fatal(err)
	}
	u := up.Upstream()
	u.CAPEM = string(up.CAPEM())
	if _, err := st.PutProject(context.Background(), project.Project{
		Name: "client-a", Enabled: true, Senders: []string{"noreply@client-a.example"}, Upstream: u,
		Auth: project.Auth{Type: project.AuthBasic, Username: "noreply@client-a.example", Password: secret.New(password)},
	}); err != nil {
		t.Fatal(err)
	}
	st.Close()
	waitUntil(t, "the socketmap to route the sender", func() bool {
		return lookup(t, dir+"/socketmap.sock", "noreply@client-a.example") == "OK postern:unix:"+dir+"/lmtp.sock"
	})
	if got := lookup(t, dir+"/socketmap.sock", "someone@elsewhere.example"); got != "NOTFOUND " {
		t.Fatalf("unrelated sender: %q", got)
	}
	if code := get(admin, "/readyz"); code != 200 {
		t.Fatalf("/readyz = %d", code)
	}

	conn, err := net.Dial("unix", dir+"/lmtp.sock")
	if err != nil {
		t.Fatal(err)
	}
	c := smtp.NewClientLMTP(conn)
	defer c.Close()
	if err := c.Hello("front.example"); err != nil {
		t.Fatal(err)
	}
	if err := c.Mail("noreply@client-a.example", nil); err != nil {
		t.Fatal(err)
	}
	if err := c.Rcpt("alice@dest.example", nil); err != nil {
		t.Fatal(err)
	}
	w, err := c.Data()
	if err != nil {
		t.Fatal(err)
	}
	io.WriteString(w, "From: noreply@client-a.example\r\nSubject: wiring\r\n\r\nhello\r\n")
	if _, err := w.CloseWithLMTPResponse(); err != nil {
		t.Fatalf("LMTP data: %v", err)
	}
	msgs := up.Messages()
	if len(msgs) != 1 || msgs[0].User != "noreply@client-a.example" || !strings.Contains(string(msgs[0].Data), "Subject: wiring") {
		t.Fatalf("upstream received %+v", msgs)
	}

	// Metrics count the upstream connection; nothing in the logs or metrics carries the password.
	// The pages that name projects need the read token, created on start.
	for _, path := range []string{"/metrics", "/status", "/api/v1/projects"} {
		if code := get(admin, path); code != http.StatusUnauthorized {
			t.Errorf("GET %s without the read token = %d, want 401", path, code)
		}
	}
	readToken, err := os.ReadFile(dir + "/read.token")
	if err != nil {
		t.Fatalf("the read token file: %v", err)
	}
	withToken := func(path string) *http.Response {
		t.Helper()
		req, _ := http.NewRequest(http.MethodGet, "http://"+admin+path, nil)
		req.Header.Set("Authorization", "Bearer "+strings.TrimSpace(string(readToken)))
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		return resp
	}
	resp := withToken("/metrics")
	metrics, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	build := buildinfo.Get()
	for _, want := range []string{
		fmt.Sprintf(`postern_build_info{goversion=%q,revision=%q,version=%q} 1`, build.GoVersion, build.Revision, build.Version),
		`postern_upstream_dials_total{project="client-a"} 1`,
		`postern_recipients_total{outcome="delivered",project="client-a"} 1`,
		`postern_sessions_total 1`,
		`postern_listener_max_connections{listener="socketmap"} 200`,
		`postern_listener_accept_errors_total{listener="lmtp"} 0`,
	} {
		if !strings.Contains(string(metrics), want) {
			t.Errorf("metrics lack %s:\n%s", want, metrics)
		}
	}
	if code := get(admin, "/debug/pprof/"); code != 404 {
		t.Errorf("GET /debug/pprof/ = %d without debug.pprof, want 404", code)
	}
	var status struct {
		Projects []struct{ Name, State string }
	}
	resp = withToken("/api/v1/projects")
	json.NewDecoder(resp.Body).Decode(&status)
	resp.Body.Close()
	if len(status.Projects) != 1 || status.Projects[0].State != "ok" {
		t.Errorf("status API: %+v", status)
	}

	if !strings.Contains(logs.String(), "version="+build.Version) {
		t.Errorf("the start-up log does not name the version %s:\n%s", build.Version, logs.String())
	}

	cancel()
	if err := <-done; err != nil {
		t.Fatalf("Run returned %v", err)
	}
	done <- nil // for the cleanup
	if strings.Contains(logs.String(), password) || strings.Contains(string(metrics), password) {
		t.Fatal("the password reached the logs or metrics")
	}
	if _, err := os.Stat(filepath.Join(dir, "lmtp.sock")); err == nil {
		// A stale socket is harmless (removed at the next start) but the listener must be closed.
		if c, err := net.Dial("unix", filepath.Join(dir, "lmtp.sock")); err == nil {
			c.Close()
			t.Fatal("the LMTP socket still accepts connections after shutdown")
		}
	}
}

type lockedBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

func get(addr, path string) int {
	resp, err := http.Get("http://" + addr + path)
	if err != nil {
		return 0
	}
	resp.Body.Close()
	return resp.StatusCode
}

func lookup(t *testing.T, sock, key string) string {
	t.Helper()
	c, err := net.Dial("unix", sock)
	if err != nil {
		return ""
	}
	defer c.Close()
	req := "senders " + key
	fmt.Fprintf(c, "%d:%s,", len(req), req)
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	b := make([]byte, 512)
	n, _ := c.Read(b)
	reply := string(b[:n])
	if i := strings.IndexByte(reply, ':'); i >= 0 && strings.HasSuffix(reply, ",") {
		return reply[i+1 : len(reply)-1]
	}
	return reply
}

func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
