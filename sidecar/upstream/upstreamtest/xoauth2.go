package upstreamtest

import (
	"errors"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"

	"github.com/postern/postern/sidecar/xoauth2"
	"github.com/postern/postern/sidecar/xoauth2/xoauth2test"
)

// XOAUTH2 configures the fake's XOAUTH2 mechanism.
type XOAUTH2 struct {
	// Check decides whether token is good for user (the mailbox named in the response). Nil
	// refuses every token.
	Check func(user, token string) bool
	// Direct refuses a token at once with 535 5.7.3 (Exchange Online's way) instead of Gmail's JSON
	// error challenge followed by 535 5.7.8.
	Direct bool
	// Refusal, when set, is the reply to a refused token instead, sent at once: for example
	// Exchange Online's 535 5.7.139 "SmtpClientAuthentication is disabled".
	Refusal *smtp.SMTPError
}

// XOAUTH2Mechanism is AUTH XOAUTH2 accepting the tokens check accepts, refusing the others the way
// Gmail does. Put it in Options.Mechanisms under xoauth2.Mechanism:
//
//	Mechanisms: map[string]upstreamtest.Mechanism{
//		xoauth2.Mechanism: upstreamtest.XOAUTH2Mechanism(func(user, token string) bool { ... }),
//	}
func XOAUTH2Mechanism(check func(user, token string) bool) Mechanism {
	return XOAUTH2{Check: check}.Mechanism()
}

// Mechanism returns the server side of AUTH XOAUTH2 as x describes it, played by xoauth2test.
func (x XOAUTH2) Mechanism() Mechanism {
	return func(login func(string)) sasl.Server {
		var user string
		srv := xoauth2test.NewServer(xoauth2test.Options{
			Check: func(u, token string) bool {
				if x.Check == nil || !x.Check(u, token) {
					return false
				}
				user = u
				return true
			},
			Direct: x.Direct || x.Refusal != nil,
		})
		return &xoauth2Server{Server: srv, refusal: x.Refusal, login: func() { login(user) }}
	}
}

// xoauth2Server reports the signed-in user and replaces the refusal when one is configured.
type xoauth2Server struct {
	sasl.Server
	refusal *smtp.SMTPError
	login   func()
}

func (s *xoauth2Server) Next(response []byte) ([]byte, bool, error) {
	challenge, done, err := s.Server.Next(response)
	if err != nil && s.refusal != nil && errors.Is(err, xoauth2test.ErrRefusedDirect) {
		err = s.refusal
	}
	if done && err == nil {
		s.login()
	}
	return challenge, done, err
}

// maxXOAUTH2Line is the longest command line the fake reads when it offers XOAUTH2: real access
// tokens are several kilobytes and arrive on one line.
const maxXOAUTH2Line = 64 << 10

// offersXOAUTH2 reports whether opts configure an XOAUTH2 mechanism.
func offersXOAUTH2(opts Options) bool {
	_, ok := opts.Mechanisms[xoauth2.Mechanism]
	return ok
}
