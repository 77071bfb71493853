package harness

import (
	"fmt"
	"os"
	"sort"
	"strings"
	"sync"
)

// Secrets records every secret value an environment generated or handed out (passwords, tokens,
// client secrets, keys), so that everything the run printed can be searched for them at the end:
// a secret in any log line is a leak. Env.Start makes one per environment and, at cleanup, after
// every part has stopped, scans Postern's log and the Postfix and Dovecot logs (ScanLogs).
type Secrets struct {
	mu     sync.Mutex
	values map[string]string // value -> label
	files  map[string]string // path -> label; read at scan time
	lazy   []lazySecrets
}

type lazySecrets struct {
	label string
	get   func() []string
}

// minSecretLen keeps words that are too short to be secrets (and would match ordinary text) out.
const minSecretLen = 8

// Add records a secret value under a label that says what it is ("password of x@y").
func (s *Secrets) Add(label, value string) {
	value = strings.TrimSpace(value)
	if len(value) < minSecretLen {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.values == nil {
		s.values = map[string]string{}
	}
	s.values[value] = label
}

// AddFile records the content of a file as a secret, read when the logs are scanned (the file
// may not exist yet, e.g. a key Postern makes).
func (s *Secrets) AddFile(label, path string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.files == nil {
		s.files = map[string]string{}
	}
	s.files[path] = label
}

// AddLazy records secrets known only later (tokens issued during the test), asked for when the
// logs are scanned.
func (s *Secrets) AddLazy(label string, get func() []string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.lazy = append(s.lazy, lazySecrets{label, get})
}

// all returns every secret known now, value -> label.
func (s *Secrets) all() map[string]string {
	s.mu.Lock()
	out := make(map[string]string, len(s.values))
	for v, l := range s.values {
		out[v] = l
	}
	files := make(map[string]string, len(s.files))
	for p, l := range s.files {
		files[p] = l
	}
	lazy := append([]lazySecrets(nil), s.lazy...)
	s.mu.Unlock()
	for p, l := range files {
		if b, err := os.ReadFile(p); err == nil {
			if v := strings.TrimSpace(string(b)); len(v) >= minSecretLen {
				out[v] = l
			}
		}
	}
	for _, ls := range lazy {
		for _, v := range ls.get() {
			if v = strings.TrimSpace(v); len(v) >= minSecretLen {
				out[v] = ls.label
			}
		}
	}
	return out
}

// Leak is one line that holds a secret.
type Leak struct {
	// Source names what printed the line (a log file's path, or a name).
	Source string
	// Line is the line's number, from 1.
	Line int
	// Label says which secret it holds.
	Label string
	// Text is the line with every secret in it replaced by [its label].
	Text string
}

func (l Leak) String() string {
	return fmt.Sprintf("%s:%d holds the %s: %s", l.Source, l.Line, l.Label, l.Text)
}

// Scan searches text (printed by source) for every secret and returns the lines that hold one.
func (s *Secrets) Scan(source, text string) []Leak {
	secrets := s.all()
	if len(secrets) == 0 || text == "" {
		return nil
	}
	values := make([]string, 0, len(secrets))
	for v := range secrets {
		values = append(values, v)
	}
	sort.Strings(values)
	var leaks []Leak
	for i, line := range strings.Split(text, "\n") {
		var found []string
		redacted := line
		for _, v := range values {
			if strings.Contains(line, v) {
				found = append(found, v)
				redacted = strings.ReplaceAll(redacted, v, "["+secrets[v]+"]")
			}
		}
		for _, v := range found {
			leaks = append(leaks, Leak{Source: source, Line: i + 1, Label: secrets[v], Text: redacted})
		}
	}
	return leaks
}

// ScanFiles scans each file (absent ones are skipped).
func (s *Secrets) ScanFiles(paths ...string) []Leak {
	var leaks []Leak
	for _, p := range paths {
		b, err := os.ReadFile(p)
		if err != nil {
			continue
		}
		leaks = append(leaks, s.Scan(p, string(b))...)
	}
	return leaks
}
