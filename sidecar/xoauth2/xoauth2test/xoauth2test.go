// Package xoauth2test provides the server side of XOAUTH2 for tests: a sasl.Server that a go-smtp
// test server returns from its session's Auth method, validating tokens the way Gmail and Exchange
// Online do.
//
// The exchange it plays:
//
//  1. Without an initial response it sends an empty 334 challenge and reads the response.
//  2. It decodes "user=...\x01auth=Bearer ...\x01\x01" and asks Options.Check about the pair.
//  3. Accepted: 235. Refused: either (Google style, the default) a 334 challenge carrying
//     {"status":"401","schemes":"bearer","scope":...}, and after the client's empty answer
//     535 5.7.8; or (Microsoft style, Options.Direct) 535 5.7.3 at once.
package xoauth2test

import (
	"bytes"
	"encoding/json"
	"errors"
	"strings"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"
)

// Options configures a Server.
type Options struct {
	// Check decides whether token is good for user. Nil refuses everything.
	Check func(user, token string) bool
	// Scope is named in the error challenge; empty means "https://mail.google.com/".
	Scope string
	// Direct refuses with 535 at once, without the JSON error challenge (Exchange Online's way).
	Direct bool
	// Seen, if set, is called with every decoded response, before Check.
	Seen func(user, token string)
}

// NewServer returns a sasl.Server for one AUTH XOAUTH2 exchange.
func NewServer(opts Options) sasl.Server {
	if opts.Scope == "" {
		opts.Scope = "https://mail.google.com/"
	}
	return &server{opts: opts}
}

type server struct {
	opts    Options
	step    int // 0: nothing received, 1: challenge sent, waiting for the empty answer
	started bool
}

// ErrRefused is the 535 a Google-style server sends after the error challenge.
var ErrRefused = &smtp.SMTPError{
	Code:         535,
	EnhancedCode: smtp.EnhancedCode{5, 7, 8},
	Message:      "Username and Password not accepted",
}

// ErrRefusedDirect is the 535 Exchange Online sends.
var ErrRefusedDirect = &smtp.SMTPError{
	Code:         535,
	EnhancedCode: smtp.EnhancedCode{5, 7, 3},
	Message:      "Authentication unsuccessful",
}

// ErrMalformed answers a response that is not XOAUTH2.
var ErrMalformed = &smtp.SMTPError{
	Code:         501,
	EnhancedCode: smtp.EnhancedCode{5, 5, 2},
	Message:      "Cannot decode the XOAUTH2 response",
}

func (s *server) Next(response []byte) ([]byte, bool, error) {
	if s.step == 1 {
		// The client's answer to the error challenge; anything but empty is refused all the same.
		return nil, false, ErrRefused
	}
	if response == nil && !s.started {
		s.started = true
		return []byte{}, false, nil
	}
	user, token, err := ParseResponse(response)
	if err != nil {
		return nil, false, ErrMalformed
	}
	if s.opts.Seen != nil {
		s.opts.Seen(user, token)
	}
	if s.opts.Check != nil && s.opts.Check(user, token) {
		return nil, true, nil
	}
	if s.opts.Direct {
		return nil, false, ErrRefusedDirect
	}
	s.step = 1
	challenge, _ := json.Marshal(map[string]string{"status": "401", "schemes": "bearer", "scope": s.opts.Scope})
	return challenge, false, nil
}

// ParseResponse splits an XOAUTH2 client response into the user and the bearer token.
func ParseResponse(b []byte) (user, token string, err error) {
	if !bytes.HasSuffix(b, []byte("\x01\x01")) {
		return "", "", errors.New("xoauth2 response does not end in ^A^A")
	}
	for _, f := range strings.Split(string(b[:len(b)-2]), "\x01") {
		switch {
		case strings.HasPrefix(f, "user="):
			user = strings.TrimPrefix(f, "user=")
		case strings.HasPrefix(f, "auth="):
			a := strings.TrimPrefix(f, "auth=")
			scheme, tok, ok := strings.Cut(a, " ")
			if !ok || !strings.EqualFold(scheme, "Bearer") {
				return "", "", errors.New("xoauth2 response auth is not a bearer token")
			}
			token = tok
		default:
			return "", "", errors.New("xoauth2 response has an unknown field")
		}
	}
	if user == "" || token == "" {
		return "", "", errors.New("xoauth2 response lacks user or auth")
	}
	return user, token, nil
}
