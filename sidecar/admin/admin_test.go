package admin

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/postern/postern/sidecar/secret"
)

// readToken is the read token of the tests' servers.
const readToken = "read-token-0123456789abcdef"

// get fetches path with the read token.
func get(t *testing.T, h http.Handler, path string) (int, string) {
	t.Helper()
	return getAs(t, h, path, "Bearer "+readToken)
}

// getAs fetches path with the Authorization header auth ("" for none).
func getAs(t *testing.T, h http.Handler, path, auth string) (int, string) {
	t.Helper()
	rec := httptest.NewRecorder()
	req := httptest.NewRequest(http.MethodGet, path, nil)
	if auth != "" {
		req.Header.Set("Authorization", auth)
	}
	h.ServeHTTP(rec, req)
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
	s := New(Options{Registry: reg, ReadToken: secret.New(readToken), Version: "v0.9.0-3-g0123abcd", Projects: func(context.Context) []ProjectStatus {
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

// serve runs s on a loopback listener and returns its address.
func serve(t *testing.T, s *Server) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Serve(ctx, l) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	return l.Addr().String()
}

// readsBody stands for a handler that reads a form, like POST /signin.
func readsBody(got chan<- error) map[string]http.Handler {
	return map[string]http.Handler{"POST /form": http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, err := io.ReadAll(r.Body)
		got <- err
		if err != nil {
			http.Error(w, "bad body", http.StatusBadRequest)
		}
	})}
}

// A request whose body trickles in is cut off after the read timeout, however steadily it comes.
func TestSlowRequestBodyIsCutOff(t *testing.T) {
	t.Parallel()
	got := make(chan error, 1)
	addr := serve(t, New(Options{Extra: readsBody(got), ReadTimeout: 300 * time.Millisecond}))
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Write([]byte("POST /form HTTP/1.1\r\nHost: postern\r\nContent-Length: 1000\r\n\r\n")); err != nil {
		t.Fatal(err)
	}
	stop := make(chan struct{})
	defer close(stop)
	go func() {
		for {
			select {
			case <-stop:
				return
			case <-time.After(50 * time.Millisecond):
				if _, err := c.Write([]byte("l")); err != nil {
					return
				}
			}
		}
	}()
	select {
	case err := <-got:
		if err == nil {
			t.Fatal("the handler read the whole body")
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the body was still being read after 10s")
	}
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.ReadAll(c); errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatal("the connection stayed open")
	}
}

func TestRequestBodyIsBounded(t *testing.T) {
	t.Parallel()
	got := make(chan error, 1)
	addr := serve(t, New(Options{Extra: readsBody(got)}))
	resp, err := http.Post("http://"+addr+"/form", "text/plain", strings.NewReader(strings.Repeat("x", MaxBodyBytes+1)))
	if err == nil {
		resp.Body.Close()
	}
	var tooLarge *http.MaxBytesError
	if err := <-got; !errors.As(err, &tooLarge) {
		t.Fatalf("the handler read a body over %d bytes: %v", MaxBodyBytes, err)
	}
}

// The pages that name projects, senders and upstreams need a token; health and readiness stay
// open and name nothing.
func TestReadNeedsToken(t *testing.T) {
	t.Parallel()
	const apiToken = "api-token-0123456789abcdef"
	reg := prometheus.NewRegistry()
	reg.MustRegister(prometheus.NewCounter(prometheus.CounterOpts{Name: "postern_test_total", Help: "x"}))
	projects := func(context.Context) []ProjectStatus {
		return []ProjectStatus{{Name: "client-a", Senders: []string{"noreply@client-a.example"}, Upstream: "smtp.client-a.example:587", State: "ok"}}
	}
	checks := []Check{{"projects", func(context.Context) error {
		return errors.New("project client-a: store /var/lib/postern/store.db unreadable")
	}}}
	s := New(Options{Registry: reg, Projects: projects, Checks: checks, ReadToken: secret.New(readToken),
		API: &APIOptions{Store: newAPIEnv(t).st, Token: secret.New(apiToken)}}).Handler()
	basic := func(user, pw string) string {
		return "Basic " + base64.StdEncoding.EncodeToString([]byte(user+":"+pw))
	}
	for _, path := range []string{"/metrics", "/status", "/api/v1/projects"} {
		for _, tc := range []struct {
			name, auth string
			code       int
		}{
			{"no token", "", 401},
			{"wrong bearer", "Bearer read-token-0123456789abcdeX", 401},
			{"empty bearer", "Bearer ", 401},
			{"wrong basic", basic("admin", "nope"), 401},
			{"read token", "Bearer " + readToken, 200},
			{"read token, lower-case scheme", "bearer " + readToken, 200},
			{"read token as the basic password", basic("anyone", readToken), 200},
			{"api token", "Bearer " + apiToken, 200},
		} {
			code, body := getAs(t, s, path, tc.auth)
			if code != tc.code {
				t.Errorf("GET %s with %s: %d, want %d", path, tc.name, code, tc.code)
			}
			if code == 401 && (strings.Contains(body, "client-a") || !strings.Contains(body, "read_token_file")) {
				t.Errorf("GET %s with %s: 401 body %s", path, tc.name, body)
			}
		}
	}
	rec := httptest.NewRecorder()
	s.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/status", nil))
	if ch := rec.Result().Header.Values("WWW-Authenticate"); len(ch) == 0 || !strings.HasPrefix(ch[0], "Basic ") {
		t.Errorf("the status page's challenge %q does not make a browser ask", ch)
	}

	if code, body := getAs(t, s, "/healthz", ""); code != 200 || strings.Contains(body, "client-a") {
		t.Errorf("/healthz without a token: %d %s", code, body)
	}
	code, body := getAs(t, s, "/readyz", "")
	if code != 503 || strings.Contains(body, "client-a") || strings.Contains(body, "/var/lib") || !strings.Contains(body, `"name":"projects"`) {
		t.Errorf("/readyz without a token: %d %s", code, body)
	}
	if code, body := get(t, s, "/readyz"); code != 503 || !strings.Contains(body, "client-a") {
		t.Errorf("/readyz with the read token: %d %s", code, body)
	}

	// With no token configured at all, the pages say how to set one.
	bare := New(Options{Registry: reg, Projects: projects}).Handler()
	if code, body := getAs(t, bare, "/status", "Bearer "); code != 401 || !strings.Contains(body, "set admin.read_token_file") {
		t.Errorf("no token configured: %d %s", code, body)
	}
}

// What providers and upstreams said is scrubbed before it is shown.
func TestStatusScrubbed(t *testing.T) {
	t.Parallel()
	const jwt = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJlLXZhbHVlLTEyMzQ1Njc4OTA"
	s := New(Options{ReadToken: secret.New(readToken), Projects: func(context.Context) []ProjectStatus {
		return []ProjectStatus{{Name: "a", State: "unhealthy",
			Reason: "invalid_grant: access_token=ya29.A0ARrdaM-secret refused \x1b[2J" + jwt + strings.Repeat(" padding", 200)}}
	}}).Handler()
	for _, path := range []string{"/status", "/api/v1/projects"} {
		_, body := get(t, s, path)
		for _, leak := range []string{"ya29", "eyJ", "\x1b", "c2lnbmF0dXJl"} {
			if strings.Contains(body, leak) {
				t.Errorf("%s shows %q:\n%s", path, leak, body)
			}
		}
		if !strings.Contains(body, "invalid_grant") || strings.Count(body, "padding") > 100 {
			t.Errorf("%s: the reason is lost or not shortened:\n%s", path, body)
		}
	}
}
