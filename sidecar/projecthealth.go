package sidecar

import (
	"context"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/postern/postern/sidecar/admin"
	"github.com/postern/postern/sidecar/advice"
	"github.com/postern/postern/sidecar/config"
	"github.com/postern/postern/sidecar/credential"
	"github.com/postern/postern/sidecar/directory"
	"github.com/postern/postern/sidecar/health"
	"github.com/postern/postern/sidecar/limits"
	"github.com/postern/postern/sidecar/milter"
	"github.com/postern/postern/sidecar/notify"
	"github.com/postern/postern/sidecar/project"
	"github.com/postern/postern/sidecar/secret"
	"github.com/postern/postern/sidecar/token"
)

// projectHealth wires package health into `postern serve`: smtpd, the milter and the sign-in
// check record into its Tracker; the status page, the project list of the API, the metrics and
// the webhook read it.
type projectHealth struct {
	tracker *health.Tracker
	webhook *notify.Webhook // nil: no webhook
	log     *slog.Logger
	dir     *directory.Directory
	// makeLink makes a fresh sign-in link for a project; nil without sign-in pages.
	makeLink func(p project.Project) (string, error)

	syncMu    sync.Mutex
	syncedGen uint64    // the directory's generation the Tracker last learnt the projects of
	syncedAt  time.Time // when
}

// resyncEvery is the longest the Tracker goes without being told the projects, even when the
// directory has not changed: records an event added for a project that had just gone are dropped.
const resyncEvery = 5 * time.Minute

// newProjectHealth builds the Tracker over the projects of dir and, where configured, the webhook.
func newProjectHealth(cfg *config.Config, dir *directory.Directory, log *slog.Logger) (*projectHealth, error) {
	ph := &projectHealth{log: log, dir: dir}
	var onChange func(health.Change)
	if w := cfg.Notify.Webhook; w.URL != "" {
		key, err := notify.LoadSecret(w.SecretFile)
		if err != nil {
			return nil, err
		}
		ph.webhook, err = notify.NewWebhook(notify.WebhookOptions{
			URL: w.URL, Secret: key, Timeout: w.Timeout, RetryFor: w.RetryFor, Instance: cfg.Instance,
			Logger:     log.With("component", "notify"),
			SignInLink: ph.linkFor,
		})
		if err != nil {
			return nil, err
		}
		onChange = ph.webhook.Change
	}
	ph.tracker = health.New(health.Options{SecretWarning: cfg.Tokens.ClientSecretWarning, OnChange: func(c health.Change) {
		log.Info("project health changed", "project", c.Project, "from", c.From.State, "to", c.To.State, "reason", c.To.Reason)
		if onChange != nil {
			onChange(c)
		}
	}})
	return ph, nil
}

// linkFor is a fresh sign-in link of the named project, or "".
func (ph *projectHealth) linkFor(name string) string {
	if ph.makeLink == nil || ph.dir == nil {
		return ""
	}
	p, ok := ph.dir.Project(name)
	if !ok {
		return ""
	}
	u, err := ph.makeLink(p)
	if err != nil {
		return ""
	}
	return u
}

// adminLink is the status page's sign-in link button; nil without sign-in pages.
func (ph *projectHealth) adminLink(dir *directory.Directory) func(context.Context, string) (string, error) {
	if ph.makeLink == nil {
		return nil
	}
	return func(_ context.Context, name string) (string, error) {
		p, ok := dir.Project(name)
		if !ok {
			return "", fmt.Errorf("no project named %s", name)
		}
		return ph.makeLink(p)
	}
}

// register adds the health metrics and Go's and the process's collectors to reg, and returns what
// /metrics serves: reg, without the project label when metrics.project_label is off.
func (ph *projectHealth) register(reg *prometheus.Registry, cfg *config.Config) prometheus.Gatherer {
	reg.MustRegister(
		ph.tracker.Collector(),
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
	)
	if !cfg.Metrics.ProjectLabel {
		return health.WithoutLabel(reg, "project")
	}
	return reg
}

// run keeps the Tracker in step with the projects and the stored token states, and posts the
// webhook's events, until ctx ends.
func (ph *projectHealth) run(ctx context.Context, dir *directory.Directory, broker *token.Broker) {
	if ph.webhook != nil {
		go ph.webhook.Run(ctx)
	}
	tick := time.NewTicker(health.SweepInterval)
	defer tick.Stop()
	for {
		ph.sync(dir, broker)
		ph.tracker.Sweep()
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}

// sync tells the Tracker the projects (with their client secrets' expiry), and the OAuth grants
// the token broker knows to need a sign-in (from the store, or from another replica).
//
// The projects are told only when the directory's generation changed (or resyncEvery passed):
// with 100,000 projects, telling them every sweep allocated some 60 MB each time for nothing.
func (ph *projectHealth) sync(dir *directory.Directory, broker *token.Broker) {
	ph.syncMu.Lock()
	if gen, now := dir.Generation(), time.Now(); gen != ph.syncedGen || now.Sub(ph.syncedAt) >= resyncEvery {
		known := make([]health.Project, 0, dir.Len())
		for p := range dir.All() {
			known = append(known, health.Project{Name: p.Name, Disabled: !p.Enabled, Removed: p.IsRemoved(), SecretExpires: secretExpires(p)})
		}
		slices.SortFunc(known, func(a, b health.Project) int { return strings.Compare(a.Name, b.Name) })
		ph.tracker.Sync(known)
		ph.syncedGen, ph.syncedAt = gen, now
	}
	ph.syncMu.Unlock()
	for p := range dir.All() {
		if p.Auth.Type != project.AuthOAuth2 {
			continue
		}
		ts := broker.Status(p.Name)
		if ts.State != project.TokenNeedsReauth {
			continue
		}
		if s := ph.tracker.Status(p.Name); s.Reason == health.ReasonNeedsSignIn {
			continue
		}
		ph.tracker.Record(health.Event{Project: p.Name, Source: health.SourceStore, Reason: health.ReasonNeedsSignIn, Text: secret.Scrub(ts.Reason)})
	}
}

// secretExpires is when p's OAuth client secret expires; zero when unknown or not an OAuth project.
func secretExpires(p project.Project) time.Time {
	if p.Auth.Type != project.AuthOAuth2 || p.Auth.OAuth == nil {
		return time.Time{}
	}
	return p.Auth.OAuth.ClientSecretExpires
}

// milterState is the milter's view of a credential (credential.Manager.State); a credential that
// needs a sign-in is recorded.
func (ph *projectHealth) milterState(creds *credential.Manager) milter.CredentialStateFunc {
	return func(p project.Project) (project.TokenState, string) {
		state, reason := creds.State(p)
		if state == project.TokenNeedsReauth && ph.tracker.Status(p.Name).Reason != health.ReasonNeedsSignIn {
			ph.tracker.Record(health.Event{Project: p.Name, Source: health.SourceMilter, Reason: health.ReasonNeedsSignIn, Text: secret.Scrub(reason)})
		}
		return state, reason
	}
}

// checked wraps a sign-in check (the sign-in page's test after a sign-in) to record its outcome.
func (ph *projectHealth) checked(check func(context.Context, project.Project) error) func(context.Context, project.Project) error {
	return func(ctx context.Context, p project.Project) error {
		err := check(ctx, p)
		ph.tracker.Record(checkEvent(p, health.SourceSignIn, err))
		return err
	}
}

// checkEvent is the health event of a sign-in check of p that ended with err.
func checkEvent(p project.Project, src health.Source, err error) health.Event {
	e := health.Event{Project: p.Name, Source: src, Reason: health.ReasonAccepted}
	if err != nil {
		e.Reason, e.Text, e.Err = health.Classify(err), secret.Scrub(err.Error()), err
	}
	return e
}

// legacyState is the status page's and the API's older "state" of a health status: ok,
// needs_reauth, unhealthy, upstream_down, rate_limited, disabled, removed, client_secret_expiring
// or client_secret_expired.
func legacyState(s health.Status) string {
	switch s.Reason {
	case "":
		return "ok"
	case health.ReasonNeedsSignIn:
		return advice.StateNeedsReauth
	case health.ReasonCredentialRefused, health.ReasonCredentialUnavailable:
		return advice.StateUnhealthy
	case health.ReasonUpstreamDown, health.ReasonUpstreamTimeout, health.ReasonUpstreamDeferred:
		return advice.StateUpstreamDown
	case health.ReasonDisabled:
		return advice.StateDisabled
	case health.ReasonRemoved:
		return advice.StateRemoved
	case health.ReasonClientSecretExpiring:
		return advice.StateClientSecretExpiring
	case health.ReasonClientSecretExpired:
		return advice.StateClientSecretExpired
	}
	return string(s.Reason)
}

// status is the status page's and the API's list: one row per project, from the health model,
// with the token's expiry and what to do next.
func (ph *projectHealth) status(ctx context.Context, dir *directory.Directory, broker *token.Broker, lim *limits.Limiter) []admin.ProjectStatus {
	ph.sync(dir, broker)
	var out []admin.ProjectStatus
	for _, p := range dir.Projects() {
		h := ph.tracker.Status(p.Name)
		row := admin.ProjectStatus{
			Name: p.Name, Enabled: p.Enabled, Auth: string(p.Auth.Type),
			Upstream: p.Upstream.Address(), Senders: p.Senders, ClientSecretExpires: secretExpires(p),
			State: legacyState(h), Health: string(h.State), HealthReason: string(h.Reason), Since: h.Since,
			LastDelivery: h.LastDelivery, LastAttempt: h.LastAttempt, LastError: h.LastErrorText, LastErrorAt: h.LastError,
			Failures: h.Failures, SentHour: h.SentHour, SentDay: h.SentDay,
			PerMinute: p.EffectiveLimits().MessagesPerMinute, PerDay: p.EffectiveLimits().RecipientsPerDay,
		}
		switch h.Reason {
		case health.ReasonClientSecretExpiring:
			row.Reason = "the app registration's client secret expires on " + row.ClientSecretExpires.UTC().Format(time.DateOnly)
		case health.ReasonClientSecretExpired:
			row.Reason = "the app registration's client secret expired on " + row.ClientSecretExpires.UTC().Format(time.DateOnly)
		case "":
		default:
			row.Reason = h.LastErrorText
		}
		err := h.Err
		if p.Auth.Type == project.AuthOAuth2 {
			_ = broker.Observe(ctx, p)
			ts := broker.Status(p.Name)
			row.Expiry = ts.Expiry
			if h.Reason == health.ReasonNeedsSignIn && ts.Reason != "" {
				row.Reason = ts.Reason
			}
			if err == nil {
				err = ts.RejectedErr
			}
		}
		if pause, ok := lim.Paused(p.Name); ok && p.Enabled && !p.IsRemoved() {
			row.State = advice.StateQuotaPaused
			row.Reason = "the upstream reported its sending quota (" + pause.Reason + "); mail is deferred until " + pause.Until.UTC().Format(time.RFC3339)
		}
		switch {
		case p.IsRemoved():
			row.Reason = "removed at " + p.Removed.Format(time.RFC3339) + "; its senders' mail is deferred"
		case !p.Enabled:
			row.Reason = "disabled; its senders' mail is deferred"
		}
		if row.State != "ok" {
			row.Action = advice.Status(p, row.State, err)
			if row.Action == "" && h.LastErrorText != "" {
				row.Action = "see the last error; mail waits in Postfix's queue and is retried"
			}
		}
		out = append(out, row)
	}
	return out
}
