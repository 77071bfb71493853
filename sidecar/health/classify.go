package health

import (
	"errors"

	"github.com/postern/postern/sidecar/credential"
	"github.com/postern/postern/sidecar/upstream"
)

// Classify is the Reason of a failed sign-in or exchange with an upstream through the credential
// manager (package credential): what a delivery's MAIL FROM, `postern check` and the sign-in
// page's test get. nil is ReasonAccepted; an error that is neither the upstream's nor a needed
// sign-in is ReasonCredentialUnavailable (the credential could not be had). smtpd decides the
// reasons of its own conditions (limits, disabled projects) itself, and asks Upstream for the
// upstream's.
func Classify(err error) Reason {
	var ue *upstream.Error
	switch {
	case err == nil:
		return ReasonAccepted
	case errors.Is(err, credential.ErrNeedsReauth):
		return ReasonNeedsSignIn
	case errors.As(err, &ue):
		return Upstream(ue)
	}
	return ReasonCredentialUnavailable
}

// Upstream is the Reason of an upstream failure.
func Upstream(e *upstream.Error) Reason {
	switch {
	case e.AuthFailed():
		return ReasonCredentialRefused
	case errors.Is(e, upstream.ErrBusy):
		return ReasonRateLimited
	case errors.Is(e, upstream.ErrClosed):
		return ReasonShuttingDown
	case e.Code == 0:
		switch e.Stage {
		case upstream.StageConnect, upstream.StagePool, upstream.StageGreeting, upstream.StageTLS, upstream.StageEHLO:
			return ReasonUpstreamDown
		}
		return ReasonUpstreamTimeout
	case !e.Temporary():
		return ReasonUpstreamRefused
	}
	return ReasonUpstreamDeferred
}
