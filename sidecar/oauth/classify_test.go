package oauth_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"testing"

	"golang.org/x/oauth2"

	"github.com/postern/postern/sidecar/oauth"
)

func retrieveErr(status int, code, desc string) error {
	return fmt.Errorf("refreshing: %w", &oauth2.RetrieveError{
		Response:         &http.Response{StatusCode: status, Status: fmt.Sprintf("%d %s", status, http.StatusText(status))},
		ErrorCode:        code,
		ErrorDescription: desc,
	})
}

func TestClassify(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		err  error
		want oauth.Kind
	}{
		{"nil", nil, oauth.Unknown},
		{"invalid_grant", retrieveErr(400, "invalid_grant", "Token has been expired or revoked."), oauth.NeedsReauth},
		{"interaction_required", retrieveErr(400, "interaction_required", ""), oauth.NeedsReauth},
		{"consent_required", retrieveErr(400, "consent_required", ""), oauth.NeedsReauth},
		{"login_required", retrieveErr(400, "login_required", ""), oauth.NeedsReauth},
		{"AADSTS70000", retrieveErr(400, "invalid_request", "AADSTS70000: The provided grant is invalid"), oauth.NeedsReauth},
		{"AADSTS700082 inactivity", retrieveErr(400, "invalid_grant", "AADSTS700082: The refresh token has expired due to inactivity.\r\nTrace ID: x"), oauth.NeedsReauth},
		{"AADSTS50173 password changed", retrieveErr(400, "x", "AADSTS50173: The provided grant has expired due to it being revoked"), oauth.NeedsReauth},
		{"AADSTS65001 consent", retrieveErr(400, "x", "AADSTS65001: The user or administrator has not consented"), oauth.NeedsReauth},
		{"AADSTS50076 mfa", retrieveErr(400, "x", "AADSTS50076: Due to a configuration change made by your administrator"), oauth.NeedsReauth},
		{"AADSTS50079 mfa enrolment", retrieveErr(400, "x", "AADSTS50079: enrol"), oauth.NeedsReauth},
		{"AADSTS53003 conditional access", retrieveErr(400, "x", "AADSTS53003: Access has been blocked by Conditional Access policies."), oauth.NeedsReauth},
		{"invalid_client", retrieveErr(401, "invalid_client", "bad"), oauth.BadClient},
		{"AADSTS7000215 bad secret", retrieveErr(401, "invalid_client", "AADSTS7000215: Invalid client secret provided."), oauth.BadClient},
		{"AADSTS7000222 expired secret", retrieveErr(401, "x", "AADSTS7000222: The provided client secret keys are expired."), oauth.BadClient},
		{"AADSTS7000215 is not AADSTS70000", retrieveErr(400, "invalid_grant", "AADSTS7000215: Invalid client secret provided."), oauth.BadClient},
		{"AADSTS700001 is not AADSTS70000", retrieveErr(400, "", "AADSTS700001: something else"), oauth.Unknown},
		{"unauthorized_client", retrieveErr(400, "unauthorized_client", ""), oauth.BadClient},
		{"500", retrieveErr(500, "", ""), oauth.Transient},
		{"503 server_error", retrieveErr(503, "server_error", ""), oauth.Transient},
		{"429", retrieveErr(429, "", ""), oauth.Transient},
		{"temporarily_unavailable", retrieveErr(400, "temporarily_unavailable", ""), oauth.Transient},
		{"plain 400", retrieveErr(400, "invalid_request", "AADSTS900144: missing parameter"), oauth.Unknown},
		{"timeout", fmt.Errorf("x: %w", context.DeadlineExceeded), oauth.Transient},
		{"connection refused", &url.Error{Op: "Post", URL: "https://idp", Err: &net.OpError{Op: "dial", Err: errors.New("connection refused")}}, oauth.Transient},
		{"unexpected EOF", fmt.Errorf("reading: %w", io.ErrUnexpectedEOF), oauth.Transient},
		{"something else", errors.New("oauth2: server response missing access_token"), oauth.Unknown},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			if got := oauth.Classify(tc.err); got != tc.want {
				t.Fatalf("Classify(%v) = %v, want %v", tc.err, got, tc.want)
			}
		})
	}
}

func TestReason(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		err  error
		want string
	}{
		{"code and first line", retrieveErr(400, "invalid_grant", "AADSTS700082: The refresh token has expired.\r\nTrace ID: 1\r\nCorrelation ID: 2"), "invalid_grant: AADSTS700082: The refresh token has expired."},
		{"code only", retrieveErr(400, "invalid_grant", ""), "invalid_grant"},
		{"status only", retrieveErr(502, "", ""), "token endpoint answered 502 Bad Gateway"},
		{"other", errors.New("boom"), "boom"},
		{"nil", nil, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			if got := oauth.Reason(tc.err); got != tc.want {
				t.Fatalf("Reason = %q, want %q", got, tc.want)
			}
		})
	}
}
