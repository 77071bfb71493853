package sidecar

import (
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/postern/postern/sidecar/config"
	"github.com/postern/postern/sidecar/oauth/oauthtest"
	"github.com/postern/postern/sidecar/project"
	"github.com/postern/postern/sidecar/secret"
	"github.com/postern/postern/sidecar/store/boltstore"
	"github.com/postern/postern/sidecar/upstream"
)

// forwardProxy is an HTTP forward proxy: it relays absolute-URI requests (what a client sends to
// a proxy for http:// URLs) and records them.
type forwardProxy struct {
	mu   sync.Mutex
	seen []string
}

func (p *forwardProxy) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if !r.URL.IsAbs() {
		http.Error(w, "not a proxy request", http.StatusBadRequest)
		return
	}
	p.mu.Lock()
	p.seen = append(p.seen, r.Method+" "+r.URL.String())
	p.mu.Unlock()
	out := r.Clone(r.Context())
	out.RequestURI = ""
	out.Header.Del("Proxy-Connection")
	direct := &http.Transport{} // no proxy of its own
	defer direct.CloseIdleConnections()
	resp, err := direct.RoundTrip(out)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadGateway)
		return
	}
	defer resp.Body.Close()
	for k, v := range resp.Header {
		w.Header()[k] = v
	}
	w.WriteHeader(resp.StatusCode)
	io.Copy(w, resp.Body)
}

func (p *forwardProxy) requests() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]string(nil), p.seen...)
}

// A token refresh goes through oauth.http_proxy, even to a loopback identity provider (which the
// environment's proxy settings never cover), and goes direct without it.
func TestTokenRefreshUsesConfiguredProxy(t *testing.T) {
	t.Parallel()
	for _, viaProxy := range []bool{true, false} {
		name := "direct"
		if viaProxy {
			name = "proxy"
		}
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			idp := oauthtest.New(t, oauthtest.Options{})
			proxy := &forwardProxy{}
			ps := httptest.NewServer(proxy)
			t.Cleanup(ps.Close)

			dir := t.TempDir()
			path, key := filepath.Join(dir, "store.db"), filepath.Join(dir, "store.key")
			st, err := boltstore.Open(t.Context(), boltstore.Options{Path: path, KeyFile: key, Create: true})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { st.Close() })
			p := project.Project{
				Name: "proxied", Enabled: true, Senders: []string{"user@example.com"},
				Upstream: project.Upstream{Host: "127.0.0.1", Port: 2525, TLS: project.TLSNone},
				Auth:     project.Auth{Type: project.AuthOAuth2, Username: "user@example.com", OAuth: idp.OAuth("")},
			}
			if _, err := st.PutProject(t.Context(), p); err != nil {
				t.Fatal(err)
			}
			grant := idp.Grant("user@example.com")
			// Expired: the first delivery must refresh.
			if _, err := st.PutToken(t.Context(), p.Name, project.Token{
				AccessToken: secret.New(grant.AccessToken), RefreshToken: secret.New(grant.RefreshToken),
				Expiry: time.Now().Add(-time.Minute), Account: "user@example.com", State: project.TokenOK,
			}); err != nil {
				t.Fatal(err)
			}

			cfg := config.Default()
			if viaProxy {
				cfg.OAuth.HTTPProxy = ps.URL
			}
			parts := NewParts(t.Context(), cfg, st, slog.New(slog.DiscardHandler))
			defer parts.Close()
			if err := parts.Credentials.SignIn(t.Context(), p, func(upstream.Auth) error { return nil }); err != nil {
				t.Fatalf("SignIn: %v", err)
			}
			if idp.Requests() != 1 {
				t.Fatalf("the identity provider saw %d token requests, want 1", idp.Requests())
			}
			seen := proxy.requests()
			switch {
			case viaProxy && (len(seen) != 1 || !strings.HasPrefix(seen[0], "POST "+idp.TokenURL)):
				t.Fatalf("the proxy relayed %q, want the one refresh POST to %s", seen, idp.TokenURL)
			case !viaProxy && len(seen) != 0:
				t.Fatalf("without oauth.http_proxy the proxy relayed %q", seen)
			}
		})
	}
}
