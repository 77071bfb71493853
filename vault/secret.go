package vault

import (
	"encoding/json"
	"log/slog"
)

// Secret is a credential this package holds: a Vault token, an AppRole secret id, a response-wrapping
// token or a service-account JWT. It prints as "[redacted]" through fmt, slog and JSON; string(s) is
// the value, taken only where it goes on the wire.
type Secret string

// String implements fmt.Stringer.
func (s Secret) String() string {
	if s == "" {
		return ""
	}
	return "[redacted]"
}

// GoString implements fmt.GoStringer, so %#v redacts too.
func (s Secret) GoString() string { return s.String() }

// LogValue implements slog.LogValuer.
func (s Secret) LogValue() slog.Value { return slog.StringValue(s.String()) }

// MarshalJSON redacts.
func (s Secret) MarshalJSON() ([]byte, error) { return json.Marshal(s.String()) }

var (
	_ slog.LogValuer = Secret("")
	_ json.Marshaler = Secret("")
)
