package vault

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"

	"github.com/hashicorp/vault/api"
)

// Sentinel errors callers branch on. Errors returned by the Client wrap one of them where it applies.
var (
	// ErrNotFound: the path holds no secret, or its current version was deleted or destroyed.
	ErrNotFound = errors.New("not found in vault")
	// ErrConflict: a check-and-set write found a version other than the one given.
	ErrConflict = errors.New("check-and-set version conflict")
	// ErrForbidden: Vault answered 403, because the token's policy does not allow the request or the
	// token is no longer valid.
	ErrForbidden = errors.New("permission denied by vault")
	// ErrUnavailable: Vault could not be reached, or answered that it cannot serve now (sealed,
	// standby, rate limited, 5xx), or the client holds no valid token. Retrying later may succeed.
	ErrUnavailable = errors.New("vault unavailable")
)

// casMismatch is what Vault's KV v2 engine says when a check-and-set write finds another version.
const casMismatch = "check-and-set parameter did not match the current version"

// responseError is Vault's answer to a failed request, in one line.
type responseError struct {
	status   int
	messages []string
	kind     error // one of the sentinels, or nil
	raw      *api.ResponseError
}

func (e *responseError) Error() string {
	msg := strings.Join(e.messages, "; ")
	if msg == "" {
		msg = http.StatusText(e.status)
	}
	return fmt.Sprintf("vault answered %d: %s", e.status, msg)
}

// Unwrap gives errors.Is the sentinel and errors.As the *api.ResponseError.
func (e *responseError) Unwrap() []error {
	if e.kind == nil {
		return []error{e.raw}
	}
	return []error{e.kind, e.raw}
}

// unavailableError is a transport failure: no answer from Vault at all.
type unavailableError struct{ err error }

func (e *unavailableError) Error() string   { return e.err.Error() }
func (e *unavailableError) Unwrap() []error { return []error{ErrUnavailable, e.err} }

func newUnavailable(err error) error { return &unavailableError{err: err} }

func isForbidden(err error) bool { return statusCode(err) == http.StatusForbidden }

func statusCode(err error) int {
	var re *api.ResponseError
	if errors.As(err, &re) {
		return re.StatusCode
	}
	return 0
}

// classify turns what the api package returned into an error carrying the right sentinel, with
// every known secret scrubbed from Vault's messages: an error answer by its status, a transport
// failure as ErrUnavailable. ctx is the caller's: a cancelled caller gets its own context error
// back. Anything else (a file that cannot be read, a malformed answer) passes with its text scrubbed.
func classify(ctx context.Context, err error, scrub func(string) string) error {
	if err == nil {
		return nil
	}
	var done *responseError
	var down *unavailableError
	if errors.As(err, &done) || errors.As(err, &down) {
		return err
	}
	var re *api.ResponseError
	if errors.As(err, &re) {
		out := &responseError{status: re.StatusCode, raw: re}
		for _, m := range re.Errors {
			out.messages = append(out.messages, scrub(oneLine(m)))
		}
		switch {
		case re.StatusCode == http.StatusBadRequest && containsAny(re.Errors, casMismatch):
			out.kind = ErrConflict
		case re.StatusCode == http.StatusForbidden:
			out.kind = ErrForbidden
		case re.StatusCode == http.StatusNotFound:
			out.kind = ErrNotFound
		case re.StatusCode == http.StatusTooManyRequests || re.StatusCode >= 500:
			out.kind = ErrUnavailable
		}
		return out
	}
	if ctx.Err() != nil {
		return ctx.Err()
	}
	var ue *url.Error
	var ne net.Error
	if errors.As(err, &ue) || errors.As(err, &ne) || errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) ||
		errors.Is(err, context.DeadlineExceeded) {
		return newUnavailable(scrubbed{err: err, text: scrub(err.Error())})
	}
	return scrubbed{err: err, text: scrub(err.Error())}
}

// scrubbed keeps an error's chain but replaces its text.
type scrubbed struct {
	err  error
	text string
}

func (s scrubbed) Error() string { return s.text }
func (s scrubbed) Unwrap() error { return s.err }

// oneLine flattens Vault's multi-line messages ("1 error occurred:\n\t* permission denied\n\n").
func oneLine(m string) string {
	var parts []string
	for _, l := range strings.Split(m, "\n") {
		l = strings.TrimSpace(l)
		if l == "" || (strings.HasSuffix(l, "occurred:") && strings.Contains(l, "error")) {
			continue
		}
		parts = append(parts, strings.TrimPrefix(l, "* "))
	}
	return strings.Join(parts, "; ")
}

func containsAny(msgs []string, sub string) bool {
	for _, m := range msgs {
		if strings.Contains(m, sub) {
			return true
		}
	}
	return false
}
