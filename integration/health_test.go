//go:build integration

package integration

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/postern/postern/integration/harness"
)

// hookReceiver is a webhook receiver on loopback that checks each POST's signature.
type hookReceiver struct {
	t      *testing.T
	key    string
	srv    *httptest.Server
	mu     sync.Mutex
	events []hookEvent
	ids    map[string]bool
}

type hookEvent struct {
	ID      string `json:"id"`
	Event   string `json:"event"`
	Project string `json:"project"`
	State   string `json:"state"`
	Reason  string `json:"reason"`
	Detail  string `json:"detail"`
}

func newHookReceiver(t *testing.T, key string) *hookReceiver {
	h := &hookReceiver{t: t, key: key, ids: map[string]bool{}}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	h.srv = &httptest.Server{Listener: l, Config: &http.Server{Handler: http.HandlerFunc(h.serve)}}
	h.srv.Start()
	t.Cleanup(h.srv.Close)
	return h
}

func (h *hookReceiver) serve(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	m := hmac.New(sha256.New, []byte(h.key))
	m.Write(body)
	want := "sha256=" + hex.EncodeToString(m.Sum(nil))
	if !hmac.Equal([]byte(r.Header.Get("X-Postern-Signature")), []byte(want)) {
		h.t.Errorf("webhook: bad signature %q on %s", r.Header.Get("X-Postern-Signature"), body)
		http.Error(w, "bad signature", http.StatusUnauthorized)
		return
	}
	var e hookEvent
	if err := json.Unmarshal(body, &e); err != nil {
		h.t.Errorf("webhook: %v: %s", err, body)
		return
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if e.ID == "" || e.ID != r.Header.Get("X-Postern-Event") {
		h.t.Errorf("webhook: event id %q, header %q", e.ID, r.Header.Get("X-Postern-Event"))
	}
	h.events = append(h.events, e)
}

func (h *hookReceiver) got() []hookEvent {
	h.mu.Lock()
	defer h.mu.Unlock()
	return append([]hookEvent(nil), h.events...)
}

// wait waits until an event named ev arrived.
func (h *hookReceiver) wait(ctx context.Context, ev string) error {
	for {
		for _, e := range h.got() {
			if e.Event == ev {
				return nil
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("waiting for the webhook's %s event: %w; got %+v", ev, ctx.Err(), h.got())
		case <-time.After(100 * time.Millisecond):
		}
	}
}

type apiProject struct {
	Name         string `json:"name"`
	State        string `json:"state"`
	Health       string `json:"health"`
	HealthReason string `json:"health_reason"`
	LastError    string `json:"last_error"`
	LastDelivery string `json:"last_delivery"`
	Action       string `json:"action"`
}

func apiProjectStatus(t *testing.T, ctx context.Context, e *harness.Env, name string) apiProject {
	t.Helper()
	body, err := e.Postern.Get(ctx, "/api/v1/projects")
	if err != nil {
		t.Fatal(err)
	}
	var v struct{ Projects []apiProject }
	if err := json.Unmarshal([]byte(body), &v); err != nil {
		t.Fatalf("%v: %s", err, body)
	}
	for _, p := range v.Projects {
		if p.Name == name {
			return p
		}
	}
	t.Fatalf("no project %s in %s", name, body)
	return apiProject{}
}

// metricValue returns the value of the sample of family name whose labels include want, and
// whether there is one.
func metricValue(t *testing.T, ctx context.Context, e *harness.Env, name string, want map[string]string) (float64, bool) {
	t.Helper()
	body, err := e.Postern.Get(ctx, "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(strings.NewReader(body))
	if err != nil {
		t.Fatalf("parsing /metrics: %v", err)
	}
	f := fams[name]
	if f == nil {
		return 0, false
	}
next:
	for _, m := range f.GetMetric() {
		labels := map[string]string{}
		for _, l := range m.GetLabel() {
			labels[l.GetName()] = l.GetValue()
		}
		for k, v := range want {
			if labels[k] != v {
				continue next
			}
		}
		switch {
		case m.Counter != nil:
			return m.Counter.GetValue(), true
		case m.Gauge != nil:
			return m.Gauge.GetValue(), true
		}
	}
	return 0, false
}

// The must-show of health: a project whose upstream refuses its password shows failing on
// /status, in the API and in the metrics as soon as Postfix has heard the deferral of one
// delivery attempt; a webhook is told once. After `postern project update` with the right
// password, the queued mail leaves, the project shows ok everywhere, and the webhook is told it
// recovered, once.
func TestHealthWrongPasswordFailsAndRecovers(t *testing.T) {
	t.Parallel()
	const key = "webhook-key-for-the-test"
	hook := newHookReceiver(t, key)
	dir := harness.TempDir(t)
	keyFile := filepath.Join(dir, "webhook.key")
	if err := os.WriteFile(keyFile, []byte(key+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	e := startEnv(t, harness.Options{PosternConfig: fmt.Sprintf("notify: {webhook: {url: %q, secret_file: %q}}\n", hook.srv.URL, keyFile)})
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	a := e.Upstream.Org("client-a")
	user, password := a.User()
	addProjects(t, ctx, e, harness.ProjectOptions{Name: "client-a", Org: "client-a", Password: "not-the-password"})
	if s := apiProjectStatus(t, ctx, e, "client-a"); s.State != "ok" {
		t.Fatalf("before any attempt: %+v, want ok", s)
	}

	// One delivery attempt: Postfix hears 451 4.7.0 at MAIL FROM.
	m := &harness.Mail{From: user, To: []string{"alice@dest.test"}}
	submit(t, ctx, e, m)
	if _, err := e.Front.WaitQueue(ctx, func(q []harness.QueuedMessage) bool {
		return len(q) == 1 && len(q[0].Recipients) == 1 && strings.Contains(q[0].Recipients[0].DelayReason, "4.7.0")
	}); err != nil {
		t.Fatalf("want the mail deferred with 4.7.0: %v", err)
	}

	// Already failing everywhere: no waiting.
	s := apiProjectStatus(t, ctx, e, "client-a")
	if s.Health != "failing" || s.HealthReason != "credential_refused" || s.State != "unhealthy" || !strings.Contains(s.LastError, "535") {
		t.Errorf("API after one refused attempt: %+v, want failing, credential_refused, with the upstream's 535", s)
	}
	if !strings.Contains(s.Action, "postern project update client-a --password-stdin") {
		t.Errorf("API action %q does not name the fix", s.Action)
	}
	page, err := e.Postern.Get(ctx, "/status?state=failing")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(page, "client-a") || !strings.Contains(page, "failing") {
		t.Errorf("/status?state=failing does not show client-a failing:\n%s", page)
	}
	if v, ok := metricValue(t, ctx, e, "postern_project_health", map[string]string{"project": "client-a", "state": "failing"}); !ok || v != 1 {
		t.Errorf("postern_project_health{project=client-a,state=failing} = %v (present %v), want 1", v, ok)
	}
	if v, ok := metricValue(t, ctx, e, "postern_deliveries_total", map[string]string{
		"project": "client-a", "outcome": "deferred", "stage": "mail", "reason": "credential_refused"}); !ok || v < 1 {
		t.Errorf("postern_deliveries_total for the deferral at MAIL FROM = %v (present %v), want at least 1", v, ok)
	}
	if err := hook.wait(ctx, "failing"); err != nil {
		t.Fatal(err)
	}

	// Fixed: the mail leaves, the project recovers.
	if err := e.SetProjectPassword(ctx, "client-a", password); err != nil {
		t.Fatal(err)
	}
	stop := e.Front.KeepFlushing(ctx, time.Second)
	defer stop()
	if _, err := e.Upstream.WaitForMessage(ctx, "alice@dest.test", harness.WithID(m.ID)); err != nil {
		t.Fatal(err)
	}
	if err := e.Front.WaitQueueEmpty(ctx); err != nil {
		t.Fatal(err)
	}
	if s := apiProjectStatus(t, ctx, e, "client-a"); s.Health != "ok" || s.State != "ok" || s.LastDelivery == "" {
		t.Errorf("API after the delivery: %+v, want ok with a last delivery", s)
	}
	if v, ok := metricValue(t, ctx, e, "postern_project_health", map[string]string{"project": "client-a", "state": "ok"}); !ok || v != 1 {
		t.Errorf("postern_project_health{project=client-a,state=ok} = %v (present %v), want 1", v, ok)
	}
	if v, ok := metricValue(t, ctx, e, "postern_deliveries_total", map[string]string{
		"project": "client-a", "outcome": "delivered", "stage": "data", "reason": "accepted"}); !ok || v != 1 {
		t.Errorf("postern_deliveries_total delivered = %v (present %v), want 1", v, ok)
	}
	if err := hook.wait(ctx, "recovered"); err != nil {
		t.Fatal(err)
	}
	// A sweep of the health model later (health.SweepInterval), still exactly one of each.
	time.Sleep(16 * time.Second)
	var names []string
	for _, ev := range hook.got() {
		if ev.Project != "client-a" {
			t.Errorf("webhook event for another project: %+v", ev)
		}
		names = append(names, ev.Event)
	}
	if strings.Join(names, ",") != "failing,recovered" {
		t.Errorf("webhook events %v, want exactly failing then recovered", names)
	}
	if got := hook.got(); len(got) > 0 && !strings.Contains(got[0].Detail, "535") {
		t.Errorf("the failing event's detail %q lacks the upstream's reply", got[0].Detail)
	}
}
