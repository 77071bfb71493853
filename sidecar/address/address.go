// Package address owns how an envelope address is written into an upstream MAIL FROM or RCPT TO
// command (RFC 5321 section 4.1.2). It is pure: no I/O, no clock, no logging, so it can be fuzzed
// and shared by the upstream client, the LMTP/SMTP server and the milter, which refuse the same
// addresses for the same reasons.
//
// go-smtp's server hands Postern an address with the quotes and backslash escapes of a quoted
// local part removed: `"john doe"@example.com` arrives as `john doe@example.com`, and
// `"a@b> NOTIFY=NEVER"@example.com` as `a@b> NOTIFY=NEVER@example.com`. Written back as it is,
// such an address would be another mailbox, or a mailbox followed by parameters of the
// attacker's choosing. The flow:
//
//  1. Path splits the address at its last "@": the domain cannot hold one, so everything before
//     it is the local part, however many "@" it holds. The empty address is the null
//     reverse-path and stays empty.
//  2. The domain must be a domain name (labels of letters, digits, hyphens and underscores, or
//     UTF-8 labels for SMTPUTF8) or an address literal ("[192.0.2.1]", "[IPv6:...]").
//  3. A local part that is a dot-string (atoms of RFC 5321 atext, or UTF-8, joined by single
//     dots) is written as it is. Any other local part is written as a quoted-string, with "\"
//     before each '"' and '\'.
//  4. What no quoting can carry is refused with a *SyntaxError: control characters (NUL, CR, LF,
//     TAB and the rest of C0, DEL, and C1), bytes that are not UTF-8, an empty local part.
//
// NeedsSMTPUTF8 says whether an address may only be sent with the SMTPUTF8 parameter (RFC 6531).
package address

import (
	"strings"
	"unicode"
	"unicode/utf8"
)

// SyntaxError says why an address cannot be written into an SMTP command. Reason is fit for a
// reply: it never quotes the address.
type SyntaxError struct {
	Reason string
}

func (e *SyntaxError) Error() string { return "malformed address: " + e.Reason }

// Path returns addr as it goes between the angle brackets of MAIL FROM:<...> or RCPT TO:<...>:
// the local part quoted where RFC 5321 requires it. The empty address (the null sender) stays
// empty. addr is an address as go-smtp's server passes it: local part unquoted, "@", domain.
func Path(addr string) (string, error) {
	if addr == "" {
		return "", nil
	}
	at := strings.LastIndexByte(addr, '@')
	if at < 0 {
		return "", &SyntaxError{Reason: "the address has no domain"}
	}
	local, domain := addr[:at], addr[at+1:]
	if err := checkDomain(domain); err != nil {
		return "", err
	}
	if local == "" {
		return "", &SyntaxError{Reason: "the address has an empty local part"}
	}
	if isDotString(local) {
		return addr, nil
	}
	var b strings.Builder
	b.Grow(len(addr) + 4)
	b.WriteByte('"')
	for i := 0; i < len(local); {
		c := local[i]
		switch {
		case c < ' ' || c == 0x7f:
			return "", &SyntaxError{Reason: "the local part holds a control character"}
		case c == '"' || c == '\\':
			b.WriteByte('\\')
			b.WriteByte(c)
			i++
		case c < utf8.RuneSelf:
			b.WriteByte(c)
			i++
		default:
			r, n := utf8.DecodeRuneInString(local[i:])
			if r == utf8.RuneError && n <= 1 {
				return "", &SyntaxError{Reason: "the local part is not valid UTF-8"}
			}
			if unicode.IsControl(r) {
				return "", &SyntaxError{Reason: "the local part holds a control character"}
			}
			b.WriteString(local[i : i+n])
			i += n
		}
	}
	b.WriteByte('"')
	b.WriteByte('@')
	b.WriteString(domain)
	return b.String(), nil
}

// NeedsSMTPUTF8 reports whether addr holds anything but ASCII, and so may be sent only in a
// transaction whose MAIL FROM carries SMTPUTF8 (RFC 6531).
func NeedsSMTPUTF8(addr string) bool {
	for i := 0; i < len(addr); i++ {
		if addr[i] >= utf8.RuneSelf {
			return true
		}
	}
	return false
}

// isDotString reports whether local is an RFC 5321 Dot-string: atoms of atext (or, per RFC 6531,
// UTF-8 beyond ASCII) separated by single dots.
func isDotString(local string) bool {
	if local == "" || local[0] == '.' || local[len(local)-1] == '.' || strings.Contains(local, "..") {
		return false
	}
	if !utf8.ValidString(local) {
		return false
	}
	for _, r := range local {
		switch {
		case r >= utf8.RuneSelf:
			if unicode.IsControl(r) {
				return false
			}
		case r != '.' && !isAtext(byte(r)):
			return false
		}
	}
	return true
}

// isAtext reports whether c is RFC 5322 atext: a letter, a digit or one of !#$%&'*+-/=?^_`{|}~.
func isAtext(c byte) bool {
	switch {
	case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9':
		return true
	}
	return strings.IndexByte("!#$%&'*+-/=?^_`{|}~", c) >= 0
}

// checkDomain accepts a domain name or an address literal.
func checkDomain(domain string) error {
	switch {
	case domain == "":
		return &SyntaxError{Reason: "the address has an empty domain"}
	case domain[0] == '[':
		// address-literal (RFC 5321 4.1.3): an IPv4 address, "IPv6:" and an IPv6 address, or a
		// tag, ":" and its content. Only letters, digits, ".", ":" and "-" are let through: the
		// rest of dcontent (">" among it) is in no address in use, and an SMTP server reading the
		// path back would end it at the ">".
		if len(domain) < 3 || domain[len(domain)-1] != ']' {
			return &SyntaxError{Reason: "the domain is not a valid address literal"}
		}
		for i := 1; i < len(domain)-1; i++ {
			switch c := domain[i]; {
			case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9', c == '.', c == ':', c == '-':
			default:
				return &SyntaxError{Reason: "the domain is not a valid address literal"}
			}
		}
		return nil
	}
	if !utf8.ValidString(domain) {
		return &SyntaxError{Reason: "the domain is not valid UTF-8"}
	}
	for label := range strings.SplitSeq(domain, ".") {
		if label == "" {
			return &SyntaxError{Reason: "the domain has an empty label"}
		}
		for _, r := range label {
			switch {
			case unicode.IsControl(r):
				return &SyntaxError{Reason: "the domain holds a control character"}
			case r >= utf8.RuneSelf, 'a' <= r && r <= 'z', 'A' <= r && r <= 'Z', '0' <= r && r <= '9', r == '-', r == '_':
			default:
				return &SyntaxError{Reason: "the domain holds a character no domain name may hold"}
			}
		}
	}
	return nil
}
