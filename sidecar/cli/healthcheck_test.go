package cli

import (
	"bytes"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestHealthcheck(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name     string
		status   int // 0: nothing listens
		wantCode int
		wantErr  string
	}{
		{"ready", http.StatusOK, ExitOK, ""},
		{"not ready", http.StatusServiceUnavailable, ExitFail, "not ready: 503"},
		{"not running", 0, ExitFail, "connect"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			var addr string
			if tc.status == 0 {
				ln, err := net.Listen("tcp", "127.0.0.1:0")
				if err != nil {
					t.Fatal(err)
				}
				addr = ln.Addr().String()
				ln.Close()
			} else {
				srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
					if r.URL.Path != "/readyz" {
						http.NotFound(w, r)
						return
					}
					w.WriteHeader(tc.status)
					w.Write([]byte(`{"ready":false}`))
				}))
				defer srv.Close()
				addr = strings.TrimPrefix(srv.URL, "http://")
			}
			path := filepath.Join(t.TempDir(), "postern.yaml")
			if err := os.WriteFile(path, []byte("listen:\n  admin: "+addr+"\n"), 0o600); err != nil {
				t.Fatal(err)
			}
			var out, errOut bytes.Buffer
			app := &App{Stdin: strings.NewReader(""), Stdout: &out, Stderr: &errOut}
			r := result{code: app.Run(t.Context(), []string{"healthcheck", "--config", path})}
			r.stdout, r.stderr = out.String(), errOut.String()
			if r.code != tc.wantCode || !strings.Contains(r.stderr, tc.wantErr) {
				t.Errorf("%v\nwant exit %d, stderr containing %q", r, tc.wantCode, tc.wantErr)
			}
		})
	}
}
