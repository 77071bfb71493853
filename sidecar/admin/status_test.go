package admin

import (
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/postern/postern/sidecar/secret"
)

func statusServer(links *[]string) *Server {
	return New(Options{
		ReadToken: secret.New("read-token"),
		API:       &APIOptions{Token: secret.New("api-token")},
		Projects: func(context.Context) []ProjectStatus {
			return []ProjectStatus{
				{Name: "alpha", State: "ok", Health: "ok"},
				{Name: "bravo", State: "needs_reauth", Health: "failing", HealthReason: "needs_sign_in", LastError: "invalid_grant"},
				{Name: "charlie", State: "upstream_down", Health: "degraded", HealthReason: "upstream_down"},
				{Name: "delta", State: "unhealthy", Health: "failing", HealthReason: "credential_refused", LastError: "535 5.7.8 nope"},
			}
		},
		SignInLink: func(_ context.Context, name string) (string, error) {
			*links = append(*links, name)
			return "https://postern.example/signin/l/" + name, nil
		},
	})
}

func statusCall(t *testing.T, s *Server, method, path, token string, hdr ...string) *httptest.ResponseRecorder {
	t.Helper()
	r := httptest.NewRequest(method, path, nil)
	r.Header.Set("Authorization", "Bearer "+token)
	for i := 0; i+1 < len(hdr); i += 2 {
		r.Header.Set(hdr[i], hdr[i+1])
	}
	w := httptest.NewRecorder()
	s.Handler().ServeHTTP(w, r)
	return w
}

// The status page counts the projects by health, shows the failing ones first, and filters by
// name and by state in query parameters.
func TestStatusPageSummaryOrderAndFilter(t *testing.T) {
	t.Parallel()
	var links []string
	s := statusServer(&links)
	body := statusCall(t, s, "GET", "/status", "read-token").Body.String()
	for _, want := range []string{"4 projects", "1 ok", "1 degraded", "2 failing", "1 need sign-in", "535 5.7.8 nope"} {
		if !strings.Contains(body, want) {
			t.Errorf("status page lacks %q", want)
		}
	}
	b, d, c, a := strings.Index(body, `id="p-bravo"`), strings.Index(body, `id="p-delta"`), strings.Index(body, `id="p-charlie"`), strings.Index(body, `id="p-alpha"`)
	if !(b < d && d < c && c < a) || b < 0 {
		t.Errorf("order bravo %d, delta %d, charlie %d, alpha %d: want failing, then degraded, then ok", b, d, c, a)
	}
	for path, want := range map[string][]string{
		"/status?state=failing":       {"bravo", "delta"},
		"/status?state=needs_sign_in": {"bravo"},
		"/status?q=CHAR":              {"charlie"},
		"/status?q=zulu":              {},
	} {
		body := statusCall(t, s, "GET", path, "read-token").Body.String()
		for _, n := range []string{"alpha", "bravo", "charlie", "delta"} {
			shown := strings.Contains(body, `id="p-`+n+`"`)
			if shown != strings.Contains(strings.Join(want, ","), n) {
				t.Errorf("%s: %s shown %v, want %v", path, n, shown, !shown)
			}
		}
	}
}

// The sign-in link button needs the project API's token, and a request from another site is
// refused.
func TestStatusPageSignInLink(t *testing.T) {
	t.Parallel()
	var links []string
	s := statusServer(&links)
	if !strings.Contains(statusCall(t, s, "GET", "/status", "read-token").Body.String(), `action="/status/sign-in-link/bravo"`) {
		t.Error("no sign-in link button for bravo")
	}
	if w := statusCall(t, s, "POST", "/status/sign-in-link/bravo", "read-token"); w.Code != http.StatusUnauthorized {
		t.Errorf("with the read token: %d", w.Code)
	}
	if w := statusCall(t, s, "POST", "/status/sign-in-link/bravo", "api-token", "Origin", "https://evil.example"); w.Code != http.StatusForbidden {
		t.Errorf("from another origin: %d", w.Code)
	}
	w := statusCall(t, s, "POST", "/status/sign-in-link/bravo", "api-token", "Sec-Fetch-Site", "same-origin")
	if w.Code != http.StatusOK || !strings.Contains(w.Body.String(), "https://postern.example/signin/l/bravo") {
		t.Errorf("with the API token: %d %s", w.Code, w.Body.String())
	}
	if len(links) != 1 || links[0] != "bravo" {
		t.Errorf("links made: %v", links)
	}
}

// The status page and GET /api/v1/projects show a client secret's expiry, with the days left.
func TestStatusPageShowsClientSecretExpiry(t *testing.T) {
	t.Parallel()
	exp := time.Now().Add(10*24*time.Hour + time.Hour).UTC().Truncate(time.Second)
	s := New(Options{
		ReadToken: secret.New("read-token"),
		Projects: func(context.Context) []ProjectStatus {
			return []ProjectStatus{
				{Name: "alpha", State: "client_secret_expiring", Health: "degraded", HealthReason: "client_secret_expiring", ClientSecretExpires: exp},
				{Name: "bravo", State: "ok", Health: "ok"},
			}
		},
	})
	body := statusCall(t, s, "GET", "/status", "read-token").Body.String()
	if want := "client secret expires " + exp.Format(time.DateOnly) + " (in 10 days)"; !strings.Contains(body, want) {
		t.Errorf("status page lacks %q", want)
	}
	if n := strings.Count(body, "client secret expire"); n != 1 {
		t.Errorf("status page shows %d client secret expiries, want 1 (bravo has no date)", n)
	}
	api := statusCall(t, s, "GET", "/api/v1/projects", "read-token").Body.String()
	if want := `"client_secret_expires":"` + exp.Format(time.RFC3339) + `"`; !strings.Contains(api, want) {
		t.Errorf("GET /api/v1/projects lacks %s: %s", want, api)
	}
}
