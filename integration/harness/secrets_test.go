package harness

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestSecretsScanNamesTheLine(t *testing.T) {
	t.Parallel()
	var s Secrets
	s.Add("password of a@b.test", "hunter2-correct-horse")
	s.Add("too short to tell", "pw")
	key := filepath.Join(t.TempDir(), "key")
	s.AddFile("store key", key)
	s.AddLazy("access token", func() []string { return []string{"tok-0123456789", ""} })
	if err := os.WriteFile(key, []byte("a2V5LWtleS1rZXk=\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	log := strings.Join([]string{
		"level=INFO msg=started",
		"level=DEBUG msg=auth password=hunter2-correct-horse",
		"level=INFO msg=pw is not a secret here",
		"key=a2V5LWtleS1rZXk= token=tok-0123456789",
	}, "\n")
	leaks := s.Scan("postern.log", log)
	var got []string
	for _, l := range leaks {
		got = append(got, l.String())
	}
	want := []string{
		"postern.log:2 holds the password of a@b.test: level=DEBUG msg=auth password=[password of a@b.test]",
		"postern.log:4 holds the store key: key=[store key] token=[access token]",
		"postern.log:4 holds the access token: key=[store key] token=[access token]",
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("leaks:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	for _, l := range got {
		if strings.Contains(l, "hunter2-correct-horse") || strings.Contains(l, "tok-0123456789") || strings.Contains(l, "a2V5LWtleS1rZXk") {
			t.Errorf("a leak report repeats the secret: %s", l)
		}
	}
}
