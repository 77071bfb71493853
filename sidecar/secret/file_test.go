package secret

import (
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
)

func TestLoadOrCreateFile(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "sub", "key")
	made := 0
	var mu sync.Mutex
	gen := func() ([]byte, error) {
		mu.Lock()
		defer mu.Unlock()
		made++
		return []byte(strings.Repeat("k", made)), nil
	}
	// Concurrent first starts agree on one file.
	var wg sync.WaitGroup
	got := make([]string, 8)
	for i := range got {
		wg.Go(func() {
			b, err := LoadOrCreateFile(path, "the test key file", gen)
			if err != nil {
				t.Error(err)
			}
			got[i] = string(b)
		})
	}
	wg.Wait()
	for _, g := range got {
		if g != got[0] || g == "" {
			t.Fatalf("callers read different keys: %q", got)
		}
	}
	if fi, err := os.Stat(path); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("mode %v, %v", fi.Mode(), err)
	}
	os.Chmod(path, 0o644)
	if _, err := LoadOrCreateFile(path, "the test key file", gen); err == nil || !strings.Contains(err.Error(), "chmod 600 "+path) {
		t.Fatalf("a group-readable file: %v", err)
	}
	if _, err := LoadOrCreateFile(filepath.Dir(path), "the test key file", gen); err == nil || !strings.Contains(err.Error(), "not a regular file") {
		t.Fatalf("a directory: %v", err)
	}
}
