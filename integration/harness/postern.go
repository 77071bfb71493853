package harness

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"
)

// BuildPostern builds the postern binary into out from the module at root (empty means
// ModuleRoot()).
func BuildPostern(ctx context.Context, root, out string) error {
	if root == "" {
		var err error
		if root, err = ModuleRoot(); err != nil {
			return err
		}
	}
	cmd := exec.CommandContext(ctx, "go", "build", "-o", out, "./sidecar/cmd/postern")
	cmd.Dir = root
	cmd.Env = append(os.Environ(), "GOWORK=off")
	b, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("building postern (go build -o %s ./sidecar/cmd/postern in %s): %w\n%s", out, root, err, b)
	}
	return nil
}

// PosternOptions configure NewPostern.
type PosternOptions struct {
	// Bin is the postern binary.
	Bin string
	// Dir holds the config, the sockets (postern_run_dir) and the store, which NewPostern makes
	// with `postern init` when Store is empty.
	Dir string
	// Instance is the config's instance name; empty means "it".
	Instance string
	// LogLevel is log.level; empty means "debug".
	LogLevel string
	// ExtraConfig is YAML appended to the generated config (top-level keys the generated config
	// does not set, e.g. "upstream: {down_backoff: 2s}").
	ExtraConfig string
	// SMTP makes Postern listen for Postfix on SMTP (listen.smtp, a free port on 127.0.0.1)
	// instead of LMTP.
	SMTP bool
	// Store is the YAML of the config's store section (indented by two spaces, e.g. from
	// (*Vault).StoreYAML); empty means the embedded store in Dir.
	Store string
	// Milter makes Postern serve its milter on Dir/milter.sock (listen.milter).
	Milter bool
	// SocketmapTCP makes the socketmap listen on a free port on 127.0.0.1 instead of
	// Dir/socketmap.sock (with SMTP: Postern without unix sockets for Postfix).
	SocketmapTCP bool
}

// Postern is a `postern serve` process with a generated config and the embedded store.
type Postern struct {
	Bin    string
	Dir    string
	Config string
	// LMTPSocket and SocketmapSocket are the sockets Postfix uses (SocketmapSocket is host:port with
	// PosternOptions.SocketmapTCP); LMTPSocket is empty when Postern listens on SMTPAddr instead.
	LMTPSocket      string
	SocketmapSocket string
	// SMTPAddr is the SMTP listener (host:port) when PosternOptions.SMTP was set.
	SMTPAddr string
	// MilterSocket is the milter's unix socket when PosternOptions.Milter was set, else empty.
	MilterSocket string
	// AdminAddr is the admin HTTP listener (host:port).
	AdminAddr string
	// ReadToken admits reads of the admin listener's /metrics, /status and /api/v1/projects
	// (admin.read_token_file); Get sends it.
	ReadToken string
	// Command, when set, is the command line Start runs instead of `Bin serve --config Config`:
	// an installed unit's ExecStart, under setpriv to run as the unit's user.
	Command []string

	out  *syncBuffer // the output of every run
	proc *Process    // the current run
}

// NewPostern writes a config into opts.Dir without starting anything, so that the front Postfix can
// be set up with Dir as its postern_run_dir first.
func NewPostern(opts PosternOptions) (*Postern, error) {
	if opts.Instance == "" {
		opts.Instance = "it"
	}
	if opts.LogLevel == "" {
		opts.LogLevel = "debug"
	}
	if err := mkdirs(opts.Dir); err != nil {
		return nil, err
	}
	port, err := FreePort()
	if err != nil {
		return nil, err
	}
	p := &Postern{
		Bin:             opts.Bin,
		Dir:             opts.Dir,
		Config:          filepath.Join(opts.Dir, "postern.yaml"),
		LMTPSocket:      filepath.Join(opts.Dir, "lmtp.sock"),
		SocketmapSocket: filepath.Join(opts.Dir, "socketmap.sock"),
		AdminAddr:       fmt.Sprintf("127.0.0.1:%d", port),
		out:             &syncBuffer{},
	}
	listenPostfix := "lmtp: " + p.LMTPSocket
	if opts.SMTP {
		smtpPort, err := FreePort()
		if err != nil {
			return nil, err
		}
		p.LMTPSocket = ""
		p.SMTPAddr = fmt.Sprintf("127.0.0.1:%d", smtpPort)
		listenPostfix = fmt.Sprintf("lmtp: \"\"\n  smtp: %s", p.SMTPAddr)
	}
	if opts.SocketmapTCP {
		smPort, err := FreePort()
		if err != nil {
			return nil, err
		}
		p.SocketmapSocket = fmt.Sprintf("127.0.0.1:%d", smPort)
	}
	if opts.Milter {
		p.MilterSocket = filepath.Join(opts.Dir, "milter.sock")
		listenPostfix += "\n  milter: " + p.MilterSocket
	}
	storeYAML := opts.Store
	if storeYAML == "" {
		storeYAML = fmt.Sprintf("  file: {path: %s, key_file: %s}",
			filepath.Join(opts.Dir, "store.db"), filepath.Join(opts.Dir, "store.key"))
	}
	conf := fmt.Sprintf(`instance: %s
log: {level: %s, format: text}
listen:
  %s
  socketmap: %s
  admin: %s
  socket_group: postfix
  socket_mode: "0660"
store:
%s
reload_interval: 1s
admin: {read_token_file: %s}
`, opts.Instance, opts.LogLevel, listenPostfix, p.SocketmapSocket, p.AdminAddr, storeYAML, filepath.Join(opts.Dir, "read.token"))
	if opts.ExtraConfig != "" {
		conf += strings.TrimRight(opts.ExtraConfig, "\n") + "\n"
	}
	if err := os.WriteFile(p.Config, []byte(conf), 0o600); err != nil {
		return nil, fmt.Errorf("writing %s: %w", p.Config, err)
	}
	if opts.Store == "" && p.Bin != "" {
		// The embedded store is made once, explicitly, as an operator does: serve never makes one.
		// Without a binary (tests of Postfix alone, or a Postern in a container) there is none to make.
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if out, err := exec.CommandContext(ctx, p.Bin, "init", "--config", p.Config).CombinedOutput(); err != nil {
			return nil, fmt.Errorf("postern init: %w\n%s", err, out)
		}
	}
	p.ReadToken = rand.Text()
	if err := os.WriteFile(filepath.Join(opts.Dir, "read.token"), []byte(p.ReadToken+"\n"), 0o600); err != nil {
		return nil, fmt.Errorf("writing the read token: %w", err)
	}
	return p, nil
}

// Start runs `postern serve --config Config` (again after Stop or Kill) and waits until its
// sockets accept connections.
func (p *Postern) Start(ctx context.Context) error {
	if p.Bin == "" {
		return errors.New("starting postern: no binary")
	}
	path, args := p.Bin, []string{"serve", "--config", p.Config}
	if len(p.Command) > 0 {
		path, args = p.Command[0], p.Command[1:]
	}
	proc, err := StartProcess(ProcessOptions{Name: "postern", Path: path, Args: args, Dir: p.Dir,
		LogFile: p.LogFile(), Output: p.out})
	if err != nil {
		return err
	}
	p.proc = proc
	return proc.WaitReady(ctx, func() (bool, error) {
		for _, s := range []string{p.LMTPSocket, p.SocketmapSocket, p.MilterSocket} {
			if s == "" {
				continue
			}
			c, err := net.DialTimeout(socketNetwork(s), s, time.Second)
			if err != nil {
				return false, err
			}
			c.Close()
		}
		if p.SMTPAddr != "" {
			if ok, err := listeningOn(p.SMTPAddr); err != nil || !ok {
				return false, err
			}
		}
		return true, nil
	})
}

// Stop sends SIGTERM, waits up to ten seconds, then kills the process.
func (p *Postern) Stop() error {
	if p.proc == nil {
		return nil
	}
	return p.proc.Stop()
}

// Signal sends sig to the running process.
func (p *Postern) Signal(sig os.Signal) error {
	if p.proc == nil {
		return errors.New("postern is not running")
	}
	return p.proc.Signal(sig)
}

// Wait waits until the process has ended, or ctx ends.
func (p *Postern) Wait(ctx context.Context) error {
	if p.proc == nil {
		return errors.New("postern was never started")
	}
	return p.proc.Wait(ctx)
}

// Kill ends the process with SIGKILL, as a crash or the kernel's OOM killer would, and waits
// for it. Start runs it again.
func (p *Postern) Kill() error {
	if p.proc == nil {
		return errors.New("killing postern: not started")
	}
	return p.proc.Kill()
}

// Exited reports whether the process has ended, and how.
func (p *Postern) Exited() (bool, error) {
	if p.proc == nil {
		return false, nil
	}
	return p.proc.Exited()
}

// LogFile is where the process's output is written too.
func (p *Postern) LogFile() string { return filepath.Join(p.Dir, "postern.log") }

// Log returns everything the process wrote to stdout and stderr so far.
func (p *Postern) Log() string { return p.out.String() }

// CLI runs `postern ARGS...` against the same config and returns its standard output. "--config
// FILE" goes right after the leading command words (before the first flag), so put positional
// arguments such as a project name last. stdin feeds --password-stdin.
func (p *Postern) CLI(ctx context.Context, stdin string, args ...string) (string, error) {
	i := 0
	for i < len(args) && !strings.HasPrefix(args[i], "-") {
		i++
	}
	full := append(append(append([]string{}, args[:i]...), "--config", p.Config), args[i:]...)
	cmd := exec.CommandContext(ctx, p.Bin, full...)
	cmd.Dir = p.Dir
	cmd.Stdin = strings.NewReader(stdin)
	var out, errb bytes.Buffer
	cmd.Stdout = &out
	cmd.Stderr = &errb
	cmd.WaitDelay = 5 * time.Second
	if err := cmd.Run(); err != nil {
		return out.String(), fmt.Errorf("running postern %s: %w\n%s%s", strings.Join(full, " "), err, out.String(), errb.String())
	}
	return out.String(), nil
}

// Lookup asks Postern's socketmap for the transport of sender (map "senders") and returns the
// reply, e.g. "OK postern:unix:/run/postern/lmtp.sock" or "NOTFOUND ".
func (p *Postern) Lookup(ctx context.Context, sender string) (string, error) {
	return SocketmapLookup(ctx, p.SocketmapSocket, "senders", sender)
}

// WaitRouted waits until the socketmap answers OK for sender (routed) or NOTFOUND (not routed).
func (p *Postern) WaitRouted(ctx context.Context, sender string, routed bool) error {
	var last string
	err := poll(ctx, 100*time.Millisecond, func() (bool, error) {
		r, err := p.Lookup(ctx, sender)
		if err != nil {
			last = err.Error()
			return false, nil
		}
		last = r
		if routed {
			return strings.HasPrefix(r, "OK "), nil
		}
		return strings.HasPrefix(r, "NOTFOUND"), nil
	})
	if err != nil {
		return fmt.Errorf("waiting for postern to answer %s for %s (last answer %q): %w",
			map[bool]string{true: "OK", false: "NOTFOUND"}[routed], sender, last, err)
	}
	return nil
}

// Get fetches a path of the admin listener (e.g. "/metrics") with the read token and returns
// the body.
func (p *Postern) Get(ctx context.Context, path string) (string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+p.AdminAddr+path, nil)
	if err != nil {
		return "", err
	}
	if p.ReadToken != "" {
		req.Header.Set("Authorization", "Bearer "+p.ReadToken)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return "", fmt.Errorf("getting %s from postern: %w", path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return "", fmt.Errorf("reading %s from postern: %w", path, err)
	}
	if resp.StatusCode != http.StatusOK {
		return string(b), fmt.Errorf("getting %s from postern: %s", path, resp.Status)
	}
	return string(b), nil
}

// StartPostern starts p and registers its stop as a cleanup of t; its output is written to the
// test log when t failed.
func StartPostern(t T, p *Postern) {
	t.Helper()
	stopAtCleanup(t, "postern", p.Stop, p.Log)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	began := time.Now()
	if err := p.Start(ctx); err != nil {
		t.Fatalf("%v", err)
	}
	t.Logf("postern started in %s", time.Since(began).Round(time.Millisecond))
}

// SocketmapLookup sends one Postfix socketmap request ("name key" as a netstring) to the unix
// socket at path and returns the reply's payload.
func SocketmapLookup(ctx context.Context, path, name, key string) (string, error) {
	var d net.Dialer
	c, err := d.DialContext(ctx, socketNetwork(path), path)
	if err != nil {
		return "", fmt.Errorf("connecting to socketmap %s: %w", path, err)
	}
	defer c.Close()
	deadline := time.Now().Add(10 * time.Second)
	if dl, ok := ctx.Deadline(); ok && dl.Before(deadline) {
		deadline = dl
	}
	_ = c.SetDeadline(deadline)
	req := name + " " + key
	if _, err := fmt.Fprintf(c, "%d:%s,", len(req), req); err != nil {
		return "", fmt.Errorf("asking socketmap %s: %w", path, err)
	}
	reply, err := ReadNetstring(bufio.NewReader(c))
	if err != nil {
		return "", fmt.Errorf("reading the answer of socketmap %s: %w", path, err)
	}
	return reply, nil
}

// ReadNetstring reads one netstring ("len:payload,").
func ReadNetstring(r *bufio.Reader) (string, error) {
	lenStr, err := r.ReadString(':')
	if err != nil {
		return "", err
	}
	n, err := strconv.Atoi(strings.TrimSuffix(lenStr, ":"))
	if err != nil || n < 0 || n > 100000 {
		return "", fmt.Errorf("bad netstring length %q", lenStr)
	}
	buf := make([]byte, n+1)
	if _, err := io.ReadFull(r, buf); err != nil {
		return "", err
	}
	if buf[n] != ',' {
		return "", fmt.Errorf("netstring of length %d does not end with ','", n)
	}
	return string(buf[:n]), nil
}

// syncBuffer is a bytes.Buffer safe for a writing process and reading tests.
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

// socketNetwork is "unix" for a socket path and "tcp" for host:port.
func socketNetwork(addr string) string {
	if strings.HasPrefix(addr, "/") {
		return "unix"
	}
	return "tcp"
}
