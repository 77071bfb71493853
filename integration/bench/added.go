package bench

import (
	"regexp"
	"time"
)

// Postern's added latency per message: how much longer Postern held a message than the upstream
// did. Postern's histograms (postern_delivery_duration_seconds, postern_upstream_duration_seconds)
// cannot give it: they are not per message, so the upstream's share cannot be taken out of each
// delivery, and their smallest bucket is 5 ms. Postern's delivery log line can: its duration= is
// from Postfix's MAIL FROM to the reply Postern gave Postfix, and the sink times the same message
// from Postern's MAIL FROM to the end of its data (sink.Timings). The difference is what Postern
// adds: resolving the sender, taking a pooled connection, the LMTP hop for the body, and
// passing the upstream's reply on. At concurrency 1 the deliveries of a cell follow one another,
// so Postern's n-th log line and the sink's n-th message are the same message.

// AddedLatency is Postern's added latency per message at one message size: path A at concurrency
// 1 on loopback, Messages messages.
type AddedLatency struct {
	Size     int     `json:"size_bytes"`
	Messages int     `json:"messages"`
	P50Micro float64 `json:"p50_us"`
	P99Micro float64 `json:"p99_us"`
}

// addedMessages is how many messages the added latency is measured over, per size.
const addedMessages = 300

// deliveredRE matches Postern's log line for a delivered message and captures its project and
// duration.
var deliveredRE = regexp.MustCompile(`msg=delivered .*?project=(\S+) .*?duration=(\S+)`)

// posternDurations returns the duration= of each delivery of project in Postern's log text, in
// order.
func posternDurations(log, project string) []time.Duration {
	var ds []time.Duration
	for _, m := range deliveredRE.FindAllStringSubmatch(log, -1) {
		if m[1] != project {
			continue
		}
		if d, err := time.ParseDuration(m[2]); err == nil {
			ds = append(ds, d)
		}
	}
	return ds
}

// addedLatency pairs Postern's durations with the sink's timings of the same messages, in order,
// and returns the p50 and p99 of the differences in microseconds; ok is false when the two do not
// count the same messages.
func addedLatency(postern, sink []time.Duration) (p50, p99 float64, ok bool) {
	if len(postern) == 0 || len(postern) != len(sink) {
		return 0, 0, false
	}
	added := make([]float64, len(postern))
	for i := range postern {
		added[i] = float64(postern[i]-sink[i]) / float64(time.Microsecond)
	}
	return percentile(added, 50), percentile(added, 99), true
}
