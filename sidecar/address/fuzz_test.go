package address

import (
	"errors"
	"fmt"
	"net/mail"
	"strings"
	"testing"
	"unicode"
)

// parsePath reads "<mailbox>" the way go-smtp's server reads the argument of MAIL FROM and
// RCPT TO (its parser.parsePath, without source routes): a quoted-string local part loses its
// quotes and escapes, a dot-string is taken up to "@", and the domain runs to the first space,
// tab or ">". It returns the address go-smtp would hand on and what follows the mailbox.
func parsePath(s string) (addr, rest string, err error) {
	if !strings.HasPrefix(s, "<") {
		return "", "", errors.New("no '<'")
	}
	s = s[1:]
	var local strings.Builder
	if strings.HasPrefix(s, `"`) {
		s = s[1:]
		for {
			if s == "" {
				return "", "", errors.New("unterminated quoted-string")
			}
			c := s[0]
			s = s[1:]
			if c == '"' {
				break
			}
			if c == '\\' {
				if s == "" {
					return "", "", errors.New("unterminated quoted-pair")
				}
				c, s = s[0], s[1:]
			}
			local.WriteByte(c)
		}
	} else {
		for s != "" && s[0] != '@' {
			if strings.IndexByte("()<>[]:;\\,\" \t", s[0]) >= 0 {
				return "", "", fmt.Errorf("%q in a dot-string", s[0])
			}
			local.WriteByte(s[0])
			s = s[1:]
		}
	}
	if !strings.HasPrefix(s, "@") {
		return "", "", errors.New("no '@' after the local part")
	}
	s = s[1:]
	end := strings.IndexAny(s, " \t>")
	if end < 0 {
		return "", "", errors.New("no '>'")
	}
	domain := s[:end]
	s = s[end:]
	if !strings.HasPrefix(s, ">") {
		return "", "", errors.New("no '>' after the domain")
	}
	return local.String() + "@" + domain, s[1:], nil
}

func FuzzPath(f *testing.F) {
	for _, s := range []string{"", "a@b.example", "john doe@example.com", `a"b\c@example.com`,
		"attacker@evil.example> NOTIFY=NEVER ORCPT=rfc822;x@customer.example", "a\x00@example.com",
		"a\r\nRSET@example.com", "jörg@bücher.example", "x@[192.0.2.1]", "x@[IPv6:::1]", ".a.@b", "@b", "a@",
		"a@b@c", "\"@x", "\\@x", "a@exa mple", "x\xff@y"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, addr string) {
		p, err := Path(addr)
		if err != nil {
			var se *SyntaxError
			if !errors.As(err, &se) || se.Reason == "" {
				t.Fatalf("Path(%q): %v, want a *SyntaxError with a reason", addr, err)
			}
			if strings.IndexFunc(se.Reason, unicode.IsControl) >= 0 {
				t.Fatalf("the reason %q holds a control character", se.Reason)
			}
			return
		}
		if addr == "" {
			if p != "" {
				t.Fatalf("Path(\"\") = %q", p)
			}
			return
		}
		// Nothing a command line cannot carry, nor any other control character.
		if strings.IndexFunc(p, unicode.IsControl) >= 0 {
			t.Fatalf("Path(%q) = %q holds a control character", addr, p)
		}
		// go-smtp's server reads it back as the same address, and nothing follows the ">".
		got, rest, err := parsePath("<" + p + ">")
		if err != nil {
			t.Fatalf("Path(%q) = %s, which does not parse: %v", addr, p, err)
		}
		if got != addr || rest != "" {
			t.Fatalf("Path(%q) = %s, read back as %q followed by %q", addr, p, got, rest)
		}
		// Quoting is idempotent on what was already quoted correctly.
		if again, err := Path(got); err != nil || again != p {
			t.Fatalf("Path(%q) = %s but Path(%q) = %s, %v", addr, p, got, again, err)
		}
		// net/mail (RFC 5322) agrees on local part and domain, address literals aside.
		at := strings.LastIndexByte(addr, '@')
		if !strings.HasPrefix(addr[at+1:], "[") {
			m, err := mail.ParseAddress("<" + p + ">")
			if err != nil {
				t.Fatalf("Path(%q) = %s, which net/mail refuses: %v", addr, p, err)
			}
			if m.Address != addr {
				t.Fatalf("Path(%q) = %s, which net/mail reads as %q", addr, p, m.Address)
			}
		}
	})
}
