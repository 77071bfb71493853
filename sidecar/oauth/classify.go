package oauth

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"regexp"
	"slices"
	"strconv"
	"strings"

	"golang.org/x/oauth2"
)

// Kind is what a failed token request means for the project.
type Kind int

const (
	// Unknown is a failure not recognised; the broker treats it like Transient but reports it.
	Unknown Kind = iota
	// Transient will pass by itself: network trouble, timeouts, 5xx, 429, temporarily_unavailable.
	Transient
	// NeedsReauth needs a person to sign the mailbox in again: the grant is revoked, expired,
	// lacks consent, or the provider demands MFA or fails Conditional Access.
	NeedsReauth
	// BadClient needs an administrator: the client secret is wrong or expired, or the client
	// registration does not allow what is asked.
	BadClient
)

func (k Kind) String() string {
	switch k {
	case Transient:
		return "transient"
	case NeedsReauth:
		return "needs_reauth"
	case BadClient:
		return "bad_client"
	}
	return "unknown"
}

var (
	// reauthCodes are token-endpoint errors that only a new sign-in fixes.
	reauthCodes = []string{"invalid_grant", "interaction_required", "consent_required", "login_required", "access_denied", "expired_token"}
	// badClientCodes are errors in the client's registration or credentials.
	badClientCodes = []string{"invalid_client", "unauthorized_client", "invalid_scope", "unsupported_grant_type"}
	// transientCodes are the RFC 6749 codes for a server that will recover.
	transientCodes = []string{"temporarily_unavailable", "server_error"}

	// reauthAADSTS: 70000 invalid grant, 70008 and 700082 refresh token expired, 50173 password
	// changed, 65001 no consent, 50076/50079 MFA required, 53003 blocked by Conditional Access,
	// 70043 sign-in frequency, 700084 refresh token of a single-page app expired.
	reauthAADSTS = []int{70000, 70008, 700082, 50173, 65001, 50076, 50079, 53003, 70043, 700084}
	// badClientAADSTS: 7000215 invalid client secret, 7000222 expired client secret, 700016
	// application not found in the tenant, 7000112 application disabled.
	badClientAADSTS = []int{7000215, 7000222, 700016, 7000112}
)

var aadstsRE = regexp.MustCompile(`AADSTS(\d+)`)

// aadsts returns the Microsoft error numbers in s.
func aadsts(s string) []int {
	var out []int
	for _, m := range aadstsRE.FindAllStringSubmatch(s, -1) {
		if n, err := strconv.Atoi(m[1]); err == nil {
			out = append(out, n)
		}
	}
	return out
}

// Classify says what err, from a token request, means.
func Classify(err error) Kind {
	if err == nil {
		return Unknown
	}
	var re *oauth2.RetrieveError
	if errors.As(err, &re) {
		codes := aadsts(re.ErrorDescription)
		for _, c := range codes {
			if slices.Contains(badClientAADSTS, c) {
				return BadClient
			}
		}
		for _, c := range codes {
			if slices.Contains(reauthAADSTS, c) {
				return NeedsReauth
			}
		}
		switch {
		case slices.Contains(badClientCodes, re.ErrorCode):
			return BadClient
		case slices.Contains(reauthCodes, re.ErrorCode):
			return NeedsReauth
		case slices.Contains(transientCodes, re.ErrorCode):
			return Transient
		}
		if re.Response != nil {
			if s := re.Response.StatusCode; s >= 500 || s == http.StatusTooManyRequests || s == http.StatusRequestTimeout {
				return Transient
			}
		}
		return Unknown
	}
	var ne net.Error
	switch {
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, context.Canceled),
		errors.Is(err, io.ErrUnexpectedEOF), errors.Is(err, io.EOF), errors.As(err, &ne):
		return Transient
	}
	return Unknown
}

// Reason is a failed token request in the provider's words, for a person to read: the error code
// and the first line of its description, or the HTTP status. It holds no token.
func Reason(err error) string {
	if err == nil {
		return ""
	}
	var re *oauth2.RetrieveError
	if errors.As(err, &re) {
		desc, _, _ := strings.Cut(strings.TrimSpace(re.ErrorDescription), "\n")
		desc = strings.TrimSpace(strings.TrimSuffix(desc, "\r"))
		switch {
		case re.ErrorCode != "" && desc != "":
			return re.ErrorCode + ": " + desc
		case re.ErrorCode != "":
			return re.ErrorCode
		case re.Response != nil:
			return fmt.Sprintf("token endpoint answered %s", re.Response.Status)
		}
	}
	return err.Error()
}
