package admin

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
)

func get(t *testing.T, h http.Handler, path string) (int, string) {
	t.Helper()
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, path, nil))
	b, _ := io.ReadAll(rec.Result().Body)
	return rec.Code, string(b)
}

func TestReadiness(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name   string
		checks []Check
		code   int
		ready  bool
	}{
		{"all ok", []Check{{"store", func(context.Context) error { return nil }}}, 200, true},
		{"degraded stays ready", []Check{{"store", func(context.Context) error {
			return fmt.Errorf("vault unreachable, serving cached credentials: %w", ErrDegraded)
		}}}, 200, true},
		{"failure", []Check{{"store", func(context.Context) error { return fmt.Errorf("no projects loaded") }}}, 503, false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			code, body := get(t, New(Options{Checks: c.checks}).Handler(), "/readyz")
			if code != c.code {
				t.Fatalf("code %d, want %d (%s)", code, c.code, body)
			}
			var out struct{ Ready bool }
			if err := json.Unmarshal([]byte(body), &out); err != nil || out.Ready != c.ready {
				t.Fatalf("body %s", body)
			}
		})
	}
}

func TestStatusAndMetrics(t *testing.T) {
	t.Parallel()
	reg := prometheus.NewRegistry()
	c := prometheus.NewCounter(prometheus.CounterOpts{Name: "postern_test_total", Help: "x"})
	reg.MustRegister(c)
	c.Add(3)
	s := New(Options{Registry: reg, Version: "v0.9.0-3-g0123abcd", Projects: func(context.Context) []ProjectStatus {
		return []ProjectStatus{
			{Name: "b", State: "needs_reauth", Reason: "invalid_grant <script>", Action: "sign in again", SignInURL: "/signin/b"},
			{Name: "a", State: "ok"},
		}
	}})
	if code, body := get(t, s.Handler(), "/metrics"); code != 200 || !strings.Contains(body, "postern_test_total 3") {
		t.Fatalf("metrics: %d %s", code, body)
	}
	code, body := get(t, s.Handler(), "/status")
	if code != 200 || strings.Index(body, ">a<") > strings.Index(body, ">b<") || strings.Contains(body, "<script>") {
		t.Fatalf("status page: sorted and escaped expected, got %d %s", code, body)
	}
	if !strings.Contains(body, "v0.9.0-3-g0123abcd") {
		t.Errorf("the status page does not show the version:\n%s", body)
	}
	_, js := get(t, s.Handler(), "/api/v1/projects")
	if !strings.Contains(js, `"state":"needs_reauth"`) {
		t.Fatalf("json: %s", js)
	}
	if code, _ := get(t, s.Handler(), "/healthz"); code != 200 {
		t.Fatal("healthz")
	}
}
