package project

import (
	"encoding/json"

	"github.com/postern/postern/sidecar/secret"
)

// NormalizeSenders applies NormalizeSender to every entry; an empty list gives nil.
func NormalizeSenders(list []string) []string {
	if len(list) == 0 {
		return nil
	}
	out := make([]string, len(list))
	for i, s := range list {
		out[i] = NormalizeSender(s)
	}
	return out
}

// SecretMark is how `postern project show` and the project API show a secret: "[set]" or
// "[not set]", never its value.
func SecretMark(s secret.Secret) string {
	if s.IsZero() {
		return "[not set]"
	}
	return "[set]"
}

// PublicMap is p as its ordinary JSON object (which carries no secrets), with its version and
// each secret shown as SecretMark: what `postern project show --json` prints and the project API
// answers.
func PublicMap(p Project) (map[string]any, error) {
	obj, err := jsonMap(p)
	if err != nil {
		return nil, err
	}
	obj["version"] = p.Version
	if auth, ok := obj["auth"].(map[string]any); ok {
		if p.Auth.Type == AuthBasic || !p.Auth.Password.IsZero() {
			auth["password"] = SecretMark(p.Auth.Password)
		}
		if o, ok := auth["oauth"].(map[string]any); ok && p.Auth.OAuth != nil {
			o["client_secret"] = SecretMark(p.Auth.OAuth.ClientSecret)
		}
	}
	return obj, nil
}

// PublicTokenMap is t as its ordinary JSON object, with its version and each token shown as
// SecretMark.
func PublicTokenMap(t Token) (map[string]any, error) {
	obj, err := jsonMap(t)
	if err != nil {
		return nil, err
	}
	obj["access_token"] = SecretMark(t.AccessToken)
	obj["refresh_token"] = SecretMark(t.RefreshToken)
	obj["version"] = t.Version
	return obj, nil
}

func jsonMap(v any) (map[string]any, error) {
	b, err := json.Marshal(v)
	if err != nil {
		return nil, err
	}
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		return nil, err
	}
	return m, nil
}
