package smtpd

import (
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/postern/postern/sidecar/limits"
	"github.com/postern/postern/sidecar/upstream/upstreamtest"
)

// fakeClock is a clock the test moves.
type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) Add(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	c.mu.Unlock()
}

// TestRecipientsPerDay: a project's recipients per day are enforced at this replica's share,
// counted by recipients accepted (a transaction the upstream did not take gives its recipients
// back), deferred with the reason when used up, and free again 24 hours later.
func TestRecipientsPerDay(t *testing.T) {
	t.Parallel()
	var refuse atomic.Bool
	up := fakeUpstream(t, upstreamtest.Options{RejectData: func(upstreamtest.Message) *smtp.SMTPError {
		if refuse.Load() {
			return &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 3, 0}, Message: "try later"}
		}
		return nil
	}}, "user@a.example")
	p := basicProject("a", "a.example", up)
	p.Limits.RecipientsPerDay = 6 // two replicas: 3 each
	clock := &fakeClock{now: time.Date(2026, 12, 3, 10, 30, 0, 0, time.UTC)}
	lim := limits.New(limits.Options{Replicas: 2, Now: clock.Now})
	h := newHarness(t, Options{Limiter: lim}, p)
	c := h.dial()

	// Not taken by the upstream: given back.
	refuse.Store(true)
	res := send(t, c, "noreply@a.example", []string{"1@dest.example", "2@dest.example", "3@dest.example"}, body, nil)
	if res.delivered("1@dest.example") {
		t.Fatalf("refused message delivered: %+v", res)
	}
	refuse.Store(false)

	res = send(t, c, "noreply@a.example", []string{"1@dest.example", "2@dest.example"}, body, nil)
	if !res.delivered("1@dest.example") || !res.delivered("2@dest.example") {
		t.Fatalf("first message: %+v", res)
	}
	res = send(t, c, "noreply@a.example", []string{"3@dest.example", "4@dest.example"}, body, nil)
	if !res.delivered("3@dest.example") {
		t.Fatalf("third recipient of the day: %+v", res)
	}
	wantReply(t, "fourth recipient of the day", res.rcpt["4@dest.example"], 451, smtp.EnhancedCode{4, 7, 0}, "daily recipient limit reached for project a (6 recipients a day)")
	if got := lim.RecipientsToday("a"); got != 3 {
		t.Errorf("RecipientsToday = %d, want 3", got)
	}

	clock.Add(24 * time.Hour)
	res = send(t, c, "noreply@a.example", []string{"4@dest.example"}, body, nil)
	if !res.delivered("4@dest.example") {
		t.Fatalf("a day later: %+v", res)
	}
	if n := len(up.Messages()); n != 3 {
		t.Errorf("upstream took %d messages, want 3", n)
	}
}

// TestQuotaReplyPausesProject: a provider's quota reply that comes as a 5xx (here Exchange
// Online's SubmissionQuotaExceeded) is deferred, never bounced, and pauses the project: its next
// message is deferred without reaching the upstream until the pause ends.
func TestQuotaReplyPausesProject(t *testing.T) {
	t.Parallel()
	var quota atomic.Bool
	quota.Store(true)
	up := fakeUpstream(t, upstreamtest.Options{RejectData: func(upstreamtest.Message) *smtp.SMTPError {
		if quota.Load() {
			return &smtp.SMTPError{Code: 554, EnhancedCode: smtp.EnhancedCode{5, 2, 0},
				Message: "STOREDRV.Submission.Exception:SubmissionQuotaExceededException; Failed to process message due to a permanent exception with message Cannot submit message."}
		}
		return nil
	}}, "user@a.example")
	clock := &fakeClock{now: time.Date(2026, 12, 3, 10, 30, 0, 0, time.UTC)}
	lim := limits.New(limits.Options{Now: clock.Now})
	h := newHarness(t, Options{Limiter: lim}, basicProject("a", "a.example", up))
	c := h.dial()

	res := send(t, c, "noreply@a.example", []string{"x@dest.example"}, body, nil)
	wantReply(t, "DATA refused by the quota", res.data["x@dest.example"], 451, smtp.EnhancedCode{4, 2, 0}, "SubmissionQuotaExceeded")
	pause, ok := lim.Paused("a")
	if !ok || !pause.Until.Equal(time.Date(2026, 12, 3, 11, 0, 0, 0, time.UTC)) {
		t.Fatalf("Paused = %+v, %v; want a pause until 11:00", pause, ok)
	}

	quota.Store(false)
	before := up.Stats().Conns
	res = send(t, c, "noreply@a.example", []string{"x@dest.example"}, body, nil)
	wantReply(t, "MAIL while paused", res.mail, 451, smtp.EnhancedCode{4, 7, 0}, "project a is paused until 11:00 UTC")
	if got := up.Stats().Conns; got != before || len(up.Messages()) != 0 {
		t.Errorf("the paused project reached the upstream: %d connections (before %d), %d messages", got, before, len(up.Messages()))
	}

	clock.Add(31 * time.Minute)
	if res := send(t, c, "noreply@a.example", []string{"x@dest.example"}, body, nil); !res.delivered("x@dest.example") {
		t.Fatalf("after the pause: %+v", res)
	}
}
