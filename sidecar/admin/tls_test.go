package admin

import (
	"context"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/postern/postern/sidecar/admin/admintest"
	"github.com/postern/postern/sidecar/secret"
)

// served returns the common name of the certificate the server at addr serves on a new connection,
// and the answer to GET /metrics with auth through the probe client of certFile.
func served(t *testing.T, addr, certFile, auth string) (cn string, code int) {
	t.Helper()
	c, err := ProbeClient(certFile)
	if err != nil {
		t.Fatal(err)
	}
	req, _ := http.NewRequestWithContext(t.Context(), http.MethodGet, ProbeURL(addr, true, "/metrics"), nil)
	if auth != "" {
		req.Header.Set("Authorization", auth)
	}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatalf("GET /metrics over TLS: %v", err)
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, resp.Body)
	c.CloseIdleConnections()
	return resp.TLS.PeerCertificates[0].Subject.CommonName, resp.StatusCode
}

// The admin listener serves TLS with the configured files, and a certificate replaced on disk from
// the next connection on; files that do not load keep the previous certificate.
func TestTLSServedAndReloaded(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	certFile, keyFile := filepath.Join(dir, "admin.crt"), filepath.Join(dir, "admin.key")
	admintest.WriteCert(t, certFile, keyFile, "first")
	cert, err := NewCertificate(certFile, keyFile, nil)
	if err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := New(Options{Registry: prometheus.NewRegistry(), ReadToken: secret.New(readToken), TLS: cert.TLSConfig()})
	done := make(chan error, 1)
	go func() { done <- s.Serve(t.Context(), l) }()
	t.Cleanup(func() { l.Close() })
	addr := l.Addr().String()

	if cn, code := served(t, addr, certFile, "Bearer "+readToken); cn != "first" || code != 200 {
		t.Fatalf("first certificate: served %q, /metrics %d", cn, code)
	}
	if _, code := served(t, addr, certFile, ""); code != 401 {
		t.Fatalf("/metrics over TLS without the token: %d, want 401", code)
	}

	admintest.WriteCert(t, certFile, keyFile, "renewed")
	if cn, _ := served(t, addr, certFile, "Bearer "+readToken); cn != "renewed" {
		t.Fatalf("after the files were replaced: served %q, want the renewed certificate", cn)
	}

	// A key that does not load keeps the renewed certificate in service.
	if err := os.WriteFile(keyFile, []byte("half-written"), 0o600); err != nil {
		t.Fatal(err)
	}
	if cn, _ := served(t, addr, certFile, "Bearer "+readToken); cn != "renewed" {
		t.Fatalf("after a broken key file: served %q, want the renewed certificate still", cn)
	}

	// Plain HTTP is not answered as HTTP.
	resp, err := http.Get("http://" + addr + "/healthz")
	if err == nil {
		resp.Body.Close()
		if resp.StatusCode == 200 {
			t.Fatal("the TLS listener answered plain HTTP")
		}
	}
}

// The health probe trusts the certificate of admin.tls.cert_file only.
func TestProbeClientPinsTheCertificate(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	certFile, keyFile := filepath.Join(dir, "admin.crt"), filepath.Join(dir, "admin.key")
	admintest.WriteCert(t, certFile, keyFile, "served")
	otherCert := filepath.Join(dir, "other.crt")
	admintest.WriteCert(t, otherCert, filepath.Join(dir, "other.key"), "other")
	cert, err := NewCertificate(certFile, keyFile, nil)
	if err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() { _ = New(Options{TLS: cert.TLSConfig()}).Serve(t.Context(), l) }()
	c, err := ProbeClient(otherCert)
	if err != nil {
		t.Fatal(err)
	}
	_, err = c.Get(ProbeURL(l.Addr().String(), true, "/healthz"))
	if err == nil || !strings.Contains(err.Error(), "another certificate") {
		t.Fatalf("probe trusting another certificate: %v", err)
	}
	if _, err := NewCertificate(certFile, filepath.Join(dir, "missing.key"), nil); err == nil {
		t.Fatal("a missing key file loaded")
	}
}

func TestProbeURL(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		addr string
		tls  bool
		want string
	}{
		{"127.0.0.1:8025", false, "http://127.0.0.1:8025/readyz"},
		{"0.0.0.0:8025", true, "https://127.0.0.1:8025/readyz"},
		{"[::]:8025", true, "https://[::1]:8025/readyz"},
		{":8025", false, "http://127.0.0.1:8025/readyz"},
		{"192.0.2.7:8025", true, "https://192.0.2.7:8025/readyz"},
	} {
		if got := ProbeURL(tc.addr, tc.tls, "/readyz"); got != tc.want {
			t.Errorf("ProbeURL(%q, %v) = %q, want %q", tc.addr, tc.tls, got, tc.want)
		}
	}
}

// Routes added as Protected (Go's profiler) need the read token, as /metrics does; the sign-in
// server serves its routes and none of the admin pages.
func TestProtectedAndSignInServer(t *testing.T) {
	t.Parallel()
	page := http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte("page")) })
	s := New(Options{Registry: prometheus.NewRegistry(), ReadToken: secret.New(readToken),
		Projects:  func(_ context.Context) []ProjectStatus { return nil },
		Protected: map[string]http.Handler{"/debug/pprof/": page}}).Handler()
	if code, _ := getAs(t, s, "/debug/pprof/", ""); code != 401 {
		t.Errorf("profiler without a token: %d, want 401", code)
	}
	if code, body := get(t, s, "/debug/pprof/"); code != 200 || body != "page" {
		t.Errorf("profiler with the read token: %d %q", code, body)
	}

	si := NewSignIn(Options{}, map[string]http.Handler{"GET /signin/{token}": page}).Handler()
	if code, body := getAs(t, si, "/signin/abc", ""); code != 200 || body != "page" {
		t.Errorf("sign-in listener /signin/abc: %d %q", code, body)
	}
	for _, path := range []string{"/status", "/metrics", "/api/v1/projects", "/readyz", "/debug/pprof/"} {
		if code, _ := get(t, si, path); code != 404 {
			t.Errorf("sign-in listener %s with the read token: %d, want 404", path, code)
		}
	}
	if code, _ := getAs(t, si, "/healthz", ""); code != 200 {
		t.Errorf("sign-in listener /healthz: %d", code)
	}
}
