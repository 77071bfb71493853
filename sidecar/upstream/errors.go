package upstream

import (
	"errors"
	"fmt"
	"strings"

	"github.com/emersion/go-smtp"
)

// Stages of an upstream exchange, as they appear in Error.Stage.
const (
	StageConnect  = "connect"  // TCP connect, and the loopback check of TLS mode none
	StageTLS      = "tls"      // STARTTLS or the implicit TLS handshake, certificate verification
	StageGreeting = "greeting" // the server's 220 banner
	StageEHLO     = "ehlo"     // EHLO (before and after STARTTLS)
	StageAuth     = "auth"     // AUTH
	StageMail     = "mail"     // MAIL FROM
	StageRcpt     = "rcpt"     // RCPT TO
	StageData     = "data"     // DATA, the message, and the reply to the final dot
	StagePool     = "pool"     // no connection could be had: pool full, upstream down, pools closed
)

var (
	// ErrDown is the cause of the Error that Acquire returns at once while a project's upstream is
	// in its backoff after a connect, TLS, greeting or EHLO failure.
	ErrDown = errors.New("upstream is down")
	// ErrBusy is the cause of the Error that Acquire returns when every connection the project may
	// open stayed in use for Options.MaxConnWait.
	ErrBusy = errors.New("every upstream connection is busy")
	// ErrClosed is the cause of the Error that Acquire returns after Pools.Close.
	ErrClosed = errors.New("upstream pools are closed")
	// ErrNoAuth is the cause of the Error at StageAuth when the upstream offers no AUTH at all
	// (often: AUTH is offered only after STARTTLS).
	ErrNoAuth = errors.New("the upstream offers no AUTH")
	// ErrMechanismNotOffered is the cause of the Error at StageAuth when the upstream does not
	// offer the mechanism the project signs in with.
	ErrMechanismNotOffered = errors.New("the upstream does not offer AUTH")
)

// Error is every failure of this package. The upstream's own reply, when there was one, is in
// Code, Enhanced and Message, unchanged, so Postfix's logs show what the upstream said.
type Error struct {
	// Stage is one of the Stage constants.
	Stage string
	// Addr is the upstream's host:port.
	Addr string
	// Code is the upstream's SMTP reply code; 0 when it said nothing (network, timeout, local).
	Code int
	// Enhanced is the upstream's enhanced status code, zero when it gave none.
	Enhanced smtp.EnhancedCode
	// Message is the upstream's text, or a description of ours.
	Message string
	// Local is set when Postern gave Code itself without asking the upstream (the upstream said
	// in its EHLO reply that it cannot take the message, e.g. no 8BITMIME).
	Local bool
	// Err is the underlying cause, if any.
	Err error
}

func (e *Error) Error() string {
	var b strings.Builder
	b.WriteString("upstream")
	if e.Addr != "" {
		b.WriteString(" " + e.Addr)
	}
	b.WriteString(" " + e.Stage + ":")
	if e.Code != 0 {
		fmt.Fprintf(&b, " %d", e.Code)
		if hasEnhanced(e.Enhanced) {
			fmt.Fprintf(&b, " %d.%d.%d", e.Enhanced[0], e.Enhanced[1], e.Enhanced[2])
		}
	}
	switch {
	case e.Message != "" && e.Err != nil:
		fmt.Fprintf(&b, " %s: %v", e.Message, e.Err)
	case e.Message != "":
		b.WriteString(" " + e.Message)
	case e.Err != nil:
		b.WriteString(" " + e.Err.Error())
	}
	return b.String()
}

func (e *Error) Unwrap() error { return e.Err }

// Temporary reports whether the message should wait and be tried again. Only a definite no is
// permanent: a 5xx reply to RCPT or DATA, or a reply Postern gave itself because the upstream
// declared it cannot take the message. Everything else is temporary: no reply at all (network,
// timeout, our own trouble), any 4xx, and 5xx replies to the greeting, EHLO, AUTH or MAIL, which
// mean the project is misconfigured, not that the message is bad. Provider sending quotas that
// arrive as 5xx (see temporaryRejections) are temporary too.
func (e *Error) Temporary() bool {
	if e.Code < 500 {
		return true
	}
	if !e.Local && e.Stage != StageRcpt && e.Stage != StageData {
		return true
	}
	return temporaryRejection(e.Enhanced, e.Message) != ""
}

// AuthFailed reports whether the upstream rejected the credentials. Callers do not bounce on it:
// they refresh the credential once, and otherwise defer the mail with 451 4.7.0.
func (e *Error) AuthFailed() bool {
	if e.Stage != StageAuth || e.Local || e.Code < 500 {
		return false
	}
	switch e.Code {
	case 534, 535: // mechanism refused for this account (Gmail's 534 5.7.9/5.7.14), credentials invalid
		return true
	}
	switch e.Enhanced {
	case smtp.EnhancedCode{5, 7, 8}, // authentication credentials invalid
		smtp.EnhancedCode{5, 7, 3},   // Exchange Online: authentication unsuccessful
		smtp.EnhancedCode{5, 7, 139}, // Exchange Online: SMTP AUTH disabled for the tenant or mailbox
		smtp.EnhancedCode{5, 7, 30}:  // Exchange Online: basic authentication not supported
		return true
	}
	return false
}

// temporaryRejections are replies that carry a 5xx code but describe a condition that passes, such
// as a provider's daily sending quota. Mail refused this way waits in Postfix's queue.
var temporaryRejections = []struct {
	name     string
	enhanced smtp.EnhancedCode // zero: any
	text     string            // case-insensitive substring of the message; empty: any
}{
	// RFC 3463 X.4.5 is "mail system congestion". Gmail: 550 5.4.5 Daily user sending limit exceeded.
	{name: "mail system congestion (Gmail sending limit)", enhanced: smtp.EnhancedCode{5, 4, 5}},
	// Exchange Online: 554 5.2.0 STOREDRV.Submission.Exception:SubmissionQuotaExceededException.
	{name: "Exchange Online submission quota", text: "submissionquotaexceeded"},
	// Exchange Online: 550 5.7.233 (5.7.232 for a trial tenant) Your message can't be sent because
	// your tenant exceeded its daily limit for sending email to external recipients (tenant
	// external recipient rate limit). Counted over a rolling 24 hours for the whole tenant.
	{name: "Exchange Online tenant external recipient rate limit", enhanced: smtp.EnhancedCode{5, 7, 233}},
	{name: "Exchange Online tenant external recipient rate limit", enhanced: smtp.EnhancedCode{5, 7, 232}},
}

// Quota names the provider's sending quota that a 5xx reply reports (Gmail's daily limit,
// Exchange Online's submission quota or tenant external recipient limit), or returns "" for any
// other reply. Such a reply is temporary (Temporary) at every stage, and the caller pauses the
// project: the quota passes with time, and every message sent before it does is refused the same
// way.
func (e *Error) Quota() string {
	if e.Local || e.Code < 500 {
		return ""
	}
	return temporaryRejection(e.Enhanced, e.Message)
}

// temporaryRejection names the entry of temporaryRejections that a reply matches, or returns "".
func temporaryRejection(enhanced smtp.EnhancedCode, message string) string {
	lower := strings.ToLower(message)
	for _, r := range temporaryRejections {
		if r.enhanced != (smtp.EnhancedCode{}) && r.enhanced != enhanced {
			continue
		}
		if r.text != "" && !strings.Contains(lower, r.text) {
			continue
		}
		return r.name
	}
	return ""
}

func hasEnhanced(c smtp.EnhancedCode) bool {
	return c != smtp.EnhancedCode{} && c != smtp.NoEnhancedCode
}

// replyError turns what an exchange returned into an Error. An *smtp.SMTPError keeps the upstream's
// reply; anything else has no code.
func replyError(stage, addr string, err error) *Error {
	var se *smtp.SMTPError
	if errors.As(err, &se) {
		return &Error{Stage: stage, Addr: addr, Code: se.Code, Enhanced: se.EnhancedCode, Message: se.Message}
	}
	return &Error{Stage: stage, Addr: addr, Err: err}
}
