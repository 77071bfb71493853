package sidecar

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/postern/postern/sidecar/config"
	"github.com/postern/postern/sidecar/store/boltstore"
	"github.com/postern/postern/sidecar/store/storetest"
)

// initStore makes an empty embedded store in dir, as `postern init` does.
func initStore(t *testing.T, dir string) {
	t.Helper()
	s, err := boltstore.Create(t.Context(), boltstore.Options{Path: dir + "/store.db", KeyFile: dir + "/store.key"})
	if err != nil {
		t.Fatal(err)
	}
	s.Close()
}

func storeConfig(t *testing.T, dir string) *config.Config {
	t.Helper()
	cfg, err := config.Parse(fmt.Appendf(nil, `instance: store
listen:
  lmtp: %[1]s/lmtp.sock
  socketmap: %[1]s/socketmap.sock
  admin: %[2]s
  socket_group: ""
store:
  file: {path: %[1]s/state/store.db, key_file: %[1]s/state/store.key}
signin:
  key_file: %[1]s/state/signin.key
api:
  token_file: %[1]s/state/api.token
reload_interval: 50ms
`, dir, freeAddr(t)))
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

func shortDir(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "postern-st-") // short: unix socket paths are limited
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

// `postern serve` on a state directory that is empty (a volume that did not mount) refuses to
// start, names the store and the fix, and makes nothing: no key, no store, no sign-in key, no API
// token.
func TestRunRefusesAMissingStore(t *testing.T) {
	t.Parallel()
	dir := shortDir(t)
	os.Mkdir(dir+"/state", 0o700)
	cfg := storeConfig(t, dir)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	err := Run(ctx, cfg, slog.New(slog.DiscardHandler))
	if err == nil || !strings.Contains(err.Error(), dir+"/state/store.db") || !strings.Contains(err.Error(), "`postern init`") {
		t.Fatalf("Run on an empty state directory: %v", err)
	}
	if entries, _ := os.ReadDir(dir + "/state"); len(entries) != 0 {
		t.Fatalf("Run made %v", entries)
	}

	// The key without its data file: refused too, the key kept.
	initStore(t, dir+"/state")
	os.Remove(dir + "/state/store.db")
	if err := Run(ctx, cfg, slog.New(slog.DiscardHandler)); err == nil || !strings.Contains(err.Error(), "restore the data file from backup") {
		t.Fatalf("Run with the data file gone: %v", err)
	}
	if _, err := os.Stat(dir + "/state/store.db"); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("Run made a data file: %v", err)
	}
}

// A store whose data file lost its projects (an empty copy put back over it) is never read as
// "no projects": the socketmap answers TEMP and LMTP 4xx, so Postfix defers the mail, whether
// Postern starts that way or sees it happen while it runs.
func TestRunDefersWhenTheStoreLostItsProjects(t *testing.T) {
	t.Parallel()
	dir := shortDir(t)
	state := dir + "/state"
	initStore(t, state)
	empty, err := os.ReadFile(state + "/store.db")
	if err != nil {
		t.Fatal(err)
	}
	st, err := boltstore.Open(t.Context(), boltstore.Options{Path: state + "/store.db", KeyFile: state + "/store.key"})
	if err != nil {
		t.Fatal(err)
	}
	p := storetest.BasicProject("client-a")
	if _, err := st.PutProject(t.Context(), p); err != nil {
		t.Fatal(err)
	}
	st.Close()
	sender := p.Senders[0]
	loses := func() {
		if err := os.WriteFile(filepath.Join(state, "store.db.new"), empty, 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(filepath.Join(state, "store.db.new"), filepath.Join(state, "store.db")); err != nil {
			t.Fatal(err)
		}
	}

	for _, when := range []string{"before start", "while running"} {
		t.Run(when, func(t *testing.T) {
			saved, _ := os.ReadFile(state + "/store.db")
			cfg := storeConfig(t, dir)
			if when == "before start" {
				loses()
			}
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan error, 1)
			go func() { done <- Run(ctx, cfg, slog.New(slog.DiscardHandler)) }()
			defer func() {
				cancel()
				<-done
				os.WriteFile(state+"/store.db", saved, 0o600)
			}()
			sock := dir + "/socketmap.sock"
			waitUntil(t, "the socketmap", func() bool {
				c, err := net.Dial("unix", sock)
				if err == nil {
					c.Close()
				}
				return err == nil
			})
			if when == "while running" {
				waitUntil(t, "the project to load", func() bool { return strings.HasPrefix(lookup(t, sock, sender), "OK ") })
				loses()
				time.Sleep(200 * time.Millisecond) // a few reload intervals
			}
			for _, key := range []string{sender, "someone@elsewhere.example"} {
				got := lookup(t, sock, key)
				if when == "before start" && !strings.HasPrefix(got, "TEMP ") {
					t.Fatalf("socketmap lookup of %s: %q, want TEMP", key, got)
				}
				if when == "while running" && key == sender && !strings.HasPrefix(got, "OK ") {
					t.Fatalf("socketmap lookup of %s: %q, want the last good answer", key, got)
				}
			}
			if when == "before start" {
				c, err := net.Dial("unix", dir+"/lmtp.sock")
				if err != nil {
					t.Fatal(err)
				}
				lc := smtp.NewClientLMTP(c)
				defer lc.Close()
				if err := lc.Hello("front.example"); err != nil {
					t.Fatal(err)
				}
				var se *smtp.SMTPError
				if err := lc.Mail(sender, nil); !errors.As(err, &se) || se.Code/100 != 4 {
					t.Fatalf("LMTP MAIL FROM: %v, want 4xx", err)
				}
			}
			// Not ready when nothing was ever loaded; degraded, naming the cause, when the last good
			// projects are kept.
			// The reasons are shown to a holder of the read token only.
			readToken, err := os.ReadFile(dir + "/state/read.token")
			if err != nil {
				t.Fatalf("the read token file: %v", err)
			}
			req, _ := http.NewRequest(http.MethodGet, "http://"+cfg.Listen.Admin+"/readyz", nil)
			req.Header.Set("Authorization", "Bearer "+strings.TrimSpace(string(readToken)))
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			wantCode := map[string]int{"before start": 503, "while running": 200}[when]
			if resp.StatusCode != wantCode || !strings.Contains(string(body), "lost projects") {
				t.Fatalf("/readyz = %d %s, want %d naming the lost projects", resp.StatusCode, body, wantCode)
			}
		})
	}
}
