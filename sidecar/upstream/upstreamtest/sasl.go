package upstreamtest

import (
	"bytes"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"
)

// PlainMechanism is AUTH PLAIN (RFC 4616) accepting what check accepts.
func PlainMechanism(check func(username, password string) bool) Mechanism {
	return func(login func(string)) sasl.Server {
		return sasl.NewPlainServer(func(identity, username, password string) error {
			if (identity != "" && identity != username) || !check(username, password) {
				return smtp.ErrAuthFailed
			}
			login(username)
			return nil
		})
	}
}

// LoginMechanism is AUTH LOGIN accepting what check accepts. Like most servers it takes the user
// name from the initial response when there is one, and asks "Username:" otherwise, then
// "Password:".
func LoginMechanism(check func(username, password string) bool) Mechanism {
	return func(login func(string)) sasl.Server {
		return &loginServer{check: check, login: login}
	}
}

type loginServer struct {
	check    func(username, password string) bool
	login    func(string)
	step     int
	username string
}

func (s *loginServer) Next(response []byte) ([]byte, bool, error) {
	switch s.step {
	case 0:
		s.step = 1
		if response == nil {
			return []byte("Username:"), false, nil
		}
		fallthrough
	case 1:
		s.username = string(bytes.Clone(response))
		s.step = 2
		return []byte("Password:"), false, nil
	default:
		if !s.check(s.username, string(response)) {
			return nil, false, smtp.ErrAuthFailed
		}
		s.login(s.username)
		return nil, true, nil
	}
}
