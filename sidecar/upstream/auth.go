package upstream

import (
	"bytes"
	"context"
	"encoding/base64"
	"fmt"
	"slices"
	"strings"

	"github.com/emersion/go-sasl"

	"github.com/postern/postern/sidecar/project"
)

// maxCommandLine is RFC 5321's limit on a command line, CRLF included (§4.5.3.1.4), which RFC 4954
// applies to AUTH with its initial response.
const maxCommandLine = 512

// signIn runs AUTH when auth has credentials: never over an unencrypted connection unless the
// project's TLS mode is none (which only a loopback upstream may use). The exchange is traced
// redacted.
func (c *Conn) signIn(ctx context.Context, u project.Upstream, auth Auth) *Error {
	if auth.SASL == nil && auth.Username == "" {
		return nil
	}
	if !c.encrypted && u.TLS != project.TLSNone {
		return &Error{Stage: StageAuth, Addr: c.addr, Message: "refusing to send credentials over an unencrypted connection"}
	}
	sc, mech, err := c.saslClient(auth)
	if err != nil {
		return &Error{Stage: StageAuth, Addr: c.addr, Err: err}
	}
	c.mech = mech
	c.trace.setMode(traceAuth)
	err = c.auth(sc)
	c.trace.setMode(traceCommands)
	if err != nil {
		return c.ioError(ctx, StageAuth, err, c.opts.GreetingTimeout)
	}
	return nil
}

// auth runs one SASL exchange (RFC 4954) with sc. The initial response goes on the AUTH line
// unless the line would pass maxCommandLine octets; it then answers the server's first, empty,
// challenge. Every challenge (334) is answered with what sc makes of it, an empty response with
// an empty line (XOAUTH2's answer to Google's error challenge, which brings the real 535). 235
// ends the exchange; any other reply is returned as an *smtp.SMTPError and ends it too. When sc
// fails, or a challenge is not base64, the exchange is cancelled with "*" and sc's error returned.
func (c *Conn) auth(sc sasl.Client) error {
	enc := base64.StdEncoding
	mech, ir, err := sc.Start()
	if err != nil {
		return err
	}
	line := "AUTH " + mech
	var pending []byte // an initial response too long for the AUTH line
	switch {
	case ir == nil:
	case len(ir) == 0:
		line += " ="
	case len(line)+1+enc.EncodedLen(len(ir))+2 > maxCommandLine:
		pending = ir
	default:
		line += " " + enc.EncodeToString(ir)
	}
	if err := c.cmd(line); err != nil {
		return err
	}
	for {
		code, msg, err := c.read(0)
		switch {
		case err != nil:
			return err
		case code == 235:
			return nil
		case code != 334:
			return toSMTPError(code, msg)
		}
		resp := pending
		if pending != nil {
			pending = nil
		} else {
			var challenge []byte
			if challenge, err = enc.DecodeString(msg); err != nil {
				err = fmt.Errorf("the upstream's AUTH challenge is not base64: %w", err)
			} else {
				resp, err = sc.Next(challenge)
			}
			if err != nil {
				return c.cancelAuth(err)
			}
		}
		if err := c.cmd(enc.EncodeToString(resp)); err != nil {
			return err
		}
	}
}

// cancelAuth ends an AUTH exchange the client cannot go on with and returns err. The connection
// is closed after it in any case (the error has no code).
func (c *Conn) cancelAuth(err error) error {
	if werr := c.cmd("*"); werr == nil {
		c.read(0) // the server's 501; the connection is not used after
	}
	return err
}

// saslClient chooses the SASL client for auth against what the upstream offers, and names its
// mechanism. The error has no code: the upstream was not asked.
func (c *Conn) saslClient(auth Auth) (sasl.Client, string, error) {
	if auth.SASL != nil {
		mech := strings.ToUpper(auth.Mechanism)
		if mech == "" {
			mech = "SASL"
		}
		return auth.SASL(), mech, nil
	}
	ok, list := c.extension("AUTH")
	if !ok {
		return nil, "", fmt.Errorf("%w: check upstream.tls and the server's settings", ErrNoAuth)
	}
	offered := strings.Fields(strings.ToUpper(list))
	mech := strings.ToUpper(auth.Mechanism)
	switch {
	case mech == "" && slices.Contains(offered, sasl.Plain):
		mech = sasl.Plain
	case mech == "" && slices.Contains(offered, sasl.Login):
		mech = sasl.Login
	case mech == "":
		return nil, "", fmt.Errorf("the upstream offers AUTH %s; Postern speaks PLAIN and LOGIN", list)
	case !slices.Contains(offered, mech):
		return nil, "", fmt.Errorf("%w %s (it offers %s): check auth.mechanism", ErrMechanismNotOffered, mech, list)
	}
	switch mech {
	case sasl.Plain:
		return sasl.NewPlainClient("", auth.Username, auth.Secret.Reveal()), mech, nil
	case sasl.Login:
		return &loginClient{username: auth.Username, password: auth.Secret.Reveal()}, mech, nil
	}
	return nil, "", fmt.Errorf("auth.mechanism %q: use PLAIN or LOGIN", auth.Mechanism)
}

// loginClient is the LOGIN mechanism. Unlike go-sasl's, it does not insist on the exact challenge
// text "Password:": servers that ignore the initial response ask "Username:" first, and some word
// their challenges differently. It answers a challenge that asks for the user name with the user
// name, and the first other challenge with the password.
type loginClient struct {
	username, password string
	sentPassword       bool
}

func (a *loginClient) Start() (string, []byte, error) {
	return sasl.Login, []byte(a.username), nil
}

func (a *loginClient) Next(challenge []byte) ([]byte, error) {
	if bytes.HasPrefix(bytes.ToLower(challenge), []byte("user")) {
		return []byte(a.username), nil
	}
	if a.sentPassword {
		return nil, sasl.ErrUnexpectedServerChallenge
	}
	a.sentPassword = true
	return []byte(a.password), nil
}
