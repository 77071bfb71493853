package plugin

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// buildExample builds the example provider into a fresh directory and returns its path.
func buildExample(t *testing.T) string {
	t.Helper()
	goTool, err := exec.LookPath("go")
	if err != nil {
		t.Fatalf("the out-of-process tests build the example provider and need the go tool: %v", err)
	}
	bin := filepath.Join(t.TempDir(), "postern-credential-example")
	cmd := exec.Command(goTool, "build", "-o", bin, "./example/cmd/postern-credential-example")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}

// sum returns the SHA-256 of the file at path, in hex.
func sum(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	h := sha256.Sum256(b)
	return hex.EncodeToString(h[:])
}

// syncBuffer is a bytes.Buffer safe for the concurrent writes of slog handlers.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

const fileSecret = "correct-horse-battery-staple-7f3a9c"

// writeCredentials writes a credentials file for the example provider and returns its path.
func writeCredentials(t *testing.T) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "credentials.json")
	body := `{"projects": {
		"acme": {"mechanism": "PLAIN", "username": "svc-acme", "secret": "` + fileSecret + `"},
		"globex": {"mechanism": "XOAUTH2", "secret": "` + fileSecret + `-token", "expiry": "2031-01-02T03:04:05Z"}
	}}`
	if err := os.WriteFile(path, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

func openExample(t *testing.T, bin string, log *slog.Logger) *Host {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	h, err := Open(ctx, HostOptions{Path: bin, SHA256: sum(t, bin), Logger: log})
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() { _ = h.Close() })
	return h
}

// processGone reports, waiting up to a minute, whether pid has exited.
func processGone(pid int) bool {
	for deadline := time.Now().Add(time.Minute); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		if err := syscall.Kill(pid, 0); errors.Is(err, syscall.ESRCH) {
			return true
		}
	}
	return false
}

func TestHostOutOfProcess(t *testing.T) {
	t.Parallel()
	bin := buildExample(t)
	file := writeCredentials(t)
	cfg := map[string]string{"file": file}

	t.Run("credentials and errors", func(t *testing.T) {
		t.Parallel()
		h := openExample(t, bin, nil)
		ctx := context.Background()

		got, err := h.Credential(ctx, Request{Project: "acme", Username: "noreply@acme.example", Config: cfg})
		if err != nil {
			t.Fatalf("Credential(acme): %v", err)
		}
		if got.Mechanism != MechanismPlain || got.Username != "svc-acme" || got.Secret.Reveal() != fileSecret || !got.Expiry.IsZero() {
			t.Errorf("acme = %+v", got)
		}

		got, err = h.Credential(ctx, Request{Project: "globex", Username: "noreply@globex.example", Config: cfg, ForceRefresh: true})
		if err != nil {
			t.Fatalf("Credential(globex): %v", err)
		}
		wantExpiry := time.Date(2031, 1, 2, 3, 4, 5, 0, time.UTC)
		if got.Mechanism != MechanismXOAuth2 || got.Username != "noreply@globex.example" ||
			got.Secret.Reveal() != fileSecret+"-token" || !got.Expiry.Equal(wantExpiry) {
			t.Errorf("globex = %+v", got)
		}

		_, err = h.Credential(ctx, Request{Project: "nobody", Username: "x@y.example", Config: cfg})
		var reauth *NeedsReauthError
		if !errors.As(err, &reauth) || !strings.Contains(reauth.Reason, `"nobody"`) {
			t.Errorf("unknown project: error = %#v, want *NeedsReauthError naming it", err)
		}

		_, err = h.Credential(ctx, Request{Project: "acme", Config: map[string]string{"file": file + ".missing"}})
		var temp *TemporaryError
		if !errors.As(err, &temp) {
			t.Errorf("missing file: error = %#v, want *TemporaryError", err)
		}

		if err := h.Rejected(ctx, RejectedRequest{Project: "acme", Config: cfg, Mechanism: MechanismPlain, Reply: "535 5.7.8 no"}); err != nil {
			t.Errorf("Rejected: %v", err)
		}
	})

	// The process dies and the host notices before the next call.
	t.Run("restart after exit", func(t *testing.T) {
		t.Parallel()
		h := openExample(t, bin, nil)
		old := h.pid()
		if err := syscall.Kill(old, syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		if !processGone(old) {
			t.Fatal("provider process did not die")
		}
		h.mu.Lock()
		c := h.client
		h.mu.Unlock()
		for deadline := time.Now().Add(time.Minute); !c.Exited() && time.Now().Before(deadline); {
			time.Sleep(10 * time.Millisecond)
		}
		if _, err := h.Credential(context.Background(), Request{Project: "acme", Config: cfg}); err != nil {
			t.Fatalf("Credential after the process died: %v", err)
		}
		if now := h.pid(); now == 0 || now == old {
			t.Errorf("pid after restart = %d, old %d: want a new process", now, old)
		}
	})

	// The binary is replaced while the provider runs; when the process dies, the replacement is
	// not started.
	t.Run("replaced binary not restarted", func(t *testing.T) {
		t.Parallel()
		own := filepath.Join(t.TempDir(), "provider")
		b, err := os.ReadFile(bin)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(own, b, 0o755); err != nil {
			t.Fatal(err)
		}
		h := openExample(t, own, nil)
		if err := os.WriteFile(own+".new", append(b, 0), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(own+".new", own); err != nil {
			t.Fatal(err)
		}
		old := h.pid()
		if err := syscall.Kill(old, syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		h.mu.Lock()
		c := h.client
		h.mu.Unlock()
		for deadline := time.Now().Add(time.Minute); !c.Exited() && time.Now().Before(deadline); {
			time.Sleep(10 * time.Millisecond)
		}
		_, err = h.Credential(context.Background(), Request{Project: "acme", Config: cfg})
		if !errors.Is(err, ErrChecksum) {
			t.Fatalf("Credential after the binary was replaced: %v, want ErrChecksum", err)
		}
		if now := h.pid(); now != 0 {
			t.Errorf("a process (pid %d) runs from the replaced binary", now)
		}
	})

	// The process hangs (stopped): the call fails within CallTimeout, the hung process is ended,
	// and the next call runs on a fresh one.
	t.Run("hung provider ended and restarted", func(t *testing.T) {
		t.Parallel()
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		h, err := Open(ctx, HostOptions{Path: bin, SHA256: sum(t, bin), CallTimeout: 500 * time.Millisecond})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = h.Close() })
		old := h.pid()
		if err := syscall.Kill(old, syscall.SIGSTOP); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = syscall.Kill(old, syscall.SIGKILL) })
		hungCtx, cancelHung := context.WithTimeout(ctx, 10*time.Second)
		defer cancelHung()
		if _, err := h.Credential(hungCtx, Request{Project: "acme", Config: cfg}); !errors.Is(err, ErrCallTimeout) {
			t.Fatalf("Credential from a hung provider: %v, want ErrCallTimeout", err)
		}
		if _, err := h.Credential(ctx, Request{Project: "acme", Config: cfg}); err != nil {
			t.Fatalf("Credential after the hung provider was ended: %v", err)
		}
		if now := h.pid(); now == 0 || now == old {
			t.Errorf("pid after the hang = %d, old %d: want a new process", now, old)
		}
		if !processGone(old) {
			t.Errorf("the hung process %d still runs", old)
		}
	})

	// The process dies and the next call runs into the broken connection: it restarts and retries.
	t.Run("restart on a broken connection", func(t *testing.T) {
		t.Parallel()
		h := openExample(t, bin, nil)
		old := h.pid()
		if err := syscall.Kill(old, syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		if err := h.Rejected(context.Background(), RejectedRequest{Project: "acme", Config: cfg}); err != nil {
			t.Fatalf("Rejected right after the process was killed: %v", err)
		}
		if _, err := h.Credential(context.Background(), Request{Project: "acme", Config: cfg}); err != nil {
			t.Fatalf("Credential after restart: %v", err)
		}
		if now := h.pid(); now == 0 || now == old {
			t.Errorf("pid after restart = %d, old %d: want a new process", now, old)
		}
	})

	t.Run("close", func(t *testing.T) {
		t.Parallel()
		h := openExample(t, bin, nil)
		pid := h.pid()
		if err := h.Close(); err != nil {
			t.Fatalf("Close: %v", err)
		}
		if !processGone(pid) {
			t.Error("provider process still runs after Close")
		}
		if _, err := h.Credential(context.Background(), Request{Project: "acme", Config: cfg}); !errors.Is(err, ErrClosed) {
			t.Errorf("Credential after Close: error = %v, want ErrClosed", err)
		}
		if err := h.Close(); err != nil {
			t.Errorf("second Close: %v", err)
		}
	})

	t.Run("no secret in the host's logs", func(t *testing.T) {
		t.Parallel()
		var logs syncBuffer
		log := slog.New(slog.NewJSONHandler(&logs, &slog.HandlerOptions{Level: levelTrace}))
		h := openExample(t, bin, log)
		ctx := context.Background()
		for _, project := range []string{"acme", "globex", "nobody"} {
			_, _ = h.Credential(ctx, Request{Project: project, Username: "noreply@" + project + ".example", Config: cfg})
		}
		_ = h.Rejected(ctx, RejectedRequest{Project: "acme", Config: cfg, Mechanism: MechanismPlain, Reply: "535 5.7.8 bad"})
		if err := syscall.Kill(h.pid(), syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		if _, err := h.Credential(ctx, Request{Project: "acme", Config: cfg}); err != nil {
			t.Fatalf("Credential after restart: %v", err)
		}
		_ = h.Close()

		out := logs.String()
		// Failure messages show the log with the secret masked, so a failure does not leak it.
		masked := strings.ReplaceAll(out, fileSecret, "[THE SECRET]")
		// The provider's own lines reach the host's log, so a secret logged there would show.
		for _, want := range []string{"credential served", "credential rejected upstream", "credential provider started"} {
			if !strings.Contains(out, want) {
				t.Errorf("host log lacks %q:\n%s", want, masked)
			}
		}
		if strings.Contains(out, fileSecret) {
			t.Errorf("host log reveals a secret (masked here):\n%s", masked)
		}
	})
}

func TestOpenFails(t *testing.T) {
	t.Parallel()
	notPlugin, err := exec.LookPath("true")
	if err != nil {
		t.Skip("no true(1) on PATH")
	}
	sleep, err := exec.LookPath("sleep")
	if err != nil {
		t.Skip("no sleep(1) on PATH")
	}
	tests := []struct {
		name    string
		opts    HostOptions
		timeout time.Duration
		want    string
	}{
		{name: "no path", opts: HostOptions{SHA256: sum(t, notPlugin)}, timeout: time.Minute, want: "path is empty"},
		{name: "no checksum", opts: HostOptions{Path: notPlugin}, timeout: time.Minute, want: "sha256 is empty"},
		{name: "not a checksum", opts: HostOptions{Path: notPlugin, SHA256: "abc"}, timeout: time.Minute, want: "not a SHA-256"},
		{name: "another binary's checksum", opts: HostOptions{Path: notPlugin, SHA256: sum(t, sleep)}, timeout: time.Minute, want: ErrChecksum.Error()},
		{name: "negative timeout", opts: HostOptions{Path: notPlugin, SHA256: sum(t, notPlugin), StartTimeout: -time.Second}, timeout: time.Minute, want: "negative"},
		{name: "missing binary", opts: HostOptions{Path: filepath.Join(t.TempDir(), "nothing"), SHA256: sum(t, notPlugin)}, timeout: time.Minute, want: "starting credential provider"},
		{name: "not a provider", opts: HostOptions{Path: notPlugin, SHA256: sum(t, notPlugin)}, timeout: time.Minute, want: "starting credential provider"},
		{name: "never answers", opts: HostOptions{Path: sleep, SHA256: sum(t, sleep), Args: []string{"60"}}, timeout: 200 * time.Millisecond, want: "starting credential provider"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			ctx, cancel := context.WithTimeout(context.Background(), tc.timeout)
			defer cancel()
			h, err := Open(ctx, tc.opts)
			if err == nil {
				_ = h.Close()
				t.Fatal("Open succeeded")
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error = %v, want one containing %q", err, tc.want)
			}
		})
	}
}
