package smtpd

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/postern/postern/sidecar/credential"
	"github.com/postern/postern/sidecar/directory"
	"github.com/postern/postern/sidecar/limits"
	"github.com/postern/postern/sidecar/upstream"
)

func tx(err error) error {
	return &txError{sender: "noreply@client-a.example", project: "client-a", err: err}
}

func TestReplyFor(t *testing.T) {
	t.Parallel()
	const addr = "smtp.client-a.example:587"
	up := func(stage string, code int, enh smtp.EnhancedCode, msg string) error {
		return tx(&upstream.Error{Stage: stage, Addr: addr, Code: code, Enhanced: enh, Message: msg})
	}
	tests := []struct {
		name     string
		stage    string
		err      error
		code     int
		enhanced smtp.EnhancedCode
		text     []string // substrings of the reply text
		notText  []string
	}{
		// Queued mail whose sender no project serves now waits: the milter says 550 5.7.1 at
		// submission, before anything is queued.
		{"no project", stageMail, tx(directory.ErrNoProject), 451, smtp.EnhancedCode{4, 7, 1},
			[]string{"sender <noreply@client-a.example> is not served by Postern now"}, nil},
		{"projects unavailable", stageMail, tx(directory.ErrUnavailable), 451, smtp.EnhancedCode{4, 3, 0}, nil, nil},
		{"disabled", stageMail, tx(errDisabled), 451, smtp.EnhancedCode{4, 7, 0}, []string{"project client-a is disabled"}, nil},
		// DESIGN: credential needs re-authorisation → 451 4.7.0.
		{"needs reauth", stageMail, tx(fmt.Errorf("getting the credential: %w", &credential.ReauthError{Reason: "invalid_grant: AADSTS700082"})),
			451, smtp.EnhancedCode{4, 7, 0}, []string{"project client-a needs re-authorisation: the mailbox owner must sign in again"},
			[]string{"AADSTS700082", "invalid_grant"}}, // the identity provider's reason is for the operator: the log
		// DESIGN: upstream 535 after one forced refresh → 451 4.7.0.
		{"auth failed", stageMail, up(upstream.StageAuth, 535, smtp.EnhancedCode{5, 7, 3}, "Authentication unsuccessful"),
			451, smtp.EnhancedCode{4, 7, 0}, []string{addr, "535 5.7.3 Authentication unsuccessful"}, nil},
		{"smtp auth disabled for the tenant", stageMail, up(upstream.StageAuth, 535, smtp.EnhancedCode{5, 7, 139}, "SmtpClientAuthentication is disabled"),
			451, smtp.EnhancedCode{4, 7, 0}, []string{"SmtpClientAuthentication is disabled"}, nil},
		// DESIGN: local rate limit reached → 451 4.7.0.
		{"rate limit", stageMail, tx(&limits.Error{Project: "client-a", Limit: 30, Share: 30, Err: limits.ErrRateLimited}), 451, smtp.EnhancedCode{4, 7, 0}, []string{"rate limit reached"}, nil},
		{"recipients per day", stageRcpt, tx(&limits.Error{Project: "client-a", Limit: 10000, Share: 5000, Err: limits.ErrRecipientsPerDay}),
			451, smtp.EnhancedCode{4, 7, 0}, []string{"daily recipient limit reached for project client-a (10000 recipients a day)"}, nil},
		// DESIGN: provider quota errors that are 5xx but temporary → 4xx, and the project pauses.
		{"paused after a quota reply", stageMail, tx(&limits.Error{Project: "client-a", Until: time.Date(2026, 12, 3, 15, 0, 0, 0, time.UTC),
			Reason: "Exchange Online submission quota", Err: limits.ErrPaused}),
			451, smtp.EnhancedCode{4, 7, 0}, []string{"project client-a is paused until 15:00 UTC", "Exchange Online submission quota"}, nil},
		{"exchange tenant external recipient cap", stageRcpt, up(upstream.StageRcpt, 550, smtp.EnhancedCode{5, 7, 233},
			"Your message can't be sent because your tenant exceeded its daily limit for sending email to external recipients (tenant external recipient rate limit)"),
			451, smtp.EnhancedCode{4, 7, 233}, []string{"550 5.7.233 Your message can't be sent"}, nil},
		{"too many recipients", stageRcpt, tx(errTooManyRecipients), 452, smtp.EnhancedCode{4, 5, 3}, []string{"too many recipients"}, nil},
		{"size over the project limit", stageMail, tx(errMessageTooLarge), 552, smtp.EnhancedCode{5, 3, 4}, nil, nil},
		{"go-smtp's size limit", stageData, tx(&upstream.Error{Stage: upstream.StageData, Err: smtp.ErrDataTooLarge}), 552, smtp.EnhancedCode{5, 3, 4}, nil, nil},
		{"shutting down", stageMail, errShuttingDown, 451, smtp.EnhancedCode{4, 3, 2}, nil, nil},
		{"nested MAIL", stageMail, errNestedMail, 503, smtp.EnhancedCode{5, 5, 1}, nil, nil},
		// DESIGN: upstream unreachable, 421, any 4xx → 4xx with the upstream's text kept.
		{"upstream unreachable", stageMail, tx(&upstream.Error{Stage: upstream.StageConnect, Addr: addr, Message: "connecting", Err: errors.New("connection refused")}),
			451, smtp.EnhancedCode{4, 4, 1}, []string{addr, "connection refused"}, nil},
		{"upstream down backoff", stageMail, tx(&upstream.Error{Stage: upstream.StagePool, Addr: addr, Err: upstream.ErrDown}),
			451, smtp.EnhancedCode{4, 4, 1}, []string{"upstream is down"}, nil},
		{"upstream busy", stageMail, tx(&upstream.Error{Stage: upstream.StagePool, Addr: addr, Err: upstream.ErrBusy}),
			451, smtp.EnhancedCode{4, 4, 5}, nil, nil},
		{"tls failure", stageMail, tx(&upstream.Error{Stage: upstream.StageTLS, Addr: addr, Message: "certificate signed by unknown authority"}),
			451, smtp.EnhancedCode{4, 7, 5}, []string{"unknown authority"}, nil},
		{"connection lost during data", stageData, tx(&upstream.Error{Stage: upstream.StageData, Addr: addr, Err: io.ErrUnexpectedEOF}),
			451, smtp.EnhancedCode{4, 4, 2}, nil, nil},
		{"421 at mail", stageMail, up(upstream.StageMail, 421, smtp.EnhancedCode{4, 3, 2}, "Service not available, closing"),
			451, smtp.EnhancedCode{4, 3, 2}, []string{"421 4.3.2 Service not available"}, nil},
		{"421 at data", stageData, up(upstream.StageData, 421, smtp.EnhancedCode{}, "closing"), 451, smtp.EnhancedCode{4, 0, 0}, []string{"421 closing"}, nil},
		{"4xx at rcpt kept", stageRcpt, up(upstream.StageRcpt, 450, smtp.EnhancedCode{4, 2, 1}, "mailbox busy"),
			450, smtp.EnhancedCode{4, 2, 1}, []string{"mailbox busy"}, nil},
		{"exchange thread limit", stageMail, up(upstream.StageMail, 432, smtp.EnhancedCode{4, 3, 2}, "STOREDRV.ClientSubmit; sender thread limit exceeded"),
			432, smtp.EnhancedCode{4, 3, 2}, []string{"sender thread limit exceeded"}, nil},
		{"4xx at data kept", stageData, up(upstream.StageData, 451, smtp.EnhancedCode{4, 3, 0}, "try later"), 451, smtp.EnhancedCode{4, 3, 0}, []string{"try later"}, nil},
		// DESIGN: upstream 5xx on RCPT or DATA → that 5xx.
		{"5xx at rcpt", stageRcpt, up(upstream.StageRcpt, 550, smtp.EnhancedCode{5, 1, 1}, "User unknown"),
			550, smtp.EnhancedCode{5, 1, 1}, []string{"User unknown"}, nil},
		{"send as denied at data", stageData, up(upstream.StageData, 550, smtp.EnhancedCode{5, 7, 60}, "SMTP; Client does not have permissions to send as this sender"),
			550, smtp.EnhancedCode{5, 7, 60}, []string{"permissions to send as this sender"}, nil},
		{"5xx at data without enhanced code", stageData, up(upstream.StageData, 554, smtp.EnhancedCode{}, "rejected"), 554, smtp.EnhancedCode{5, 0, 0}, nil, nil},
		{"upstream's declared size", stageMail, tx(&upstream.Error{Stage: upstream.StageMail, Addr: addr, Code: 552, Enhanced: smtp.EnhancedCode{5, 3, 4}, Message: "exceeds the upstream's limit", Local: true}),
			552, smtp.EnhancedCode{5, 3, 4}, []string{"exceeds the upstream's limit"}, nil},
		// 5xx to MAIL (a project problem, not the message's): temporary.
		{"5xx at mail", stageMail, up(upstream.StageMail, 550, smtp.EnhancedCode{5, 7, 1}, "not allowed"),
			451, smtp.EnhancedCode{4, 7, 1}, []string{"550 5.7.1 not allowed"}, nil},
		// DESIGN: provider quota errors that are 5xx but temporary → 4xx.
		{"gmail daily limit", stageData, up(upstream.StageData, 550, smtp.EnhancedCode{5, 4, 5}, "Daily user sending limit exceeded"),
			451, smtp.EnhancedCode{4, 4, 5}, []string{"550 5.4.5 Daily user sending limit exceeded"}, nil},
		{"exchange submission quota", stageData, up(upstream.StageData, 554, smtp.EnhancedCode{5, 2, 0}, "STOREDRV.Submission.Exception:SubmissionQuotaExceededException"),
			451, smtp.EnhancedCode{4, 2, 0}, []string{"SubmissionQuotaExceeded"}, nil},
		// A bare SMTPError from elsewhere is judged like an upstream reply.
		{"bare smtp error at rcpt", stageRcpt, &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 1, 1}, Message: "no"}, 550, smtp.EnhancedCode{5, 1, 1}, nil, nil},
		{"bare smtp error at mail", stageMail, &smtp.SMTPError{Code: 554, Message: "no"}, 451, smtp.EnhancedCode{4, 0, 0}, nil, nil},
		// Anything unknown → 451 4.3.0, generic text, nothing of the cause.
		{"unknown", stageMail, tx(errors.New("vault: permission denied for token hvs.SECRET")), 451, smtp.EnhancedCode{4, 3, 0},
			[]string{"temporary local problem"}, []string{"hvs.SECRET", "vault"}},
		{"credential source down", stageMail, tx(fmt.Errorf("getting the credential: %w", context.DeadlineExceeded)), 451, smtp.EnhancedCode{4, 3, 0}, nil, []string{"deadline"}},
		{"multi-line upstream text", stageRcpt, up(upstream.StageRcpt, 550, smtp.EnhancedCode{5, 1, 1}, "line one\r\nline two"),
			550, smtp.EnhancedCode{5, 1, 1}, []string{"line one\nline two"}, []string{"\r"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			r := replyFor(tc.stage, tc.err)
			if r == nil {
				t.Fatal("nil reply")
			}
			if r.Code != tc.code || r.EnhancedCode != tc.enhanced {
				t.Fatalf("reply %d %v %q, want %d %v", r.Code, r.EnhancedCode, r.Message, tc.code, tc.enhanced)
			}
			for _, s := range tc.text {
				if !strings.Contains(r.Message, s) {
					t.Errorf("reply text %q lacks %q", r.Message, s)
				}
			}
			for _, s := range tc.notText {
				if strings.Contains(r.Message, s) {
					t.Errorf("reply text %q contains %q", r.Message, s)
				}
			}
			// go-smtp passes a bare *SMTPError through; anything else would be 554 5.0.0.
			var asErr error = r
			if _, ok := asErr.(*smtp.SMTPError); !ok {
				t.Fatal("not a bare *smtp.SMTPError")
			}
		})
	}
}

func TestReplyForNil(t *testing.T) {
	t.Parallel()
	if r := replyFor(stageData, nil); r != nil {
		t.Fatalf("replyFor(nil) = %v", r)
	}
	if err := asError(nil); err != nil {
		t.Fatal("asError(nil) is a typed nil")
	}
}

// Every operational fault is temporary: only the listed conditions may produce a 5xx.
func TestReplyForNeverBouncesOperationalFaults(t *testing.T) {
	t.Parallel()
	faults := []error{
		context.Canceled, context.DeadlineExceeded, io.EOF, errors.New("boom"),
		directory.ErrUnavailable, credential.ErrNeedsReauth, errDisabled, limits.ErrRateLimited, errShuttingDown,
		&upstream.Error{Stage: upstream.StageConnect, Err: errors.New("refused")},
		&upstream.Error{Stage: upstream.StageGreeting, Code: 554, Message: "no service"},
		&upstream.Error{Stage: upstream.StageEHLO, Code: 500, Message: "bad"},
		&upstream.Error{Stage: upstream.StageAuth, Code: 535, Enhanced: smtp.EnhancedCode{5, 7, 8}},
		&upstream.Error{Stage: upstream.StageAuth, Code: 504, Message: "mechanism unknown"},
		&upstream.Error{Stage: upstream.StageMail, Code: 530, Message: "Must issue a STARTTLS command first"},
		&upstream.Error{Stage: upstream.StageData, Err: errors.New("broken pipe")},
	}
	for _, stage := range []string{stageMail, stageRcpt, stageData} {
		for _, err := range faults {
			if r := replyFor(stage, err); r.Code/100 != 4 {
				t.Errorf("replyFor(%s, %v) = %d %s: an operational fault must be temporary", stage, err, r.Code, r.Message)
			}
		}
	}
}

func TestUpstreamID(t *testing.T) {
	t.Parallel()
	tests := []struct{ reply, want string }{
		{"2.0.0 Ok: queued as 4XyZ12AbC", "4XyZ12AbC"},
		{"2.0.0 OK  1700000000 d2-20020a05600c1d0200b0040e3ac9f4c8si123456wmq.12 - gsmtp", "d2-20020a05600c1d0200b0040e3ac9f4c8si123456wmq.12"},
		{"2.0.0 OK <AM0PR01MB1234ABCD@AM0PR01MB1234.eurprd01.prod.exchangelabs.com> [Hostname=AM0PR01MB1234]", "AM0PR01MB1234ABCD@AM0PR01MB1234.eurprd01.prod.exchangelabs.com"},
		{"2.0.0 OK: queued", ""},
		{"", ""},
	}
	for _, tc := range tests {
		if got := upstreamID(tc.reply); got != tc.want {
			t.Errorf("upstreamID(%q) = %q, want %q", tc.reply, got, tc.want)
		}
	}
}
