package cli

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/postern/postern/sidecar/admin"
	"github.com/postern/postern/sidecar/admin/admintest"
	"github.com/postern/postern/sidecar/secret"
)

// postern healthcheck asks the admin listener of the configuration and says why it is not ready.
func TestHealthcheck(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name   string
		checks []admin.Check
		code   int
		out    []string
	}{
		{"ready", nil, ExitOK, []string{"ready (http://"}},
		{"degraded is ready", []admin.Check{{Name: "store", Func: errCheck("vault unreachable", true)}},
			ExitOK, []string{"ready (", "store: degraded: vault unreachable"}},
		{"not ready", []admin.Check{{Name: "projects", Func: errCheck("projects not loaded yet", false)}},
			ExitFail, []string{"not ready (", "projects: projects not loaded yet"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			srv := httptest.NewServer(admin.New(admin.Options{Checks: tc.checks, ReadToken: secret.New(healthcheckToken)}).Handler())
			defer srv.Close()
			h := adminHarness(t, srv.Listener.Addr().String())
			r := h.run("", "healthcheck", "--config", h.cfgPath)
			out := r.stdout
			if tc.code != ExitOK {
				out = r.stderr
			}
			for _, want := range tc.out {
				if r.code != tc.code || !strings.Contains(out, want) {
					t.Errorf("want exit %d and %q, got %v", tc.code, want, r)
				}
			}
		})
	}
}

func TestHealthcheckUnreachable(t *testing.T) {
	t.Parallel()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	h := adminHarness(t, addr)
	if r := h.run("", "healthcheck", "--config", h.cfgPath); r.code != ExitFail || !strings.Contains(r.stderr, "not ready: cannot reach http://"+addr+"/readyz") {
		t.Fatalf("nothing listening: %v", r)
	}
	h = adminHarness(t, "")
	if r := h.run("", "healthcheck", "--config", h.cfgPath); r.code != ExitFail || !strings.Contains(r.stderr, "listen.admin is empty") {
		t.Fatalf("admin listener off: %v", r)
	}
	// Something else on the port: not ready, and said so.
	other := httptest.NewServer(http.NotFoundHandler())
	defer other.Close()
	h = adminHarness(t, other.Listener.Addr().String())
	if r := h.run("", "healthcheck", "--config", h.cfgPath); r.code != ExitFail || !strings.Contains(r.stderr, "not Postern's readiness") {
		t.Fatalf("another server: %v", r)
	}
}

// errCheck is a readiness check failing with msg, degraded or not.
func errCheck(msg string, degraded bool) func(context.Context) error {
	return func(context.Context) error {
		if degraded {
			return fmt.Errorf("%s: %w", msg, admin.ErrDegraded)
		}
		return errors.New(msg)
	}
}

// adminHarness is a harness whose configuration sets listen.admin to addr.
func adminHarness(t *testing.T, addr string) *harness {
	t.Helper()
	h := newHarness(t, "")
	tokenFile := filepath.Join(filepath.Dir(h.cfgPath), "read.token")
	if err := os.WriteFile(tokenFile, []byte(healthcheckToken+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	conf := "listen: {admin: '" + addr + "'}\nadmin: {read_token_file: '" + tokenFile + "'}\n"
	if err := os.WriteFile(h.cfgPath, []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
	return h
}

// healthcheckToken is the read token of the admin servers healthcheck asks: with it, /readyz
// names the reasons of failing checks.
const healthcheckToken = "healthcheck-read-token-0123456789"

// With admin.tls, healthcheck speaks HTTPS to a wildcard listen address on loopback, trusting the
// certificate of admin.tls.cert_file and no other.
func TestHealthcheckTLS(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	certFile, keyFile := filepath.Join(dir, "admin.crt"), filepath.Join(dir, "admin.key")
	admintest.WriteCert(t, certFile, keyFile, "admin")
	cert, err := admin.NewCertificate(certFile, keyFile, nil)
	if err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() { _ = admin.New(admin.Options{TLS: cert.TLSConfig()}).Serve(t.Context(), l) }()
	_, port, _ := net.SplitHostPort(l.Addr().String())

	h := adminHarness(t, "0.0.0.0:"+port)
	conf, _ := os.ReadFile(h.cfgPath)
	withTLS := func(cert string) {
		c := strings.Replace(string(conf), "admin: {read_token_file", "admin: {tls: {cert_file: '"+cert+"', key_file: '"+keyFile+"'}, read_token_file", 1)
		if err := os.WriteFile(h.cfgPath, []byte(c), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	withTLS(certFile)
	if r := h.run("", "healthcheck", "--config", h.cfgPath); r.code != ExitOK || !strings.Contains(r.stdout, "ready (https://127.0.0.1:"+port+"/readyz)") {
		t.Fatalf("healthcheck over TLS: %v", r)
	}
	other := filepath.Join(dir, "other.crt")
	admintest.WriteCert(t, other, filepath.Join(dir, "other.key"), "other")
	withTLS(other)
	if r := h.run("", "healthcheck", "--config", h.cfgPath); r.code != ExitFail || !strings.Contains(r.stderr, "another certificate") {
		t.Fatalf("healthcheck trusting another certificate: %v", r)
	}
}
