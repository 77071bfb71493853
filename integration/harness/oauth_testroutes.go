package harness

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"syscall"

	"github.com/postern/postern/sidecar/secret"
)

// DropAccessToken calls the IdP's test-only route that destroys one access token and nothing
// else: introspection then calls it inactive, so a resource server (Dovecot) refuses it, while the
// grant and its refresh token stay valid. (The standard revocation endpoint revokes the whole
// grant of the token it is given.)
func (p *IdP) DropAccessToken(ctx context.Context, token secret.Secret) error {
	form := url.Values{"token": {token.Reveal()}}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, p.Issuer+"/test/drop-access-token", strings.NewReader(form.Encode()))
	if err != nil {
		return fmt.Errorf("dropping an access token: %w", err)
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return fmt.Errorf("dropping an access token: %w", err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("dropping an access token: status %d: %s", resp.StatusCode, strings.TrimSpace(string(body)))
	}
	return nil
}

// Pause stops the IdP from answering without losing its state (SIGSTOP to its process group):
// to clients it looks hung, so token requests and introspection wait until their timeouts or
// until Resume.
func (p *IdP) Pause() error { return p.signal(syscall.SIGSTOP) }

// Resume undoes Pause.
func (p *IdP) Resume() error { return p.signal(syscall.SIGCONT) }

func (p *IdP) signal(s syscall.Signal) error {
	if ended, _ := p.proc.Exited(); ended {
		return fmt.Errorf("the IdP %s is not running", p.Issuer)
	}
	if err := p.proc.Signal(s); err != nil {
		return fmt.Errorf("signalling the IdP %s: %w", p.Issuer, err)
	}
	return nil
}
