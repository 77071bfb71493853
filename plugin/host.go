package plugin

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"sync"
	"time"

	goplugin "github.com/hashicorp/go-plugin"
)

// DefaultStartTimeout bounds starting a provider process when HostOptions.StartTimeout is zero.
const DefaultStartTimeout = 30 * time.Second

// DefaultCallTimeout bounds each call to a provider when HostOptions.CallTimeout is zero.
const DefaultCallTimeout = 30 * time.Second

// ErrCallTimeout says that the provider did not answer a call within HostOptions.CallTimeout. The
// host ends that process; the next call starts a fresh one.
var ErrCallTimeout = errors.New("the credential provider did not answer in time")

// ErrClosed is returned by a Host's methods after Close.
var ErrClosed = errors.New("credential provider host is closed")

// HostOptions says which provider binary a Host runs and how.
type HostOptions struct {
	// Path is the provider binary. Required.
	Path string
	// SHA256 is the binary's SHA-256, in hex (as sha256sum prints it). Required: the binary
	// is checked against it before every start, and a binary that differs is not started.
	SHA256 string
	// Args are the binary's arguments (without the program name). They are logged at debug
	// level: pass secrets through the provider's own configuration, never here.
	Args []string
	// Env is the provider's whole environment, as KEY=VALUE. Postern's own environment is not
	// passed on, because it may hold Vault credentials; add PATH, HOME or proxy settings here
	// if the provider needs them.
	Env []string
	// Logger receives the host's messages, go-plugin's, and the provider's log lines at their
	// own levels (the provider's under logger=<binary name>). nil discards them.
	Logger *slog.Logger
	// StartTimeout bounds starting the process and the handshake, each time it is started.
	// Zero means DefaultStartTimeout. The caller's ctx deadline shortens it.
	StartTimeout time.Duration
	// CallTimeout bounds each call (Credential, Rejected). A provider that does not answer in
	// time is taken for hung: the call fails with ErrCallTimeout and the process is ended, so
	// that the next call starts a fresh one. Zero means DefaultCallTimeout.
	CallTimeout time.Duration
}

// ErrChecksum says that the provider binary's SHA-256 is not the one configured.
var ErrChecksum = errors.New("the binary's SHA-256 is not the configured one: it was changed or replaced")

// decodeSHA256 decodes a hex SHA-256.
func decodeSHA256(s string) ([]byte, error) {
	if s == "" {
		return nil, errors.New("sha256 is empty: give the binary's SHA-256 (sha256sum prints it)")
	}
	b, err := hex.DecodeString(s)
	if err != nil || len(b) != sha256.Size {
		return nil, fmt.Errorf("sha256 %q is not a SHA-256 in hex (64 hex digits)", s)
	}
	return b, nil
}

func (o HostOptions) validate() error {
	var errs []error
	if o.Path == "" {
		errs = append(errs, errors.New("path is empty"))
	}
	if _, err := decodeSHA256(o.SHA256); err != nil {
		errs = append(errs, err)
	}
	if o.StartTimeout < 0 {
		errs = append(errs, fmt.Errorf("start timeout %v is negative", o.StartTimeout))
	}
	if o.CallTimeout < 0 {
		errs = append(errs, fmt.Errorf("call timeout %v is negative", o.CallTimeout))
	}
	return errors.Join(errs...)
}

// Host runs one provider binary and is the Provider the sidecar calls. It starts the process in
// Open and again on the next call after the process died; a call that finds the process gone
// mid-way is tried once more on a fresh process. A Host is safe for concurrent use.
type Host struct {
	opts HostOptions
	log  *slog.Logger

	// starting is held while the process is (re)started, so concurrent callers start it once.
	starting chan struct{}

	mu     sync.Mutex
	client *goplugin.Client
	prov   Provider
	closed bool
}

var _ Provider = (*Host)(nil)

// Open starts the provider binary opts.Path, completes go-plugin's handshake over gRPC and
// returns the Host that calls it. It fails if the process cannot be started or does not speak
// this package's contract within opts.StartTimeout or before ctx ends. ctx bounds only the start:
// the process runs until Close.
func Open(ctx context.Context, opts HostOptions) (*Host, error) {
	if err := opts.validate(); err != nil {
		return nil, fmt.Errorf("opening credential provider %q: %w", opts.Path, err)
	}
	if opts.StartTimeout == 0 {
		opts.StartTimeout = DefaultStartTimeout
	}
	if opts.CallTimeout == 0 {
		opts.CallTimeout = DefaultCallTimeout
	}
	opts.Args = append([]string(nil), opts.Args...)
	opts.Env = append([]string(nil), opts.Env...)
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	h := &Host{
		opts:     opts,
		log:      log.With("credential_provider", opts.Path),
		starting: make(chan struct{}, 1),
	}
	if _, _, err := h.current(ctx); err != nil {
		return nil, err
	}
	return h, nil
}

// Credential asks the provider for req.Project's credential. Errors are a *NeedsReauthError or
// a *TemporaryError from the provider, ctx's error (wrapped) when the caller gave up, or another
// error when the provider could not be reached or answered something unusable; the sidecar
// treats all but *NeedsReauthError as temporary.
func (h *Host) Credential(ctx context.Context, req Request) (Credential, error) {
	var cred Credential
	err := h.do(ctx, func(ctx context.Context, p Provider) error {
		var err error
		cred, err = p.Credential(ctx, req)
		return err
	})
	return cred, err
}

// Rejected tells the provider that the upstream refused req.Project's credential.
func (h *Host) Rejected(ctx context.Context, req RejectedRequest) error {
	return h.do(ctx, func(ctx context.Context, p Provider) error { return p.Rejected(ctx, req) })
}

// Close ends the provider process (gracefully, then by force after two seconds). Calls after
// Close return ErrClosed. Close is idempotent.
func (h *Host) Close() error {
	h.mu.Lock()
	c := h.client
	h.client, h.prov, h.closed = nil, nil, true
	h.mu.Unlock()
	if c != nil {
		c.Kill()
	}
	return nil
}

// do runs f against a live provider process, within CallTimeout, restarting the process once if
// f finds it gone. A process that does not answer within CallTimeout is ended.
func (h *Host) do(ctx context.Context, f func(context.Context, Provider) error) error {
	for attempt := 1; ; attempt++ {
		c, p, err := h.current(ctx)
		if err != nil {
			return err
		}
		cctx, cancel := context.WithTimeoutCause(ctx, h.opts.CallTimeout, ErrCallTimeout)
		err = f(cctx, p)
		hung := ctx.Err() == nil && errors.Is(context.Cause(cctx), ErrCallTimeout)
		cancel()
		if hung {
			h.log.Warn("credential provider did not answer in time; ending it (the next call starts it again)",
				"call_timeout", h.opts.CallTimeout, "pid", pid(c))
			h.discardHung(c)
			return fmt.Errorf("asking credential provider %q: %w (call_timeout %s)", h.opts.Path, ErrCallTimeout, h.opts.CallTimeout)
		}
		if err == nil || !errors.Is(err, errUnavailable) || attempt == 2 || ctx.Err() != nil {
			return err
		}
		h.log.Warn("credential provider unreachable; restarting it", "err", err)
		h.discard(c)
	}
}

// current returns the running provider, starting the process if there is none or it exited.
func (h *Host) current(ctx context.Context) (*goplugin.Client, Provider, error) {
	select {
	case h.starting <- struct{}{}:
	case <-ctx.Done():
		return nil, nil, fmt.Errorf("waiting for credential provider %q to start: %w", h.opts.Path, ctx.Err())
	}
	defer func() { <-h.starting }()

	h.mu.Lock()
	c, p, closed := h.client, h.prov, h.closed
	h.mu.Unlock()
	if closed {
		return nil, nil, ErrClosed
	}
	if c != nil && !c.Exited() {
		return c, p, nil
	}
	if c != nil {
		h.log.Warn("credential provider exited; restarting it")
		h.discard(c)
	}

	c, p, err := h.start(ctx)
	if err != nil {
		return nil, nil, err
	}
	h.mu.Lock()
	if h.closed {
		h.mu.Unlock()
		c.Kill()
		return nil, nil, ErrClosed
	}
	h.client, h.prov = c, p
	h.mu.Unlock()
	return c, p, nil
}

// discardHung forgets c and kills its process at once: go-plugin's Kill first asks the process
// to shut down over gRPC, without a deadline, which a hung process never answers.
func (h *Host) discardHung(c *goplugin.Client) {
	if p := pid(c); p > 0 {
		if proc, err := os.FindProcess(p); err == nil {
			_ = proc.Kill()
		}
	}
	h.discard(c)
}

// discard forgets c if it is still the current process and ends it.
func (h *Host) discard(c *goplugin.Client) {
	h.mu.Lock()
	if h.client == c {
		h.client, h.prov = nil, nil
	}
	h.mu.Unlock()
	c.Kill()
}

// start runs a new provider process and dispenses its Provider.
func (h *Host) start(ctx context.Context) (*goplugin.Client, Provider, error) {
	timeout := h.opts.StartTimeout
	if deadline, ok := ctx.Deadline(); ok {
		if left := time.Until(deadline); left < timeout {
			timeout = left
		}
	}
	if err := ctx.Err(); err != nil || timeout <= 0 {
		if err == nil {
			err = context.DeadlineExceeded
		}
		return nil, nil, fmt.Errorf("starting credential provider %q: %w", h.opts.Path, err)
	}

	sum, err := decodeSHA256(h.opts.SHA256)
	if err != nil {
		return nil, nil, fmt.Errorf("starting credential provider %q: %w", h.opts.Path, err)
	}
	cmd := exec.Command(h.opts.Path, h.opts.Args...)
	cmd.Env = append([]string(nil), h.opts.Env...)
	c := goplugin.NewClient(&goplugin.ClientConfig{
		// go-plugin hashes the file at cmd.Path and refuses to start it unless it matches.
		SecureConfig:     &goplugin.SecureConfig{Checksum: sum, Hash: sha256.New()},
		HandshakeConfig:  Handshake,
		Plugins:          pluginSet(nil),
		Cmd:              cmd,
		AllowedProtocols: []goplugin.Protocol{goplugin.ProtocolGRPC},
		Logger:           newHCLogAdapter(h.log, ""),
		StartTimeout:     timeout,
		AutoMTLS:         true,
		SkipHostEnv:      true,
	})

	type result struct {
		p   Provider
		err error
	}
	done := make(chan result, 1)
	go func() {
		p, err := dispense(c)
		done <- result{p, err}
	}()
	select {
	case r := <-done:
		if r.err != nil {
			c.Kill()
			if errors.Is(r.err, goplugin.ErrChecksumsDoNotMatch) {
				r.err = ErrChecksum
			}
			return nil, nil, fmt.Errorf("starting credential provider %q: %w", h.opts.Path, r.err)
		}
		h.log.Info("credential provider started", "pid", pid(c))
		return c, r.p, nil
	case <-ctx.Done():
		go func() {
			<-done
			c.Kill()
		}()
		return nil, nil, fmt.Errorf("starting credential provider %q: %w", h.opts.Path, ctx.Err())
	}
}

func dispense(c *goplugin.Client) (Provider, error) {
	rpc, err := c.Client()
	if err != nil {
		return nil, err
	}
	raw, err := rpc.Dispense(PluginName)
	if err != nil {
		return nil, fmt.Errorf("dispensing %q: %w", PluginName, err)
	}
	p, ok := raw.(Provider)
	if !ok {
		return nil, fmt.Errorf("dispensing %q: got %T, not a Provider", PluginName, raw)
	}
	return p, nil
}

func pid(c *goplugin.Client) int {
	if rc := c.ReattachConfig(); rc != nil {
		return rc.Pid
	}
	return 0
}

// pid is the running provider process's id, 0 if none; for tests.
func (h *Host) pid() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.client == nil {
		return 0
	}
	return pid(h.client)
}
