package harness

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"
)

// WriteRootTokenFile writes the root token into dir/vault-token (mode 0600) and returns the path,
// for a config's store.vault.auth.token_file.
func (v *Vault) WriteRootTokenFile(dir string) (string, error) {
	path := filepath.Join(dir, "vault-token")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return "", err
	}
	if err := os.WriteFile(path, []byte(v.RootToken+"\n"), 0o600); err != nil {
		return "", fmt.Errorf("writing the vault token file: %w", err)
	}
	return path, nil
}

// AppRoleStoreYAML is the store section of a Postern config signing in to addr (this server, or
// a proxy in front of it) with AppRole.
func AppRoleStoreYAML(addr, roleID, secretIDFile string, wrapped bool) string {
	return fmt.Sprintf("  vault:\n    address: %s\n    full_scan_interval: 5s\n    auth:\n      approle:\n        role_id: %s\n        secret_id_file: %s\n        secret_id_wrapped: %t",
		addr, roleID, secretIDFile, wrapped)
}

// KVPut writes data as the newest version of the KV v2 record at path under secret/ (as
// `vault kv put` does) with token (root when empty), and returns the new version.
func (v *Vault) KVPut(ctx context.Context, path, token string, data any) (int, error) {
	var out struct {
		Data struct {
			Version int `json:"version"`
		} `json:"data"`
	}
	code, err := v.Request(ctx, http.MethodPost, "secret/data/"+path, token, map[string]any{"data": data}, &out)
	if err != nil {
		return 0, err
	}
	if code != http.StatusOK {
		return 0, fmt.Errorf("vault kv put %s: status %d", path, code)
	}
	return out.Data.Version, nil
}

// KVGet reads the newest version of the KV v2 record at path under secret/ with token (root when
// empty) into out (the record's data) and returns its version.
func (v *Vault) KVGet(ctx context.Context, path, token string, out any) (int, error) {
	var resp struct {
		Data struct {
			Data     json.RawMessage `json:"data"`
			Metadata struct {
				Version int `json:"version"`
			} `json:"metadata"`
		} `json:"data"`
	}
	code, err := v.Request(ctx, http.MethodGet, "secret/data/"+path, token, nil, &resp)
	if err != nil {
		return 0, err
	}
	if code != http.StatusOK {
		return 0, fmt.Errorf("vault kv get %s: status %d", path, code)
	}
	if out != nil {
		if err := json.Unmarshal(resp.Data.Data, out); err != nil {
			return 0, fmt.Errorf("vault kv get %s: decoding the data: %w", path, err)
		}
	}
	return resp.Data.Metadata.Version, nil
}

// PutPolicy writes an ACL policy (HCL) with the root token.
func (v *Vault) PutPolicy(ctx context.Context, name, hcl string) error {
	_, err := v.Request(ctx, http.MethodPut, "sys/policies/acl/"+name, "", map[string]string{"policy": hcl}, nil)
	return err
}

// CreateAppRole creates (or replaces) an AppRole role with the given token policies and returns
// its role id.
func (v *Vault) CreateAppRole(ctx context.Context, role string, policies ...string) (string, error) {
	if _, err := v.Request(ctx, http.MethodPost, "auth/approle/role/"+role, "", map[string]any{
		"token_policies": policies, "token_ttl": "1h", "token_max_ttl": "4h",
	}, nil); err != nil {
		return "", err
	}
	var out struct {
		Data struct {
			RoleID string `json:"role_id"`
		} `json:"data"`
	}
	if _, err := v.Request(ctx, http.MethodGet, "auth/approle/role/"+role+"/role-id", "", nil, &out); err != nil {
		return "", err
	}
	if out.Data.RoleID == "" {
		return "", fmt.Errorf("vault: no role id for AppRole role %s", role)
	}
	return out.Data.RoleID, nil
}

// AppRoleSecretID creates a secret id for role. With wrapTTL > 0 it returns a response-wrapping
// token instead (`vault write -wrap-ttl=... -f auth/approle/role/NAME/secret-id`), which
// unwraps to the secret id.
func (v *Vault) AppRoleSecretID(ctx context.Context, role string, wrapTTL time.Duration) (string, error) {
	header := http.Header{}
	if wrapTTL > 0 {
		header.Set("X-Vault-Wrap-TTL", fmt.Sprintf("%ds", int(wrapTTL/time.Second)))
	}
	var out struct {
		Data struct {
			SecretID string `json:"secret_id"`
		} `json:"data"`
		WrapInfo struct {
			Token string `json:"token"`
		} `json:"wrap_info"`
	}
	if err := v.requestWithHeader(ctx, http.MethodPost, "auth/approle/role/"+role+"/secret-id", header, struct{}{}, &out); err != nil {
		return "", err
	}
	if wrapTTL > 0 {
		if out.WrapInfo.Token == "" {
			return "", fmt.Errorf("vault: no wrapping token for a secret id of AppRole role %s", role)
		}
		return out.WrapInfo.Token, nil
	}
	if out.Data.SecretID == "" {
		return "", fmt.Errorf("vault: no secret id for AppRole role %s", role)
	}
	return out.Data.SecretID, nil
}

// AppRoleLogin signs in with AppRole and returns the client token.
func (v *Vault) AppRoleLogin(ctx context.Context, roleID, secretID string) (string, error) {
	var out struct {
		Auth struct {
			ClientToken string `json:"client_token"`
		} `json:"auth"`
	}
	if err := v.requestWithHeader(ctx, http.MethodPost, "auth/approle/login", nil,
		map[string]string{"role_id": roleID, "secret_id": secretID}, &out); err != nil {
		return "", err
	}
	if out.Auth.ClientToken == "" {
		return "", fmt.Errorf("vault: AppRole login gave no token")
	}
	return out.Auth.ClientToken, nil
}

// requestWithHeader is an unauthenticated-or-root call (root token unless the path is a login)
// with extra headers; it fails on any status but 2xx.
func (v *Vault) requestWithHeader(ctx context.Context, method, path string, header http.Header, body, out any) error {
	b, err := json.Marshal(body)
	if err != nil {
		return err
	}
	req, err := http.NewRequestWithContext(ctx, method, v.Addr+"/v1/"+strings.TrimPrefix(path, "/"), bytes.NewReader(b))
	if err != nil {
		return err
	}
	for k, vals := range header {
		for _, val := range vals {
			req.Header.Add(k, val)
		}
	}
	if !strings.HasSuffix(path, "/login") {
		req.Header.Set("X-Vault-Token", v.RootToken)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return fmt.Errorf("vault %s %s: %w", method, path, err)
	}
	defer resp.Body.Close()
	rb, _ := io.ReadAll(resp.Body)
	if resp.StatusCode >= 300 {
		// Vault's error texts carry no secrets of the request.
		return fmt.Errorf("vault %s %s: %d %s", method, path, resp.StatusCode, bytes.TrimSpace(rb))
	}
	if out != nil && len(rb) > 0 {
		if err := json.Unmarshal(rb, out); err != nil {
			return fmt.Errorf("vault %s %s: decoding the answer: %w", method, path, err)
		}
	}
	return nil
}

// VaultProxy is an HTTP reverse proxy on loopback in front of a Vault server that counts the
// requests passing through it, by method and path ("GET secret/data/postern/index").
type VaultProxy struct {
	// Addr is the proxy's URL, to use as store.vault.address.
	Addr string

	mu     sync.Mutex
	counts map[string]int
	times  []ProxiedRequest
}

// ProxiedRequest is one request that passed through a VaultProxy.
type ProxiedRequest struct {
	At  time.Time
	Key string // method and path, as Counts has them
}

// StartVaultProxy starts a counting proxy in front of v and stops it at cleanup.
func StartVaultProxy(t T, v *Vault) *VaultProxy {
	t.Helper()
	target, err := url.Parse(v.Addr)
	if err != nil {
		t.Fatalf("%v", err)
	}
	port, err := FreePort()
	if err != nil {
		t.Fatalf("%v", err)
	}
	p := &VaultProxy{Addr: fmt.Sprintf("http://127.0.0.1:%d", port), counts: map[string]int{}}
	rp := httputil.NewSingleHostReverseProxy(target)
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.MaxIdleConnsPerHost = 64 // as many as Postern's client keeps: the proxy must not add connections
	rp.Transport = tr
	srv := &http.Server{
		Addr:              fmt.Sprintf("127.0.0.1:%d", port),
		ReadHeaderTimeout: 10 * time.Second,
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			key := r.Method + " " + strings.TrimPrefix(r.URL.Path, "/v1/")
			if r.URL.Query().Get("list") == "true" {
				key = "LIST " + strings.TrimPrefix(r.URL.Path, "/v1/")
			}
			p.mu.Lock()
			p.counts[key]++
			p.times = append(p.times, ProxiedRequest{At: time.Now(), Key: key})
			p.mu.Unlock()
			rp.ServeHTTP(w, r)
		}),
	}
	ln, err := net.Listen("tcp", srv.Addr)
	if err != nil {
		t.Fatalf("%v", err)
	}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { _ = srv.Close() })
	return p
}

// Counts returns a copy of the request counts so far.
func (p *VaultProxy) Counts() map[string]int {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := make(map[string]int, len(p.counts))
	for k, n := range p.counts {
		out[k] = n
	}
	return out
}

// Requests returns the requests made since t, oldest first.
func (p *VaultProxy) Requests(since time.Time) []ProxiedRequest {
	p.mu.Lock()
	defer p.mu.Unlock()
	i, _ := slices.BinarySearchFunc(p.times, since, func(r ProxiedRequest, t time.Time) int { return r.At.Compare(t) })
	return slices.Clone(p.times[i:])
}
