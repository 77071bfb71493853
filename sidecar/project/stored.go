package project

import (
	"bytes"
	"encoding/json"
	"fmt"

	"github.com/postern/postern/sidecar/secret"
)

// The storage form of projects and tokens is JSON with the secret values in clear, for backends that
// encrypt at rest (the embedded file store, Vault). Nothing else may use these functions: anywhere
// else a Project or Token marshals with its secrets redacted.

type storedProject struct {
	Project
	Auth storedAuth `json:"auth"`
}

type storedAuth struct {
	Auth
	Password string       `json:"password,omitempty"`
	OAuth    *storedOAuth `json:"oauth,omitempty"`
}

type storedOAuth struct {
	OAuth
	ClientSecret string `json:"client_secret,omitempty"`
}

type storedToken struct {
	Token
	AccessToken  string `json:"access_token,omitempty"`
	RefreshToken string `json:"refresh_token,omitempty"`
}

// MarshalStored encodes p with its secrets, for a store.
func MarshalStored(p Project) ([]byte, error) {
	s := storedProject{Project: p, Auth: storedAuth{Auth: p.Auth, Password: p.Auth.Password.Reveal()}}
	if p.Auth.OAuth != nil {
		s.Auth.OAuth = &storedOAuth{OAuth: *p.Auth.OAuth, ClientSecret: p.Auth.OAuth.ClientSecret.Reveal()}
	}
	return json.Marshal(s)
}

// UnmarshalStored decodes what MarshalStored wrote. Unknown keys are errors, so a typo in a record
// an administrator wrote by hand is reported rather than ignored.
func UnmarshalStored(b []byte) (Project, error) {
	var s storedProject
	if err := strictJSON(b, &s); err != nil {
		return Project{}, err
	}
	p := s.Project
	p.Auth = s.Auth.Auth
	p.Auth.Password = secret.New(s.Auth.Password)
	if s.Auth.OAuth != nil {
		o := s.Auth.OAuth.OAuth
		o.ClientSecret = secret.New(s.Auth.OAuth.ClientSecret)
		p.Auth.OAuth = &o
	}
	return p, nil
}

// MarshalStoredToken encodes t with its secrets, for a store.
func MarshalStoredToken(t Token) ([]byte, error) {
	return json.Marshal(storedToken{Token: t, AccessToken: t.AccessToken.Reveal(), RefreshToken: t.RefreshToken.Reveal()})
}

// UnmarshalStoredToken decodes what MarshalStoredToken wrote.
func UnmarshalStoredToken(b []byte) (Token, error) {
	var s storedToken
	if err := strictJSON(b, &s); err != nil {
		return Token{}, err
	}
	t := s.Token
	t.AccessToken = secret.New(s.AccessToken)
	t.RefreshToken = secret.New(s.RefreshToken)
	return t, nil
}

func strictJSON(b []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return fmt.Errorf("decoding stored record: %w", err)
	}
	return nil
}
