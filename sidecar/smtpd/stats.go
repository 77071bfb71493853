package smtpd

import (
	"maps"
	"sync"
)

// Stats are what a Server has counted since it was made.
type Stats struct {
	// Sessions counts the connections Postfix opened, LMTP and SMTP.
	Sessions int64
	// Recipients counts, by project name, each recipient's outcome as Postfix heard it: at RCPT,
	// or after the message.
	Recipients map[string]Outcomes
}

// Outcomes count recipients by what Postfix heard.
type Outcomes struct {
	Delivered int64 // the upstream took the message
	Deferred  int64 // a temporary failure (4xx): Postfix keeps the message and retries
	Refused   int64 // a definite no (5xx): Postfix returns the message to its sender
}

// counters is the Server's tally behind Stats.
type counters struct {
	mu         sync.Mutex
	sessions   int64
	recipients map[string]*Outcomes
}

func (c *counters) session() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.sessions++
}

// recipient counts one recipient of project whose reply had code (0: accepted).
func (c *counters) recipient(project string, code int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.recipients == nil {
		c.recipients = map[string]*Outcomes{}
	}
	o := c.recipients[project]
	if o == nil {
		o = &Outcomes{}
		c.recipients[project] = o
	}
	switch {
	case code == 0:
		o.Delivered++
	case code >= 500:
		o.Refused++
	default:
		o.Deferred++
	}
}

func (c *counters) stats() Stats {
	c.mu.Lock()
	defer c.mu.Unlock()
	s := Stats{Sessions: c.sessions, Recipients: make(map[string]Outcomes, len(c.recipients))}
	for name, o := range maps.All(c.recipients) {
		s.Recipients[name] = *o
	}
	return s
}

// Stats returns what the server has counted so far.
func (s *Server) Stats() Stats { return s.counts.stats() }
