package health

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// countKey is one series of postern_deliveries_total.
type countKey struct {
	project string
	outcome Outcome
	stage   string
	reason  Reason
}

// MetricsOptions configure Collector.
type MetricsOptions struct {
	// NoProjectLabel drops the project label from every metric of this package (the counts are
	// summed over projects, postern_project_health counts projects per state). With it, the
	// series do not grow with the number of projects.
	NoProjectLabel bool
}

// Buckets of the duration histograms, in seconds: from a pooled connection's round trip to a
// slow upstream's minute.
var durationBuckets = []float64{.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 120}

var (
	descDeliveries = []string{"outcome", "stage", "reason"}
	descHealth     = []string{"state"}
)

// collector exposes the Tracker's metrics.
type collector struct {
	t          *Tracker
	perProject bool
	deliveries *prometheus.Desc
	health     *prometheus.Desc
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

// Collector returns the Tracker's metrics for one registry:
//
//   - postern_deliveries_total{project,outcome,stage,reason}: delivery attempts by what Postfix
//     heard (delivered, deferred, refused), the stage where each ended (mail, rcpt, data) and
//     the Reason;
//   - postern_project_health{project,state}: 1 for the project's current state, 0 for the others
//     (without the project label: the number of projects in each state);
//   - postern_delivery_duration_seconds{outcome} and postern_upstream_duration_seconds{step}.
//
// With the project label, postern_deliveries_total has at most one series per project and
// combination seen (in practice 3 to 6 per project), postern_project_health three per project.
func (t *Tracker) Collector(o MetricsOptions) prometheus.Collector {
	var deliveries, health []string
	if !o.NoProjectLabel {
		deliveries, health = []string{"project"}, []string{"project"}
	}
	return &collector{
		t:          t,
		perProject: !o.NoProjectLabel,
		deliveries: prometheus.NewDesc("postern_deliveries_total",
			"Delivery attempts by what Postfix heard (outcome), the stage where each ended and why (reason).",
			append(deliveries, descDeliveries...), nil),
		health: prometheus.NewDesc("postern_project_health",
			"Project health: 1 for each project's current state (ok, degraded, failing), 0 for the others; without the project label, projects per state.",
			append(health, descHealth...), nil),
		duration: t.metrics.duration,
		upstream: t.metrics.upstream,
	}
}

func (c *collector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.deliveries
	ch <- c.health
	c.duration.Describe(ch)
	c.upstream.Describe(ch)
}

func (c *collector) Collect(ch chan<- prometheus.Metric) {
	c.duration.Collect(ch)
	c.upstream.Collect(ch)
	t := c.t
	t.mu.Lock()
	counts := make(map[countKey]int64, len(t.counts))
	for k, n := range t.counts {
		if !c.perProject {
			k.project = ""
		}
		counts[k] += n
	}
	states := make(map[string]State, len(t.projects))
	for n, r := range t.projects {
		states[n] = r.status.State
	}
	t.mu.Unlock()

	for k, n := range counts {
		labels := []string{string(k.outcome), k.stage, string(k.reason)}
		if c.perProject {
			labels = append([]string{k.project}, labels...)
		}
		ch <- prometheus.MustNewConstMetric(c.deliveries, prometheus.CounterValue, float64(n), labels...)
	}
	if c.perProject {
		for n, s := range states {
			for _, st := range States {
				v := 0.0
				if st == s {
					v = 1
				}
				ch <- prometheus.MustNewConstMetric(c.health, prometheus.GaugeValue, v, n, string(st))
			}
		}
		return
	}
	per := map[State]int{}
	for _, s := range states {
		per[s]++
	}
	for _, st := range States {
		ch <- prometheus.MustNewConstMetric(c.health, prometheus.GaugeValue, float64(per[st]), string(st))
	}
}
