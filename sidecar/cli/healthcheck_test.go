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
