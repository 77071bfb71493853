// Command vaultdev runs HashiCorp Vault's real core as an in-memory dev
// server on a loopback address, for Postern's integration tests and demos.
//
// It starts a Vault core with in-memory storage, initialises and unseals it,
// creates a root token with a known ID, enables the AppRole auth method at
// auth/approle and a KV version 2 secrets engine at secret/, and serves
// Vault's HTTP API over plain HTTP until SIGINT or SIGTERM.
//
// Never use it for anything but tests and demos: all data lives in memory,
// the root token is fixed, and there is no TLS.
//
// The go:debug line below restores acceptance of X.509 certificates with
// negative serial numbers (rejected since Go 1.23), which Vault v1.14 expects.
//
//go:debug x509negativeserial=1
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	log "github.com/hashicorp/go-hclog"
	kv "github.com/hashicorp/vault-plugin-secrets-kv"
	"github.com/hashicorp/vault/builtin/credential/approle"
	"github.com/hashicorp/vault/helper/namespace"
	vaulthttp "github.com/hashicorp/vault/http"
	"github.com/hashicorp/vault/internalshared/configutil"
	"github.com/hashicorp/vault/sdk/logical"
	"github.com/hashicorp/vault/vault"
)

const defaultRootToken = "postern-dev-root"

func main() {
	os.Exit(run())
}

func run() int {
	fs := flag.NewFlagSet("vaultdev", flag.ContinueOnError)
	addr := fs.String("addr", "127.0.0.1:8200", "loopback `host:port` to listen on (port 0 picks a free port)")
	rootToken := fs.String("root-token", "", "root token ID (default $VAULT_DEV_ROOT_TOKEN_ID, else "+defaultRootToken+")")
	readyFile := fs.String("ready-file", "", "if set, write the server URL to this `file` once serving (removed on exit)")
	logLevel := fs.String("log-level", "warn", "Vault's internal log `level` (trace, debug, info, warn, error)")
	if err := fs.Parse(os.Args[1:]); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(os.Stderr, "vaultdev: unexpected arguments: %q\n", fs.Args())
		return 2
	}

	token := *rootToken
	if token == "" {
		token = os.Getenv("VAULT_DEV_ROOT_TOKEN_ID")
	}
	if token == "" {
		token = defaultRootToken
	}
	if strings.Contains(token, ".") || strings.TrimSpace(token) != token {
		fmt.Fprintf(os.Stderr, "vaultdev: root token %q must not contain '.' or surrounding spaces\n", token)
		return 2
	}

	listenAddr, err := loopbackAddr(*addr)
	if err != nil {
		fmt.Fprintf(os.Stderr, "vaultdev: %v\n", err)
		return 2
	}

	level := log.LevelFromString(*logLevel)
	if level == log.NoLevel {
		fmt.Fprintf(os.Stderr, "vaultdev: unknown log level %q\n", *logLevel)
		return 2
	}
	logger := log.New(&log.LoggerOptions{
		Name:   "vault",
		Level:  level,
		Output: os.Stderr,
	})

	ln, err := net.Listen("tcp", listenAddr)
	if err != nil {
		fmt.Fprintf(os.Stderr, "vaultdev: %v\n", err)
		return 1
	}
	defer ln.Close()
	url := "http://" + ln.Addr().String()

	t := &runtimeT{}
	defer t.runCleanups()

	// The test helper builds its in-memory storage with a logger of its own,
	// at trace level on hclog.DefaultOutput; mute that one (it only announces
	// "creating error injector"). The core itself uses our logger.
	defaultOutput := log.DefaultOutput
	log.DefaultOutput = io.Discard
	core, _, initRoot := vault.TestCoreUnsealedWithConfig(t, &vault.CoreConfig{
		Logger:       logger,
		RedirectAddr: url,
		LogicalBackends: map[string]logical.Factory{
			"kv": kv.Factory,
		},
		CredentialBackends: map[string]logical.Factory{
			"approle": approle.Factory,
		},
	})
	log.DefaultOutput = defaultOutput

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	if err := setup(ctx, core, initRoot, token); err != nil {
		fmt.Fprintf(os.Stderr, "vaultdev: setup: %v\n", err)
		return 1
	}

	srv := &http.Server{
		Handler: vaulthttp.Handler.Handler(&vault.HandlerProperties{
			Core: core,
			ListenerConfig: &configutil.Listener{
				Type:    "tcp",
				Address: ln.Addr().String(),
			},
		}),
		ReadHeaderTimeout: 10 * time.Second,
		ErrorLog:          logger.StandardLogger(&log.StandardLoggerOptions{InferLevels: true}),
	}
	serveErr := make(chan error, 1)
	go func() { serveErr <- srv.Serve(ln) }()

	if *readyFile != "" {
		if err := writeFileAtomic(*readyFile, url+"\n"); err != nil {
			fmt.Fprintf(os.Stderr, "vaultdev: ready file: %v\n", err)
			return 1
		}
		defer os.Remove(*readyFile)
	}
	fmt.Fprintf(os.Stderr, "vaultdev: listening on %s (root token in VAULT_TOKEN)\n", url)

	select {
	case <-ctx.Done():
	case err := <-serveErr:
		fmt.Fprintf(os.Stderr, "vaultdev: serve: %v\n", err)
		return 1
	}
	stop()

	shutdownCtx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_ = srv.Shutdown(shutdownCtx)
	return 0
}

// loopbackAddr accepts host:port where host is a loopback IP or "localhost",
// and returns a form suitable for net.Listen.
func loopbackAddr(addr string) (string, error) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return "", fmt.Errorf("-addr %q: %v", addr, err)
	}
	if host == "localhost" {
		host = "127.0.0.1"
	}
	ip := net.ParseIP(host)
	if ip == nil || !ip.IsLoopback() {
		return "", fmt.Errorf("-addr %q: only loopback addresses (127.0.0.0/8, ::1) are allowed", addr)
	}
	return net.JoinHostPort(ip.String(), port), nil
}

// setup replaces the random initial root token with one of a known ID,
// enables AppRole and remounts secret/ as KV version 2, then waits until the
// KV engine has finished its initial (empty) upgrade and accepts requests.
func setup(ctx context.Context, core *vault.Core, initRoot, token string) error {
	ctx = namespace.RootContext(ctx)
	do := func(tok string, op logical.Operation, path string, data map[string]interface{}) (*logical.Response, error) {
		resp, err := core.HandleRequest(ctx, &logical.Request{
			Operation:   op,
			ClientToken: tok,
			Path:        path,
			Data:        data,
		})
		if err == nil && resp.IsError() {
			err = resp.Error()
		}
		if err != nil {
			return nil, fmt.Errorf("%s %s: %w", op, path, err)
		}
		return resp, nil
	}

	// Same steps as `vault server -dev -dev-root-token-id=...`.
	resp, err := do(initRoot, logical.UpdateOperation, "auth/token/create", map[string]interface{}{
		"id":                token,
		"policies":          []string{"root"},
		"no_parent":         true,
		"no_default_policy": true,
		"display_name":      "vaultdev-root",
	})
	if err != nil {
		return err
	}
	if resp == nil || resp.Auth == nil || resp.Auth.ClientToken != token {
		return fmt.Errorf("auth/token/create did not return the requested root token")
	}
	if _, err := do(initRoot, logical.UpdateOperation, "auth/token/revoke-self", nil); err != nil {
		return err
	}

	if _, err := do(token, logical.UpdateOperation, "sys/auth/approle", map[string]interface{}{
		"type":        "approle",
		"description": "AppRole (vaultdev)",
	}); err != nil {
		return err
	}

	// The test core mounts secret/ as KV version 1; replace it with version 2.
	if _, err := do(token, logical.DeleteOperation, "sys/mounts/secret", nil); err != nil {
		return err
	}
	if _, err := do(token, logical.UpdateOperation, "sys/mounts/secret", map[string]interface{}{
		"type":        "kv",
		"path":        "secret/",
		"description": "key/value secret storage (KV v2)",
		"options":     map[string]string{"version": "2"},
	}); err != nil {
		return err
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		_, err := do(token, logical.ReadOperation, "secret/config", nil)
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return fmt.Errorf("KV v2 engine at secret/ not ready: %w", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func writeFileAtomic(path, content string) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), ".vaultdev-ready-*")
	if err != nil {
		return err
	}
	if _, err := tmp.WriteString(content); err != nil {
		tmp.Close()
		os.Remove(tmp.Name())
		return err
	}
	if err := tmp.Close(); err != nil {
		os.Remove(tmp.Name())
		return err
	}
	if err := os.Chmod(tmp.Name(), 0o644); err != nil {
		os.Remove(tmp.Name())
		return err
	}
	return os.Rename(tmp.Name(), path)
}

// runtimeT implements the testing.T-like interface
// (github.com/mitchellh/go-testing-interface) that Vault's TestCore helpers
// take. Fatal logs and exits; Cleanup functions run when runCleanups is called
// (at shutdown), in reverse order, like the testing package.
type runtimeT struct {
	mu       sync.Mutex
	failed   bool
	cleanups []func()
}

func (t *runtimeT) Cleanup(f func()) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.cleanups = append(t.cleanups, f)
}

func (t *runtimeT) runCleanups() {
	t.mu.Lock()
	fs := t.cleanups
	t.cleanups = nil
	t.mu.Unlock()
	for i := len(fs) - 1; i >= 0; i-- {
		fs[i]()
	}
}

func (t *runtimeT) Error(args ...interface{}) { t.Log(args...); t.Fail() }
func (t *runtimeT) Errorf(format string, args ...interface{}) {
	t.Logf(format, args...)
	t.Fail()
}

func (t *runtimeT) Fail() {
	t.mu.Lock()
	t.failed = true
	t.mu.Unlock()
}

func (t *runtimeT) FailNow() {
	fmt.Fprintln(os.Stderr, "vaultdev: fatal error starting Vault core")
	os.Exit(1)
}

func (t *runtimeT) Failed() bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.failed
}

func (t *runtimeT) Fatal(args ...interface{}) { t.Log(args...); t.FailNow() }
func (t *runtimeT) Fatalf(format string, args ...interface{}) {
	t.Logf(format, args...)
	t.FailNow()
}

func (t *runtimeT) Helper() {}

func (t *runtimeT) Log(args ...interface{}) {
	fmt.Fprintln(os.Stderr, append([]interface{}{"vaultdev:"}, args...)...)
}

func (t *runtimeT) Logf(format string, args ...interface{}) {
	fmt.Fprintf(os.Stderr, "vaultdev: "+format+"\n", args...)
}

func (t *runtimeT) Name() string { return "vaultdev" }
func (t *runtimeT) Parallel()    {}

func (t *runtimeT) Skip(args ...interface{})                 { t.Fatal(append([]interface{}{"skip:"}, args...)...) }
func (t *runtimeT) SkipNow()                                 { t.Fatal("skip") }
func (t *runtimeT) Skipf(format string, args ...interface{}) { t.Fatalf("skip: "+format, args...) }
func (t *runtimeT) Skipped() bool                            { return false }
