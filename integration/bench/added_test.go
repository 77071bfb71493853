package bench

import (
	"bytes"
	"log/slog"
	"testing"
	"time"
)

// Postern's delivery lines, as its text log writes them (sidecar/smtpd's session.data), give
// the durations of one project's deliveries in order, and pair with the sink's timings.
func TestAddedLatencyFromDeliveryLog(t *testing.T) {
	var buf bytes.Buffer
	log := slog.New(slog.NewTextHandler(&buf, nil))
	for i, d := range []time.Duration{1500 * time.Microsecond, 2 * time.Millisecond, 900 * time.Microsecond} {
		project := "bench-a"
		if i == 1 {
			project = "other"
		}
		tx := log.With("sender", "bench-a@postern.test").With("queue_id", "4QAbc12").With("project", project).With("recipients", 1, "bytes", 1024)
		tx.Info("delivered", "outcome", "delivered", "upstream_id", "", "duration", d, "upstream_reply", "250 2.0.0 OK: queued")
		tx.Info("refused", "outcome", "deferred", "duration", time.Second)
	}
	got := posternDurations(buf.String(), "bench-a")
	if len(got) != 2 || got[0] != 1500*time.Microsecond || got[1] != 900*time.Microsecond {
		t.Fatalf("durations of bench-a = %v, want [1.5ms 900µs]", got)
	}
	p50, p99, ok := addedLatency(got, []time.Duration{500 * time.Microsecond, 800 * time.Microsecond})
	if !ok || p50 != 100 || p99 != 1000 {
		t.Fatalf("addedLatency = %v, %v, %v; want 100, 1000, true", p50, p99, ok)
	}
	if _, _, ok := addedLatency(got, []time.Duration{time.Millisecond}); ok {
		t.Fatal("addedLatency paired two deliveries with one sink timing")
	}
}
