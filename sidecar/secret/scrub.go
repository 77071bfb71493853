package secret

import (
	"regexp"
	"strings"
	"unicode"
	"unicode/utf8"
)

// MaxScrubbed is how many characters of a text Scrub keeps.
const MaxScrubbed = 500

var (
	// key=value and key: value pairs whose value is a credential.
	scrubPair = regexp.MustCompile(`(?i)\b((?:access|refresh|id)_token|client_secret|client_assertion|assertion|password|passwd|secret|api[_-]?key|token)("?\s*[=:]\s*"?)([^\s"&,;]+)`)
	// An authorization code in a query.
	scrubCode = regexp.MustCompile(`(?i)\b(code=)([^\s"&,;]+)`)
	// HTTP and SASL credentials.
	scrubAuth = regexp.MustCompile(`(?i)\b(bearer|basic|auth=bearer)(\s+)([A-Za-z0-9._~+/=-]+)`)
	// A JWT or any JWS/JWE compact form.
	scrubJWT = regexp.MustCompile(`[A-Za-z0-9_-]*eyJ[A-Za-z0-9_-]*\.[A-Za-z0-9_-]+(?:\.[A-Za-z0-9_-]*)*`)
	// Long runs of base64, base64url or hex: keys and opaque tokens.
	scrubRun  = regexp.MustCompile(`[A-Za-z0-9+/_-]{32,}={0,2}`)
	scrubGUID = regexp.MustCompile(`^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$`)
)

// Scrub makes a text from elsewhere (an identity provider's error, an upstream's reply) fit to
// show on a page or in an API answer: it drops control and invisible formatting characters,
// replaces anything that looks like a credential with "[redacted]" (name=value pairs of tokens,
// secrets and passwords, Bearer and Basic credentials, JWTs, and runs of 32 or more base64 or hex
// characters that mix letters and digits, GUIDs aside), and keeps at most MaxScrubbed
// characters.
func Scrub(s string) string {
	if !utf8.ValidString(s) {
		s = strings.ToValidUTF8(s, "\uFFFD")
	}
	s = strings.Map(func(r rune) rune {
		switch {
		case r == '\t' || r == '\n' || r == '\r':
			return ' '
		case unicode.IsControl(r) || unicode.Is(unicode.Cf, r):
			return -1
		}
		return r
	}, s)
	s = scrubJWT.ReplaceAllString(s, redacted)
	s = scrubAuth.ReplaceAllString(s, "${1}${2}"+redacted)
	s = scrubPair.ReplaceAllStringFunc(s, func(m string) string {
		sub := scrubPair.FindStringSubmatch(m)
		if sub[3] == redacted {
			return m
		}
		return sub[1] + sub[2] + redacted
	})
	s = scrubCode.ReplaceAllString(s, "${1}"+redacted)
	s = scrubRun.ReplaceAllStringFunc(s, func(m string) string {
		if scrubGUID.MatchString(m) || !mixed(m) {
			return m
		}
		return redacted
	})
	s = strings.TrimSpace(s)
	if utf8.RuneCountInString(s) > MaxScrubbed {
		s = string([]rune(s)[:MaxScrubbed]) + "…"
	}
	return s
}

// mixed reports whether s has both letters and digits, as generated tokens do and words and
// paths rarely do.
func mixed(s string) bool {
	letter, digit := false, false
	for _, r := range s {
		letter = letter || unicode.IsLetter(r)
		digit = digit || unicode.IsDigit(r)
	}
	return letter && digit
}
