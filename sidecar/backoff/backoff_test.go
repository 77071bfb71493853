package backoff_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/postern/postern/sidecar/backoff"
)

func TestDoubling(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name     string
		b        backoff.Doubling
		failures int
		want     time.Duration
	}{
		{"first", backoff.Doubling{Min: time.Second, Max: 5 * time.Minute}, 1, time.Second},
		{"second", backoff.Doubling{Min: time.Second, Max: 5 * time.Minute}, 2, 2 * time.Second},
		{"ninth", backoff.Doubling{Min: time.Second, Max: 5 * time.Minute}, 9, 256 * time.Second},
		{"capped", backoff.Doubling{Min: time.Second, Max: 5 * time.Minute}, 10, 5 * time.Minute},
		{"zero failures", backoff.Doubling{Min: time.Second, Max: time.Minute}, 0, time.Second},
		{"zero value", backoff.Doubling{}, 1, time.Second},
		{"zero value capped", backoff.Doubling{}, 100, 5 * time.Minute},
		{"max below min", backoff.Doubling{Min: 10 * time.Minute, Max: time.Minute}, 3, 10 * time.Minute},
		{"accept first", backoff.Accept(), 1, 5 * time.Millisecond},
		{"accept eighth", backoff.Accept(), 8, 640 * time.Millisecond},
		{"accept capped", backoff.Accept(), 9, time.Second},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			if got := tc.b.Delay(tc.failures); got != tc.want {
				t.Fatalf("%+v.Delay(%d) = %v, want %v", tc.b, tc.failures, got, tc.want)
			}
		})
	}
}

func ExampleDoubling() {
	b := backoff.Doubling{Min: time.Second, Max: 10 * time.Second}
	for failures := 1; failures <= 5; failures++ {
		fmt.Println(b.Delay(failures))
	}
	// Output:
	// 1s
	// 2s
	// 4s
	// 8s
	// 10s
}

func TestSleep(t *testing.T) {
	t.Parallel()
	if !backoff.Sleep(t.Context(), time.Millisecond) {
		t.Error("Sleep did not run to its end")
	}
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	if backoff.Sleep(ctx, time.Hour) {
		t.Error("Sleep ran to its end after ctx ended")
	}
}
