package health_test

import (
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/postern/postern/sidecar/credential"
	"github.com/postern/postern/sidecar/health"
	"github.com/postern/postern/sidecar/upstream"
)

// clock is an injected time.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *clock) add(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

func newTracker(t *testing.T) (*health.Tracker, *clock, *[]health.Change) {
	t.Helper()
	c := &clock{t: time.Date(2026, 1, 1, 12, 0, 0, 0, time.UTC)}
	var changes []health.Change
	tr := health.New(health.Options{Now: c.now, OnChange: func(ch health.Change) { changes = append(changes, ch) }})
	return tr, c, &changes
}

func delivery(project string, r health.Reason) health.Event {
	out := health.OutcomeDeferred
	if r == health.ReasonAccepted {
		out = health.OutcomeDelivered
	}
	return health.Event{Project: project, Source: health.SourceDelivery, Stage: "mail", Outcome: out, Reason: r, Text: string(r)}
}

func TestDerive(t *testing.T) {
	type step struct {
		reason  health.Reason
		advance time.Duration
	}
	for _, tc := range []struct {
		name       string
		steps      []step
		wantState  health.State
		wantReason health.Reason
	}{
		{"never seen", nil, health.StateOK, ""},
		{"accepted", []step{{health.ReasonAccepted, 0}}, health.StateOK, ""},
		{"credential refused fails at once", []step{{health.ReasonCredentialRefused, 0}}, health.StateFailing, health.ReasonCredentialRefused},
		{"needs sign-in fails at once", []step{{health.ReasonNeedsSignIn, 0}}, health.StateFailing, health.ReasonNeedsSignIn},
		{"upstream down once is degraded", []step{{health.ReasonUpstreamDown, 0}}, health.StateDegraded, health.ReasonUpstreamDown},
		{"upstream down three times fails", []step{{health.ReasonUpstreamDown, 0}, {health.ReasonUpstreamDown, 0}, {health.ReasonUpstreamDown, 0}}, health.StateFailing, health.ReasonUpstreamDown},
		{"upstream down for longer than FailAfter fails", []step{{health.ReasonUpstreamDown, 0}, {health.ReasonUpstreamTimeout, health.DefaultFailAfter}}, health.StateFailing, health.ReasonUpstreamTimeout},
		{"rate limited is degraded, never failing", []step{{health.ReasonRateLimited, 0}, {health.ReasonRateLimited, time.Hour}, {health.ReasonRateLimited, 0}, {health.ReasonRateLimited, 0}}, health.StateDegraded, health.ReasonRateLimited},
		{"a refused recipient says nothing", []step{{health.ReasonCredentialRefused, 0}, {health.ReasonUpstreamRefused, 0}}, health.StateFailing, health.ReasonCredentialRefused},
		{"failing stays failing while waiting", []step{{health.ReasonCredentialRefused, 0}, {health.ReasonUpstreamDown, 0}, {health.ReasonMessage, 0}}, health.StateFailing, health.ReasonCredentialRefused},
		{"a success clears failing", []step{{health.ReasonCredentialRefused, 0}, {health.ReasonAccepted, 0}}, health.StateOK, ""},
		{"a success resets the count", []step{{health.ReasonUpstreamDown, 0}, {health.ReasonUpstreamDown, 0}, {health.ReasonAccepted, 0}, {health.ReasonUpstreamDown, 0}}, health.StateDegraded, health.ReasonUpstreamDown},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tr, c, _ := newTracker(t)
			for _, s := range tc.steps {
				c.add(s.advance)
				tr.Record(delivery("a", s.reason))
			}
			got := tr.Status("a")
			if got.State != tc.wantState || got.Reason != tc.wantReason {
				t.Errorf("state %s (%s), want %s (%s)", got.State, got.Reason, tc.wantState, tc.wantReason)
			}
		})
	}
}

// A project degraded by an upstream that is down turns failing with time alone, noticed by Sweep.
func TestSweepTurnsFailingWithTime(t *testing.T) {
	tr, c, changes := newTracker(t)
	tr.Record(delivery("a", health.ReasonUpstreamDown))
	c.add(health.DefaultFailAfter)
	if s := tr.Status("a"); s.State != health.StateDegraded {
		t.Fatalf("before the sweep: %s", s.State)
	}
	tr.Sweep()
	if s := tr.Status("a"); s.State != health.StateFailing {
		t.Fatalf("after the sweep: %s, want failing", s.State)
	}
	if n := len(*changes); n != 2 || (*changes)[1].To.State != health.StateFailing {
		t.Errorf("changes %+v", *changes)
	}
}

// Each change is told once: repeats of the same failure tell nothing new.
func TestChangesToldOnce(t *testing.T) {
	tr, _, changes := newTracker(t)
	for range 5 {
		tr.Record(delivery("a", health.ReasonCredentialRefused))
	}
	tr.Sweep()
	tr.Record(delivery("a", health.ReasonAccepted))
	tr.Record(delivery("a", health.ReasonAccepted))
	tr.Sweep()
	var got []string
	for _, c := range *changes {
		got = append(got, fmt.Sprintf("%s>%s", c.From.State, c.To.State))
	}
	if strings.Join(got, ",") != "ok>failing,failing>ok" {
		t.Errorf("changes %v", got)
	}
}

func TestSyncDisabledRemovedAndPurged(t *testing.T) {
	tr, _, _ := newTracker(t)
	tr.Record(delivery("a", health.ReasonCredentialRefused))
	tr.Sync([]health.Project{{Name: "a", Disabled: true}, {Name: "b", Removed: true}, {Name: "c"}})
	if s := tr.Status("a"); s.State != health.StateDegraded || s.Reason != health.ReasonDisabled {
		t.Errorf("disabled: %s (%s)", s.State, s.Reason)
	}
	if s := tr.Status("b"); s.State != health.StateDegraded || s.Reason != health.ReasonRemoved {
		t.Errorf("removed: %s (%s)", s.State, s.Reason)
	}
	// Enabled again, what the attempts said still stands.
	tr.Sync([]health.Project{{Name: "a"}, {Name: "c"}})
	if s := tr.Status("a"); s.State != health.StateFailing {
		t.Errorf("enabled again: %s, want failing", s.State)
	}
	if n := len(tr.All()); n != 2 {
		t.Errorf("%d projects known after b was purged, want 2", n)
	}
}

func TestSentCounts(t *testing.T) {
	tr, c, _ := newTracker(t)
	tr.Record(delivery("a", health.ReasonAccepted))
	c.add(2 * time.Hour)
	tr.Record(delivery("a", health.ReasonAccepted))
	tr.Record(delivery("a", health.ReasonAccepted))
	if s := tr.Status("a"); s.SentHour != 2 || s.SentDay != 3 {
		t.Errorf("sent %d in the hour, %d in the day; want 2 and 3", s.SentHour, s.SentDay)
	}
	c.add(23 * time.Hour)
	if s := tr.Status("a"); s.SentHour != 0 || s.SentDay != 2 {
		t.Errorf("a day later: sent %d in the hour, %d in the day; want 0 and 2", s.SentHour, s.SentDay)
	}
}

func TestClassify(t *testing.T) {
	for _, tc := range []struct {
		err  error
		want health.Reason
	}{
		{nil, health.ReasonAccepted},
		{fmt.Errorf("getting the credential: %w", &credential.ReauthError{Reason: "invalid_grant"}), health.ReasonNeedsSignIn},
		{&upstream.Error{Stage: upstream.StageAuth, Code: 535, Enhanced: [3]int{5, 7, 3}, Message: "Authentication unsuccessful"}, health.ReasonCredentialRefused},
		{&upstream.Error{Stage: upstream.StageConnect, Err: errors.New("connection refused")}, health.ReasonUpstreamDown},
		{&upstream.Error{Stage: upstream.StagePool, Err: upstream.ErrDown}, health.ReasonUpstreamDown},
		{&upstream.Error{Stage: upstream.StagePool, Err: upstream.ErrBusy}, health.ReasonRateLimited},
		{&upstream.Error{Stage: upstream.StageData, Err: errors.New("i/o timeout")}, health.ReasonUpstreamTimeout},
		{&upstream.Error{Stage: upstream.StageMail, Code: 451, Message: "try later"}, health.ReasonUpstreamDeferred},
		{&upstream.Error{Stage: upstream.StageRcpt, Code: 550, Enhanced: [3]int{5, 7, 60}, Message: "SendAsDenied"}, health.ReasonUpstreamRefused},
		{errors.New("vault: connection refused"), health.ReasonCredentialUnavailable},
	} {
		if got := health.Classify(tc.err); got != tc.want {
			t.Errorf("Classify(%v) = %s, want %s", tc.err, got, tc.want)
		}
	}
}

func TestMetrics(t *testing.T) {
	tr, _, _ := newTracker(t)
	tr.Sync([]health.Project{{Name: "a"}, {Name: "b"}})
	tr.Record(delivery("a", health.ReasonCredentialRefused))
	tr.Record(delivery("a", health.ReasonCredentialRefused))
	tr.Record(health.Event{Project: "b", Source: health.SourceDelivery, Stage: "data", Outcome: health.OutcomeDelivered, Reason: health.ReasonAccepted, Took: time.Second})
	tr.ObserveUpstream("acquire", 10*time.Millisecond)

	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(tr.Collector())
	want := `
# HELP postern_deliveries_total Delivery attempts by what Postfix heard (outcome), the stage where each ended and why (reason).
# TYPE postern_deliveries_total counter
postern_deliveries_total{outcome="deferred",project="a",reason="credential_refused",stage="mail"} 2
postern_deliveries_total{outcome="delivered",project="b",reason="accepted",stage="data"} 1
# HELP postern_project_health Project health: 1 for each project's current state (ok, degraded, failing), 0 for the others; without the project label, projects per state.
# TYPE postern_project_health gauge
postern_project_health{project="a",state="degraded"} 0
postern_project_health{project="a",state="failing"} 1
postern_project_health{project="a",state="ok"} 0
postern_project_health{project="b",state="degraded"} 0
postern_project_health{project="b",state="failing"} 0
postern_project_health{project="b",state="ok"} 1
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want), "postern_deliveries_total", "postern_project_health"); err != nil {
		t.Error(err)
	}
	if n, err := testutil.GatherAndCount(reg, "postern_delivery_duration_seconds", "postern_upstream_duration_seconds"); err != nil || n != 2 {
		t.Errorf("histograms: %d series, %v", n, err)
	}

	// Without the project label (WithoutLabel): sums, and projects per state.
	want = `
# HELP postern_deliveries_total Delivery attempts by what Postfix heard (outcome), the stage where each ended and why (reason).
# TYPE postern_deliveries_total counter
postern_deliveries_total{outcome="deferred",reason="credential_refused",stage="mail"} 2
postern_deliveries_total{outcome="delivered",reason="accepted",stage="data"} 1
# HELP postern_project_health Project health: 1 for each project's current state (ok, degraded, failing), 0 for the others; without the project label, projects per state.
# TYPE postern_project_health gauge
postern_project_health{state="degraded"} 0
postern_project_health{state="failing"} 1
postern_project_health{state="ok"} 1
`
	if err := testutil.GatherAndCompare(health.WithoutLabel(reg, "project"), strings.NewReader(want), "postern_deliveries_total", "postern_project_health"); err != nil {
		t.Error(err)
	}
}

func TestClientSecretExpiry(t *testing.T) {
	day := 24 * time.Hour
	for _, tc := range []struct {
		name       string
		expiresIn  time.Duration // from now; 0: no date
		attempts   []health.Reason
		disabled   bool
		wantState  health.State
		wantReason health.Reason
	}{
		{"no date", 0, nil, false, health.StateOK, ""},
		{"far off", 60 * day, nil, false, health.StateOK, ""},
		{"within the warning", 29 * day, nil, false, health.StateDegraded, health.ReasonClientSecretExpiring},
		{"within the warning, deliveries succeed", 29 * day, []health.Reason{health.ReasonAccepted}, false, health.StateDegraded, health.ReasonClientSecretExpiring},
		{"expired", -time.Hour, nil, false, health.StateFailing, health.ReasonClientSecretExpired},
		{"expired, deliveries still succeed", -time.Hour, []health.Reason{health.ReasonAccepted}, false, health.StateFailing, health.ReasonClientSecretExpired},
		{"expiring does not hide a refused credential", 10 * day, []health.Reason{health.ReasonCredentialRefused}, false, health.StateFailing, health.ReasonCredentialRefused},
		{"expired does not hide a needed sign-in", -day, []health.Reason{health.ReasonNeedsSignIn}, false, health.StateFailing, health.ReasonNeedsSignIn},
		{"expiring does not hide an upstream down", 10 * day, []health.Reason{health.ReasonUpstreamDown}, false, health.StateDegraded, health.ReasonUpstreamDown},
		{"expired is worse than an upstream down", -day, []health.Reason{health.ReasonUpstreamDown}, false, health.StateFailing, health.ReasonClientSecretExpired},
		{"disabled", -day, nil, true, health.StateDegraded, health.ReasonDisabled},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tr, c, _ := newTracker(t)
			p := health.Project{Name: "a", Disabled: tc.disabled}
			if tc.expiresIn != 0 {
				p.SecretExpires = c.now().Add(tc.expiresIn)
			}
			for _, r := range tc.attempts {
				tr.Record(delivery("a", r))
			}
			tr.Sync([]health.Project{p})
			if s := tr.Status("a"); s.State != tc.wantState || s.Reason != tc.wantReason {
				t.Errorf("got %s (%s), want %s (%s)", s.State, s.Reason, tc.wantState, tc.wantReason)
			}
		})
	}
}

// The state follows the date as time passes (Sweep), the configured warning counts, and a new
// date (a new secret) makes the project ok again.
func TestClientSecretExpiryWithTime(t *testing.T) {
	c := &clock{t: time.Date(2026, 1, 1, 12, 0, 0, 0, time.UTC)}
	var changes []health.Change
	tr := health.New(health.Options{Now: c.now, SecretWarning: 14 * 24 * time.Hour, OnChange: func(ch health.Change) { changes = append(changes, ch) }})
	exp := c.now().Add(20 * 24 * time.Hour)
	tr.Sync([]health.Project{{Name: "a", SecretExpires: exp}})
	if s := tr.Status("a"); s.State != health.StateOK {
		t.Fatalf("20 days before the expiry with a warning of 14: %s (%s)", s.State, s.Reason)
	}
	c.add(7 * 24 * time.Hour)
	tr.Sweep()
	if s := tr.Status("a"); s.State != health.StateDegraded || s.Reason != health.ReasonClientSecretExpiring {
		t.Fatalf("13 days before: %s (%s), want degraded", s.State, s.Reason)
	}
	c.add(13 * 24 * time.Hour)
	tr.Sweep()
	if s := tr.Status("a"); s.State != health.StateFailing || s.Reason != health.ReasonClientSecretExpired {
		t.Fatalf("at the expiry: %s (%s), want failing", s.State, s.Reason)
	}
	tr.Sync([]health.Project{{Name: "a", SecretExpires: c.now().AddDate(1, 0, 0)}})
	if s := tr.Status("a"); s.State != health.StateOK {
		t.Fatalf("with a new secret: %s (%s), want ok", s.State, s.Reason)
	}
	var got []string
	for _, ch := range changes {
		got = append(got, string(ch.To.State)+" "+string(ch.To.Reason))
	}
	if want := "degraded client_secret_expiring,failing client_secret_expired,ok "; strings.Join(got, ",") != want {
		t.Errorf("changes told: %q, want %q", strings.Join(got, ","), want)
	}
}

func TestClientSecretExpiryMetric(t *testing.T) {
	tr, c, _ := newTracker(t)
	a, b := c.now().Add(40*24*time.Hour), c.now().Add(10*24*time.Hour)
	tr.Sync([]health.Project{{Name: "a", SecretExpires: a}, {Name: "b", SecretExpires: b}, {Name: "c"}})
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(tr.Collector())
	const help = `# HELP postern_oauth_client_secret_expiry_timestamp_seconds When the app registration's client secret of each OAuth project with a known date expires (Unix time); without the project label, the earliest.
# TYPE postern_oauth_client_secret_expiry_timestamp_seconds gauge
`
	want := help + fmt.Sprintf("postern_oauth_client_secret_expiry_timestamp_seconds{project=\"a\"} %d\npostern_oauth_client_secret_expiry_timestamp_seconds{project=\"b\"} %d\n", a.Unix(), b.Unix())
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want), "postern_oauth_client_secret_expiry_timestamp_seconds"); err != nil {
		t.Error(err)
	}
	// Without the project label: the earliest, not a sum.
	want = help + fmt.Sprintf("postern_oauth_client_secret_expiry_timestamp_seconds %d\n", b.Unix())
	if err := testutil.GatherAndCompare(health.WithoutLabel(reg, "project"), strings.NewReader(want), "postern_oauth_client_secret_expiry_timestamp_seconds"); err != nil {
		t.Error(err)
	}
}
