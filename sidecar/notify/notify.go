// Package notify tells an operator's system when a project starts failing, needs its mailbox
// signed in again, or recovers, by a webhook: a JSON POST signed with HMAC-SHA256.
//
//  1. The health model (package health) hands every change of a project's state to
//     Webhook.Change (health.Options.OnChange).
//  2. Change turns it into an event, or none: "failing" when the project turns failing,
//     "needs_sign_in" when it turns failing because its mailbox must be signed in again (with a
//     fresh sign-in link where the sign-in pages are configured), "recovered" when a project that
//     was failing is ok again. Events are deduplicated per project: an event is not sent again
//     until another event of the project was sent in between.
//  3. Run posts the events in order. The body is signed: header X-Postern-Signature is
//     "sha256=" and the hex HMAC-SHA256 of the body under the configured secret; X-Postern-Event
//     carries an id that stays the same across retries, so that a receiver can drop a repeat.
//     A POST that fails (no answer, or not 2xx) is retried with a doubling backoff
//     (RetryMin to RetryMax) until RetryFor has passed; then it is dropped and logged.
package notify

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/postern/postern/sidecar/health"
	"github.com/postern/postern/sidecar/secret"
)

// The events.
const (
	EventFailing     = "failing"
	EventNeedsSignIn = "needs_sign_in"
	EventRecovered   = "recovered"
)

// Headers of a POST.
const (
	SignatureHeader = "X-Postern-Signature"
	EventIDHeader   = "X-Postern-Event"
)

// Event is the JSON body of a POST.
type Event struct {
	ID      string    `json:"id"`
	Event   string    `json:"event"`
	Project string    `json:"project"`
	State   string    `json:"state"`
	Reason  string    `json:"reason,omitempty"`
	Detail  string    `json:"detail,omitempty"` // the upstream's or provider's words
	Since   time.Time `json:"since,omitzero"`
	At      time.Time `json:"at"`
	// SignInURL is a fresh sign-in link for the mailbox owner (needs_sign_in, where configured).
	SignInURL string `json:"sign_in_url,omitempty"`
	// Instance is the Postern that saw it.
	Instance string `json:"instance,omitempty"`
}

// WebhookOptions configure a Webhook.
type WebhookOptions struct {
	// URL receives the POSTs. Required.
	URL string
	// Secret is the key of the HMAC-SHA256 signature. Required.
	Secret secret.Secret
	// Client posts. Nil: a client with Timeout.
	Client *http.Client
	// Timeout bounds one POST. Zero means 10s.
	Timeout time.Duration
	// RetryMin and RetryMax bound the backoff between tries. Zero means 1s and 5m.
	RetryMin, RetryMax time.Duration
	// RetryFor is how long an event is tried before it is dropped. Zero means 1h.
	RetryFor time.Duration
	// SignInLink returns a fresh sign-in link for the project, or "" (no sign-in pages, or the
	// project cannot be signed in through them). Nil: none.
	SignInLink func(project string) string
	// Instance names this Postern in the events.
	Instance string
	// Logger receives the events sent and dropped. Nil discards.
	Logger *slog.Logger
	// QueueSize bounds the events waiting; over it, new events are dropped and logged. Zero
	// means 10,000.
	QueueSize int
}

// Webhook posts health events. Change is safe for concurrent use; Run sends.
type Webhook struct {
	opts  WebhookOptions
	queue chan Event

	mu   sync.Mutex
	last map[string]string // per project, the last event queued
}

// NewWebhook checks o and returns a Webhook.
func NewWebhook(o WebhookOptions) (*Webhook, error) {
	var errs []error
	if o.URL == "" {
		errs = append(errs, errors.New("notify: the webhook URL is required"))
	}
	if o.Secret.IsZero() {
		errs = append(errs, errors.New("notify: the webhook secret is required"))
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	if o.Timeout <= 0 {
		o.Timeout = 10 * time.Second
	}
	if o.Client == nil {
		o.Client = &http.Client{Timeout: o.Timeout}
	}
	if o.RetryMin <= 0 {
		o.RetryMin = time.Second
	}
	if o.RetryMax <= 0 {
		o.RetryMax = 5 * time.Minute
	}
	if o.RetryFor <= 0 {
		o.RetryFor = time.Hour
	}
	if o.QueueSize <= 0 {
		o.QueueSize = 10000
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	return &Webhook{opts: o, queue: make(chan Event, o.QueueSize), last: map[string]string{}}, nil
}

// LoadSecret reads the webhook's key from path (notify.webhook.secret_file), trimmed of
// surrounding white space.
func LoadSecret(path string) (secret.Secret, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return secret.Secret{}, fmt.Errorf("reading the webhook secret (notify.webhook.secret_file): %w", err)
	}
	s := strings.TrimSpace(string(b))
	if s == "" {
		return secret.Secret{}, fmt.Errorf("the webhook secret file %s is empty", path)
	}
	return secret.New(s), nil
}

// eventFor is the event of a change, or "" (step 2).
func eventFor(c health.Change) string {
	switch {
	case c.To.State == health.StateFailing && c.To.Reason == health.ReasonNeedsSignIn:
		return EventNeedsSignIn
	case c.To.State == health.StateFailing:
		return EventFailing
	case c.To.State == health.StateOK && c.From.State == health.StateFailing:
		return EventRecovered
	}
	return ""
}

// Change queues the event of c, if any and not a repeat (steps 1 and 2).
func (w *Webhook) Change(c health.Change) {
	ev := eventFor(c)
	if ev == "" {
		return
	}
	w.mu.Lock()
	prev := w.last[c.Project]
	if prev == ev || (ev == EventRecovered && prev == "") {
		// A repeat, or a recovery nobody was told the failure of (a failure older than this
		// process): nothing new to say.
		w.mu.Unlock()
		return
	}
	w.last[c.Project] = ev
	w.mu.Unlock()
	e := Event{
		ID: newID(), Event: ev, Project: c.Project, State: string(c.To.State), Reason: string(c.To.Reason),
		Detail: secret.Scrub(c.To.LastErrorText), Since: c.To.Since, At: time.Now().UTC(), Instance: w.opts.Instance,
	}
	if ev == EventRecovered {
		e.Detail = ""
	}
	if ev == EventNeedsSignIn && w.opts.SignInLink != nil {
		e.SignInURL = w.opts.SignInLink(c.Project)
	}
	select {
	case w.queue <- e:
	default:
		w.opts.Logger.Error("notify: too many events waiting; dropped one", "project", e.Project, "event", e.Event)
	}
}

// Run posts the queued events in order until ctx ends (step 3).
func (w *Webhook) Run(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case e := <-w.queue:
			w.deliver(ctx, e)
		}
	}
}

// deliver posts e, retrying with backoff until it is taken or RetryFor has passed.
func (w *Webhook) deliver(ctx context.Context, e Event) {
	body, err := json.Marshal(e)
	if err != nil {
		w.opts.Logger.Error("notify: encoding an event", "err", err)
		return
	}
	deadline := time.Now().Add(w.opts.RetryFor)
	wait := w.opts.RetryMin
	for try := 1; ; try++ {
		err := w.post(ctx, e.ID, body)
		if err == nil {
			w.opts.Logger.Info("notify: sent", "project", e.Project, "event", e.Event, "tries", try)
			return
		}
		if time.Now().Add(wait).After(deadline) || ctx.Err() != nil {
			w.opts.Logger.Error("notify: gave up on an event", "project", e.Project, "event", e.Event, "tries", try, "err", err)
			return
		}
		w.opts.Logger.Warn("notify: the webhook failed; trying again", "project", e.Project, "event", e.Event, "in", wait.Seconds(), "err", err)
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
		}
		wait = min(2*wait, w.opts.RetryMax)
	}
}

func (w *Webhook) post(ctx context.Context, id string, body []byte) error {
	ctx, cancel := context.WithTimeout(ctx, w.opts.Timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, w.opts.URL, bytes.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("User-Agent", "postern")
	req.Header.Set(EventIDHeader, id)
	req.Header.Set(SignatureHeader, Sign(w.opts.Secret, body))
	resp, err := w.opts.Client.Do(req)
	if err != nil {
		return fmt.Errorf("posting to the webhook: %w", err)
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	if resp.StatusCode/100 != 2 {
		return fmt.Errorf("the webhook answered %s", resp.Status)
	}
	return nil
}

// Sign is the value of SignatureHeader for body: "sha256=" and the hex HMAC-SHA256 of body
// under key. A receiver computes the same and compares in constant time (hmac.Equal).
func Sign(key secret.Secret, body []byte) string {
	m := hmac.New(sha256.New, []byte(key.Reveal()))
	m.Write(body)
	return "sha256=" + hex.EncodeToString(m.Sum(nil))
}

func newID() string {
	b := make([]byte, 12)
	rand.Read(b)
	return hex.EncodeToString(b)
}
