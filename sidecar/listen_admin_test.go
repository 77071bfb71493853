package sidecar

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/postern/postern/sidecar/admin"
	"github.com/postern/postern/sidecar/admin/admintest"
	"github.com/postern/postern/sidecar/config"
)

// With admin.tls and listen.signin, the admin listener serves HTTPS with its read endpoints behind
// the token, and the sign-in listener serves the sign-in pages and none of the admin pages.
func TestRunAdminTLSAndSignInListener(t *testing.T) {
	t.Parallel()
	dir, err := os.MkdirTemp("", "postern-tls-") // short: unix socket paths are limited
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	admintest.WriteCert(t, dir+"/admin.crt", dir+"/admin.key", "postern admin")
	adminAddr, signInAddr := freeAddr(t), freeAddr(t)
	cfg, err := config.Parse(fmt.Appendf(nil, `instance: tls
listen:
  lmtp: %[1]s/lmtp.sock
  socketmap: %[1]s/socketmap.sock
  admin: %[2]s
  signin: %[3]s
  socket_group: ""
store:
  file: {path: %[1]s/store.db, key_file: %[1]s/store.key}
signin: {key_file: %[1]s/signin.key}
admin:
  read_token_file: %[1]s/read.token
  tls: {cert_file: %[1]s/admin.crt, key_file: %[1]s/admin.key}
`, dir, adminAddr, signInAddr))
	if err != nil {
		t.Fatal(err)
	}
	if errs := cfg.Validate(); len(errs) != 0 {
		t.Fatal(errs)
	}
	initStore(t, dir)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- Run(ctx, cfg, slog.New(slog.DiscardHandler)) }()
	t.Cleanup(func() {
		cancel()
		select {
		case <-done:
		case <-time.After(20 * time.Second):
			t.Error("Run did not return after cancel")
		}
	})
	client, err := admin.ProbeClient(dir + "/admin.crt")
	if err != nil {
		t.Fatal(err)
	}
	fetch := func(addr, path, auth string) int {
		req, _ := http.NewRequest(http.MethodGet, "https://"+addr+path, nil)
		if auth != "" {
			req.Header.Set("Authorization", auth)
		}
		resp, err := client.Do(req)
		if err != nil {
			return 0
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	waitUntil(t, "the admin listener over TLS", func() bool { return fetch(adminAddr, "/healthz", "") == 200 })
	token, err := os.ReadFile(dir + "/read.token")
	if err != nil {
		t.Fatal(err)
	}
	bearer := "Bearer " + strings.TrimSpace(string(token))
	if code := fetch(adminAddr, "/metrics", bearer); code != 200 {
		t.Errorf("scrape of /metrics with the bearer read token: %d, want 200", code)
	}
	if code := fetch(adminAddr, "/metrics", ""); code != 401 {
		t.Errorf("scrape of /metrics without a token: %d, want 401", code)
	}
	if code := get(adminAddr, "/healthz"); code == 200 {
		t.Error("the admin listener answered plain HTTP")
	}

	waitUntil(t, "the sign-in listener", func() bool { return fetch(signInAddr, "/healthz", "") == 200 })
	if code := fetch(signInAddr, "/signin", ""); code == 404 || code == 0 {
		t.Errorf("GET /signin on the sign-in listener: %d", code)
	}
	for _, path := range []string{"/status", "/metrics", "/api/v1/projects", "/readyz"} {
		if code := fetch(signInAddr, path, bearer); code != 404 {
			t.Errorf("GET %s on the sign-in listener: %d, want 404", path, code)
		}
	}
	if code := fetch(adminAddr, "/signin", ""); code != 404 {
		t.Errorf("GET /signin on the admin listener with listen.signin set: %d, want 404", code)
	}
}
