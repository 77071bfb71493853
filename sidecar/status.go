package sidecar

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/postern/postern/sidecar/admin"
	"github.com/postern/postern/sidecar/directory"
	"github.com/postern/postern/sidecar/project"
	"github.com/postern/postern/sidecar/smtpd"
	"github.com/postern/postern/sidecar/store"
	"github.com/postern/postern/sidecar/token"
	"github.com/postern/postern/sidecar/upstream"
)

// The status page's rows, the metrics and the readiness checks of `postern serve`, read from the
// parts at request time.

// collector exposes what the parts count, read at scrape time.
type collector struct {
	dir       *directory.Directory
	pools     *upstream.Pools
	broker    *token.Broker
	mail      *smtpd.Server
	listeners []*guardedListener // appended to before the servers start
}

var (
	descStoreReads   = prometheus.NewDesc("postern_store_project_reads_total", "Reads of the project list from the store.", nil, nil)
	descProjects     = prometheus.NewDesc("postern_projects", "Projects loaded.", nil, nil)
	descPendingWrite = prometheus.NewDesc("postern_token_pending_writes", "Refreshed tokens not yet written to the store.", nil, nil)
	descRefreshWaits = prometheus.NewDesc("postern_token_refresh_waits_total", "Deliveries that waited for an OAuth token refresh.", nil, nil)
	descWaiting      = prometheus.NewDesc("postern_token_refresh_waiting", "Deliveries waiting for an OAuth token refresh now.", nil, nil)
	descConns        = prometheus.NewDesc("postern_upstream_connections", "Upstream connections by state.", []string{"project", "state"}, nil)
	descDials        = prometheus.NewDesc("postern_upstream_dials_total", "Upstream connections opened.", []string{"project"}, nil)
	descAuthFail     = prometheus.NewDesc("postern_upstream_auth_failures_total", "Upstream AUTH refusals.", []string{"project"}, nil)
	descUp           = prometheus.NewDesc("postern_upstream_up", "0 while a project's upstream is considered down.", []string{"project"}, nil)
	descTokenOK      = prometheus.NewDesc("postern_token_ok", "1 when an OAuth project's grant works, 0 when it needs re-authorisation.", []string{"project"}, nil)
	descSessions     = prometheus.NewDesc("postern_sessions_total", "Connections Postfix opened to deliver to Postern (LMTP and SMTP).", nil, nil)
	descListenConns  = prometheus.NewDesc("postern_listener_connections", "Connections open on each listener.", []string{"listener"}, nil)
	descListenMax    = prometheus.NewDesc("postern_listener_max_connections", "The cap on connections open on each listener (listen.max_connections).", []string{"listener"}, nil)
	descListenFull   = prometheus.NewDesc("postern_listener_full_total", "Times a listener reached its cap; new connections then wait until one closes.", []string{"listener"}, nil)
	descAcceptErrors = prometheus.NewDesc("postern_listener_accept_errors_total", "Failed accepts (such as running out of file descriptors), retried after a backoff.", []string{"listener"}, nil)
	descRecipients   = prometheus.NewDesc("postern_recipients_total", "Recipients by what Postfix heard: delivered, deferred (4xx, retried) or refused (5xx, returned to the sender).", []string{"project", "outcome"}, nil)
)

func (c *collector) Describe(ch chan<- *prometheus.Desc) { prometheus.DescribeByCollect(c, ch) }

func (c *collector) Collect(ch chan<- prometheus.Metric) {
	ch <- prometheus.MustNewConstMetric(descStoreReads, prometheus.CounterValue, float64(c.dir.StoreReads()))
	for _, l := range c.listeners {
		ch <- prometheus.MustNewConstMetric(descListenConns, prometheus.GaugeValue, float64(l.open()), l.name)
		ch <- prometheus.MustNewConstMetric(descListenMax, prometheus.GaugeValue, float64(l.max), l.name)
		ch <- prometheus.MustNewConstMetric(descListenFull, prometheus.CounterValue, float64(l.full.Load()), l.name)
		ch <- prometheus.MustNewConstMetric(descAcceptErrors, prometheus.CounterValue, float64(l.failures.Load()), l.name)
	}
	projects := c.dir.Projects()
	ch <- prometheus.MustNewConstMetric(descProjects, prometheus.GaugeValue, float64(len(projects)))
	ch <- prometheus.MustNewConstMetric(descPendingWrite, prometheus.GaugeValue, float64(c.broker.PendingWrites()))
	ch <- prometheus.MustNewConstMetric(descRefreshWaits, prometheus.CounterValue, float64(c.broker.RefreshWaits()))
	ch <- prometheus.MustNewConstMetric(descWaiting, prometheus.GaugeValue, float64(c.broker.Waiting()))
	ms := c.mail.Stats()
	ch <- prometheus.MustNewConstMetric(descSessions, prometheus.CounterValue, float64(ms.Sessions))
	for name, o := range ms.Recipients {
		ch <- prometheus.MustNewConstMetric(descRecipients, prometheus.CounterValue, float64(o.Delivered), name, "delivered")
		ch <- prometheus.MustNewConstMetric(descRecipients, prometheus.CounterValue, float64(o.Deferred), name, "deferred")
		ch <- prometheus.MustNewConstMetric(descRecipients, prometheus.CounterValue, float64(o.Refused), name, "refused")
	}
	now := time.Now()
	for _, s := range c.pools.Stats() {
		ch <- prometheus.MustNewConstMetric(descConns, prometheus.GaugeValue, float64(s.Idle), s.Project, "idle")
		ch <- prometheus.MustNewConstMetric(descConns, prometheus.GaugeValue, float64(s.InUse), s.Project, "in_use")
		ch <- prometheus.MustNewConstMetric(descDials, prometheus.CounterValue, float64(s.Dials), s.Project)
		ch <- prometheus.MustNewConstMetric(descAuthFail, prometheus.CounterValue, float64(s.AuthFailures), s.Project)
		up := 1.0
		if s.DownUntil.After(now) {
			up = 0
		}
		ch <- prometheus.MustNewConstMetric(descUp, prometheus.GaugeValue, up, s.Project)
	}
	for _, p := range projects {
		if p.Auth.Type != project.AuthOAuth2 {
			continue
		}
		ok := 1.0
		if strings.EqualFold(string(c.broker.Status(p.Name).State), string(project.TokenNeedsReauth)) {
			ok = 0
		}
		ch <- prometheus.MustNewConstMetric(descTokenOK, prometheus.GaugeValue, ok, p.Name)
	}
}

// readiness: not ready until the projects are loaded; degraded (still ready, mail still flows with
// cached credentials) while the store is unreachable or refreshed tokens wait to be written.
func readiness(dir *directory.Directory, st store.Store, broker *token.Broker) []admin.Check {
	return []admin.Check{
		{Name: "projects", Func: func(context.Context) error {
			switch ok, why := dir.Ready(); {
			case !ok:
				return errors.New(why)
			case why != "":
				return fmt.Errorf("%s: %w", why, admin.ErrDegraded)
			}
			return nil
		}},
		{Name: "store", Func: func(context.Context) error {
			h, ok := st.(interface{ Healthy() error })
			if !ok {
				return nil
			}
			if err := h.Healthy(); err != nil {
				return fmt.Errorf("%w: %w", err, admin.ErrDegraded)
			}
			return nil
		}},
		{Name: "token_writes", Func: func(context.Context) error {
			if n := broker.PendingWrites(); n > 0 {
				return fmt.Errorf("%d refreshed token(s) wait to be written to the store: %w", n, admin.ErrDegraded)
			}
			return nil
		}},
	}
}
