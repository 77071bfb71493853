package harness

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/textproto"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"time"
)

// Message is one delivered message read from a Maildir.
type Message struct {
	// Path is the Maildir file.
	Path string
	// Header is the parsed header (canonical keys, all values of repeated fields in order).
	Header textproto.MIMEHeader
	// Body is everything after the header.
	Body []byte
	// Raw is the whole file.
	Raw []byte
}

// ID returns the message's X-Postern-Test-ID.
func (m *Message) ID() string { return m.Header.Get(TestIDHeader) }

// Received returns the Received header fields, newest first, with folding undone.
func (m *Message) Received() []string { return m.Header.Values("Received") }

var byRE = regexp.MustCompile(`\bby ([^\s;()]+)`)

// ReceivedBy returns the host of the "by" clause of every Received field, newest first.
func (m *Message) ReceivedBy() []string {
	var hosts []string
	for _, r := range m.Received() {
		if mm := byRE.FindStringSubmatch(r); mm != nil {
			hosts = append(hosts, mm[1])
		}
	}
	return hosts
}

// PassedThrough reports whether a Received field names host in its "by" clause.
func (m *Message) PassedThrough(host string) bool {
	for _, h := range m.ReceivedBy() {
		if strings.EqualFold(h, host) {
			return true
		}
	}
	return false
}

var authSenderRE = regexp.MustCompile(`\(Authenticated sender: ([^)]+)\)`)

// AuthenticatedSenders returns the SASL users named by Received fields
// ("(Authenticated sender: user)", added with smtpd_sasl_authenticated_header), newest first.
func (m *Message) AuthenticatedSenders() []string {
	var users []string
	for _, r := range m.Received() {
		if mm := authSenderRE.FindStringSubmatch(r); mm != nil {
			users = append(users, strings.TrimSpace(mm[1]))
		}
	}
	return users
}

// ParseMessage parses a message file.
func ParseMessage(path string, raw []byte) (*Message, error) {
	r := textproto.NewReader(bufio.NewReader(bytes.NewReader(raw)))
	h, err := r.ReadMIMEHeader()
	if err != nil && !(errors.Is(err, io.EOF) && len(h) > 0) {
		return nil, fmt.Errorf("parsing the header of %s: %w", path, err)
	}
	body, _ := io.ReadAll(r.R)
	for k, vs := range h {
		for i, v := range vs {
			vs[i] = strings.Join(strings.Fields(v), " ")
		}
		h[k] = vs
	}
	return &Message{Path: path, Header: h, Body: body, Raw: raw}, nil
}

// Maildir is one mailbox on disk (new/ and cur/).
type Maildir string

// Messages returns the mailbox's messages, oldest file first. A mailbox that has had no delivery
// yet has none.
func (d Maildir) Messages() ([]*Message, error) {
	type file struct {
		path string
		mod  time.Time
	}
	var files []file
	for _, sub := range []string{"new", "cur"} {
		entries, err := os.ReadDir(filepath.Join(string(d), sub))
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("reading mailbox %s: %w", d, err)
		}
		for _, e := range entries {
			if e.IsDir() {
				continue
			}
			info, err := e.Info()
			if err != nil {
				continue
			}
			files = append(files, file{filepath.Join(string(d), sub, e.Name()), info.ModTime()})
		}
	}
	sort.Slice(files, func(i, j int) bool {
		if !files[i].mod.Equal(files[j].mod) {
			return files[i].mod.Before(files[j].mod)
		}
		return files[i].path < files[j].path
	})
	msgs := make([]*Message, 0, len(files))
	for _, f := range files {
		raw, err := os.ReadFile(f.path)
		if err != nil {
			return nil, fmt.Errorf("reading %s: %w", f.path, err)
		}
		m, err := ParseMessage(f.path, raw)
		if err != nil {
			return nil, err
		}
		msgs = append(msgs, m)
	}
	return msgs, nil
}

// Count returns how many messages match pred (all when pred is nil).
func (d Maildir) Count(pred func(*Message) bool) (int, error) {
	msgs, err := d.Messages()
	if err != nil {
		return 0, err
	}
	n := 0
	for _, m := range msgs {
		if pred == nil || pred(m) {
			n++
		}
	}
	return n, nil
}

// WaitFor waits until a message matching pred (any when nil) is in the mailbox and returns it.
func (d Maildir) WaitFor(ctx context.Context, pred func(*Message) bool) (*Message, error) {
	var found *Message
	var seen int
	err := poll(ctx, 50*time.Millisecond, func() (bool, error) {
		msgs, err := d.Messages()
		if err != nil {
			return false, err
		}
		seen = len(msgs)
		for _, m := range msgs {
			if pred == nil || pred(m) {
				found = m
				return true, nil
			}
		}
		return false, nil
	})
	if err != nil {
		return nil, fmt.Errorf("waiting for a message in %s (%d others there): %w", d, seen, err)
	}
	return found, nil
}

// WithID matches the message whose X-Postern-Test-ID is id.
func WithID(id string) func(*Message) bool {
	return func(m *Message) bool { return m.ID() == id }
}

// Subject matches messages whose Subject contains s.
func Subject(s string) func(*Message) bool {
	return func(m *Message) bool {
		subj := m.Header.Get("Subject")
		if dec, err := new(mime.WordDecoder).DecodeHeader(subj); err == nil {
			subj = dec
		}
		return strings.Contains(subj, s)
	}
}
