package health

import (
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"google.golang.org/protobuf/proto"
)

// countKey is one series of postern_deliveries_total.
type countKey struct {
	project string
	outcome Outcome
	stage   string
	reason  Reason
}

// Buckets of the duration histograms, in seconds: from a pooled connection's round trip to a
// slow upstream's minute.
var durationBuckets = []float64{.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 120}

// collector exposes the Tracker's metrics.
type collector struct {
	t          *Tracker
	deliveries *prometheus.Desc
	health     *prometheus.Desc
	secret     *prometheus.Desc
	duration   *prometheus.HistogramVec
	upstream   *prometheus.HistogramVec
}

// metrics are the Tracker's histograms.
type metrics struct {
	duration *prometheus.HistogramVec
	upstream *prometheus.HistogramVec
}

func newMetrics() *metrics {
	return &metrics{
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "postern_delivery_duration_seconds",
			Help:    "Time from MAIL FROM to the end of a delivery attempt, by what Postfix heard.",
			Buckets: durationBuckets,
		}, []string{"outcome"}),
		upstream: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "postern_upstream_duration_seconds",
			Help:    "Round trips to upstreams by step: acquire (a pooled connection, or connect, TLS, EHLO and AUTH), mail, rcpt, data.",
			Buckets: durationBuckets,
		}, []string{"step"}),
	}
}

// ObserveUpstream records one round trip to an upstream: step is acquire, mail, rcpt or data.
func (t *Tracker) ObserveUpstream(step string, took time.Duration) {
	t.metrics.upstream.WithLabelValues(step).Observe(took.Seconds())
}

// Collector returns the Tracker's metrics for one registry (WithoutLabel drops the project label):
//
//   - postern_deliveries_total{project,outcome,stage,reason}: delivery attempts by what Postfix
//     heard (delivered, deferred, refused), the stage where each ended (mail, rcpt, data) and
//     the Reason;
//   - postern_project_health{project,state}: 1 for the project's current state, 0 for the others;
//   - postern_oauth_client_secret_expiry_timestamp_seconds{project}: when the project's OAuth
//     client secret expires, for the projects whose date is known (Project.SecretExpires);
//   - postern_delivery_duration_seconds{outcome} and postern_upstream_duration_seconds{step}.
//
// With the project label, postern_deliveries_total has at most one series per project and
// combination seen (in practice 3 to 6 per project), postern_project_health three per project,
// the client secret's expiry one per project with a date.
func (t *Tracker) Collector() prometheus.Collector {
	return &collector{
		t: t,
		deliveries: prometheus.NewDesc("postern_deliveries_total",
			"Delivery attempts by what Postfix heard (outcome), the stage where each ended and why (reason).",
			[]string{"project", "outcome", "stage", "reason"}, nil),
		health: prometheus.NewDesc("postern_project_health",
			"Project health: 1 for each project's current state (ok, degraded, failing), 0 for the others; without the project label, projects per state.",
			[]string{"project", "state"}, nil),
		secret: prometheus.NewDesc("postern_oauth_client_secret_expiry_timestamp_seconds",
			"When the app registration's client secret of each OAuth project with a known date expires (Unix time); without the project label, the earliest.",
			[]string{"project"}, nil),
		duration: t.metrics.duration,
		upstream: t.metrics.upstream,
	}
}

func (c *collector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.deliveries
	ch <- c.health
	ch <- c.secret
	c.duration.Describe(ch)
	c.upstream.Describe(ch)
}

func (c *collector) Collect(ch chan<- prometheus.Metric) {
	c.duration.Collect(ch)
	c.upstream.Collect(ch)
	t := c.t
	t.mu.Lock()
	counts := maps.Clone(t.counts)
	states := make(map[string]State, len(t.projects))
	expires := map[string]time.Time{}
	for n, r := range t.projects {
		states[n] = r.status.State
		if !r.secretExpires.IsZero() {
			expires[n] = r.secretExpires
		}
	}
	t.mu.Unlock()

	for k, n := range counts {
		ch <- prometheus.MustNewConstMetric(c.deliveries, prometheus.CounterValue, float64(n), k.project, string(k.outcome), k.stage, string(k.reason))
	}
	for n, s := range states {
		for _, st := range States {
			v := 0.0
			if st == s {
				v = 1
			}
			ch <- prometheus.MustNewConstMetric(c.health, prometheus.GaugeValue, v, n, string(st))
		}
	}
	for n, exp := range expires {
		ch <- prometheus.MustNewConstMetric(c.secret, prometheus.GaugeValue, float64(exp.Unix()), n)
	}
}

// WithoutLabel returns a Gatherer that gathers g and removes label from every counter, gauge and
// untyped sample, summing the samples that then share their labels: with label "project",
// postern_project_health{state} counts the projects in each state and the per-project counters
// become totals, so that the number of series no longer grows with the projects
// (config metrics.project_label: false). A gauge of a time (its name ends in _timestamp_seconds)
// keeps the earliest instead: a sum of times means nothing, the first to come is what an alert
// wants. Histograms and summaries are passed on unchanged.
func WithoutLabel(g prometheus.Gatherer, label string) prometheus.Gatherer {
	return prometheus.GathererFunc(func() ([]*dto.MetricFamily, error) {
		fams, err := g.Gather()
		for _, f := range fams {
			switch f.GetType() {
			case dto.MetricType_COUNTER, dto.MetricType_GAUGE, dto.MetricType_UNTYPED:
			default:
				continue
			}
			if !slices.ContainsFunc(f.Metric, func(m *dto.Metric) bool { return hasLabel(m, label) }) {
				continue
			}
			earliest := f.GetType() == dto.MetricType_GAUGE && strings.HasSuffix(f.GetName(), "_timestamp_seconds")
			merged := map[string]*dto.Metric{}
			var order []string
			for _, m := range f.Metric {
				m = proto.Clone(m).(*dto.Metric)
				m.Label = slices.DeleteFunc(m.Label, func(l *dto.LabelPair) bool { return l.GetName() == label })
				m.TimestampMs = nil
				var key strings.Builder
				for _, l := range m.Label {
					key.WriteString(l.GetName() + "\x00" + l.GetValue() + "\x00")
				}
				k := key.String()
				if prev, ok := merged[k]; ok {
					switch {
					case prev.Counter != nil:
						prev.Counter.Value = proto.Float64(prev.Counter.GetValue() + m.Counter.GetValue())
						prev.Counter.CreatedTimestamp = nil
					case prev.Gauge != nil && earliest:
						prev.Gauge.Value = proto.Float64(min(prev.Gauge.GetValue(), m.Gauge.GetValue()))
					case prev.Gauge != nil:
						prev.Gauge.Value = proto.Float64(prev.Gauge.GetValue() + m.Gauge.GetValue())
					case prev.Untyped != nil:
						prev.Untyped.Value = proto.Float64(prev.Untyped.GetValue() + m.Untyped.GetValue())
					}
					continue
				}
				merged[k] = m
				order = append(order, k)
			}
			f.Metric = f.Metric[:0]
			for _, k := range order {
				f.Metric = append(f.Metric, merged[k])
			}
		}
		return fams, err
	})
}

func hasLabel(m *dto.Metric, label string) bool {
	return slices.ContainsFunc(m.Label, func(l *dto.LabelPair) bool { return l.GetName() == label })
}
