package vault

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/hashicorp/vault/api"
	"github.com/hashicorp/vault/api/auth/approle"
	"github.com/hashicorp/vault/api/auth/kubernetes"
)

// step is one piece of token upkeep.
type step int

const (
	stepNone    step = iota // nothing to do until something happens
	stepLogin               // sign in again
	stepRenew               // renew the token
	stepReload              // look at the token file
	stepExpired             // a static token is gone: report it
)

// Run keeps the token alive until ctx ends, then returns nil. Run it once per Client, for as long
// as the client is used; a short-lived client (a command-line tool) need not run it.
func (c *Client) Run(ctx context.Context) error {
	b := c.newBackoff()
	for {
		at, s := c.plan(c.now())
		if at.IsZero() {
			<-ctx.Done()
			return nil
		}
		if d := at.Sub(c.now()); d > 0 {
			// Plan again after the wait: recoverToken may have changed the token meanwhile.
			if !sleep(ctx, d) {
				return nil
			}
			continue
		}
		var err error
		if s == stepRenew {
			// Renewing lasts as long as the token does; it holds no lock that a request's
			// recovery after a 403 would wait for.
			err = c.renew(ctx)
		} else {
			c.upkeep.Lock()
			err = c.do(ctx, s)
			c.upkeep.Unlock()
		}
		if ctx.Err() != nil {
			return nil
		}
		if err == nil {
			b.reset()
			c.setAuthErr(nil)
			continue
		}
		c.setAuthErr(err)
		d := b.next()
		c.log.Warn("vault token upkeep failed", "method", c.auth.Method, "err", err, "retry_in", d)
		if !sleep(ctx, d) {
			return nil
		}
	}
}

// plan says what to do next, and when.
func (c *Client) plan(now time.Time) (time.Time, step) {
	c.mu.Lock()
	l, lastPoll := c.lease, c.lastPoll
	c.mu.Unlock()
	if c.auth.Method == MethodTokenFile {
		return lastPoll.Add(c.auth.PollInterval), stepReload
	}
	canLogin := c.auth.Method == MethodAppRole || c.auth.Method == MethodKubernetes
	if l.token == "" || l.invalid || (!l.noExpiry && !now.Before(l.expires())) {
		if canLogin {
			return now, stepLogin
		}
		return now, stepExpired
	}
	switch {
	case l.noExpiry:
		return time.Time{}, stepNone
	case l.renewable && !l.final:
		return l.due(), stepRenew
	case canLogin:
		return l.due(), stepLogin
	case l.renewable:
		return l.due(), stepRenew
	default:
		return l.expires(), stepExpired
	}
}

func (c *Client) do(ctx context.Context, s step) error {
	switch s {
	case stepLogin:
		return c.login(ctx)
	case stepReload:
		if _, err := c.reloadTokenFile(false); err != nil {
			return err
		}
		return c.refused()
	case stepExpired:
		if err := c.refused(); err != nil {
			return err
		}
		return fmt.Errorf("the vault token expired and a static token cannot be replaced: %w", ErrUnavailable)
	}
	return nil
}

// refused returns the error Healthy reports while Vault refuses a token the client cannot replace
// by itself (a static token, or a token file not rewritten yet), or nil if Vault did not refuse it.
func (c *Client) refused() error {
	c.mu.Lock()
	invalid := c.lease.invalid
	c.mu.Unlock()
	switch {
	case !invalid:
		return nil
	case c.auth.Method == MethodTokenFile:
		return fmt.Errorf("vault refused the token in %s (revoked or expired?); waiting for a new one: %w", c.auth.TokenFile, ErrUnavailable)
	default:
		return fmt.Errorf("vault refused the token (revoked or expired?) and a static token cannot be replaced: %w", ErrUnavailable)
	}
}

// recoverToken runs after a request got a 403 with the token used. It reports whether a different
// token is now in place, so that the request is worth one more try: a token file is read again; a
// client that signs in checks its token and signs in again if Vault refused it; a static token that
// Vault refused is reported through Healthy. The checks that cost a request run at most once per
// RetryMin: a policy that forbids a path does not turn every request into two.
func (c *Client) recoverToken(ctx context.Context, used Secret) bool {
	if c.auth.Method == MethodTokenFile {
		if changed, err := c.reloadTokenFile(true); err == nil && (changed || Secret(c.api.Token()) != used) {
			return true
		}
	}
	c.upkeep.Lock()
	defer c.upkeep.Unlock()
	if Secret(c.api.Token()) != used {
		return true // replaced meanwhile
	}
	c.mu.Lock()
	now := c.now()
	recent := !c.lastCheck.IsZero() && now.Sub(c.lastCheck) < c.retryMin
	if !recent {
		c.lastCheck = now
	}
	c.mu.Unlock()
	if recent {
		return false
	}
	if err := c.verify(ctx); err != nil {
		if errors.Is(err, ErrForbidden) {
			err = c.refused()
		}
		c.setAuthErr(err)
		return false
	}
	c.mu.Lock()
	invalid := c.lease.invalid
	c.mu.Unlock()
	if !invalid {
		return false // the token works: the 403 was the policy's
	}
	if err := c.login(ctx); err != nil {
		c.setAuthErr(err)
		return false
	}
	c.setAuthErr(nil)
	return true
}

// login signs in with AppRole or Kubernetes and installs the new token.
func (c *Client) login(ctx context.Context) error {
	var (
		sec *api.Secret
		err error
	)
	path := "auth/" + c.auth.MountPath + "/login"
	switch c.auth.Method {
	case MethodAppRole:
		sec, err = c.loginAppRole(ctx)
	case MethodKubernetes:
		sec, err = c.loginKubernetes(ctx)
	default:
		return fmt.Errorf("vault auth method %s cannot sign in again", c.auth.Method)
	}
	if err != nil {
		return c.fail(ctx, "signing in to vault", path, err)
	}
	if sec == nil || sec.Auth == nil || sec.Auth.ClientToken == "" {
		return fmt.Errorf("signing in to vault at %s: the answer holds no token", path)
	}
	a := sec.Auth
	l := lease{
		token:     Secret(a.ClientToken),
		obtained:  c.now(),
		ttl:       time.Duration(a.LeaseDuration) * time.Second,
		noExpiry:  a.LeaseDuration == 0,
		renewable: a.Renewable,
		increment: a.LeaseDuration,
	}
	c.mu.Lock()
	c.lease = l
	c.remember(l.token)
	c.mu.Unlock()
	c.api.SetToken(string(l.token))
	c.noteTokenChanged()
	c.log.Info("signed in to vault", "addr", c.addr, "method", c.auth.Method, "ttl", l.ttl, "renewable", l.renewable, "policies", a.Policies)
	return nil
}

// unauthenticated returns a client without a token, for sign-ins and unwrapping.
func (c *Client) unauthenticated() (*api.Client, error) {
	lc, err := c.api.Clone()
	if err != nil {
		return nil, fmt.Errorf("cloning the vault client: %w", err)
	}
	lc.ClearToken()
	return lc, nil
}

func (c *Client) loginAppRole(ctx context.Context) (*api.Secret, error) {
	roleID := c.auth.RoleID
	if c.auth.RoleIDFile != "" {
		v, err := readCredentialFile(c.auth.RoleIDFile, "approle role id")
		if err != nil {
			return nil, err
		}
		roleID = v
	}
	secretID, err := c.appRoleSecretID(ctx)
	if err != nil {
		return nil, err
	}
	a, err := approle.NewAppRoleAuth(roleID, &approle.SecretID{FromString: string(secretID)}, approle.WithMountPath(c.auth.MountPath))
	if err != nil {
		return nil, fmt.Errorf("setting up approle sign-in: %w", err)
	}
	lc, err := c.unauthenticated()
	if err != nil {
		return nil, err
	}
	return a.Login(ctx, lc)
}

// appRoleSecretID reads the secret id file, unwrapping it when it holds a wrapping token that was
// not unwrapped before.
func (c *Client) appRoleSecretID(ctx context.Context) (Secret, error) {
	v, err := readCredentialFile(c.auth.SecretIDFile, "approle secret id")
	if err != nil {
		return "", err
	}
	c.mu.Lock()
	c.remember(Secret(v))
	if !c.auth.SecretIDWrapped {
		c.mu.Unlock()
		return Secret(v), nil
	}
	if c.wrapped == Secret(v) && c.secretID != "" {
		defer c.mu.Unlock()
		return c.secretID, nil
	}
	c.mu.Unlock()

	lc, err := c.unauthenticated()
	if err != nil {
		return "", err
	}
	lc.SetToken(v)
	sec, err := lc.Logical().UnwrapWithContext(ctx, "")
	if err != nil {
		return "", fmt.Errorf("unwrapping the secret id in %s: %w", c.auth.SecretIDFile, classify(ctx, err, c.scrub))
	}
	var sid string
	if sec != nil {
		sid, _ = sec.Data["secret_id"].(string)
	}
	if sid == "" {
		return "", fmt.Errorf("unwrapping the secret id in %s: the wrapped response holds no secret_id", c.auth.SecretIDFile)
	}
	c.mu.Lock()
	c.wrapped, c.secretID = Secret(v), Secret(sid)
	c.remember(c.secretID)
	c.mu.Unlock()
	c.log.Info("unwrapped the approle secret id", "file", c.auth.SecretIDFile)
	return Secret(sid), nil
}

func (c *Client) loginKubernetes(ctx context.Context) (*api.Secret, error) {
	jwt, err := readCredentialFile(c.auth.ServiceAccountTokenFile, "kubernetes service account token")
	if err != nil {
		return nil, err
	}
	c.mu.Lock()
	c.remember(Secret(jwt))
	c.mu.Unlock()
	a, err := kubernetes.NewKubernetesAuth(c.auth.Role, kubernetes.WithServiceAccountToken(jwt), kubernetes.WithMountPath(c.auth.MountPath))
	if err != nil {
		return nil, fmt.Errorf("setting up kubernetes sign-in: %w", err)
	}
	lc, err := c.unauthenticated()
	if err != nil {
		return nil, err
	}
	return a.Login(ctx, lc)
}

func readCredentialFile(path, what string) (string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("reading the %s: %w", what, err)
	}
	v := strings.TrimSpace(string(b))
	if v == "" {
		return "", fmt.Errorf("reading the %s: %s is empty", what, path)
	}
	return v, nil
}

// renew keeps the token renewed from the moment its first renewal is due, with vault/api's
// LifetimeWatcher: it renews at once, then again when two thirds of each new lease have passed
// (with jitter), and stops when renewals no longer extend the token (the max TTL is near), when
// Vault refuses a renewal, or when the token changed under it (a new sign-in, a new token file, a
// 403 that recoverToken acted on). Then it returns, and Run plans the next step: sign in again for
// a method that can, or report the static token. A renewal cut short by the max TTL marks the lease
// final, as does the watcher stopping on its own.
func (c *Client) renew(ctx context.Context) error {
	// A change before now is in the lease read below.
	select {
	case <-c.tokenChanged:
	default:
	}
	c.mu.Lock()
	l := c.lease
	c.mu.Unlock()
	left := int(l.expires().Sub(c.now()) / time.Second)
	if left < 1 {
		left = 1
	}
	w, err := c.api.NewLifetimeWatcher(&api.LifetimeWatcherInput{
		Secret:        &api.Secret{Auth: &api.SecretAuth{ClientToken: string(l.token), LeaseDuration: left, Renewable: true}},
		Increment:     l.increment,
		RenewBehavior: api.RenewBehaviorErrorOnErrors,
	})
	if err != nil {
		return fmt.Errorf("renewing the vault token: %w", err)
	}
	go w.Start()
	defer w.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-c.tokenChanged:
			return nil
		case r := <-w.RenewCh():
			if r.Secret == nil || r.Secret.Auth == nil {
				continue
			}
			if !c.renewed(l.token, l.increment, r.Secret.Auth) {
				return nil
			}
		case err := <-w.DoneCh():
			if err == nil || errors.Is(err, api.ErrLifetimeWatcherNotRenewable) {
				// Renewals stopped extending the token, or Vault says it cannot be renewed.
				c.mu.Lock()
				if c.lease.token == l.token {
					c.lease.final = true
				}
				c.mu.Unlock()
				return nil
			}
			return c.renewFailed(ctx, err)
		}
	}
}

// renewed records a renewal of token and reports whether renewing should go on: not once the
// grant fell short of the increment (the max TTL is near) or the token was replaced.
func (c *Client) renewed(token Secret, inc int, a *api.SecretAuth) bool {
	ttl := time.Duration(a.LeaseDuration) * time.Second
	c.mu.Lock()
	if c.lease.token != token {
		c.mu.Unlock()
		return false
	}
	c.lease.obtained = c.now()
	c.lease.ttl = ttl
	c.lease.renewable = a.Renewable
	c.lease.final = a.LeaseDuration < inc || !a.Renewable
	final := c.lease.final
	c.mu.Unlock()
	c.log.Debug("renewed the vault token", "ttl", ttl, "final", final)
	return !final
}

// renewFailed handles a renewal Vault refused or did not answer.
func (c *Client) renewFailed(ctx context.Context, err error) error {
	err = c.fail(ctx, "renewing the vault token", "auth/token/renew-self", err)
	if c.auth.Method == MethodToken {
		if errors.Is(err, ErrForbidden) {
			c.invalidate()
		}
		return err
	}
	// Vault refuses a renewal past the max TTL with a 500, and a revoked token with a 403:
	// either way a new sign-in is the way forward, and Run retries it with the backoff if
	// Vault is down.
	c.mu.Lock()
	c.lease.final = true
	if errors.Is(err, ErrForbidden) {
		c.lease.invalid = true
	}
	c.mu.Unlock()
	c.log.Info("cannot renew the vault token; signing in again", "method", c.auth.Method, "err", err)
	return nil
}

// noteTokenChanged wakes a renewal in progress: the token it renews was replaced or refused.
func (c *Client) noteTokenChanged() {
	select {
	case c.tokenChanged <- struct{}{}:
	default:
	}
}

func (c *Client) invalidate() {
	c.mu.Lock()
	c.lease.invalid = true
	c.mu.Unlock()
	c.noteTokenChanged()
}

// verify looks the token up: it learns the TTL of a static token, and finds out whether a request's
// 403 meant that the token is gone.
func (c *Client) verify(ctx context.Context) error {
	sec, err := c.api.Auth().Token().LookupSelfWithContext(ctx)
	if err != nil {
		err = c.fail(ctx, "looking up the vault token", "auth/token/lookup-self", err)
		if errors.Is(err, ErrForbidden) {
			c.invalidate()
			if c.auth.Method == MethodAppRole || c.auth.Method == MethodKubernetes {
				c.log.Info("vault refused the token; signing in again", "method", c.auth.Method)
				return nil
			}
		}
		return err
	}
	if sec == nil {
		return errors.New("looking up the vault token: empty answer")
	}
	ttl, err := sec.TokenTTL()
	if err != nil {
		return fmt.Errorf("looking up the vault token: %w", err)
	}
	renewable, _ := sec.TokenIsRenewable()
	creation := int(ttl / time.Second)
	if n, ok := sec.Data["creation_ttl"].(json.Number); ok {
		if v, err := n.Int64(); err == nil && v > 0 {
			creation = int(v)
		}
	}
	c.mu.Lock()
	l := &c.lease
	l.obtained, l.ttl, l.noExpiry, l.renewable, l.invalid = c.now(), ttl, ttl == 0, renewable, false
	if l.increment == 0 {
		l.increment = creation
	}
	c.mu.Unlock()
	return nil
}

// reloadTokenFile reads the token file if it changed since it was last read (or always, with
// force), and reports whether the token changed. A change is a different file (Vault Agent renames
// a new file into place), modification time or size; a rewrite in place that keeps all three is
// found by the re-read after a 403.
func (c *Client) reloadTokenFile(force bool) (bool, error) {
	path := c.auth.TokenFile
	f, err := os.Open(path)
	if err != nil {
		return false, fmt.Errorf("reading the vault token file: %w", err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return false, fmt.Errorf("reading the vault token file: %w", err)
	}
	c.mu.Lock()
	c.lastPoll = c.now()
	prev := c.fileInfo
	same := prev != nil && os.SameFile(prev, fi) && fi.ModTime().Equal(prev.ModTime()) && fi.Size() == prev.Size() && c.lease.token != ""
	c.mu.Unlock()
	if same && !force {
		return false, nil
	}
	b, err := io.ReadAll(io.LimitReader(f, 1<<16))
	if err != nil {
		return false, fmt.Errorf("reading the vault token file: %w", err)
	}
	tok := Secret(strings.TrimSpace(string(b)))
	if tok == "" {
		return false, fmt.Errorf("reading the vault token file: %s is empty", path)
	}
	c.mu.Lock()
	changed := tok != c.lease.token
	c.fileInfo = fi
	if changed {
		c.lease = lease{token: tok, noExpiry: true}
		c.remember(tok)
	}
	c.mu.Unlock()
	if changed {
		c.api.SetToken(string(tok))
		c.noteTokenChanged()
		c.setAuthErr(nil)
		c.log.Info("read a new vault token from the token file", "file", path)
	}
	return changed, nil
}
