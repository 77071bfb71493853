package secret_test

import (
	"strings"
	"testing"

	"github.com/postern/postern/sidecar/secret"
)

func TestScrub(t *testing.T) {
	t.Parallel()
	const jwt = "eyJhbGciOiJSUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dBjftJeZ4CVPmB92K27uhbUJU1p1r_wW1gFWFOEjXk"
	tests := []struct {
		name, in string
		want     string   // the whole result, when set
		has      []string // kept
		lacks    []string // removed
	}{
		{name: "plain upstream reply", in: "535 5.7.3 Authentication unsuccessful [SN4PR0601CA0012.namprd06.prod.outlook.com]",
			want: "535 5.7.3 Authentication unsuccessful [SN4PR0601CA0012.namprd06.prod.outlook.com]"},
		{name: "AADSTS with trace and correlation ids", in: "invalid_grant: AADSTS70000: The grant is expired. Trace ID: 0c7b5f2e-0a3c-4d4f-9a77-5b8d2a1e6f00 Correlation ID: 1b2c3d4e-5f60-7182-93a4-b5c6d7e8f901",
			has: []string{"AADSTS70000", "0c7b5f2e-0a3c-4d4f-9a77-5b8d2a1e6f00", "1b2c3d4e-5f60-7182-93a4-b5c6d7e8f901"}},
		{name: "jwt", in: "token " + jwt + " was refused", lacks: []string{"eyJ", "dBjftJeZ"}, has: []string{"was refused"}},
		{name: "access_token pair", in: `access_token=ya29.a0AfH6SMBx&expires_in=3599`, lacks: []string{"ya29"}, has: []string{"access_token=[redacted]", "expires_in=3599"}},
		{name: "json secret", in: `{"client_secret": "s3cr3t-v4lue", "error": "x"}`, lacks: []string{"s3cr3t"}, has: []string{`"error": "x"`}},
		{name: "authorization code", in: "GET /cb?code=0.AXoA-xyz&state=s1 error code: 535", lacks: []string{"AXoA"}, has: []string{"code=[redacted]", "error code: 535"}},
		{name: "bearer", in: "Authorization: Bearer abc.DEF-123_xyz", lacks: []string{"abc.DEF"}, has: []string{"Bearer [redacted]"}},
		{name: "sasl xoauth2", in: "user=a@b.example\x01auth=Bearer ya29.tok\x01\x01", lacks: []string{"ya29"}},
		{name: "long base64", in: "refused key dGhpcyBpcyBhIHZlcnkgbG9uZyBzZWNyZXQgdmFsdWUxMjM0 now", lacks: []string{"dGhpcy"}, has: []string{"refused key", "now"}},
		{name: "long hex", in: "sig 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08 bad", lacks: []string{"9f86d08"}},
		{name: "long word without digits kept", in: "SmtpClientAuthenticationIsDisabledForTheTenantInQuestion", want: "SmtpClientAuthenticationIsDisabledForTheTenantInQuestion"},
		{name: "control characters", in: "ok\x1b[31m red\x00\u202eevil\r\nnext", want: "ok[31m redevil  next"},
		{name: "invalid utf-8", in: "a\xffb", want: "a\uFFFDb"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			got := secret.Scrub(tc.in)
			if tc.want != "" && got != tc.want {
				t.Errorf("Scrub(%q) = %q, want %q", tc.in, got, tc.want)
			}
			for _, h := range tc.has {
				if !strings.Contains(got, h) {
					t.Errorf("Scrub(%q) = %q, lacks %q", tc.in, got, h)
				}
			}
			for _, l := range tc.lacks {
				if strings.Contains(got, l) {
					t.Errorf("Scrub(%q) = %q, still has %q", tc.in, got, l)
				}
			}
		})
	}
	long := strings.Repeat("word ", 1000)
	if got := secret.Scrub(long); len([]rune(got)) != secret.MaxScrubbed+1 || !strings.HasSuffix(got, "…") {
		t.Errorf("a long text is scrubbed to %d characters", len([]rune(got)))
	}
}

func FuzzScrub(f *testing.F) {
	f.Add("535 5.7.3 Authentication unsuccessful")
	f.Add("access_token=abc&refresh_token=def")
	f.Add("Bearer eyJhbGciOiJub25lIn0.eyJzdWIiOiJ4In0.")
	f.Fuzz(func(t *testing.T, s string) {
		got := secret.Scrub(s)
		if len([]rune(got)) > secret.MaxScrubbed+1 {
			t.Fatalf("%d characters", len([]rune(got)))
		}
		for _, r := range got {
			if r < 0x20 || r == 0x7f {
				t.Fatalf("control character %U kept", r)
			}
		}
		if secret.Scrub(got) != got && !strings.HasSuffix(got, "…") {
			t.Fatalf("Scrub is not idempotent: %q → %q", got, secret.Scrub(got))
		}
	})
}
