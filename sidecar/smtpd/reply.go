package smtpd

import (
	"errors"
	"fmt"
	"strings"

	"github.com/emersion/go-smtp"

	"github.com/postern/postern/sidecar/address"
	"github.com/postern/postern/sidecar/credential"
	"github.com/postern/postern/sidecar/directory"
	"github.com/postern/postern/sidecar/health"
	"github.com/postern/postern/sidecar/limits"
	"github.com/postern/postern/sidecar/reply"
	"github.com/postern/postern/sidecar/upstream"
)

// Stages of a transaction, as passed to replyFor.
const (
	stageMail = "mail"
	stageRcpt = "rcpt"
	stageData = "data"
)

// Conditions found by the session itself. replyFor maps each to its reply.
var (
	errDisabled          = errors.New("project is disabled")
	errRemoved           = errors.New("project was removed")
	errTooManyRecipients = errors.New("too many recipients for the project")
	errMessageTooLarge   = errors.New("message too large")
	errLineTooLong       = errors.New("message line too long")
	errShuttingDown      = errors.New("shutting down")
	errNestedMail        = errors.New("MAIL inside a transaction")
	// errSMTPUTF8Undeclared is an address beyond ASCII in a transaction without SMTPUTF8.
	errSMTPUTF8Undeclared = errors.New("an internationalised address without SMTPUTF8 on MAIL FROM")
)

// txError is a transaction's failure together with the names its reply may mention.
type txError struct {
	sender  string
	project string
	err     error
}

func (e *txError) Error() string {
	if e.project != "" {
		return fmt.Sprintf("project %s, sender <%s>: %v", e.project, e.sender, e.err)
	}
	return fmt.Sprintf("sender <%s>: %v", e.sender, e.err)
}

func (e *txError) Unwrap() error { return e.err }

// replyFor is the one place that decides what Postfix hears. It returns nil for a nil err and
// otherwise a bare *smtp.SMTPError (go-smtp turns anything else into 554 5.0.0, a bounce).
//
// It finds the state and takes the reply from package reply, the policy the milter shares; what
// only an upstream can say (its own replies) is mapped here. The rules (DESIGN.md, "What Postfix
// hears"): a sender no project serves now is deferred (451 4.7.1: Postfix routed the
// queued message here, so the mismatch is operational; the milter refuses such a sender with 550
// 5.7.1 at submission, before anything is queued);
// an address that cannot be written into an upstream command is refused (553 5.1.7 for the sender,
// 553 5.1.3 for a recipient), and so is an address beyond ASCII without SMTPUTF8 (553 5.6.7);
// an upstream's definite no (5xx to RCPT or DATA, or a size the upstream declared it cannot take)
// is passed on; every other failure is temporary, keeping the upstream's words where there are
// some, and anything not recognised is 451 4.3.0 with generic text (the details go to the log).
func replyFor(stage string, err error) *smtp.SMTPError {
	r, _ := decide(stage, err)
	return r
}

// decide is replyFor that also names the health.Reason of err, for the health model and the
// metrics: the same switch decides both.
func decide(stage string, err error) (*smtp.SMTPError, health.Reason) {
	if err == nil {
		return nil, health.ReasonAccepted
	}
	var tx *txError
	errors.As(err, &tx)
	if tx == nil {
		tx = &txError{}
	}
	var bad *address.SyntaxError
	var lim *limits.Error
	var limit int64
	var le *limitError
	if errors.As(err, &le) {
		limit = le.limit
	}
	facts := reply.Facts{Sender: tx.sender, Project: tx.project, Limit: limit}
	state := reply.State(0)
	why := health.ReasonOther
	switch {
	case errors.As(err, &bad):
		facts.Reason = bad.Reason
		state, why = reply.BadRecipient, health.ReasonMessage
		if stage == stageMail {
			state = reply.BadSender
		}
	case errors.Is(err, errSMTPUTF8Undeclared):
		state, why = reply.SMTPUTF8Undeclared, health.ReasonMessage
	case errors.Is(err, directory.ErrNoProject):
		state, why = reply.NotServedNow, health.ReasonNoProject
	case errors.Is(err, directory.ErrUnavailable):
		state, why = reply.Unavailable, health.ReasonStoreUnavailable
	case errors.Is(err, errDisabled):
		state, why = reply.Disabled, health.ReasonDisabled
	case errors.Is(err, errRemoved):
		state, why = reply.Removed, health.ReasonRemoved
	case errors.Is(err, credential.ErrNeedsReauth):
		// The reason (the identity provider's words) is for the operator: it is in the log.
		state, why = reply.NeedsSignIn, health.ReasonNeedsSignIn
	case errors.Is(err, errShuttingDown):
		state, why = reply.ShuttingDown, health.ReasonShuttingDown
	case errors.Is(err, errNestedMail):
		state = reply.NestedMail
	case errors.Is(err, errTooManyRecipients):
		state, why = reply.TooManyRecipients, health.ReasonMessage
	case errors.Is(err, limits.ErrRateLimited):
		state, why = reply.RateLimited, health.ReasonRateLimited
	case errors.As(err, &lim) && errors.Is(err, limits.ErrRecipientsPerDay):
		state, why, facts.Limit = reply.RecipientsPerDay, health.ReasonRateLimited, int64(lim.Limit)
	case errors.As(err, &lim) && errors.Is(err, limits.ErrPaused):
		state, why, facts.Reason, facts.Until = reply.QuotaPaused, health.ReasonRateLimited, lim.Reason, lim.Until
	case errors.Is(err, errLineTooLong), errors.Is(err, smtp.ErrTooLongLine):
		// Over DATA go-smtp finds the line on the wire, over BDAT countingReader finds it in the
		// message: one reply.
		state, facts.Limit, why = reply.LineTooLong, maxLineLength, health.ReasonMessage
	case errors.Is(err, errMessageTooLarge), errors.Is(err, smtp.ErrDataTooLarge):
		state, why = reply.TooLarge, health.ReasonMessage
	}
	if state != 0 {
		return smtpReply(reply.For(state, facts)), why
	}

	var ue *upstream.Error
	if errors.As(err, &ue) {
		return upstreamReply(ue), health.Upstream(ue)
	}
	var se *smtp.SMTPError
	if errors.As(err, &se) {
		// A reply that did not come through the upstream package: judge it like one.
		ue := &upstream.Error{Stage: stage, Code: se.Code, Enhanced: se.EnhancedCode, Message: se.Message}
		return upstreamReply(ue), health.Upstream(ue)
	}
	if errors.Is(err, errCredential) {
		why = health.ReasonCredentialUnavailable
	}
	return smtpReply(reply.For(reply.Temporary, facts)), why
}

// errCredential marks a failure to get a project's credential (the store, the identity provider
// or a credential provider did not answer) that is not a needed sign-in.
var errCredential = errors.New("getting the credential")

// smtpReply is r as go-smtp writes it.
func smtpReply(r reply.Reply) *smtp.SMTPError {
	return &smtp.SMTPError{Code: r.Code, EnhancedCode: smtp.EnhancedCode(r.Enhanced), Message: r.Text}
}

// limitError is a limit that was passed, with the limit, for the reply.
type limitError struct {
	err    error // errTooManyRecipients or errMessageTooLarge
	limit  int64
	detail string
}

func (e *limitError) Error() string { return e.detail + ": " + e.err.Error() }
func (e *limitError) Unwrap() error { return e.err }

// upstreamReply maps an upstream failure.
func upstreamReply(e *upstream.Error) *smtp.SMTPError {
	said := "upstream"
	if e.Addr != "" {
		said += " " + e.Addr
	}
	switch {
	case e.AuthFailed():
		return smtpReply(reply.For(reply.CredentialRefused, reply.Facts{Upstream: said, Said: replyText(e)}))
	case e.Code == 0:
		// No reply at all: network, TLS, timeout, pool. Our description, which names no secret.
		return &smtp.SMTPError{Code: 451, EnhancedCode: noReplyEnhanced(e), Message: clean(e.Error(), 600)}
	case !e.Temporary():
		// A definite no: the upstream's reply as it is.
		enh := e.Enhanced
		if !hasEnhanced(enh) {
			enh = smtp.EnhancedCode{e.Code / 100, 0, 0}
		}
		msg := said + " said: " + clean(e.Message, 600)
		if e.Local {
			msg = said + ": " + clean(e.Message, 600)
		}
		return &smtp.SMTPError{Code: e.Code, EnhancedCode: enh, Message: msg}
	case e.Code >= 400 && e.Code < 500 && e.Code != 421:
		// The upstream's own temporary reply, passed on.
		enh := e.Enhanced
		if !hasEnhanced(enh) {
			enh = smtp.EnhancedCode{4, 0, 0}
		}
		return &smtp.SMTPError{Code: e.Code, EnhancedCode: enh, Message: said + " said: " + clean(e.Message, 600)}
	}
	// 421 (the upstream is closing), or a 5xx that is not final here (greeting, EHLO, MAIL, or a
	// provider quota): temporary, with the upstream's code and words in the text.
	enh := smtp.EnhancedCode{4, 0, 0}
	if hasEnhanced(e.Enhanced) {
		enh = smtp.EnhancedCode{4, e.Enhanced[1], e.Enhanced[2]}
	}
	return &smtp.SMTPError{Code: 451, EnhancedCode: enh, Message: fmt.Sprintf("%s said: %s", said, replyText(e))}
}

// noReplyEnhanced picks the enhanced code for a failure without an upstream reply (RFC 3463).
func noReplyEnhanced(e *upstream.Error) smtp.EnhancedCode {
	switch {
	case errors.Is(e, upstream.ErrBusy):
		return smtp.EnhancedCode{4, 4, 5} // system congestion
	case errors.Is(e, upstream.ErrClosed):
		return smtp.EnhancedCode{4, 3, 2} // system not accepting messages
	}
	switch e.Stage {
	case upstream.StageConnect, upstream.StagePool, upstream.StageGreeting:
		return smtp.EnhancedCode{4, 4, 1} // no answer from host
	case upstream.StageTLS:
		return smtp.EnhancedCode{4, 7, 5} // cryptographic failure
	case upstream.StageAuth:
		return smtp.EnhancedCode{4, 7, 0}
	}
	return smtp.EnhancedCode{4, 4, 2} // bad connection
}

// replyText renders the upstream's reply: "535 5.7.3 Authentication unsuccessful".
func replyText(e *upstream.Error) string {
	var b strings.Builder
	if e.Code != 0 {
		fmt.Fprintf(&b, "%d ", e.Code)
	}
	if hasEnhanced(e.Enhanced) {
		fmt.Fprintf(&b, "%d.%d.%d ", e.Enhanced[0], e.Enhanced[1], e.Enhanced[2])
	}
	b.WriteString(e.Message)
	return clean(strings.TrimSpace(b.String()), 600)
}

func hasEnhanced(c smtp.EnhancedCode) bool {
	return c != smtp.EnhancedCode{} && c != smtp.NoEnhancedCode
}

// clean makes s safe for a reply line (reply.Clean).
func clean(s string, n int) string { return reply.Clean(s, n) }

// asError returns r as an error, or a true nil for a nil r (never a typed nil).
func asError(r *smtp.SMTPError) error {
	if r == nil {
		return nil
	}
	return r
}
