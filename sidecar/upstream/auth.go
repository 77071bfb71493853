package upstream

import (
	"bytes"
	"fmt"
	"slices"
	"strings"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"
)

// saslClient chooses the SASL client for auth against what the upstream offers, and names its
// mechanism. The error has no code: the upstream was not asked.
func saslClient(c *smtp.Client, auth Auth) (sasl.Client, string, error) {
	if auth.SASL != nil {
		mech := strings.ToUpper(auth.Mechanism)
		if mech == "" {
			mech = "SASL"
		}
		return auth.SASL(), mech, nil
	}
	ok, list := c.Extension("AUTH")
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
