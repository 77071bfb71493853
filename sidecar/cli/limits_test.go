package cli

import (
	"strings"
	"testing"
)

// TestProjectShowProviderLimits: a Microsoft project without limits of its own shows Exchange
// Online's, marked as the provider's defaults; a limit of its own is shown unmarked.
func TestProjectShowProviderLimits(t *testing.T) {
	t.Parallel()
	h := newHarness(t, "")
	h.mustRun("secret-Password-123\n", "project", "add", "m365",
		"--sender", "noreply@client.co.uk", "--host", "smtp.office365.com", "--port", "587", "--tls", "starttls",
		"--username", "noreply@client.co.uk", "--password-stdin", "--messages-per-minute", "10")
	r := h.mustRun("", "project", "show", "m365")
	for _, want := range []string{
		"recipients per day:  10000 (microsoft default)",
		"max recipients:      500 (microsoft default)",
	} {
		if !strings.Contains(collapse(r.stdout), collapse(want)) {
			t.Errorf("show lacks %q:\n%s", want, r.stdout)
		}
	}
	if strings.Contains(r.stdout, "10 (microsoft default)") {
		t.Errorf("the project's own messages per minute is shown as the provider's:\n%s", r.stdout)
	}
}

// collapse turns every run of blanks into one space, so that the table's alignment does not matter.
func collapse(s string) string { return strings.Join(strings.Fields(s), " ") }
