package harness

import (
	"context"
	"fmt"
	"regexp"
	"sort"
	"strings"
	"sync"
	"time"
)

// Batch is a numbered set of messages submitted through the front Postfix, each with a unique
// Message-ID, so that a fault test can count what became of every one: arrived at the upstream,
// still in the front's queue, bounced, arrived more than once.
//
//  1. NewBatch names the batch; its messages' IDs are "<name>-0000", "<name>-0001", ...
//  2. Submit sends one message, retrying while the front answers 4xx (as an application does:
//     with Postern down, the front's sender lookup fails and it refuses for a moment).
//  3. After the fault has ended and the queue was flushed, Count says what became of each.
type Batch struct {
	// Name prefixes every message's ID.
	Name string

	front *Front
	mu    sync.Mutex
	sent  []batchMessage
	// retries counts submissions the front answered with 4xx and that were tried again.
	retries int
}

type batchMessage struct {
	id, queueID string
}

// NewBatch starts an empty batch submitted through f.
func NewBatch(name string, f *Front) *Batch {
	return &Batch{Name: name, front: f}
}

// Len is how many messages the front accepted so far.
func (b *Batch) Len() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return len(b.sent)
}

// Submit numbers m (its ID is set from the batch), submits it and records its queue ID. While the
// front answers with a 4xx reply it tries again every 200ms, until ctx ends.
func (b *Batch) Submit(ctx context.Context, m *Mail) error {
	b.mu.Lock()
	m.ID = fmt.Sprintf("%s-%04d", b.Name, len(b.sent))
	b.mu.Unlock()
	for {
		s, err := b.front.Submit(ctx, m)
		if err == nil {
			if s.QueueID == "" {
				return fmt.Errorf("submitting %s: no queue ID in the front's reply %q", m.ID, s.Reply)
			}
			b.mu.Lock()
			b.sent = append(b.sent, batchMessage{id: m.ID, queueID: s.QueueID})
			b.mu.Unlock()
			return nil
		}
		if code, _ := SMTPCode(err); code < 400 || code >= 500 {
			return fmt.Errorf("submitting %s: %w", m.ID, err)
		}
		b.mu.Lock()
		b.retries++
		b.mu.Unlock()
		select {
		case <-ctx.Done():
			return fmt.Errorf("submitting %s: %w (last: %v)", m.ID, ctx.Err(), err)
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// BatchCounts is what became of a batch's messages.
type BatchCounts struct {
	// Sent is how many messages the front accepted.
	Sent int
	// Delivered is how many distinct messages arrived at the upstream, by Message-ID.
	Delivered int
	// Queued is how many are still in the front's queue (and did not arrive).
	Queued int
	// Bounced is how many the front bounced (a status=bounced log line of the message).
	Bounced int
	// Duplicates is how many extra copies arrived: the sum over messages of copies - 1.
	Duplicates int
	// Deferred is how many the front deferred at least once (status=deferred): retried, not
	// bounced.
	Deferred int
	// SubmitRetries is how many submissions the front answered with 4xx and that were retried.
	SubmitRetries int
	// Lost names the messages neither delivered nor queued (at most ten).
	Lost []string
}

// OK reports whether nothing was lost or bounced: Delivered + Queued == Sent and no bounce.
// Duplicates are the caller's to judge.
func (c BatchCounts) OK() bool {
	return c.Delivered+c.Queued == c.Sent && c.Bounced == 0
}

// Row is a one-line table row: sent, delivered, queued, bounced, duplicates, deferred.
func (c BatchCounts) Row(name string) string {
	return fmt.Sprintf("| %-32s | %5d | %9d | %6d | %7d | %10d | %8d |",
		name, c.Sent, c.Delivered, c.Queued, c.Bounced, c.Duplicates, c.Deferred)
}

// RowHeader is the header of Row's table.
const RowHeader = "| case                             |  sent | delivered | queued | bounced | duplicates | deferred |"

// Line is the machine-readable summary: "fault-matrix: case=... sent=N delivered=N ...".
func (c BatchCounts) Line(name string) string {
	return fmt.Sprintf("fault-matrix: case=%s sent=%d delivered=%d queued=%d bounced=%d duplicates=%d deferred=%d submit_retries=%d",
		name, c.Sent, c.Delivered, c.Queued, c.Bounced, c.Duplicates, c.Deferred, c.SubmitRetries)
}

// Count reads the mailboxes the batch was sent to, the front's queue and the front's log.
func (b *Batch) Count(ctx context.Context, mailboxes ...Maildir) (BatchCounts, error) {
	b.mu.Lock()
	sent := append([]batchMessage(nil), b.sent...)
	c := BatchCounts{Sent: len(sent), SubmitRetries: b.retries}
	b.mu.Unlock()

	copies := map[string]int{}
	for _, mb := range mailboxes {
		msgs, err := mb.Messages()
		if err != nil {
			return c, err
		}
		for _, m := range msgs {
			if id := m.ID(); strings.HasPrefix(id, b.Name+"-") {
				copies[id]++
			}
		}
	}
	q, err := b.front.Queue(ctx)
	if err != nil {
		return c, err
	}
	queued := map[string]bool{}
	for _, m := range q {
		queued[m.QueueID] = true
	}
	bounced, deferred := map[string]bool{}, map[string]bool{}
	statusRE := regexp.MustCompile(`\b([0-9A-Za-z]+): to=<[^>]*>, .*status=(bounced|deferred|expired)`)
	for _, l := range b.front.LogLines(statusRE) {
		mm := statusRE.FindStringSubmatch(l)
		if mm[2] == "deferred" {
			deferred[mm[1]] = true
		} else {
			bounced[mm[1]] = true
		}
	}
	for _, m := range sent {
		n := copies[m.id]
		switch {
		case n > 0:
			c.Delivered++
			c.Duplicates += n - 1
		case queued[m.queueID]:
			c.Queued++
		default:
			if len(c.Lost) < 10 {
				c.Lost = append(c.Lost, m.id+" ("+m.queueID+")")
			}
		}
		if bounced[m.queueID] {
			c.Bounced++
		}
		if deferred[m.queueID] {
			c.Deferred++
		}
	}
	sort.Strings(c.Lost)
	return c, nil
}
