package sidecar

import (
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/postern/postern/sidecar/admin"
)

func TestWithProfiler(t *testing.T) {
	t.Parallel()
	keep := http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, "kept") })
	routes := map[string]http.Handler{"GET /signin/": keep}
	srv := httptest.NewServer(admin.New(admin.Options{Extra: withProfiler(routes)}).Handler())
	t.Cleanup(srv.Close)
	if len(routes) != 1 {
		t.Errorf("withProfiler changed its argument: %d routes", len(routes))
	}
	for path, want := range map[string]string{
		"/debug/pprof/":                  "goroutine",
		"/debug/pprof/goroutine?debug=1": "goroutine profile",
		"/debug/pprof/cmdline":           "",
		"/signin/x":                      "kept",
	} {
		resp, err := http.Get(srv.URL + path)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || !strings.Contains(string(body), want) {
			t.Errorf("GET %s = %d %.60q, want 200 with %q", path, resp.StatusCode, body, want)
		}
	}
}
