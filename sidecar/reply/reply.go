// Package reply is the one policy for what a submitting application and Postfix hear from Postern
// before an upstream has answered: one table from a state (no project, disabled, needs sign-in,
// credential refused, directory unavailable, rate limited, ...) to a reply code, an enhanced
// status code (RFC 3463) and a text. The LMTP/SMTP server (package smtpd) and the milter (package
// milter) both take their replies from it, so the same state reads the same in both.
//
// The rules:
//
//  1. Temporary by default: every operational fault is a 4xx, so mail waits in Postfix's queue;
//     only a definite no (no project for the sender, an address no command can carry, a message
//     over a limit, a From the mailbox may not send as) is a 5xx.
//  2. A reply says what the sending application can know: the sender, the project's name, a
//     limit, the upstream's own reply. What is meant for the operator (the identity provider's
//     reason for a re-authorisation, which command to run) goes to the log, the status page and
//     the adviser (package advice), never into a reply.
//  3. Values from outside (addresses, names) are cleaned: no control characters, bounded length.
package reply

import (
	"fmt"
	"strings"
	"time"
	"unicode/utf8"
)

// Reply is a reply to an SMTP command: "Code Enhanced Text".
type Reply struct {
	Code     int
	Enhanced [3]int
	Text     string
}

// String is the reply line: "451 4.7.0 project a is disabled".
func (r Reply) String() string {
	return fmt.Sprintf("%d %s %s", r.Code, r.EnhancedString(), r.Text)
}

// EnhancedString is the enhanced status code: "4.7.0".
func (r Reply) EnhancedString() string {
	return fmt.Sprintf("%d.%d.%d", r.Enhanced[0], r.Enhanced[1], r.Enhanced[2])
}

// State is a condition that Postern answers itself.
type State int

// The states, in the order of a transaction.
const (
	// ShuttingDown: Postern is stopping.
	ShuttingDown State = iota + 1
	// NestedMail: MAIL inside a transaction.
	NestedMail
	// BadSender: an envelope sender no quoting can carry upstream (Facts.Reason says why).
	BadSender
	// BadRecipient: a recipient no quoting can carry upstream (Facts.Reason says why).
	BadRecipient
	// SMTPUTF8Undeclared: an address beyond ASCII without SMTPUTF8 on MAIL FROM.
	SMTPUTF8Undeclared
	// NoProject: the sender belongs to no project, said at submission (the milter): the
	// application hears a definite no and nothing is queued.
	NoProject
	// NotServedNow: queued mail Postfix routed to Postern whose sender no project serves now (the
	// store was emptied or restored without it, or Postfix's routing disagrees with Postern's).
	// Temporary: the mail already sits in Postfix's queue, and a sender unknown at this moment is
	// an operational fault, not the upstream's no.
	NotServedNow
	// Unavailable: the project directory cannot answer now.
	Unavailable
	// Disabled: the sender's project is disabled.
	Disabled
	// Removed: the sender's project was removed (`postern project remove`); its mail waits until
	// it is added again, purged, or Postfix's queue lifetime ends.
	Removed
	// RateLimited: the project's messages-per-minute budget was not there in time.
	RateLimited
	// QuotaPaused: the project is paused until Facts.Until after its upstream reported a sending
	// quota (Facts.Reason names it).
	QuotaPaused
	// NeedsSignIn: the project's credential needs a person to sign in again.
	NeedsSignIn
	// CredentialRefused: the upstream refused the credential, after a renewal where it can be
	// renewed (Facts.Upstream names the upstream, Facts.Said is its reply).
	CredentialRefused
	// TooManyRecipients: more recipients than the project allows (Facts.Limit, 0 if not known).
	TooManyRecipients
	// RecipientsPerDay: the project's recipients-per-day limit (Facts.Limit) is reached.
	RecipientsPerDay
	// TooLarge: a message over the project's size limit (Facts.Limit, 0 if not known).
	TooLarge
	// LineTooLong: a line of the message over Facts.Limit bytes.
	LineTooLong
	// BadFrom: a From header field that cannot be parsed as addresses.
	BadFrom
	// NoFrom: a message without a From address.
	NoFrom
	// SendAsDenied: a From address the mailbox may not send as (Facts.Address, Facts.Reason lists
	// what it may send as).
	SendAsDenied
	// Temporary: any other fault.
	Temporary
)

// Facts are the values a reply may mention.
type Facts struct {
	Sender   string // envelope sender
	Project  string // project name
	Address  string // the address in question (a From address)
	Reason   string // a reason meant for the sender (an address's syntax error)
	Upstream string // "upstream host:port"
	Said     string // the upstream's reply
	Limit    int64
	Until    time.Time // when a paused project sends again
}

type entry struct {
	code     int
	enhanced [3]int
	text     func(f Facts) string
}

func fixed(s string) func(Facts) string { return func(Facts) string { return s } }

// table is the policy. Keep it in the order of State.
var table = map[State]entry{
	ShuttingDown: {451, [3]int{4, 3, 2}, fixed("Postern is shutting down, try again later")},
	NestedMail:   {503, [3]int{5, 5, 1}, fixed("nested MAIL command")},
	// RFC 3463: X.1.7 is a bad sender's address, X.1.3 a bad destination address.
	BadSender:    {553, [3]int{5, 1, 7}, func(f Facts) string { return "sender address rejected: " + f.Reason }},
	BadRecipient: {553, [3]int{5, 1, 3}, func(f Facts) string { return "recipient address rejected: " + f.Reason }},
	// Postfix's own SMTP server says the same; 5.6.7 is RFC 6531's code for it.
	SMTPUTF8Undeclared: {553, [3]int{5, 6, 7}, fixed("Must declare SMTPUTF8 to send unicode address")},
	NoProject: {550, [3]int{5, 7, 1}, func(f Facts) string {
		return fmt.Sprintf("sender <%s> is not served by Postern", Clean(f.Sender, 320))
	}},
	NotServedNow: {451, [3]int{4, 7, 1}, func(f Facts) string {
		return fmt.Sprintf("sender <%s> is not served by Postern now; the mail waits (add its project, or route the sender elsewhere)", Clean(f.Sender, 320))
	}},
	Unavailable: {451, [3]int{4, 3, 0}, fixed("project configuration is unavailable, try again later")},
	Disabled:    {451, [3]int{4, 7, 0}, func(f Facts) string { return fmt.Sprintf("project %s is disabled", Clean(f.Project, 100)) }},
	Removed: {451, [3]int{4, 7, 0}, func(f Facts) string {
		return fmt.Sprintf("project %s was removed; its mail waits until it is added again or purged", Clean(f.Project, 100))
	}},
	RateLimited: {451, [3]int{4, 7, 0}, func(f Facts) string {
		return fmt.Sprintf("rate limit reached for project %s, try again later", Clean(f.Project, 100))
	}},
	NeedsSignIn: {451, [3]int{4, 7, 0}, func(f Facts) string {
		return fmt.Sprintf("project %s needs re-authorisation: the mailbox owner must sign in again", Clean(f.Project, 100))
	}},
	CredentialRefused: {451, [3]int{4, 7, 0}, func(f Facts) string {
		return fmt.Sprintf("%s refused the credentials: %s", f.Upstream, f.Said)
	}},
	TooManyRecipients: {452, [3]int{4, 5, 3}, func(f Facts) string {
		if f.Limit <= 0 || f.Project == "" {
			return "too many recipients"
		}
		return fmt.Sprintf("too many recipients: %s allows at most %d per message", Clean(f.Project, 100), f.Limit)
	}},
	TooLarge: {552, [3]int{5, 3, 4}, func(f Facts) string {
		if f.Limit <= 0 || f.Project == "" {
			return "message size exceeds the limit for this sender"
		}
		return fmt.Sprintf("message too large: %s accepts at most %d bytes", Clean(f.Project, 100), f.Limit)
	}},
	// Temporary, as every failure to read the message is.
	LineTooLong: {451, [3]int{4, 6, 0}, func(f Facts) string { return fmt.Sprintf("message has a line over %d bytes", f.Limit) }},
	BadFrom:     {550, [3]int{5, 6, 0}, fixed("the From header cannot be parsed as RFC 5322 addresses")},
	NoFrom:      {550, [3]int{5, 6, 0}, fixed("the message has no From address: RFC 5322 requires one")},
	SendAsDenied: {550, [3]int{5, 7, 60}, func(f Facts) string {
		return fmt.Sprintf("From <%s> is not allowed for %s: the mailbox may send as %s", f.Address, Clean(f.Project, 100), f.Reason)
	}},
	Temporary: {451, [3]int{4, 3, 0}, fixed("temporary local problem, try again later")},
	RecipientsPerDay: {451, [3]int{4, 7, 0}, func(f Facts) string {
		if f.Limit <= 0 {
			return fmt.Sprintf("daily recipient limit reached for project %s, try again later", Clean(f.Project, 100))
		}
		return fmt.Sprintf("daily recipient limit reached for project %s (%d recipients a day), try again later", Clean(f.Project, 100), f.Limit)
	}},
	QuotaPaused: {451, [3]int{4, 7, 0}, func(f Facts) string {
		return fmt.Sprintf("project %s is paused until %s: the upstream reported its sending quota (%s), try again later",
			Clean(f.Project, 100), f.Until.UTC().Format("15:04 MST"), Clean(f.Reason, 200))
	}},
}

// For returns the reply for s, with the values in f. An unknown state is Temporary.
func For(s State, f Facts) Reply {
	e, ok := table[s]
	if !ok {
		e = table[Temporary]
	}
	return Reply{Code: e.code, Enhanced: e.enhanced, Text: e.text(f)}
}

// Clean makes s safe for a reply line: no CR or other control characters except the newlines
// that separate the lines of a multi-line reply, at most n bytes (cut at a character boundary).
func Clean(s string, n int) string {
	s = strings.Map(func(r rune) rune {
		switch {
		case r == '\n':
			return r
		case r < ' ' || r == 0x7f:
			return -1
		}
		return r
	}, s)
	s = strings.Trim(s, "\n")
	if len(s) > n {
		for n > 0 && !utf8.RuneStart(s[n]) {
			n--
		}
		s = s[:n]
	}
	return s
}
