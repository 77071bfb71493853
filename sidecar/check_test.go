package sidecar

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"path/filepath"
	"strings"
	"testing"

	"github.com/postern/postern/sidecar/config"
	"github.com/postern/postern/sidecar/project"
	"github.com/postern/postern/sidecar/secret"
	"github.com/postern/postern/sidecar/store/boltstore"
	"github.com/postern/postern/sidecar/upstream/upstreamtest"
)

// checkSetup writes projects good (right password), bad (wrong password) and off (disabled),
// all on one upstream, into a file store, and returns a config that uses it.
func checkSetup(t *testing.T) (*config.Config, *upstreamtest.Server) {
	t.Helper()
	const password = "pw-Check-0123456789"
	up := upstreamtest.NewServer(t, upstreamtest.Options{
		TLS: project.TLSStartTLS, Users: map[string]string{"user@good.example": password, "user@bad.example": password},
	})
	dir := t.TempDir()
	path, key := filepath.Join(dir, "store.db"), filepath.Join(dir, "store.key")
	st, err := boltstore.Create(t.Context(), boltstore.Options{Path: path, KeyFile: key})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	mk := func(name, pw string, enabled bool) project.Project {
		return project.Project{
			Name: name, Enabled: enabled, Senders: []string{"noreply@" + name + ".example", "@" + name + ".example"},
			Upstream: up.Upstream(),
			Auth:     project.Auth{Type: project.AuthBasic, Username: "user@" + name + ".example", Password: secret.New(pw)},
		}
	}
	if _, err := st.PutProjects(t.Context(), []project.Project{mk("good", password, true), mk("bad", "wrong-"+password, true), mk("off", password, false)}); err != nil {
		t.Fatal(err)
	}
	cfg, err := config.Parse(fmt.Appendf(nil, "store:\n  file: {path: %s, key_file: %s}\n", path, key))
	if err != nil {
		t.Fatal(err)
	}
	return cfg, up
}

func TestCheck(t *testing.T) {
	t.Parallel()
	cfg, up := checkSetup(t)
	log := slog.New(slog.DiscardHandler)

	var out bytes.Buffer
	err := Check(context.Background(), cfg, log, &out, nil)
	if err == nil || err.Error() != "1 of 3 projects cannot deliver" {
		t.Errorf("Check = %v, want 1 of 3 projects cannot deliver", err)
	}
	for _, want := range []string{
		"store: 3 projects",
		"good: basic upstream " + up.Upstream().Address() + " ... ok",
		"bad: basic upstream " + up.Upstream().Address() + " ... FAILED",
		"next: the upstream refused the username or password: postern project update bad --password-stdin",
		"off: disabled, not checked (postern project enable off)",
	} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("output lacks %q:\n%s", want, out.String())
		}
	}
	if strings.Contains(out.String(), "pw-Check") {
		t.Errorf("the output holds a password:\n%s", out.String())
	}

	out.Reset()
	if err := Check(context.Background(), cfg, log, &out, []string{"good"}); err != nil {
		t.Errorf("Check(good) = %v\n%s", err, out.String())
	}
	if err := Check(context.Background(), cfg, log, &out, []string{"nosuch"}); err == nil || !strings.Contains(err.Error(), "no project named nosuch") {
		t.Errorf("Check(nosuch) = %v", err)
	}
	if n := len(up.Messages()); n != 0 {
		t.Errorf("check sent %d messages", n)
	}
}

func TestSendTest(t *testing.T) {
	t.Parallel()
	cfg, up := checkSetup(t)
	log := slog.New(slog.DiscardHandler)
	var out bytes.Buffer
	if err := SendTest(context.Background(), cfg, log, &out, TestMessage{Project: "good", To: "someone@dest.example"}); err != nil {
		t.Fatalf("SendTest = %v\n%s", err, out.String())
	}
	msgs := up.Messages()
	if len(msgs) != 1 || msgs[0].From != "noreply@good.example" || len(msgs[0].To) != 1 || msgs[0].To[0] != "someone@dest.example" ||
		!strings.Contains(string(msgs[0].Data), "Subject: Postern test message (project good)") {
		t.Fatalf("upstream got %+v", msgs)
	}
	if !strings.Contains(out.String(), "sent from noreply@good.example to someone@dest.example; the upstream said:") {
		t.Errorf("output: %s", out.String())
	}

	tests := []struct {
		name string
		m    TestMessage
		want string
	}{
		{"unknown project", TestMessage{Project: "nosuch", To: "a@b.example"}, "no project named nosuch"},
		{"sender of another project", TestMessage{Project: "good", From: "x@bad.example", To: "a@b.example"}, "may not send as x@bad.example"},
		{"wrong password", TestMessage{Project: "bad", To: "a@b.example"}, "postern project update bad --password-stdin"},
	}
	for _, tt := range tests {
		if err := SendTest(context.Background(), cfg, log, &out, tt.m); err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%s: SendTest = %v, want an error with %q", tt.name, err, tt.want)
		}
	}
	if n := len(up.Messages()); n != 1 {
		t.Errorf("upstream got %d messages, want still 1", n)
	}
}
