// Package health is the one health model of Postern's projects. It decides whether a project is
// ok, degraded or failing, and why, from what actually happened on its last attempts; the status
// page, the project API, the metrics, the milter and the notifications all read it, so they
// always agree.
//
//  1. Whoever sees an attempt records it (Tracker.Record): smtpd at the stage where each delivery
//     ended, the milter when it turns a submission away for a credential, the sign-in page's test
//     after a sign-in, and `postern check`. An Event names the project, the Reason (a short,
//     bounded list: Reason values are metric labels) and the upstream's or provider's words.
//  2. The Tracker derives the state (Derive):
//     - an accepted delivery or a successful check makes the project ok and clears what went before;
//     - a refused credential or a needed sign-in makes it failing at once: no later attempt can
//     succeed until a person acts;
//     - an upstream that cannot be reached, times out, or defers at MAIL FROM makes it degraded, and
//     failing once that has lasted FailAttempts attempts or FailAfter;
//     - a local rate limit makes it degraded, and so does being disabled or removed (Sync), whatever
//     the attempts say: the mail waits by design, not by fault;
//     - an OAuth client secret that expires within Options.SecretWarning (its date comes with the
//     project, Sync) makes an otherwise ok project degraded, and an expired one makes it failing:
//     the attempts may still succeed on a cached token, but not for long. Neither hides a
//     failing state the attempts gave;
//     - anything else (a recipient the upstream refused, a message too large) says nothing about
//     the project's health and leaves it as it was.
//     A failing project stays failing until a delivery or a check succeeds.
//  3. Each change of the derived state is handed to the subscribers (Options.OnChange): the
//     notifications (package notify) send "failing", "needs_sign_in" and "recovered" from it.
//     Run re-derives every project periodically, so that a state that turns failing with time
//     alone is noticed.
//  4. Collector exposes the counts and states as Prometheus metrics (metrics.go).
package health

import (
	"context"
	"slices"
	"strings"
	"sync"
	"time"
)

// State is a project's health.
type State string

// The states, from best to worst.
const (
	// StateOK: the last attempt that said anything about the project succeeded, or none failed yet.
	StateOK State = "ok"
	// StateDegraded: mail waits, for a reason that may pass by itself or is deliberate.
	StateDegraded State = "degraded"
	// StateFailing: mail piles up and will keep doing so until someone acts.
	StateFailing State = "failing"
)

// States lists every State, for metrics.
var States = []State{StateOK, StateDegraded, StateFailing}

// Reason is why an attempt ended as it did. The values are a fixed list: they are metric labels.
type Reason string

// The reasons.
const (
	// ReasonAccepted: the upstream took the message, or a check signed in.
	ReasonAccepted Reason = "accepted"
	// ReasonCredentialRefused: the upstream refused the credential (535 and kin) for good.
	ReasonCredentialRefused Reason = "credential_refused"
	// ReasonNeedsSignIn: the mailbox owner must sign in again (an OAuth grant no longer works).
	ReasonNeedsSignIn Reason = "needs_sign_in"
	// ReasonUpstreamDown: no reply from the upstream (connect, TLS, greeting, or waiting after such a failure).
	ReasonUpstreamDown Reason = "upstream_down"
	// ReasonUpstreamTimeout: the upstream stopped answering in the middle of an exchange.
	ReasonUpstreamTimeout Reason = "upstream_timeout"
	// ReasonUpstreamDeferred: the upstream's temporary reply (4xx, 421, or a temporary 5xx quota).
	ReasonUpstreamDeferred Reason = "upstream_deferred"
	// ReasonUpstreamRefused: the upstream's definite no to a recipient or a message.
	ReasonUpstreamRefused Reason = "upstream_refused"
	// ReasonRateLimited: the project's own limit held the message.
	ReasonRateLimited Reason = "rate_limited"
	// ReasonDisabled: the project is disabled.
	ReasonDisabled Reason = "disabled"
	// ReasonRemoved: the project was removed; its queued mail waits.
	ReasonRemoved Reason = "removed"
	// ReasonCredentialUnavailable: the credential could not be had (store, identity provider or
	// credential provider unreachable).
	ReasonCredentialUnavailable Reason = "credential_unavailable"
	// ReasonMessage: the message itself was refused locally (size, recipients, address).
	ReasonMessage Reason = "message"
	// ReasonNoProject: the sender belongs to no project (no project to record it against).
	ReasonNoProject Reason = "no_project"
	// ReasonStoreUnavailable: the projects could not be read.
	ReasonStoreUnavailable Reason = "store_unavailable"
	// ReasonShuttingDown: Postern was stopping.
	ReasonShuttingDown Reason = "shutting_down"
	// ReasonOther: anything else.
	ReasonOther Reason = "other"
	// ReasonClientSecretExpiring: the app registration's client secret expires within
	// Options.SecretWarning. Not an attempt's reason: it comes from the project (Sync).
	ReasonClientSecretExpiring Reason = "client_secret_expiring"
	// ReasonClientSecretExpired: the app registration's client secret has expired (Sync).
	ReasonClientSecretExpired Reason = "client_secret_expired"
)

// Reasons lists every Reason, for metrics and tests.
var Reasons = []Reason{
	ReasonAccepted, ReasonCredentialRefused, ReasonNeedsSignIn, ReasonUpstreamDown, ReasonUpstreamTimeout,
	ReasonUpstreamDeferred, ReasonUpstreamRefused, ReasonRateLimited, ReasonDisabled, ReasonRemoved,
	ReasonCredentialUnavailable, ReasonMessage, ReasonNoProject, ReasonStoreUnavailable, ReasonShuttingDown, ReasonOther,
	ReasonClientSecretExpiring, ReasonClientSecretExpired,
}

// effect is what a reason does to the state (step 2 of the package comment).
type effect int

const (
	none     effect = iota // says nothing about the project
	recovers               // ok
	fails                  // failing at once
	wears                  // degraded, failing with time
	waits                  // degraded
)

func (r Reason) effect() effect {
	switch r {
	case ReasonAccepted:
		return recovers
	case ReasonCredentialRefused, ReasonNeedsSignIn:
		return fails
	case ReasonUpstreamDown, ReasonUpstreamTimeout, ReasonUpstreamDeferred, ReasonCredentialUnavailable:
		return wears
	case ReasonRateLimited:
		return waits
	}
	return none
}

// Source says who saw an attempt.
type Source string

// The sources.
const (
	SourceDelivery Source = "delivery" // smtpd
	SourceMilter   Source = "milter"
	SourceSignIn   Source = "signin" // the sign-in page's test after a sign-in
	SourceCheck    Source = "check"  // postern check
	SourceStore    Source = "store"  // the stored token state (needs_reauth)
)

// Outcome is what Postfix heard.
type Outcome string

// The outcomes.
const (
	OutcomeDelivered Outcome = "delivered" // the upstream took the message
	OutcomeDeferred  Outcome = "deferred"  // 4xx: Postfix keeps the message and retries
	OutcomeRefused   Outcome = "refused"   // 5xx: Postfix returns the message to its sender
	OutcomeChecked   Outcome = "checked"   // not a delivery (a check, the milter, the store)
)

// Event is one attempt's end.
type Event struct {
	Project string
	Source  Source
	// Stage is where it ended: mail, rcpt or data for a delivery; "" elsewhere.
	Stage   string
	Outcome Outcome
	Reason  Reason
	// Text is the upstream's or the provider's words, or the error: shown to operators. It must
	// name no secret (the caller scrubs it).
	Text string
	// Err is the failure itself, for advice on what to do (package advice); never shown as it is.
	Err error
	// Took is how long the attempt took (a delivery: from MAIL FROM to its end).
	Took time.Duration
	// At is when it ended; zero means now.
	At time.Time
}

// Status is a project's health at one moment.
type Status struct {
	Project string `json:"-"`
	State   State  `json:"state"`
	// Reason is why the project is not ok; "" when it is.
	Reason Reason `json:"reason,omitempty"`
	// Since is when the project entered State (zero: no attempt seen).
	Since time.Time `json:"since,omitzero"`
	// LastAttempt, LastDelivery and LastError are when the last attempt, the last accepted
	// delivery and the last failure ended.
	LastAttempt  time.Time `json:"last_attempt,omitzero"`
	LastDelivery time.Time `json:"last_delivery,omitzero"`
	LastError    time.Time `json:"last_error_at,omitzero"`
	// LastErrorText is the last failure in the upstream's or provider's words.
	LastErrorText string `json:"last_error,omitempty"`
	// Err is the last failure itself (Event.Err), for advice.
	Err error `json:"-"`
	// Failures counts the failed attempts since the last success.
	Failures int `json:"failures,omitempty"`
	// SentHour and SentDay count the messages the upstream took in the last hour and day.
	SentHour int `json:"sent_last_hour"`
	SentDay  int `json:"sent_last_day"`
}

// Change is a change of a project's derived state, handed to Options.OnChange.
type Change struct {
	Project string
	From    Status
	To      Status
}

// Options configure a Tracker. The zero value is usable.
type Options struct {
	// FailAttempts turns a degraded project (upstream down, timing out or deferring) failing after
	// this many failed attempts in a row. Zero means DefaultFailAttempts.
	FailAttempts int
	// FailAfter turns it failing once its first failure in a row is this old. Zero means
	// DefaultFailAfter.
	FailAfter time.Duration
	// OnChange is called, outside the Tracker's lock and in order, with each change of a project's
	// state or reason. Nil: nobody is told.
	OnChange func(Change)
	// SecretWarning makes a project degraded once its OAuth client secret expires within this
	// long (config tokens.client_secret_warning). Zero means DefaultSecretWarning.
	SecretWarning time.Duration
	// Now is the clock. Nil means time.Now.
	Now func() time.Time
}

// Defaults of Options.
const (
	DefaultFailAttempts = 3
	DefaultFailAfter    = 5 * time.Minute
	// DefaultSecretWarning is 30 days: time to make a new client secret in the provider's portal.
	DefaultSecretWarning = 30 * 24 * time.Hour
	// SweepInterval is how often Run re-derives every project.
	SweepInterval = 15 * time.Second
)

// record is what the Tracker keeps of a project.
type record struct {
	status Status
	// streak is the reason of the failures in a row (the worst seen since the last success).
	streak Reason
	// wearing counts the failures in a row that wear (step 2), since firstWear.
	wearing   int
	firstWear time.Time
	// paused is ReasonDisabled or ReasonRemoved while the project is (Sync).
	paused Reason
	// secretExpires is when the project's OAuth client secret expires (Sync); zero: unknown.
	secretExpires time.Time
	// told is the state last handed to OnChange.
	told Status
	// sent counts accepted messages over the last hour and day; nil until the first one, so that
	// a project that never sent costs nothing (100,000 projects).
	sent *sentRing
}

// Tracker holds the health of every project. It is safe for concurrent use.
type Tracker struct {
	opts Options

	mu       sync.Mutex
	projects map[string]*record
	counts   map[countKey]int64 // deliveries by label set, for the metrics
	metrics  *metrics

	notifyMu sync.Mutex // keeps OnChange calls in order
}

// New returns a Tracker.
func New(o Options) *Tracker {
	if o.FailAttempts <= 0 {
		o.FailAttempts = DefaultFailAttempts
	}
	if o.FailAfter <= 0 {
		o.FailAfter = DefaultFailAfter
	}
	if o.SecretWarning <= 0 {
		o.SecretWarning = DefaultSecretWarning
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	return &Tracker{opts: o, projects: map[string]*record{}, counts: map[countKey]int64{}, metrics: newMetrics()}
}

// Record records one attempt (step 1) and tells the subscribers if the project's state changed.
func (t *Tracker) Record(e Event) {
	if e.At.IsZero() {
		e.At = t.opts.Now()
	}
	if e.Outcome == "" {
		e.Outcome = OutcomeChecked
	}
	var changes []Change
	t.mu.Lock()
	if e.Source == SourceDelivery {
		t.counts[countKey{e.Project, e.Outcome, e.Stage, e.Reason}]++
		if e.Took > 0 {
			t.metrics.duration.WithLabelValues(string(e.Outcome)).Observe(e.Took.Seconds())
		}
	}
	if e.Project != "" {
		r := t.rec(e.Project)
		apply(r, e)
		changes = t.derive(r, e.At, changes)
	}
	t.mu.Unlock()
	t.tell(changes)
}

func (t *Tracker) rec(name string) *record {
	r := t.projects[name]
	if r == nil {
		r = &record{status: Status{Project: name, State: StateOK}}
		r.told = r.status
		t.projects[name] = r
	}
	return r
}

// apply folds e into r's facts; derive turns them into the state.
func apply(r *record, e Event) {
	s := &r.status
	eff := e.Reason.effect()
	if eff == none {
		return
	}
	s.LastAttempt = e.At
	switch eff {
	case recovers:
		r.streak, r.wearing, r.firstWear, s.Failures = "", 0, time.Time{}, 0
		if e.Source == SourceDelivery {
			s.LastDelivery = e.At
			if r.sent == nil {
				r.sent = new(sentRing)
			}
			r.sent.add(e.At)
		}
		return
	}
	s.LastError, s.LastErrorText, s.Err = e.At, e.Text, e.Err
	s.Failures++
	if eff == wears {
		if r.wearing == 0 {
			r.firstWear = e.At
		}
		r.wearing++
	}
	// The streak keeps the worst reason: a refused credential is not hidden by a later
	// "upstream down" answered while waiting.
	if r.streak == "" || eff == fails || r.streak.effect() != fails {
		r.streak = e.Reason
	}
}

// derive computes r's state at now (step 2) and appends a change if it differs from what was told.
func (t *Tracker) derive(r *record, now time.Time, changes []Change) []Change {
	s := &r.status
	state, reason := StateOK, Reason("")
	switch r.streak.effect() {
	case fails:
		state, reason = StateFailing, r.streak
	case wears:
		state, reason = StateDegraded, r.streak
		if r.wearing >= t.opts.FailAttempts || (r.wearing > 0 && now.Sub(r.firstWear) >= t.opts.FailAfter) {
			state = StateFailing
		}
	case waits:
		state, reason = StateDegraded, r.streak
	}
	if exp := r.secretExpires; !exp.IsZero() {
		switch {
		case !now.Before(exp) && state != StateFailing:
			state, reason = StateFailing, ReasonClientSecretExpired
		case now.Before(exp) && exp.Sub(now) <= t.opts.SecretWarning && state == StateOK:
			state, reason = StateDegraded, ReasonClientSecretExpiring
		}
	}
	if r.paused != "" {
		state, reason = StateDegraded, r.paused
	}
	if state != s.State || reason != s.Reason {
		s.State, s.Reason, s.Since = state, reason, now
	}
	if s.State != r.told.State || s.Reason != r.told.Reason {
		changes = append(changes, Change{Project: s.Project, From: r.told, To: *s})
		r.told = *s
	}
	return changes
}

func (t *Tracker) tell(changes []Change) {
	if len(changes) == 0 || t.opts.OnChange == nil {
		return
	}
	t.notifyMu.Lock()
	defer t.notifyMu.Unlock()
	for _, c := range changes {
		t.opts.OnChange(c)
	}
}

// Status returns the health of the named project; a project never seen is ok.
func (t *Tracker) Status(name string) Status {
	t.mu.Lock()
	defer t.mu.Unlock()
	r := t.projects[name]
	if r == nil {
		return Status{Project: name, State: StateOK}
	}
	s := r.status
	s.SentHour, s.SentDay = r.sent.count(t.opts.Now())
	return s
}

// All returns the health of every project seen, by name.
func (t *Tracker) All() []Status {
	t.mu.Lock()
	names := make([]string, 0, len(t.projects))
	for n := range t.projects {
		names = append(names, n)
	}
	t.mu.Unlock()
	slices.Sort(names)
	out := make([]Status, 0, len(names))
	for _, n := range names {
		out = append(out, t.Status(n))
	}
	return out
}

// Project is a project as the store has it, for Sync.
type Project struct {
	Name     string
	Disabled bool
	Removed  bool
	// SecretExpires is when the project's OAuth client secret expires; zero: unknown, or no
	// client secret.
	SecretExpires time.Time
}

// Sync makes the Tracker know exactly the given projects (those loaded from the store): a new
// one starts ok, a purged one is forgotten (so that neither the Tracker nor the metrics grow with
// every project ever seen), a disabled or removed one is degraded for that reason, and one whose
// client secret expires soon or has expired is degraded or failing (step 2). Changes are told as
// by Record.
func (t *Tracker) Sync(projects []Project) {
	now := t.opts.Now()
	keep := make(map[string]bool, len(projects))
	var changes []Change
	t.mu.Lock()
	for _, p := range projects {
		keep[p.Name] = true
		r := t.rec(p.Name)
		switch {
		case p.Removed:
			r.paused = ReasonRemoved
		case p.Disabled:
			r.paused = ReasonDisabled
		default:
			r.paused = ""
		}
		r.secretExpires = p.SecretExpires
		changes = t.derive(r, now, changes)
	}
	for n := range t.projects {
		if !keep[n] {
			delete(t.projects, n)
		}
	}
	for k := range t.counts {
		if k.project != "" && !keep[k.project] {
			delete(t.counts, k)
		}
	}
	t.mu.Unlock()
	t.tell(changes)
}

// Sweep re-derives every project at the current time (a degraded project turns failing with
// time alone) and tells the subscribers.
func (t *Tracker) Sweep() {
	now := t.opts.Now()
	var changes []Change
	t.mu.Lock()
	for _, r := range t.projects {
		changes = t.derive(r, now, changes)
	}
	t.mu.Unlock()
	slices.SortFunc(changes, func(a, b Change) int { return strings.Compare(a.Project, b.Project) })
	t.tell(changes)
}

// Run sweeps every SweepInterval until ctx ends.
func (t *Tracker) Run(ctx context.Context) {
	tick := time.NewTicker(SweepInterval)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
			t.Sweep()
		}
	}
}

// sentRing counts events in twelve 5-minute buckets for the last hour and twenty-four 1-hour
// buckets for the last day: 288 bytes a project. The day is the current hour and the 23 before
// it, so it spans between 23 and 24 hours.
type sentRing struct {
	min5      [12]int32
	min5Epoch [12]int32 // the 5-minute period each slot counts (periods since 1970 fit until 22,000)
	hour      [24]int32
	hourEpoch [24]int32 // the hour each slot counts
}

const bucket = 5 * time.Minute

func (r *sentRing) add(at time.Time) {
	p := int32(at.UnixNano() / int64(bucket))
	if i := p % int32(len(r.min5)); r.min5Epoch[i] != p {
		r.min5Epoch[i], r.min5[i] = p, 1
	} else {
		r.min5[i]++
	}
	h := int32(at.UnixNano() / int64(time.Hour))
	if i := h % int32(len(r.hour)); r.hourEpoch[i] != h {
		r.hourEpoch[i], r.hour[i] = h, 1
	} else {
		r.hour[i]++
	}
}

// count returns the events of the last hour and the last day before now; a nil ring has none.
func (r *sentRing) count(now time.Time) (hour, day int) {
	if r == nil {
		return 0, 0
	}
	p := int32(now.UnixNano() / int64(bucket))
	for i, e := range r.min5Epoch {
		if age := p - e; age >= 0 && age < int32(len(r.min5)) {
			hour += int(r.min5[i])
		}
	}
	h := int32(now.UnixNano() / int64(time.Hour))
	for i, e := range r.hourEpoch {
		if age := h - e; age >= 0 && age < int32(len(r.hour)) {
			day += int(r.hour[i])
		}
	}
	return hour, day
}
