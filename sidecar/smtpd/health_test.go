package smtpd

import (
	"testing"

	"github.com/emersion/go-smtp"

	"github.com/postern/postern/sidecar/health"
	"github.com/postern/postern/sidecar/secret"
	"github.com/postern/postern/sidecar/upstream/upstreamtest"
)

// Every transaction's end is recorded in the health model at the stage where it ended, with the
// reason its reply was decided by: a refused password at MAIL FROM makes the project failing at
// once, a delivery makes it ok again, a recipient the upstream refuses says nothing about it.
func TestHealthRecordsEachTransaction(t *testing.T) {
	t.Parallel()
	var changes []health.Change
	tr := health.New(health.Options{OnChange: func(c health.Change) { changes = append(changes, c) }})
	up := fakeUpstream(t, upstreamtest.Options{
		Users: map[string]string{"user@a.example": "another password"},
		RejectRcpt: func(to string) *smtp.SMTPError {
			if to == "nobody@dest.example" {
				return &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 1, 1}, Message: "no such user"}
			}
			return nil
		},
	})
	h := newHarness(t, Options{Health: tr}, basicProject("a", "a.example", up))

	send(t, h.dial(), "noreply@a.example", []string{"x@dest.example"}, body, nil)
	if s := tr.Status("a"); s.State != health.StateFailing || s.Reason != health.ReasonCredentialRefused {
		t.Errorf("after a refused password: %s (%s), want failing (credential_refused)", s.State, s.Reason)
	}
	// The password is corrected.
	h.store.mu.Lock()
	h.store.projects[0].Auth.Password = secret.New("another password")
	h.store.mu.Unlock()
	if err := h.dir.Load(t.Context()); err != nil {
		t.Fatal(err)
	}
	send(t, h.dial(), "noreply@a.example", []string{"x@dest.example", "nobody@dest.example"}, body, nil)
	if s := tr.Status("a"); s.State != health.StateOK || s.LastDelivery.IsZero() {
		t.Errorf("after a delivery: %+v, want ok with a last delivery", s)
	}
	send(t, h.dial(), "noreply@unknown.example", []string{"x@dest.example"}, body, nil)

	got := map[string]bool{}
	for _, c := range changes {
		got[c.Project+":"+string(c.From.State)+">"+string(c.To.State)] = true
	}
	if len(changes) != 2 || !got["a:ok>failing"] || !got["a:failing>ok"] {
		t.Errorf("changes %+v", changes)
	}
}
