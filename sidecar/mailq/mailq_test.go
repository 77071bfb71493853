package mailq_test

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/postern/postern/sidecar/mailq"
	"github.com/postern/postern/sidecar/project"
	"github.com/postern/postern/sidecar/route"
)

// What Postfix 3.7's postqueue -j printed for three queued messages.
const queueJSON = `{"queue_name": "deferred", "queue_id": "4Q1", "arrival_time": 1764759000, "message_size": 402, "forced_expire": false, "sender": "noreply@client-a.test", "recipients": [{"address": "alice@dest.test", "delay_reason": "host said: 451 4.7.0 project client-a was removed"}]}
{"queue_name": "active", "queue_id": "4Q2", "arrival_time": 1764759001, "message_size": 402, "forced_expire": false, "sender": "Billing@CLIENT-A.test", "recipients": [{"address": "bob@dest.test"}]}
{"queue_name": "deferred", "queue_id": "4Q3", "arrival_time": 1764759002, "message_size": 402, "forced_expire": false, "sender": "noreply@client-b.test", "recipients": [{"address": "carol@dest.test"}]}
{"queue_name": "deferred", "queue_id": "4Q4", "arrival_time": 1764759003, "message_size": 402, "forced_expire": false, "sender": "", "recipients": [{"address": "noreply@client-a.test"}]}
`

func TestCountMatchesTheProjectsSenders(t *testing.T) {
	msgs, err := mailq.Parse([]byte(queueJSON))
	if err != nil {
		t.Fatal(err)
	}
	if len(msgs) != 4 || msgs[0].QueueID != "4Q1" || msgs[0].Recipients[0].Address != "alice@dest.test" {
		t.Fatalf("parsed %+v", msgs)
	}
	table, errs := route.New([]project.Project{{Name: "client-a", Senders: []string{"@client-a.test"}}})
	if len(errs) > 0 {
		t.Fatal(errs)
	}
	match := func(s string) bool { name, ok := table.Lookup(s); return ok && name == "client-a" }
	if n := mailq.Count(msgs, match); n != 2 {
		t.Errorf("Count = %d, want 2 (the bounce with the null sender and client-b's mail are not client-a's)", n)
	}
}

func TestListRunsPostqueue(t *testing.T) {
	dir := t.TempDir()
	args := filepath.Join(dir, "args")
	script := "#!/bin/sh\necho \"$@\" > " + args + "\ncat <<'END'\n" + queueJSON + "END\n"
	fake := filepath.Join(dir, "postqueue")
	if err := os.WriteFile(fake, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	msgs, err := mailq.List(t.Context(), mailq.Options{Postqueue: fake, ConfigDir: "/etc/postfix-out"})
	if err != nil {
		t.Fatal(err)
	}
	if len(msgs) != 4 {
		t.Errorf("%d messages, want 4", len(msgs))
	}
	if b, _ := os.ReadFile(args); strings.TrimSpace(string(b)) != "-c /etc/postfix-out -j" {
		t.Errorf("postqueue ran with %q", b)
	}
}

func TestListWithoutPostqueue(t *testing.T) {
	_, err := mailq.List(t.Context(), mailq.Options{Postqueue: filepath.Join(t.TempDir(), "postqueue")})
	if !errors.Is(err, mailq.ErrUnavailable) {
		t.Errorf("List without postqueue: %v, want ErrUnavailable", err)
	}
}

func TestParseRefusesGarbage(t *testing.T) {
	if _, err := mailq.Parse([]byte("postqueue: fatal: something\n")); err == nil {
		t.Error("Parse accepted a line that is not JSON")
	}
}
