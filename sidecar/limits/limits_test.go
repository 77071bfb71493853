package limits

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/postern/postern/sidecar/project"
)

func TestShare(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct{ limit, replicas, want int }{
		{3, 1, 3}, {3, 2, 1}, {3, 3, 1}, {6, 2, 3}, {10000, 3, 3333},
		{2, 4, 1}, // fewer than the replicas: each still gets one (see the package doc)
		{0, 2, 0}, // no limit stays none
	} {
		if got := Share(tc.limit, tc.replicas); got != tc.want {
			t.Errorf("Share(%d, %d) = %d, want %d", tc.limit, tc.replicas, got, tc.want)
		}
	}
}

func TestConnectionsWithProviderDefaults(t *testing.T) {
	t.Parallel()
	ms := project.Project{Name: "m", Upstream: project.Upstream{Host: "smtp.office365.com", Port: 587}}
	other := project.Project{Name: "o", Upstream: project.Upstream{Host: "mail.example", Port: 587}, Limits: project.Limits{MaxConnections: 10}}
	l := New(Options{Replicas: 2})
	if got := l.Connections(ms); got != 1 {
		t.Errorf("Microsoft project, 2 replicas: %d connections, want 1 (3 / 2)", got)
	}
	if got := l.Connections(other); got != 5 {
		t.Errorf("10 connections, 2 replicas: %d, want 5", got)
	}
}

// TestWaitMessageShare: the messages-per-minute share is limit / replicas; a message that cannot
// have a slot within the wait fails at once.
func TestWaitMessageShare(t *testing.T) {
	t.Parallel()
	now := time.Date(2026, 12, 3, 10, 0, 0, 0, time.UTC)
	clock := func() time.Time { return now }
	p := project.Project{Name: "a", Limits: project.Limits{MessagesPerMinute: 60}}
	ctx := context.Background()
	for _, tc := range []struct {
		replicas int
		gap      time.Duration // between messages
	}{{1, time.Second}, {2, 2 * time.Second}, {3, 3 * time.Second}} {
		l := New(Options{Replicas: tc.replicas, Now: clock})
		if err := l.WaitMessage(ctx, p, 0); err != nil {
			t.Fatalf("%d replicas, first message: %v", tc.replicas, err)
		}
		err := l.WaitMessage(ctx, p, tc.gap-time.Millisecond)
		if !errors.Is(err, ErrRateLimited) {
			t.Fatalf("%d replicas, second message within %s: %v, want ErrRateLimited", tc.replicas, tc.gap-time.Millisecond, err)
		}
		now = now.Add(tc.gap)
		if err := l.WaitMessage(ctx, p, 0); err != nil {
			t.Fatalf("%d replicas, a message %s later: %v", tc.replicas, tc.gap, err)
		}
	}
}

func TestPauseUntilTheNextBoundary(t *testing.T) {
	t.Parallel()
	now := time.Date(2026, 12, 3, 10, 17, 30, 0, time.UTC)
	for _, tc := range []struct {
		pause time.Duration
		want  time.Time
	}{
		{0, time.Date(2026, 12, 3, 11, 0, 0, 0, time.UTC)},
		{time.Minute, time.Date(2026, 12, 3, 10, 18, 0, 0, time.UTC)},
	} {
		l := New(Options{QuotaPause: tc.pause, Now: func() time.Time { return now }})
		if got := l.Pause("a", "Gmail sending limit"); !got.Equal(tc.want) {
			t.Errorf("QuotaPause %s: paused until %s, want %s", tc.pause, got, tc.want)
		}
		if err := l.CheckPaused("a"); !errors.Is(err, ErrPaused) {
			t.Errorf("CheckPaused = %v, want ErrPaused", err)
		}
		if err := l.CheckPaused("b"); err != nil {
			t.Errorf("another project: %v", err)
		}
	}
}
