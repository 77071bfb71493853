package address

import (
	"errors"
	"testing"
)

func TestPath(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		addr string
		want string
	}{
		{"null sender", "", ""},
		{"dot-atom", "john.doe@example.com", "john.doe@example.com"},
		{"every atext character", "a!#$%&'*+-/=?^_`{|}~z@example.com", "a!#$%&'*+-/=?^_`{|}~z@example.com"},
		{"UTF-8 dot-atom", "jörg.müller@bücher.example", "jörg.müller@bücher.example"},
		{"space", "john doe@example.com", `"john doe"@example.com`},
		{"injected parameters", "attacker@evil.example> NOTIFY=NEVER ORCPT=rfc822;x@customer.example",
			`"attacker@evil.example> NOTIFY=NEVER ORCPT=rfc822;x"@customer.example`},
		{"quote and backslash", `a"b\c@example.com`, `"a\"b\\c"@example.com`},
		{"leading dot", ".john@example.com", `".john"@example.com`},
		{"trailing dot", "john.@example.com", `"john."@example.com`},
		{"two dots", "john..doe@example.com", `"john..doe"@example.com`},
		{"angle brackets", "<x>@example.com", `"<x>"@example.com`},
		{"UTF-8 with a space", "jörg müller@example.com", `"jörg müller"@example.com`},
		{"IPv4 literal", "postmaster@[192.0.2.1]", "postmaster@[192.0.2.1]"},
		{"IPv6 literal", "postmaster@[IPv6:2001:db8::1]", "postmaster@[IPv6:2001:db8::1]"},
		{"underscore and hyphen in the domain", "x@my_host-1.example", "x@my_host-1.example"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			got, err := Path(tc.addr)
			if err != nil {
				t.Fatalf("Path(%q): %v", tc.addr, err)
			}
			if got != tc.want {
				t.Fatalf("Path(%q) = %s, want %s", tc.addr, got, tc.want)
			}
		})
	}
}

func TestPathRefuses(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name   string
		addr   string
		reason string
	}{
		{"NUL", "a\x00b@example.com", "the local part holds a control character"},
		{"CR LF", "a\r\nRSET@example.com", "the local part holds a control character"},
		{"tab", "a\tb@example.com", "the local part holds a control character"},
		{"DEL", "a\x7f@example.com", "the local part holds a control character"},
		{"C1 control", "a\u0085b@example.com", "the local part holds a control character"},
		{"invalid UTF-8", "a\xff@example.com", "the local part is not valid UTF-8"},
		{"no domain", "postmaster", "the address has no domain"},
		{"empty local part", "@example.com", "the address has an empty local part"},
		{"empty domain", "a@", "the address has an empty domain"},
		{"empty label", "a@example..com", "the domain has an empty label"},
		{"trailing dot in the domain", "a@example.com.", "the domain has an empty label"},
		{"space in the domain", "a@example.com> NOTIFY=NEVER", "the domain holds a character no domain name may hold"},
		{"bracket in the domain", "a@exa>mple.com", "the domain holds a character no domain name may hold"},
		{"NUL in the domain", "a@exa\x00mple.com", "the domain holds a control character"},
		{"invalid UTF-8 in the domain", "a@\xffexample.com", "the domain is not valid UTF-8"},
		{"unterminated literal", "a@[192.0.2.1", "the domain is not a valid address literal"},
		{"space in a literal", "a@[192.0.2.1] x]", "the domain is not a valid address literal"},
		{"empty literal", "a@[]", "the domain is not a valid address literal"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			got, err := Path(tc.addr)
			var se *SyntaxError
			if !errors.As(err, &se) {
				t.Fatalf("Path(%q) = %q, %v; want a *SyntaxError", tc.addr, got, err)
			}
			if se.Reason != tc.reason {
				t.Fatalf("Path(%q): reason %q, want %q", tc.addr, se.Reason, tc.reason)
			}
		})
	}
}

func TestNeedsSMTPUTF8(t *testing.T) {
	t.Parallel()
	for addr, want := range map[string]bool{
		"":                     false,
		"john@example.com":     false,
		"john doe@example.com": false,
		"jörg@example.com":     true,
		"john@bücher.example":  true,
	} {
		if got := NeedsSMTPUTF8(addr); got != want {
			t.Errorf("NeedsSMTPUTF8(%q) = %v, want %v", addr, got, want)
		}
	}
}
