//go:build integration

package integration

import (
	"context"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/postern/postern/integration/harness"
	"github.com/postern/postern/sidecar/admin"
	"github.com/postern/postern/sidecar/admin/admintest"
)

// The postern binary serves its admin listener over TLS with admin.tls: a Prometheus-style scrape
// of /metrics with the bearer read token succeeds and without it is refused, and `postern
// healthcheck` reaches it over HTTPS.
func TestAdminTLSScrapeAndHealthcheck(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	bin, err := buildPostern()
	if err != nil {
		t.Fatal(err)
	}
	dir := harness.TempDir(t)
	p, err := harness.NewPostern(harness.PosternOptions{Bin: bin, Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	certFile, keyFile := filepath.Join(dir, "admin.crt"), filepath.Join(dir, "admin.key")
	admintest.WriteCert(t, certFile, keyFile, "postern admin")
	conf, err := os.ReadFile(p.Config)
	if err != nil {
		t.Fatal(err)
	}
	withTLS := strings.Replace(string(conf), "admin: {read_token_file:",
		"admin: {tls: {cert_file: "+certFile+", key_file: "+keyFile+"}, read_token_file:", 1)
	if withTLS == string(conf) {
		t.Fatalf("the harness's configuration has no admin section to add TLS to:\n%s", conf)
	}
	if err := os.WriteFile(p.Config, []byte(withTLS), 0o600); err != nil {
		t.Fatal(err)
	}
	harness.StartPostern(t, p)

	client, err := admin.ProbeClient(certFile)
	if err != nil {
		t.Fatal(err)
	}
	scrape := func(auth string) int {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "https://"+p.AdminAddr+"/metrics", nil)
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
	deadline := time.Now().Add(20 * time.Second)
	for scrape("") == 0 && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}
	if code := scrape("Bearer " + p.ReadToken); code != http.StatusOK {
		t.Errorf("scrape of /metrics with the bearer read token: %d, want 200", code)
	}
	if code := scrape(""); code != http.StatusUnauthorized {
		t.Errorf("scrape of /metrics without a token: %d, want 401", code)
	}
	if code := scrape("Bearer not-the-read-token-0123456789"); code != http.StatusUnauthorized {
		t.Errorf("scrape of /metrics with a wrong token: %d, want 401", code)
	}
	out, err := cliCombined(ctx, p, "healthcheck")
	if err != nil || !strings.Contains(out, "ready (https://"+p.AdminAddr+"/readyz)") {
		t.Errorf("postern healthcheck over TLS: %v\n%s", err, out)
	}
}
