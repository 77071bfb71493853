package sidecar

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"

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
	err := Check(context.Background(), cfg, log, &out, CheckOptions{})
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
	if err := Check(context.Background(), cfg, log, &out, CheckOptions{Names: []string{"good"}}); err != nil {
		t.Errorf("Check(good) = %v\n%s", err, out.String())
	}
	if err := Check(context.Background(), cfg, log, &out, CheckOptions{Names: []string{"nosuch"}}); err == nil || !strings.Contains(err.Error(), "no project named nosuch") {
		t.Errorf("Check(nosuch) = %v", err)
	}
	if n := len(up.Messages()); n != 0 {
		t.Errorf("check sent %d messages", n)
	}
}

// A hung upstream holds up neither the other projects nor the end: each project's check has a
// deadline. --json gives the same results as a document, with the health model's reason; the
// progress line counts the projects.
func TestCheckConcurrentJSONAndHungUpstream(t *testing.T) {
	t.Parallel()
	cfg, _ := checkSetup(t)
	// An upstream that accepts connections and never says a word.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go func() {
		var held []net.Conn
		defer func() {
			for _, c := range held {
				c.Close()
			}
		}()
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			held = append(held, c)
		}
	}()
	st, err := boltstore.Open(t.Context(), boltstore.Options{Path: cfg.Store.File.Path, KeyFile: cfg.Store.File.KeyFile})
	if err != nil {
		t.Fatal(err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	hung := project.Project{
		Name: "hung", Enabled: true, Senders: []string{"noreply@hung.example"},
		Upstream: project.Upstream{Host: "127.0.0.1", Port: port, TLS: project.TLSNone},
		Auth:     project.Auth{Type: project.AuthNone},
	}
	if _, err := st.PutProjects(t.Context(), []project.Project{hung}); err != nil {
		t.Fatal(err)
	}
	st.Close()

	var out, progress bytes.Buffer
	err = Check(context.Background(), cfg, slog.New(slog.DiscardHandler), &out, CheckOptions{
		JSON: true, Concurrency: 2, Progress: &progress, StepTimeout: 5 * time.Second,
	})
	if err == nil || err.Error() != "2 of 4 projects cannot deliver" {
		t.Errorf("Check = %v, want 2 of 4 projects cannot deliver", err)
	}
	var rep CheckReport
	if err := json.Unmarshal(out.Bytes(), &rep); err != nil {
		t.Fatalf("%v:\n%s", err, out.String())
	}
	got := map[string]CheckResult{}
	for _, r := range rep.Projects {
		got[r.Project] = r
	}
	if r := got["hung"]; r.Status != "failed" || r.Reason != "upstream_down" || !strings.Contains(r.Error, "no answer within 5s") {
		t.Errorf("hung: %+v", r)
	}
	if r := got["bad"]; r.Status != "failed" || r.Reason != "credential_refused" || !strings.Contains(r.Next, "--password-stdin") {
		t.Errorf("bad: %+v", r)
	}
	if got["good"].Status != "ok" || got["off"].Status != "disabled" || rep.Checked != 3 || rep.Failed != 2 {
		t.Errorf("report: %+v", rep)
	}
	if !strings.Contains(progress.String(), "checked 4 of 4 projects, 2 failed") {
		t.Errorf("progress: %q", progress.String())
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
