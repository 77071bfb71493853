// Package secret holds values that must never reach a log, an error, a metric or test output:
// passwords, client secrets, access and refresh tokens.
//
// A Secret prints as "[redacted]" through fmt, slog, JSON and YAML. The only way to the value is
// Reveal, which is called where the value is put on the wire or into encrypted storage.
//
// LoadOrCreateFile keeps a generated secret (a signing key, an API token) in a file only its
// owner may read.
package secret

import (
	"encoding/json"
	"log/slog"
)

const redacted = "[redacted]"

// Secret is a string that redacts itself. The zero value is the empty secret.
type Secret struct{ v string }

// New wraps s.
func New(s string) Secret { return Secret{v: s} }

// Reveal returns the value. Call it only where the value leaves the process on purpose.
func (s Secret) Reveal() string { return s.v }

// IsZero reports whether the secret is empty.
func (s Secret) IsZero() bool { return s.v == "" }

// Equal reports whether two secrets hold the same value.
func (s Secret) Equal(o Secret) bool { return s.v == o.v }

// String implements fmt.Stringer.
func (s Secret) String() string {
	if s.v == "" {
		return ""
	}
	return redacted
}

// GoString implements fmt.GoStringer, so %#v redacts too.
func (s Secret) GoString() string { return s.String() }

// LogValue implements slog.LogValuer.
func (s Secret) LogValue() slog.Value { return slog.StringValue(s.String()) }

// MarshalJSON redacts. Storage that must keep the value encodes it explicitly with Reveal.
func (s Secret) MarshalJSON() ([]byte, error) { return json.Marshal(s.String()) }

// MarshalText redacts (YAML, and JSON map keys).
func (s Secret) MarshalText() ([]byte, error) { return []byte(s.String()), nil }

var (
	_ slog.LogValuer = Secret{}
	_ json.Marshaler = Secret{}
)
