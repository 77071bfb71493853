package admin

import (
	"context"
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
	s := New(Options{Registry: reg, Projects: func(context.Context) []ProjectStatus {
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
