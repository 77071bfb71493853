package health

import (
	"fmt"
	"testing"
	"time"
	"unsafe"
)

// A tracker of 100,000 projects must fit a small sidecar: a project that never sent carries no
// count of sent messages, and one that did carries 288 bytes of it, not a day of 5-minute buckets.
func TestSentCountsCostLittle(t *testing.T) {
	t.Parallel()
	tr := New(Options{})
	ps := make([]Project, 1000)
	for i := range ps {
		ps[i] = Project{Name: fmt.Sprintf("p%04d", i)}
	}
	tr.Sync(ps)
	tr.Record(Event{Project: "p0001", Source: SourceDelivery, Reason: ReasonAccepted, At: time.Now()})
	with := 0
	for _, r := range tr.projects {
		if r.sent != nil {
			with++
		}
	}
	if with != 1 {
		t.Errorf("%d projects carry a count of sent messages, want 1 (the one that sent)", with)
	}
	if n := unsafe.Sizeof(sentRing{}); n > 512 {
		t.Errorf("a project's count of sent messages takes %d bytes, want at most 512", n)
	}
}
