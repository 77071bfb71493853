// Package vault is Postern's client of HashiCorp Vault: it signs in, keeps its token alive, and reads
// and writes KV version 2 secrets with check-and-set. It knows nothing of mail or projects.
//
//  1. New starts from the standard environment (VAULT_ADDR, VAULT_CACERT, VAULT_CAPATH,
//     VAULT_NAMESPACE, VAULT_TOKEN, VAULT_CLIENT_TIMEOUT, ...), lets Options override it, and signs in
//     with the configured method: a static token, a token file that Vault Agent keeps fresh, AppRole
//     (the secret id optionally response-wrapped) or Kubernetes. While Vault cannot be reached New
//     keeps trying until its context ends; a refusal (a wrong secret id, a missing role) is returned
//     at once.
//  2. Run keeps the token alive until its context ends: when two thirds of its TTL have passed it
//     hands the token to vault/api's LifetimeWatcher, which renews it and keeps renewing it; it
//     signs in again when renewals stop extending it (the max TTL) or Vault refuses it (revoked),
//     and re-reads a token file when the file changes. Every retry waits on one backoff: 1 s
//     doubling to 1 min, jittered. Healthy reports the last failure until something succeeds
//     again. What the watcher does not do is done around it: it answers a refused renewal
//     ("permission denied", a revoked token) by waiting out the lease in silence, so a 403 on any
//     request wakes the renewal and the token is checked and replaced at once; it tells nothing
//     of a token replaced under it, so a new sign-in or token file stops it; and its first
//     renewal is immediate, so it is started only when a renewal is due.
//  3. Read, Write, List, Metadata, Destroy and Delete speak KV v2 under Options.Mount. Write is a
//     check-and-set when asked; a lost race is ErrConflict. Errors say what was done to which path
//     and wrap ErrNotFound, ErrConflict, ErrForbidden or ErrUnavailable where they apply. After a
//     403 the client re-reads its token file, or asks Vault whether its token still works and signs
//     in again if not, and tries the request once more with the new token.
//  4. Stats counts every HTTP request the client made, so tests can prove what a code path costs.
//
// Tokens, secret ids, wrapping tokens and service-account JWTs never reach a log or an error: they
// are held as Secret values, and Vault's own messages are scrubbed of them.
package vault

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/vault/api"
)

// Defaults for the zero values of Options and Auth.
const (
	DefaultMount                   = "secret"
	DefaultServiceAccountTokenFile = "/var/run/secrets/kubernetes.io/serviceaccount/token"
	DefaultRetryMin                = time.Second
	DefaultRetryMax                = time.Minute
	DefaultPollInterval            = 5 * time.Second
)

// idleConnsPerHost is how many idle connections to Vault the client keeps for reuse.
const idleConnsPerHost = 16

// Method is how the client signs in to Vault.
type Method string

const (
	// MethodToken uses a fixed token (Auth.Token, or VAULT_TOKEN). It is renewed while renewable;
	// once it expires or is revoked nothing can replace it and Healthy says so.
	MethodToken Method = "token"
	// MethodTokenFile reads the token from a file that Vault Agent (or another sidecar) keeps
	// fresh. The file is re-read when it changes and after any 403; the agent renews the token.
	MethodTokenFile Method = "token_file"
	// MethodAppRole signs in with a role id and a secret id.
	MethodAppRole Method = "approle"
	// MethodKubernetes signs in with the pod's service-account token.
	MethodKubernetes Method = "kubernetes"
)

// Auth says how to sign in. Only the fields of the chosen Method are used.
type Auth struct {
	// Method picks the sign-in method; empty means MethodToken.
	Method Method

	// Token is the MethodToken token; empty means VAULT_TOKEN.
	Token Secret

	// TokenFile is the MethodTokenFile file.
	TokenFile string
	// PollInterval is how often Run looks at TokenFile's modification time; zero means 5 s.
	PollInterval time.Duration

	// MountPath is where the AppRole or Kubernetes auth method is mounted; empty means "approle"
	// or "kubernetes".
	MountPath string

	// RoleID is the AppRole role id; RoleIDFile, when set, is a file holding it instead.
	RoleID     string
	RoleIDFile string
	// SecretIDFile holds the AppRole secret id. It is read again at every sign-in, so a secret id
	// rotated by the orchestrator is picked up.
	SecretIDFile string
	// SecretIDWrapped says SecretIDFile holds a response-wrapping token whose unwrapped response
	// carries the secret id (`vault write -wrap-ttl=... -f auth/approle/role/NAME/secret-id`). The
	// wrapping token is unwrapped once; the secret id is kept in memory for later sign-ins until the
	// file changes.
	SecretIDWrapped bool

	// Role is the Kubernetes auth role.
	Role string
	// ServiceAccountTokenFile holds the pod's service-account JWT, read at every sign-in (the
	// kubelet rotates it); empty means DefaultServiceAccountTokenFile.
	ServiceAccountTokenFile string
}

// Options configure a Client. Empty fields keep what the environment says, then the defaults.
type Options struct {
	// Address is Vault's URL, e.g. "https://vault.example:8200" (VAULT_ADDR).
	Address string
	// CACert is a PEM file of CA certificates to trust (VAULT_CACERT); CAPath a directory of them
	// (VAULT_CAPATH).
	CACert string
	CAPath string
	// Namespace is the Vault Enterprise namespace (VAULT_NAMESPACE).
	Namespace string
	// Mount is where the KV v2 engine is mounted; empty means "secret".
	Mount string
	// Timeout bounds each HTTP request (VAULT_CLIENT_TIMEOUT, else 60 s).
	Timeout time.Duration
	// Auth is how to sign in.
	Auth Auth
	// RetryMin and RetryMax bound the backoff between retries; zero means 1 s and 1 min.
	RetryMin time.Duration
	RetryMax time.Duration
	// Logger receives the client's log; nil discards it.
	Logger *slog.Logger
	// Now is the clock that token lifetimes are measured by; nil means time.Now. Waits use real
	// timers.
	Now func() time.Time
}

// Client talks to one Vault server. It is safe for concurrent use.
type Client struct {
	api      *api.Client
	addr     string
	mount    string
	auth     Auth
	log      *slog.Logger
	now      func() time.Time
	retryMin time.Duration
	retryMax time.Duration
	stats    *counters
	upkeep   sync.Mutex // one token upkeep at a time: Run's steps and recoverToken
	// tokenChanged wakes a renewal in progress when its token was replaced or refused.
	tokenChanged chan struct{}

	mu        sync.Mutex
	lease     lease
	fileInfo  os.FileInfo // token file: the version read last
	lastPoll  time.Time
	secretID  Secret    // AppRole with a wrapped secret id: the unwrapped secret id
	wrapped   Secret    // ... and the wrapping token it came from
	known     []Secret  // recent secrets, scrubbed from Vault's messages
	lastCheck time.Time // when recoverToken last asked Vault about the token
	authErr   error     // the last failure of sign-in or renewal
	reqErr    error     // the last request that found Vault unavailable
}

// lease is what the client knows of its token.
type lease struct {
	token     Secret
	obtained  time.Time
	ttl       time.Duration
	noExpiry  bool // Vault said TTL 0: the token never expires (a root or periodic-less token)
	renewable bool
	increment int  // seconds each renewal asks for: the TTL first granted
	final     bool // the last renewal was cut short by the max TTL: sign in again before it ends
	invalid   bool // Vault refused the token
}

func (l lease) expires() time.Time { return l.obtained.Add(l.ttl) }
func (l lease) due() time.Time     { return l.obtained.Add(l.ttl * 2 / 3) }

// New configures a client and signs in. See the package documentation for what it retries.
func New(ctx context.Context, o Options) (*Client, error) {
	if err := o.validate(); err != nil {
		return nil, err
	}
	cfg := api.DefaultConfig()
	if cfg.Error != nil {
		return nil, fmt.Errorf("reading the vault environment: %w", cfg.Error)
	}
	if o.Address != "" {
		cfg.Address = o.Address
		cfg.AgentAddress = ""
	}
	if o.CACert != "" || o.CAPath != "" {
		if err := cfg.ConfigureTLS(&api.TLSConfig{CACert: o.CACert, CAPath: o.CAPath}); err != nil {
			return nil, fmt.Errorf("configuring vault TLS: %w", err)
		}
	}
	if o.Timeout > 0 {
		cfg.Timeout = o.Timeout
	}
	// Retries are this package's business, paced by its one backoff.
	cfg.MaxRetries = 0
	cfg.CloneHeaders = true
	c := &Client{
		auth:     o.Auth,
		mount:    strings.Trim(o.Mount, "/"),
		log:      o.Logger,
		now:      o.Now,
		retryMin: o.RetryMin,
		retryMax: o.RetryMax,
		stats:    &counters{},

		tokenChanged: make(chan struct{}, 1),
	}
	c.setDefaults()
	if tr, ok := cfg.HttpClient.Transport.(*http.Transport); ok {
		// The store reads up to eight records at a time in a full scan; without idle connections
		// to spare, each of those reads would open a new connection (and TLS session).
		tr.MaxIdleConnsPerHost = max(tr.MaxIdleConnsPerHost, idleConnsPerHost)
	}
	cfg.HttpClient.Transport = &countingTransport{next: cfg.HttpClient.Transport, mount: c.mount, c: c.stats}
	ac, err := api.NewClient(cfg)
	if err != nil {
		return nil, fmt.Errorf("configuring the vault client: %w", err)
	}
	if o.Namespace != "" {
		ac.SetNamespace(o.Namespace)
	}
	c.api = ac
	c.addr = ac.Address()
	if c.auth.Method == MethodToken && c.auth.Token == "" {
		c.auth.Token = Secret(ac.Token())
	}
	ac.ClearToken()
	if c.auth.Method == MethodToken && c.auth.Token == "" {
		return nil, errors.New("vault auth method token: no token given and VAULT_TOKEN is empty")
	}
	if err := c.start(ctx); err != nil {
		return nil, err
	}
	return c, nil
}

func (o Options) validate() error {
	var errs []error
	a := o.Auth
	need := func(v, what string) {
		if v == "" {
			errs = append(errs, fmt.Errorf("vault auth method %s: %s is required", a.Method, what))
		}
	}
	switch a.Method {
	case "", MethodToken:
	case MethodTokenFile:
		need(a.TokenFile, "a token file")
	case MethodAppRole:
		if a.RoleID == "" && a.RoleIDFile == "" {
			errs = append(errs, errors.New("vault auth method approle: a role id or role id file is required"))
		}
		if a.RoleID != "" && a.RoleIDFile != "" {
			errs = append(errs, errors.New("vault auth method approle: give a role id or a role id file, not both"))
		}
		need(a.SecretIDFile, "a secret id file")
	case MethodKubernetes:
		need(a.Role, "a role")
	default:
		errs = append(errs, fmt.Errorf("vault auth method %q: use token, token_file, approle or kubernetes", a.Method))
	}
	if o.RetryMin < 0 || o.RetryMax < 0 || (o.RetryMax > 0 && o.RetryMin > o.RetryMax) {
		errs = append(errs, fmt.Errorf("vault retry bounds %v..%v are not a range", o.RetryMin, o.RetryMax))
	}
	if o.Timeout < 0 || a.PollInterval < 0 {
		errs = append(errs, errors.New("vault timeout and poll interval must not be negative"))
	}
	return errors.Join(errs...)
}

func (c *Client) setDefaults() {
	if c.auth.Method == "" {
		c.auth.Method = MethodToken
	}
	if c.mount == "" {
		c.mount = DefaultMount
	}
	if c.log == nil {
		c.log = slog.New(slog.DiscardHandler)
	}
	if c.now == nil {
		c.now = time.Now
	}
	if c.retryMin == 0 {
		c.retryMin = DefaultRetryMin
	}
	if c.retryMax == 0 {
		c.retryMax = max(DefaultRetryMax, c.retryMin)
	}
	if c.auth.PollInterval == 0 {
		c.auth.PollInterval = DefaultPollInterval
	}
	switch c.auth.Method {
	case MethodAppRole:
		if c.auth.MountPath == "" {
			c.auth.MountPath = "approle"
		}
	case MethodKubernetes:
		if c.auth.MountPath == "" {
			c.auth.MountPath = "kubernetes"
		}
		if c.auth.ServiceAccountTokenFile == "" {
			c.auth.ServiceAccountTokenFile = DefaultServiceAccountTokenFile
		}
	}
	c.auth.MountPath = strings.Trim(c.auth.MountPath, "/")
}

// start signs in for New, retrying while Vault is unavailable or a credential file is not there yet.
func (c *Client) start(ctx context.Context) error {
	b := c.newBackoff()
	for {
		err := c.signIn(ctx)
		if err == nil {
			return nil
		}
		if ctx.Err() != nil || !(errors.Is(err, ErrUnavailable) || errors.Is(err, fs.ErrNotExist)) {
			return err
		}
		d := b.next()
		c.log.Warn("cannot sign in to vault yet; retrying", "addr", c.addr, "method", c.auth.Method, "err", err, "retry_in", d)
		if !sleep(ctx, d) {
			return err
		}
	}
}

// signIn obtains the first token: it reads it, checks it, or logs in, depending on the method.
func (c *Client) signIn(ctx context.Context) error {
	switch c.auth.Method {
	case MethodTokenFile:
		_, err := c.reloadTokenFile(true)
		return err
	case MethodToken:
		c.api.SetToken(string(c.auth.Token))
		c.mu.Lock()
		c.lease = lease{token: c.auth.Token}
		c.remember(c.auth.Token)
		c.mu.Unlock()
		return c.verify(ctx)
	default:
		return c.login(ctx)
	}
}

// Address is the Vault server's URL.
func (c *Client) Address() string { return c.addr }

// Mount is where the KV v2 engine is mounted.
func (c *Client) Mount() string { return c.mount }

// Healthy returns nil while the client holds a working token and its last request reached Vault;
// otherwise the last failure (for a readiness probe).
func (c *Client) Healthy() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.authErr != nil {
		return c.authErr
	}
	return c.reqErr
}

func (c *Client) setAuthErr(err error) {
	c.mu.Lock()
	c.authErr = err
	c.mu.Unlock()
}

func (c *Client) setReqErr(err error) {
	c.mu.Lock()
	c.reqErr = err
	c.mu.Unlock()
}

// remember adds s to the secrets scrubbed from Vault's messages. The caller holds mu.
func (c *Client) remember(s Secret) {
	if s == "" {
		return
	}
	for _, k := range c.known {
		if k == s {
			return
		}
	}
	c.known = append(c.known, s)
	if len(c.known) > 8 {
		c.known = c.known[1:]
	}
}

// scrub removes every remembered secret from s.
func (c *Client) scrub(s string) string {
	c.mu.Lock()
	known := c.known
	c.mu.Unlock()
	for _, k := range known {
		if len(k) >= 4 {
			s = strings.ReplaceAll(s, string(k), "[redacted]")
		}
	}
	return s
}

// backoff is the one source of waits between retries: doubling from min to max, each wait drawn
// from 75%..125% of the step and kept within [min, max].
type backoff struct {
	min, max time.Duration
	step     time.Duration
}

func (c *Client) newBackoff() *backoff { return &backoff{min: c.retryMin, max: c.retryMax} }

func (b *backoff) next() time.Duration {
	if b.step == 0 {
		b.step = b.min
	} else if b.step < b.max {
		b.step = min(b.step*2, b.max)
	}
	d := b.step*3/4 + time.Duration(rand.Int64N(int64(b.step/2)+1))
	return min(max(d, b.min), b.max)
}

func (b *backoff) reset() { b.step = 0 }

// sleep waits d or until ctx ends; it reports whether the wait ran to its end.
func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}
