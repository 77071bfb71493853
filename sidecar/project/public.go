package project

import (
	"encoding/json"
	"fmt"
	"time"

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

// ExpiryText is how `postern project show` and the status page show the expiry exp of a client
// secret at now: "expires 2026-03-01 (in 41 days)", "expires 2026-03-01 (today)" or
// "expired 2026-03-01 (3 days ago)". Days are whole days, rounded down.
func ExpiryText(exp, now time.Time) string {
	date := exp.UTC().Format(time.DateOnly)
	const day = 24 * time.Hour
	switch left := exp.Sub(now); {
	case left >= day:
		return fmt.Sprintf("expires %s (in %s)", date, nDays(int(left/day)))
	case left > 0:
		return "expires " + date + " (today)"
	case -left < day:
		return "expired " + date + " (today)"
	default:
		return fmt.Sprintf("expired %s (%s ago)", date, nDays(int(-left/day)))
	}
}

func nDays(n int) string {
	if n == 1 {
		return "1 day"
	}
	return fmt.Sprintf("%d days", n)
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
