package harness

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"
)

// VaultRootToken is the dev server's root token in tests.
const VaultRootToken = "postern-it-root"

// Vault is a real Vault server: Vault's own core, HTTP API, KV v2 engine, AppRole and ACL policies
// (integration/vaultdev), with in-memory storage, on a loopback port.
type Vault struct {
	// Addr is the URL, e.g. http://127.0.0.1:8200.
	Addr string
	// RootToken may do anything.
	RootToken string

	bin  string
	port int
	dir  string
	mu   sync.Mutex
	proc *Process    // the current run
	out  *syncBuffer // the output of every run
}

var buildVaultOnce struct {
	sync.Once
	path string
	err  error
}

// BuildVaultDev builds (or finds up to date in the cache) the Vault dev server, once per process.
func BuildVaultDev(ctx context.Context) (string, error) {
	buildVaultOnce.Do(func() {
		if p := os.Getenv("POSTERN_VAULTDEV"); p != "" {
			buildVaultOnce.path = p
			return
		}
		root, err := ModuleRoot()
		if err != nil {
			buildVaultOnce.err = err
			return
		}
		var out, errb bytes.Buffer
		cmd := exec.CommandContext(ctx, "bash", filepath.Join(root, "integration", "vaultdev", "build.sh"))
		cmd.Stdout, cmd.Stderr = &out, &errb
		if err := cmd.Run(); err != nil {
			buildVaultOnce.err = fmt.Errorf("building the Vault dev server: %w\n%s", err, errb.String())
			return
		}
		buildVaultOnce.path = strings.TrimSpace(out.String())
	})
	return buildVaultOnce.path, buildVaultOnce.err
}

// StartVault starts the Vault dev server that `make deps` built (integration/vaultdev/build.sh)
// with KV v2 at secret/ and AppRole enabled, and stops it at cleanup. A server not built, or older
// than its source, fails t at once naming `make deps`: building it takes minutes.
func StartVault(t T) *Vault {
	t.Helper()
	root, err := ModuleRoot()
	if err != nil {
		t.Fatalf("%v", err)
	}
	var bin string
	if !requirePrereqs(t, SkipEnv, func() (err error) { bin, err = checkVaultDev(root); return err }) {
		return nil
	}
	port, err := FreePort()
	if err != nil {
		t.Fatalf("%v", err)
	}
	v := &Vault{
		Addr: fmt.Sprintf("http://127.0.0.1:%d", port), RootToken: VaultRootToken,
		bin: bin, port: port, dir: TempDir(t), out: &syncBuffer{},
	}
	stopAtCleanup(t, "vault dev server", func() error { v.Stop(); return nil }, v.out.String)
	if err := v.Start(); err != nil {
		t.Fatalf("%v", err)
	}
	return v
}

// Start starts the server (again, on the same port, with empty storage after a Stop: use Pause and
// Resume to keep the data).
func (v *Vault) Start() error {
	v.mu.Lock()
	defer v.mu.Unlock()
	ready := filepath.Join(v.dir, "ready")
	_ = os.Remove(ready)
	proc, err := StartProcess(ProcessOptions{Name: "vault dev server", Path: v.bin,
		Args:   []string{"-addr", fmt.Sprintf("127.0.0.1:%d", v.port), "-root-token", v.RootToken, "-ready-file", ready},
		Output: v.out})
	if err != nil {
		return err
	}
	v.proc = proc
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	return proc.WaitReady(ctx, func() (bool, error) {
		_, err := os.Stat(ready)
		return err == nil, nil
	})
}

// Pause stops the server from answering without losing its data (SIGSTOP): to clients it looks
// unreachable (connections hang until their timeouts).
func (v *Vault) Pause() error { return v.signal(syscall.SIGSTOP) }

// Resume undoes Pause.
func (v *Vault) Resume() error { return v.signal(syscall.SIGCONT) }

func (v *Vault) signal(s syscall.Signal) error {
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.proc == nil {
		return fmt.Errorf("vault is not running")
	}
	return v.proc.Signal(s)
}

// Stop stops the server (resuming it first if paused); its data is gone.
func (v *Vault) Stop() {
	v.mu.Lock()
	proc := v.proc
	v.proc = nil
	v.mu.Unlock()
	if proc != nil {
		_ = proc.Stop()
	}
}

// Env returns VAULT_ADDR and VAULT_TOKEN (root) for commands such as `postern project`.
func (v *Vault) Env() []string {
	return []string{"VAULT_ADDR=" + v.Addr, "VAULT_TOKEN=" + v.RootToken}
}

// StoreYAML is the store section of a Postern config using this server with a token file.
func (v *Vault) StoreYAML(tokenFile string) string {
	return fmt.Sprintf("  vault:\n    address: %s\n    full_scan_interval: 5s\n    auth:\n      token_file: %s", v.Addr, tokenFile)
}

// Request makes an HTTP API call with token (the root token when empty) and decodes the JSON
// answer into out (when not nil). It returns the HTTP status.
func (v *Vault) Request(ctx context.Context, method, path, token string, body, out any) (int, error) {
	if token == "" {
		token = v.RootToken
	}
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return 0, err
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, v.Addr+"/v1/"+strings.TrimPrefix(path, "/"), rd)
	if err != nil {
		return 0, err
	}
	req.Header.Set("X-Vault-Token", token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, fmt.Errorf("vault %s %s: %w", method, path, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if out != nil && len(b) > 0 {
		if err := json.Unmarshal(b, out); err != nil {
			return resp.StatusCode, fmt.Errorf("vault %s %s: decoding %q: %w", method, path, b, err)
		}
	}
	if resp.StatusCode >= 300 && out == nil {
		return resp.StatusCode, fmt.Errorf("vault %s %s: %d %s", method, path, resp.StatusCode, bytes.TrimSpace(b))
	}
	return resp.StatusCode, nil
}

// KVVersion returns the current version of a KV v2 record under secret/ (0 when missing).
func (v *Vault) KVVersion(ctx context.Context, path string) (int, error) {
	var out struct {
		Data struct {
			CurrentVersion int `json:"current_version"`
		} `json:"data"`
	}
	code, err := v.Request(ctx, http.MethodGet, "secret/metadata/"+path, "", nil, &out)
	if code == http.StatusNotFound {
		return 0, nil
	}
	if err != nil {
		return 0, err
	}
	return out.Data.CurrentVersion, nil
}
