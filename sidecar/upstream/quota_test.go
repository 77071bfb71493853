package upstream_test

import (
	"errors"
	"testing"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/postern/postern/sidecar/project"
	"github.com/postern/postern/sidecar/upstream"
	"github.com/postern/postern/sidecar/upstream/upstreamtest"
)

// TestQuota: provider quota replies, with the providers' own texts, are named and temporary at
// every stage; look-alikes are not.
func TestQuota(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name  string
		err   upstream.Error
		quota bool
	}{
		{"exchange submission quota on data", upstream.Error{Stage: upstream.StageData, Code: 554, Enhanced: smtp.EnhancedCode{5, 2, 0},
			Message: "STOREDRV.Submission.Exception:SubmissionQuotaExceededException; Failed to process message due to a permanent exception with message Cannot submit message."}, true},
		{"exchange submission quota on mail", upstream.Error{Stage: upstream.StageMail, Code: 554, Enhanced: smtp.EnhancedCode{5, 2, 0},
			Message: "STOREDRV.Submission.Exception:SubmissionQuotaExceededException"}, true},
		{"gmail daily limit on data", upstream.Error{Stage: upstream.StageData, Code: 550, Enhanced: smtp.EnhancedCode{5, 4, 5},
			Message: "Daily user sending limit exceeded. For more information on Gmail sending limits go to\nhttps://support.google.com/a/answer/166852 - gsmtp"}, true},
		{"gmail daily limit on rcpt", upstream.Error{Stage: upstream.StageRcpt, Code: 550, Enhanced: smtp.EnhancedCode{5, 4, 5},
			Message: "Daily SMTP relay sending limit exceeded for customer"}, true},
		{"exchange tenant external recipient cap", upstream.Error{Stage: upstream.StageRcpt, Code: 550, Enhanced: smtp.EnhancedCode{5, 7, 233},
			Message: "Your message can't be sent because your tenant exceeded its daily limit for sending email to external recipients (tenant external recipient rate limit)"}, true},
		{"exchange trial tenant external recipient cap", upstream.Error{Stage: upstream.StageData, Code: 550, Enhanced: smtp.EnhancedCode{5, 7, 232},
			Message: "Your message can't be sent because your trial tenant has exceeded its daily limit for sending email to external recipients (tenant external recipient rate limit)"}, true},
		{"exchange other 5.2.0", upstream.Error{Stage: upstream.StageData, Code: 554, Enhanced: smtp.EnhancedCode{5, 2, 0},
			Message: "STOREDRV.Submission.Exception:InvalidRecipientsException"}, false},
		{"send as denied", upstream.Error{Stage: upstream.StageData, Code: 554, Enhanced: smtp.EnhancedCode{5, 2, 252},
			Message: "SendAsDenied; mailbox@client.example not allowed to send as noreply@client.example"}, false},
		{"exchange thread limit is 4xx already", upstream.Error{Stage: upstream.StageMail, Code: 432, Enhanced: smtp.EnhancedCode{4, 3, 2},
			Message: "Concurrent connections limit exceeded"}, false},
		{"local refusal", upstream.Error{Stage: upstream.StageMail, Code: 554, Enhanced: smtp.EnhancedCode{5, 4, 5}, Local: true}, false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			name := tc.err.Quota()
			if (name != "") != tc.quota {
				t.Errorf("Quota() = %q, want a quota: %v, for %v", name, tc.quota, &tc.err)
			}
			if tc.quota && !tc.err.Temporary() {
				t.Errorf("Temporary() = false for the quota reply %v", &tc.err)
			}
		})
	}
}

// TestConnectionsOption: Options.Connections (a replica's share of the project's limit) caps the
// connections a project may open, below the project's own limit.
func TestConnectionsOption(t *testing.T) {
	t.Parallel()
	srv := upstreamtest.NewServer(t, upstreamtest.Options{TLS: project.TLSStartTLS, Users: users()})
	pools, _ := newPools(t, upstream.Options{MaxConnWait: 50 * time.Millisecond,
		Connections: func(p project.Project) int { return p.Limits.Connections() / 2 }})
	p := proj("client-a", srv)
	p.Limits.MaxConnections = 2
	ctx := ctxFor(t)
	c, err := pools.Acquire(ctx, p, basic(""))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Release()
	if _, err := pools.Acquire(ctx, p, basic("")); !errors.Is(err, upstream.ErrBusy) {
		t.Errorf("second connection with a share of 1: %v, want ErrBusy", err)
	}
	if n := srv.Stats().Conns; n != 1 {
		t.Errorf("the upstream saw %d connections, want 1", n)
	}
}
