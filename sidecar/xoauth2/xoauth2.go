// Package xoauth2 owns the client side of the XOAUTH2 SASL mechanism (Google's and Microsoft's way
// of signing in to SMTP with an OAuth 2.0 access token), which github.com/emersion/go-sasl lacks.
//
// The exchange, as an SMTP client's AUTH drives it (sidecar/upstream's session; go-smtp's
// Client.Auth alike):
//
//  1. Start names the mechanism. Access tokens are several kilobytes and RFC 4954 forbids an AUTH
//     line longer than 512 octets, so by default Start returns no initial response and the client
//     sends a bare `AUTH XOAUTH2`. (A short response may go on the AUTH line when asked for.)
//  2. The server answers `334 ` with an empty challenge; Next answers it with
//     base64("user=" + mailbox + "\x01auth=Bearer " + token + "\x01\x01").
//  3. The server accepts with 235, or (Google, sometimes Microsoft) sends a second 334 whose challenge
//     is a JSON error {"status":"401","schemes":"bearer","scope":"..."}. Next answers that with an
//     empty line so the server sends its real 535, and keeps the decoded error, which Err returns
//     after the exchange. The 535 itself reaches the caller as the SMTP client's error (an
//     *upstream.Error of stage auth).
package xoauth2

import (
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"unicode"

	"github.com/emersion/go-sasl"

	"github.com/postern/postern/sidecar/secret"
)

// Mechanism is the SASL mechanism name.
const Mechanism = "XOAUTH2"

// MaxAuthLine is RFC 4954's limit on the length of the AUTH command line, CRLF included.
const MaxAuthLine = 512

// Mode says whether the response goes on the AUTH line as an initial response.
type Mode int

const (
	// Auto sends an initial response only when the AUTH line stays within MaxAuthLine octets,
	// which real access tokens never do.
	Auto Mode = iota
	// NoInitialResponse always waits for the server's empty 334 challenge.
	NoInitialResponse
	// InitialResponse always returns the response from Start, whatever its length. (A client that
	// keeps RFC 4954's limit itself, as sidecar/upstream's does, still sends one too long for the
	// AUTH line after the server's first challenge.)
	InitialResponse
)

// Client is an XOAUTH2 sasl.Client. Use a new one for every AUTH exchange.
type Client struct {
	username string
	token    secret.Secret
	mode     Mode

	sent      bool // the response has been sent
	answered  bool // an error challenge has been answered
	challenge *ChallengeError
}

var _ sasl.Client = (*Client)(nil)

// NewClient returns a client signing username (the mailbox) in with the access token, in Auto mode.
func NewClient(username string, token secret.Secret) *Client {
	return NewClientMode(username, token, Auto)
}

// NewClientMode returns a client with an explicit Mode.
func NewClientMode(username string, token secret.Secret, mode Mode) *Client {
	return &Client{username: username, token: token, mode: mode}
}

// Response returns the XOAUTH2 client response for username and token. It holds the token in clear:
// it goes on the wire and nowhere else.
func Response(username string, token secret.Secret) []byte {
	return []byte("user=" + username + "\x01auth=Bearer " + token.Reveal() + "\x01\x01")
}

// Start implements sasl.Client.
func (c *Client) Start() (string, []byte, error) {
	if strings.ContainsAny(c.username, "\x01\r\n") {
		return "", nil, fmt.Errorf("xoauth2: username %q contains a control character", c.username)
	}
	if c.token.IsZero() {
		return "", nil, errors.New("xoauth2: empty access token")
	}
	resp := Response(c.username, c.token)
	if c.initialResponse(len(resp)) {
		c.sent = true
		return Mechanism, resp, nil
	}
	return Mechanism, nil, nil
}

// initialResponse reports whether a response of n octets goes on the AUTH line.
func (c *Client) initialResponse(n int) bool {
	switch c.mode {
	case InitialResponse:
		return true
	case NoInitialResponse:
		return false
	}
	line := len("AUTH "+Mechanism+" ") + base64.StdEncoding.EncodedLen(n) + len("\r\n")
	return line <= MaxAuthLine
}

// Next implements sasl.Client. The first challenge (empty, when no initial response was sent) is
// answered with the response; an error challenge after that with an empty response. The empty
// response is a non-nil empty slice: go-smtp ends the exchange on a nil one.
func (c *Client) Next(challenge []byte) ([]byte, error) {
	switch {
	case !c.sent:
		c.sent = true
		return Response(c.username, c.token), nil
	case !c.answered:
		c.answered = true
		c.challenge = ParseChallenge(challenge)
		return []byte{}, nil
	default:
		return nil, fmt.Errorf("xoauth2: unexpected challenge after the error challenge: %w", sasl.ErrUnexpectedServerChallenge)
	}
}

// Err returns the server's error challenge as a *ChallengeError once the exchange is over, or nil
// if the server sent none.
func (c *Client) Err() error {
	if c.challenge == nil {
		return nil
	}
	return c.challenge
}

// Challenge returns the server's error challenge, or nil.
func (c *Client) Challenge() *ChallengeError { return c.challenge }

// ChallengeError is the JSON error challenge a server sends instead of accepting a token.
type ChallengeError struct {
	// Status is the HTTP-like status, "401" for a bad or expired token, "400" for a malformed request.
	Status string
	// Schemes is the accepted authentication scheme, normally "bearer".
	Schemes string
	// Scope is the scope a token must have.
	Scope string
	// Raw is the challenge as received when it was not the expected JSON (printable, shortened).
	Raw string
}

func (e *ChallengeError) Error() string {
	if e.Status == "" && e.Schemes == "" && e.Scope == "" {
		if e.Raw == "" {
			return "xoauth2: server refused the token with an empty challenge"
		}
		return fmt.Sprintf("xoauth2: server refused the token: %q", e.Raw)
	}
	s := "xoauth2: server refused the token: status " + e.Status
	if e.Schemes != "" {
		s += ", schemes " + e.Schemes
	}
	if e.Scope != "" {
		s += ", scope " + e.Scope
	}
	return s
}

// maxRaw bounds the undecoded challenge kept in a ChallengeError.
const maxRaw = 200

// ParseChallenge decodes an error challenge (already base64-decoded by the SMTP client). It never
// fails: a challenge that is not the expected JSON is kept, shortened and made printable, in Raw.
func ParseChallenge(b []byte) *ChallengeError {
	var v struct {
		Status  json.RawMessage `json:"status"`
		Schemes string          `json:"schemes"`
		Scope   string          `json:"scope"`
	}
	if err := json.Unmarshal(b, &v); err == nil {
		if status, ok := jsonScalar(v.Status); ok && (status != "" || v.Schemes != "" || v.Scope != "") {
			return &ChallengeError{Status: printable(status), Schemes: printable(v.Schemes), Scope: printable(v.Scope)}
		}
	}
	return &ChallengeError{Raw: printable(string(b))}
}

// jsonScalar returns a JSON string or number as text ("401" and 401 both give "401").
func jsonScalar(m json.RawMessage) (string, bool) {
	if len(m) == 0 || string(m) == "null" {
		return "", true
	}
	var s string
	if json.Unmarshal(m, &s) == nil {
		return s, true
	}
	var n json.Number
	if json.Unmarshal(m, &n) == nil {
		return n.String(), true
	}
	return "", false
}

// printable replaces control and invalid characters and bounds the length.
func printable(s string) string {
	s = strings.Map(func(r rune) rune {
		if r == unicode.ReplacementChar || !unicode.IsPrint(r) {
			return '?'
		}
		return r
	}, s)
	if r := []rune(s); len(r) > maxRaw {
		s = string(r[:maxRaw]) + "..."
	}
	return s
}
