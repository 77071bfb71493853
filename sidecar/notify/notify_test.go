package notify_test

import (
	"context"
	"crypto/hmac"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/postern/postern/sidecar/health"
	"github.com/postern/postern/sidecar/notify"
	"github.com/postern/postern/sidecar/secret"
)

// receiver is a webhook receiver that fails the first fail POSTs.
type receiver struct {
	mu     sync.Mutex
	fail   int
	posts  int
	events []notify.Event
	ids    []string
	sigOK  bool
	got    chan struct{}
}

func (r *receiver) ServeHTTP(w http.ResponseWriter, req *http.Request) {
	body, _ := io.ReadAll(req.Body)
	r.mu.Lock()
	defer r.mu.Unlock()
	r.posts++
	r.sigOK = hmac.Equal([]byte(req.Header.Get(notify.SignatureHeader)), []byte(notify.Sign(secret.New("k"), body)))
	r.ids = append(r.ids, req.Header.Get(notify.EventIDHeader))
	if r.fail > 0 {
		r.fail--
		http.Error(w, "not now", http.StatusServiceUnavailable)
		return
	}
	var e notify.Event
	_ = json.Unmarshal(body, &e)
	r.events = append(r.events, e)
	r.got <- struct{}{}
}

func change(from, to health.State, reason health.Reason, text string) health.Change {
	return health.Change{Project: "a", From: health.Status{State: from}, To: health.Status{State: to, Reason: reason, LastErrorText: text}}
}

func TestWebhookSignsRetriesAndDeduplicates(t *testing.T) {
	rcv := &receiver{fail: 2, got: make(chan struct{}, 10)}
	srv := httptest.NewServer(rcv)
	defer srv.Close()
	w, err := notify.NewWebhook(notify.WebhookOptions{
		URL: srv.URL, Secret: secret.New("k"), RetryMin: time.Millisecond, RetryMax: 5 * time.Millisecond,
		SignInLink: func(p string) string { return "https://postern.example/signin/link-for-" + p },
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go w.Run(ctx)

	w.Change(change(health.StateOK, health.StateDegraded, health.ReasonUpstreamDown, ""))                       // no event
	w.Change(change(health.StateDegraded, health.StateFailing, health.ReasonCredentialRefused, "535 5.7.8 no")) // failing
	w.Change(change(health.StateFailing, health.StateFailing, health.ReasonUpstreamDown, ""))                   // repeat: none
	w.Change(change(health.StateFailing, health.StateFailing, health.ReasonNeedsSignIn, "invalid_grant"))       // needs_sign_in
	w.Change(change(health.StateFailing, health.StateOK, "", ""))                                               // recovered
	w.Change(change(health.StateFailing, health.StateOK, "", ""))                                               // repeat: none
	for range 3 {
		select {
		case <-rcv.got:
		case <-time.After(10 * time.Second):
			t.Fatalf("timed out; got %+v", rcv.events)
		}
	}
	time.Sleep(50 * time.Millisecond)
	rcv.mu.Lock()
	defer rcv.mu.Unlock()
	var names []string
	for _, e := range rcv.events {
		names = append(names, e.Event)
	}
	if strings.Join(names, ",") != "failing,needs_sign_in,recovered" {
		t.Errorf("events %v", names)
	}
	if rcv.posts != 5 || rcv.ids[0] != rcv.ids[1] || rcv.ids[1] != rcv.ids[2] {
		t.Errorf("%d posts with ids %v: want the first event tried 3 times with one id", rcv.posts, rcv.ids)
	}
	if !rcv.sigOK {
		t.Error("bad signature")
	}
	if e := rcv.events[0]; e.Detail != "535 5.7.8 no" || e.Project != "a" || e.Reason != "credential_refused" {
		t.Errorf("failing event %+v", e)
	}
	if e := rcv.events[1]; e.SignInURL != "https://postern.example/signin/link-for-a" {
		t.Errorf("needs_sign_in event without the sign-in link: %+v", e)
	}
}

func TestNewWebhookNeedsURLAndSecret(t *testing.T) {
	_, err := notify.NewWebhook(notify.WebhookOptions{})
	if err == nil || !strings.Contains(err.Error(), "URL") || !strings.Contains(err.Error(), "secret") {
		t.Errorf("err = %v, want both problems", err)
	}
}
