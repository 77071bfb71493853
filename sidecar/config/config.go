// Package config owns Postern's configuration file: its schema, strict loading and validation.
//
//  1. Load reads a YAML file; Parse decodes one. Unknown keys are errors naming their line, so a
//     misspelt key never silently falls back to a default.
//  2. Every key left out takes its default (see Default). A key that sets a part's option takes
//     that part's own default (upstream.DefaultDialTimeout, smtpd.DefaultRateWait,
//     token.DefaultMargin, ...), so that each default is defined once, where the zero option
//     documents it; a few defaults are derived after decoding:
//     instance and upstream.helo_name from the host name, transport from the listeners, and the file
//     store when no store is configured.
//  3. Validate returns every problem at once, so `postern serve --check-config` can list them all.
//
// An annotated example of every key is in contrib/postern.yaml (installed as /etc/postern/postern.yaml
// by the Debian package).
package config

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"net/url"
	"os"
	"os/user"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/postern/postern/sidecar/directory"
	"github.com/postern/postern/sidecar/health"
	"github.com/postern/postern/sidecar/milter"
	"github.com/postern/postern/sidecar/signin"
	"github.com/postern/postern/sidecar/smtpd"
	"github.com/postern/postern/sidecar/token"
	"github.com/postern/postern/sidecar/upstream"
	"go.yaml.in/yaml/v3"
)

// DefaultPath is where Postern looks for its configuration file.
const DefaultPath = "/etc/postern/postern.yaml"

// Defaults of the file store.
const (
	DefaultStorePath    = "/var/lib/postern/store.db"
	DefaultStoreKeyFile = "/var/lib/postern/store.key"
)

// Defaults of the Vault store.
const (
	DefaultVaultMount             = "secret"
	DefaultVaultPrefix            = "postern"
	DefaultVaultAppRoleMount      = "approle"
	DefaultVaultKubernetesMount   = "kubernetes"
	DefaultVaultKubernetesJWTFile = "/var/run/secrets/kubernetes.io/serviceaccount/token"
)

// Defaults of the sign-in pages.
const (
	DefaultSignInKeyFile = "/var/lib/postern/signin.key"
	DefaultSignInLinkTTL = 72 * time.Hour
	// MaxSignInLinkTTL bounds signin.link_ttl: a link that lives longer is a standing credential.
	MaxSignInLinkTTL = signin.MaxLinkTTL
)

// DefaultTransportService is the master.cf service name in derived transports.
const DefaultTransportService = "postern"

const (
	instanceWhenNoHostname = "postern"
	maxSocketMode          = 0o777
	worldWritable          = 0o002 // connecting to a unix socket needs write permission
)

// Config is the whole configuration file.
type Config struct {
	// Instance names this Postern in logs and in the token records it writes (refreshed_by).
	// Default: the host name.
	Instance string `yaml:"instance"`
	// Log says how Postern logs.
	Log Log `yaml:"log"`
	// Listen says where Postern's servers listen.
	Listen Listen `yaml:"listen"`
	// Transport is what the socketmap answers for the senders Postern serves: a Postfix
	// transport:nexthop. Default: "postern:unix:<listen.lmtp>" when LMTP is on, otherwise
	// "postern:[host]:port" of listen.smtp. The transport name must match the master.cf service.
	Transport string `yaml:"transport"`
	// Store says where projects and tokens live.
	Store Store `yaml:"store"`
	// Upstream holds the settings of connections to the projects' mail servers.
	Upstream Upstream `yaml:"upstream"`
	// Limits apply to every message, whatever its project.
	Limits Limits `yaml:"limits"`
	// SMTPD holds the timeouts of the LMTP and SMTP server Postfix delivers to.
	SMTPD SMTPD `yaml:"smtpd"`
	// Milter holds the timeouts and limits of the milter.
	Milter Milter `yaml:"milter"`
	// SignIn configures the pages where a mailbox owner signs an OAuth project's mailbox in.
	SignIn SignIn `yaml:"signin"`
	// API configures the project API on the admin listener.
	API API `yaml:"api"`
	// Admin configures who may read the admin listener's pages that name projects.
	Admin Admin `yaml:"admin"`
	// Tokens configures the OAuth token broker.
	Tokens Tokens `yaml:"tokens"`
	// OAuth configures Postern's requests to identity providers.
	OAuth OAuth `yaml:"oauth"`
	// CredentialProviders declares out-of-process credential providers (package plugin) by name.
	// A project with auth type "plugin" names one of them; only programs declared here are run.
	CredentialProviders map[string]CredentialProvider `yaml:"credential_providers"`
	// ReloadInterval is how often the projects are read again from the store. Default 10s.
	ReloadInterval time.Duration `yaml:"reload_interval"`
	// Debug holds what helps find out where Postern spends its time.
	Debug Debug `yaml:"debug"`
	// Postfix describes the local Postfix that delivers to Postern.
	Postfix Postfix `yaml:"postfix"`
	// Metrics shapes what /metrics exposes.
	Metrics Metrics `yaml:"metrics"`
	// Notify says whom Postern tells when a project starts failing, needs a sign-in, or recovers.
	Notify Notify `yaml:"notify"`
}

// Metrics shapes what /metrics exposes.
type Metrics struct {
	// ProjectLabel keeps the project label on the per-project metrics (postern_deliveries_total,
	// postern_project_health and the older per-project series). Each project costs about a dozen
	// series: 10,000 projects about 120,000. false sums over projects (postern_project_health then
	// counts projects per state), so the series do not grow with the projects. Default true.
	ProjectLabel bool `yaml:"project_label"`
}

// Notify says whom Postern tells when a project starts failing, needs a sign-in, or recovers.
type Notify struct {
	// Webhook posts each event as JSON.
	Webhook Webhook `yaml:"webhook"`
}

// Webhook posts each health event as JSON, signed with HMAC-SHA256 (header
// X-Postern-Signature: sha256=<hex of the body's HMAC>), retried with backoff.
type Webhook struct {
	// URL receives the events (POST). Empty: no webhook.
	URL string `yaml:"url"`
	// SecretFile holds the key of the signature. Required with url.
	SecretFile string `yaml:"secret_file"`
	// Timeout bounds one POST. Default 10s.
	Timeout time.Duration `yaml:"timeout"`
	// RetryFor is how long an event is retried (with backoff) before it is dropped and logged.
	// Default 1h.
	RetryFor time.Duration `yaml:"retry_for"`
}

// Postfix describes the local Postfix: where `postern project remove` asks it for the mail it holds,
// and how long it holds mail, which is how long a removed project keeps answering for its senders.
type Postfix struct {
	// ConfigDirectory is Postfix's configuration directory (postqueue -c). Empty means Postfix's
	// own default, /etc/postfix.
	ConfigDirectory string `yaml:"config_directory"`
	// Postqueue is the postqueue command. Default "postqueue", looked up in PATH, /usr/sbin and
	// /usr/local/sbin.
	Postqueue string `yaml:"postqueue"`
	// QueueLifetime is Postfix's maximal_queue_lifetime. Default 120h (5 days, Postfix's default).
	QueueLifetime time.Duration `yaml:"queue_lifetime"`
	// BackoffTime is Postfix's maximal_backoff_time. Default 4000s (Postfix's default).
	BackoffTime time.Duration `yaml:"backoff_time"`
}

// RemovedHold is how long a removed project keeps answering for its senders with a temporary
// failure: by then Postfix has made its last attempt at every message it held for the project.
func (p Postfix) RemovedHold() time.Duration { return p.QueueLifetime + p.BackoffTime }

// Debug holds what helps find out where Postern spends its time.
type Debug struct {
	// Pprof serves Go's profiler (net/http/pprof) at /debug/pprof/ on the admin listener, for
	// example `go tool pprof http://127.0.0.1:8025/debug/pprof/profile?seconds=30`. Off by
	// default: keep it off wherever the admin listener is reachable through a proxy.
	Pprof bool `yaml:"pprof"`
}

// Log says how Postern logs.
type Log struct {
	// Level is debug, info, warn or error. Default info.
	Level string `yaml:"level"`
	// Format is text or json. Default text.
	Format string `yaml:"format"`
}

// Listen says where Postern's servers listen. An empty address turns a server off. TCP addresses
// must be on loopback (127.0.0.0/8, ::1 or localhost).
type Listen struct {
	// LMTP is the unix socket Postfix delivers to over LMTP. Default /run/postern/lmtp.sock.
	LMTP string `yaml:"lmtp"`
	// SMTP is a loopback host:port where Postfix delivers over SMTP instead of LMTP, for example
	// 127.0.0.1:10025. Default off.
	SMTP string `yaml:"smtp"`
	// Socketmap is where Postfix asks which senders Postern serves: a unix socket path or a loopback
	// host:port. Default /run/postern/socketmap.sock.
	Socketmap string `yaml:"socketmap"`
	// Milter is where Postfix's smtpd asks the submission-time policy: a unix socket path or a
	// loopback host:port. Default off.
	Milter string `yaml:"milter"`
	// Admin is the host:port of the HTTP admin pages, metrics and health checks. Default
	// 127.0.0.1:8025. Another than a loopback address needs admin.tls and a token (admin.read_token_file
	// or api.token_file).
	Admin string `yaml:"admin"`
	// SignIn, when set, is the host:port of a listener serving the sign-in pages (/signin/...) only,
	// so that those alone face a reverse proxy; they then leave the admin listener. Loopback, or any
	// address with admin.tls, whose certificate it serves too. Default "": the sign-in pages are on
	// the admin listener. Capped by max_connections.admin.
	SignIn string `yaml:"signin"`
	// SocketGroup is the group given to the unix sockets; Postfix's delivery agents and lookup
	// clients must be able to reach them. Default postfix. Empty keeps the process's group.
	SocketGroup string `yaml:"socket_group"`
	// SocketMode is the octal permission of the unix sockets. Default "0660". A mode that lets
	// others write (such as "0666") is refused: connecting needs write permission.
	SocketMode string `yaml:"socket_mode"`
	// MaxConnections caps the connections open at once on each listener.
	MaxConnections MaxConnections `yaml:"max_connections"`
}

// Defaults of MaxConnections. Postfix runs at most default_process_limit (100) delivery agents or
// smtpd processes per service, each with one connection to Postern.
const (
	DefaultMaxConnections      = 200 // lmtp, smtp, socketmap and milter
	DefaultMaxAdminConnections = 100
)

// MaxConnections caps the connections open at once on each listener, so that slow or idle
// connections on one listener cannot take every file descriptor Postern has. A connection over the
// cap waits in the kernel's listen queue, holding none of Postern's descriptors, until another
// closes; Postfix's own timeouts bound that wait (the mail is deferred, or the lookup fails
// temporarily and is tried again). Each must be at least 1.
type MaxConnections struct {
	// LMTP caps listen.lmtp. Default 200.
	LMTP int `yaml:"lmtp"`
	// SMTP caps listen.smtp. Default 200.
	SMTP int `yaml:"smtp"`
	// Socketmap caps listen.socketmap. Default 200.
	Socketmap int `yaml:"socketmap"`
	// Milter caps listen.milter. Default 200.
	Milter int `yaml:"milter"`
	// Admin caps listen.admin. Default 100.
	Admin int `yaml:"admin"`
}

// SocketFileMode returns SocketMode as a file mode. A mode that lets every local user write, and so
// connect, is refused: whoever reaches the LMTP socket sends mail with any project's credentials,
// and whoever reaches the milter or socketmap learns which senders Postern serves.
func (l Listen) SocketFileMode() (fs.FileMode, error) {
	m, err := strconv.ParseUint(strings.TrimPrefix(l.SocketMode, "0o"), 8, 32)
	if err != nil || m > maxSocketMode {
		return 0, fmt.Errorf("listen.socket_mode %q: use an octal mode such as \"0660\"", l.SocketMode)
	}
	if m&worldWritable != 0 {
		return 0, fmt.Errorf("listen.socket_mode %q lets every local user connect to Postern's sockets, and through the LMTP socket send mail with any project's credentials: Postfix reaches them through listen.socket_group, use \"0660\"", l.SocketMode)
	}
	return fs.FileMode(m), nil
}

// Store says where projects and tokens live: exactly one of File and Vault. With neither, the file
// store with its defaults.
type Store struct {
	// File is the embedded encrypted file store, for a single host without Vault.
	File *FileStore `yaml:"file"`
	// Vault is HashiCorp Vault's KV version 2 secrets engine.
	Vault *VaultConfig `yaml:"vault"`
}

// FileStore is the embedded encrypted file store.
type FileStore struct {
	// Path is the data file. Default /var/lib/postern/store.db.
	Path string `yaml:"path"`
	// KeyFile holds the store's 32-byte key, made with the store by `postern init` (mode 0600).
	// Default /var/lib/postern/store.key. Back it up: the store cannot be read without it.
	KeyFile string `yaml:"key_file"`
}

// VaultConfig is the Vault store: projects are read from <mount>/<prefix>/projects/<name>, tokens
// written to <mount>/<prefix>/tokens/<name>.
type VaultConfig struct {
	// Address is Vault's URL, for example https://vault.example.com:8200.
	Address string `yaml:"address"`
	// Mount is the KV v2 mount. Default "secret".
	Mount string `yaml:"mount"`
	// Prefix is the path under the mount. Default "postern".
	Prefix string `yaml:"prefix"`
	// CAFile holds the CA certificates (PEM) that Vault's certificate is checked against.
	// Default: the system's roots.
	CAFile string `yaml:"ca_file"`
	// Auth says how Postern logs in to Vault: exactly one method.
	Auth VaultAuth `yaml:"auth"`
	// Timeout bounds each request to Vault, so that an unresponsive Vault is noticed (readiness
	// turns degraded) while deliveries go on with cached credentials. Default 10s.
	Timeout time.Duration `yaml:"timeout"`
	// FullScanInterval is the longest time before a project record written directly in Vault
	// (not through postern project or the API, which update the index) is noticed. Default 1m.
	// With very many projects it is stretched to twice as long as a full scan takes, so that full
	// scans keep Vault busy at most a third of the time.
	FullScanInterval time.Duration `yaml:"full_scan_interval"`
}

// VaultAuth is the Vault login method: exactly one of its fields.
type VaultAuth struct {
	// TokenFile holds a Vault token, read again whenever it changes.
	TokenFile string `yaml:"token_file"`
	// AppRole logs in with a role id and a secret id.
	AppRole *VaultAppRole `yaml:"approle"`
	// Kubernetes logs in with the pod's service account token.
	Kubernetes *VaultKubernetes `yaml:"kubernetes"`
}

// VaultAppRole is the AppRole login method.
type VaultAppRole struct {
	// RoleID is the role's id (not a secret).
	RoleID string `yaml:"role_id"`
	// SecretIDFile holds the secret id.
	SecretIDFile string `yaml:"secret_id_file"`
	// SecretIDWrapped says SecretIDFile holds a response-wrapping token around the secret id
	// (vault write -wrap-ttl=... -f auth/approle/role/NAME/secret-id); Postern unwraps it once.
	SecretIDWrapped bool `yaml:"secret_id_wrapped"`
	// Mount is the auth method's mount. Default "approle".
	Mount string `yaml:"mount"`
}

// VaultKubernetes is the Kubernetes login method.
type VaultKubernetes struct {
	// Role is the Vault role bound to the service account.
	Role string `yaml:"role"`
	// Mount is the auth method's mount. Default "kubernetes".
	Mount string `yaml:"mount"`
	// TokenFile is the service account token.
	// Default /var/run/secrets/kubernetes.io/serviceaccount/token.
	TokenFile string `yaml:"token_file"`
}

// Upstream holds the settings of connections to the projects' mail servers. Durations are Go
// duration strings ("30s", "5m").
type Upstream struct {
	// HeloName is the name Postern gives in EHLO. Default: the host name.
	HeloName string `yaml:"helo_name"`
	// DialTimeout bounds the TCP connection. Default 30s.
	DialTimeout time.Duration `yaml:"dial_timeout"`
	// GreetingTimeout bounds the wait for the server's greeting. Default 30s.
	GreetingTimeout time.Duration `yaml:"greeting_timeout"`
	// CommandTimeout bounds each command's reply (EHLO, STARTTLS, AUTH, MAIL, RCPT). Default 5m.
	CommandTimeout time.Duration `yaml:"command_timeout"`
	// DataTimeout bounds the reply to the end of a message's data. Default 10m.
	DataTimeout time.Duration `yaml:"data_timeout"`
	// IdleTimeout is how long an unused authenticated connection stays open. Default 60s.
	IdleTimeout time.Duration `yaml:"idle_timeout"`
	// MaxConnWait bounds the wait for a free connection when a project has all of its open.
	// Default 30s.
	MaxConnWait time.Duration `yaml:"max_conn_wait"`
	// DownBackoff is how long a project's upstream is considered down after it could not be
	// reached, before it is tried again; its mail is deferred meanwhile. Default 15s.
	DownBackoff time.Duration `yaml:"down_backoff"`
	// Trace logs every SMTP line to and from every project's upstream, at debug level (so with
	// log.level: debug). AUTH exchanges are logged redacted ("AUTH PLAIN [redacted]"), message
	// data not at all. Default false.
	Trace bool `yaml:"trace"`
	// TraceProjects traces only the upstreams of these projects (by name), as Trace does.
	TraceProjects []string `yaml:"trace_projects"`
}

// Limits apply to every message.
type Limits struct {
	// MaxMessageBytes is the largest message accepted. Default 52428800 (50 MiB).
	MaxMessageBytes int64 `yaml:"max_message_bytes"`
	// MaxRecipients is the most recipients of one message. Default 1000.
	MaxRecipients int `yaml:"max_recipients"`
	// RateWait is how long a message waits for its project's rate limit before it is deferred.
	// Default 30s.
	RateWait time.Duration `yaml:"rate_wait"`
	// Replicas is how many Postern processes share the store. Each enforces floor(limit /
	// replicas), at least 1, of every project's limits (connections, messages per minute,
	// recipients per day), so that together they stay within the mailbox's limits (package
	// limits). Default 1.
	Replicas int `yaml:"replicas"`
	// QuotaPause: after an upstream's quota reply (Exchange SubmissionQuotaExceeded, Gmail 5.4.5,
	// Exchange 5.7.233), the project's mail is deferred until the next multiple of this (the next
	// full hour for 1h). Default 1h.
	QuotaPause time.Duration `yaml:"quota_pause"`
}

// SMTPD holds the timeouts of the LMTP and SMTP server Postfix delivers to (listen.lmtp,
// listen.smtp). A connection that runs out of either is answered 421 4.4.2 and closed; a partial
// command line is never run, and a message cut off is never relayed.
type SMTPD struct {
	// CommandTimeout bounds the wait for each command line, which must arrive whole within it.
	// Default 10m.
	CommandTimeout time.Duration `yaml:"command_timeout"`
	// DataTimeout bounds the data of one message: from the 354 reply to DATA to the final dot, or
	// one BDAT chunk. Default 10m.
	DataTimeout time.Duration `yaml:"data_timeout"`
}

// Milter holds the timeouts and limits of the milter (listen.milter). A connection that breaks one
// is closed, and Postfix applies its milter_default_action to the message in progress.
type Milter struct {
	// IdleTimeout closes a connection on which Postfix sends nothing for this long. Postfix keeps
	// its milter connection for a whole SMTP session, idle while the client sends its message.
	// Default 1h.
	IdleTimeout time.Duration `yaml:"idle_timeout"`
	// PacketTimeout: each packet must arrive whole within this long of its first byte. Default 10s.
	PacketTimeout time.Duration `yaml:"packet_timeout"`
	// MaxHeaderBytes bounds the header fields of one message. Default 1048576 (1 MiB).
	MaxHeaderBytes int `yaml:"max_header_bytes"`
}

// SignIn configures the sign-in pages on the admin listener, where the owner of an OAuth project's
// mailbox signs it in through a link from `postern authorize-link`.
type SignIn struct {
	// KeyFile holds the key that signs sign-in links and the browser's sign-in cookie, created on
	// first use with mode 0600. Every Postern that serves the links, and the host where
	// `postern authorize-link` runs, needs the same file. Default /var/lib/postern/signin.key.
	KeyFile string `yaml:"key_file"`
	// LinkTTL is how long a sign-in link works (each link works once). Default 72h, at most 720h.
	LinkTTL time.Duration `yaml:"link_ttl"`
	// PublicURL is the listener of the sign-in pages (listen.signin, else listen.admin) as the mailbox
	// owner's browser reaches it, usually through a reverse proxy: for example
	// https://postern.example.com. The redirect URI to register at the identity provider is
	// PublicURL + "/signin/callback". Default: http(s)://<listen.signin or listen.admin>.
	PublicURL string `yaml:"public_url"`
}

// API configures the project API on the admin listener: GET, PUT and DELETE
// /api/v1/projects/<name> and POST /api/v1/projects/<name>/enable and /disable, which read and write
// projects in the store as `postern project` does. With the Vault store, Postern's Vault token must
// then be allowed to write projects too (`postern vault-policy --admin`).
type API struct {
	// TokenFile holds the bearer token every request carries (Authorization: Bearer <token>). A
	// missing file is created with a random token and mode 0600; a file readable by group or others
	// is refused. Default "": the API is off and its routes answer 404.
	TokenFile string `yaml:"token_file"`
}

// Admin configures who may read /metrics, /status and /api/v1/projects, which name every project,
// sender and upstream. /healthz and /readyz stay open and name no project.
type Admin struct {
	// ReadTokenFile holds the token that admits reads: "Authorization: Bearer <token>" (for a
	// Prometheus scrape, bearer_token_file or authorization.credentials_file), or in a browser the
	// token as the password of the login prompt, with any user name. api.token_file's token admits
	// reads too. A missing file is created with a random token and mode 0600; a file readable by
	// group or others is refused. Default: read.token next to signin.key_file.
	ReadTokenFile string `yaml:"read_token_file"`
	// TLS serves the admin listener (and listen.signin) over HTTPS.
	TLS AdminTLS `yaml:"tls"`
}

// AdminTLS is the certificate of the admin listener. Both files or neither; the files are read
// again when either changes (checked at each TLS handshake), so a renewed certificate needs no
// restart.
type AdminTLS struct {
	// CertFile is the PEM certificate chain, leaf first. Default "": plain HTTP.
	CertFile string `yaml:"cert_file"`
	// KeyFile is the PEM private key of the certificate.
	KeyFile string `yaml:"key_file"`
}

// On reports whether the admin listener serves TLS.
func (t AdminTLS) On() bool { return t.CertFile != "" && t.KeyFile != "" }

// ReadTokenName is the file name of the default admin.read_token_file, next to signin.key_file.
const ReadTokenName = "read.token"

// SignInURL is the base URL of the sign-in pages: signin.public_url without a trailing slash, or
// http(s)://<listen.signin or listen.admin> when it is empty ("" when both listeners are off too).
func (c *Config) SignInURL() string {
	if u := strings.TrimRight(c.SignIn.PublicURL, "/"); u != "" {
		return u
	}
	addr := c.SignInAddr()
	if addr == "" {
		return ""
	}
	if c.Admin.TLS.On() {
		return "https://" + addr
	}
	return "http://" + addr
}

// SignInAddr is the listener of the sign-in pages: listen.signin, else listen.admin.
func (c *Config) SignInAddr() string {
	if c.Listen.SignIn != "" {
		return c.Listen.SignIn
	}
	return c.Listen.Admin
}

// base is the configuration before decoding: every default that does not depend on other keys.
func base() *Config {
	return &Config{
		Log: Log{Level: "info", Format: "text"},
		Listen: Listen{
			LMTP:        "/run/postern/lmtp.sock",
			Socketmap:   "/run/postern/socketmap.sock",
			Admin:       "127.0.0.1:8025",
			SocketGroup: "postfix",
			SocketMode:  "0660",
			MaxConnections: MaxConnections{
				LMTP:      DefaultMaxConnections,
				SMTP:      DefaultMaxConnections,
				Socketmap: DefaultMaxConnections,
				Milter:    DefaultMaxConnections,
				Admin:     DefaultMaxAdminConnections,
			},
		},
		Upstream: Upstream{
			DialTimeout:     upstream.DefaultDialTimeout,
			GreetingTimeout: upstream.DefaultGreetingTimeout,
			CommandTimeout:  upstream.DefaultCommandTimeout,
			DataTimeout:     upstream.DefaultDataTimeout,
			IdleTimeout:     upstream.DefaultIdleTimeout,
			MaxConnWait:     upstream.DefaultMaxConnWait,
			DownBackoff:     upstream.DefaultDownBackoff,
		},
		Limits: Limits{
			MaxMessageBytes: smtpd.DefaultMaxMessageBytes,
			MaxRecipients:   smtpd.DefaultMaxRecipients,
			RateWait:        smtpd.DefaultRateWait,
			Replicas:        1,
			QuotaPause:      time.Hour,
		},
		SMTPD: SMTPD{
			CommandTimeout: smtpd.DefaultReadTimeout,
			DataTimeout:    smtpd.DefaultDataTimeout,
		},
		Metrics: Metrics{ProjectLabel: true},
		Notify:  Notify{Webhook: Webhook{Timeout: 10 * time.Second, RetryFor: time.Hour}},
		Milter: Milter{
			IdleTimeout:    milter.DefaultIdleTimeout,
			PacketTimeout:  milter.DefaultPacketTimeout,
			MaxHeaderBytes: milter.DefaultMaxHeaderBytes,
		},
		SignIn: SignIn{
			KeyFile: DefaultSignInKeyFile,
			LinkTTL: DefaultSignInLinkTTL,
		},
		Tokens:         Tokens{RefreshMargin: DefaultRefreshMargin, KeepaliveInterval: DefaultKeepaliveInterval, ClientSecretWarning: DefaultClientSecretWarning},
		ReloadInterval: directory.DefaultInterval,
		Postfix:        Postfix{Postqueue: "postqueue", QueueLifetime: 5 * 24 * time.Hour, BackoffTime: 4000 * time.Second},
	}
}

// Default returns the configuration used when there is no configuration file.
func Default() *Config {
	c := base()
	c.applyDerived()
	return c
}

// Load reads and parses the configuration file at path. It does not validate: call Validate.
func Load(path string) (*Config, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("reading config: %w", err)
	}
	c, err := Parse(b)
	if err != nil {
		return nil, fmt.Errorf("config %s: %w", path, err)
	}
	return c, nil
}

var unknownFieldRE = regexp.MustCompile(`field (\S+) not found in type \S+`)

// Parse decodes a configuration file and applies the defaults. Unknown keys and values of the wrong
// type are errors naming their line; all of them are reported, joined with errors.Join. Parse does
// not validate: call Validate.
func Parse(b []byte) (*Config, error) {
	c := base()
	dec := yaml.NewDecoder(bytes.NewReader(b))
	dec.KnownFields(true)
	err := dec.Decode(c)
	if err != nil && !errors.Is(err, io.EOF) {
		var te *yaml.TypeError
		if errors.As(err, &te) {
			errs := make([]error, 0, len(te.Errors))
			for _, e := range te.Errors {
				errs = append(errs, errors.New(unknownFieldRE.ReplaceAllString(e, `unknown key "$1"`)))
			}
			return nil, errors.Join(errs...)
		}
		return nil, errors.New(strings.TrimPrefix(err.Error(), "yaml: "))
	}
	if err == nil {
		var extra yaml.Node
		if dec.Decode(&extra) == nil {
			return nil, fmt.Errorf("line %d: a second YAML document; the config file holds one", extra.Line)
		}
	}
	c.applyDerived()
	return c, nil
}

// applyDerived fills the defaults that depend on the host or on other keys.
func (c *Config) applyDerived() {
	if len(c.Upstream.TraceProjects) == 0 {
		c.Upstream.TraceProjects = nil // "trace_projects: []" is the default
	}
	if c.Instance == "" || c.Upstream.HeloName == "" {
		host, err := os.Hostname()
		if err != nil || host == "" {
			host = instanceWhenNoHostname
		}
		if c.Instance == "" {
			c.Instance = host
		}
		if c.Upstream.HeloName == "" {
			c.Upstream.HeloName = host
		}
	}
	if c.Transport == "" {
		c.Transport = c.DefaultTransport()
	}
	if c.Admin.ReadTokenFile == "" && c.SignIn.KeyFile != "" {
		c.Admin.ReadTokenFile = filepath.Join(filepath.Dir(c.SignIn.KeyFile), ReadTokenName)
	}
	if c.Store.File == nil && c.Store.Vault == nil {
		c.Store.File = &FileStore{}
	}
	if f := c.Store.File; f != nil {
		if f.Path == "" {
			f.Path = DefaultStorePath
		}
		if f.KeyFile == "" {
			f.KeyFile = DefaultStoreKeyFile
		}
	}
	if v := c.Store.Vault; v != nil {
		if v.Mount == "" {
			v.Mount = DefaultVaultMount
		}
		if v.Prefix == "" {
			v.Prefix = DefaultVaultPrefix
		}
		if v.Timeout == 0 {
			v.Timeout = 10 * time.Second
		}
		if a := v.Auth.AppRole; a != nil && a.Mount == "" {
			a.Mount = DefaultVaultAppRoleMount
		}
		if k := v.Auth.Kubernetes; k != nil {
			if k.Mount == "" {
				k.Mount = DefaultVaultKubernetesMount
			}
			if k.TokenFile == "" {
				k.TokenFile = DefaultVaultKubernetesJWTFile
			}
		}
	}
}

// DefaultTransport is the transport derived from the listeners: "postern:unix:<lmtp path>" when LMTP
// is on, else "postern:[host]:port" for SMTP, else "".
func (c *Config) DefaultTransport() string {
	switch {
	case c.Listen.LMTP != "":
		return DefaultTransportService + ":unix:" + c.Listen.LMTP
	case c.Listen.SMTP != "":
		host, port, err := net.SplitHostPort(c.Listen.SMTP)
		if err != nil {
			return ""
		}
		return DefaultTransportService + ":[" + host + "]:" + port
	}
	return ""
}

// TransportName is the transport part of Transport: the master.cf service name.
func (c *Config) TransportName() string {
	name, _, _ := strings.Cut(c.Transport, ":")
	return name
}

// SlogLevel is Level as a slog level (info when Level is not valid).
func (l Log) SlogLevel() slog.Level {
	switch l.Level {
	case "debug":
		return slog.LevelDebug
	case "warn":
		return slog.LevelWarn
	case "error":
		return slog.LevelError
	}
	return slog.LevelInfo
}

// NewLogger returns a logger writing to w in the configured format and level.
func (l Log) NewLogger(w io.Writer) *slog.Logger {
	level := new(slog.LevelVar)
	level.Set(l.SlogLevel())
	return l.NewLoggerVar(w, level)
}

// NewLoggerVar returns a logger writing to w in the configured format, at the level level holds,
// so that the level can change while the logger is in use (a reload). In JSON, durations are
// numbers of seconds (1.5), not Go's integer nanoseconds; text shows them as Go does ("1.5s").
func (l Log) NewLoggerVar(w io.Writer, level *slog.LevelVar) *slog.Logger {
	if l.Format == "json" {
		return slog.New(slog.NewJSONHandler(w, &slog.HandlerOptions{Level: level, ReplaceAttr: durationSeconds}))
	}
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: level}))
}

// durationSeconds turns a time.Duration value into its seconds.
func durationSeconds(_ []string, a slog.Attr) slog.Attr {
	if a.Value.Kind() == slog.KindDuration {
		a.Value = slog.Float64Value(a.Value.Duration().Seconds())
	}
	return a
}

// Validate returns every problem with the configuration at once, nil when there is none. It also
// checks that listen.socket_group exists on this host.
func (c *Config) Validate() []error {
	return c.validate(func(name string) error {
		_, err := user.LookupGroup(name)
		return err
	})
}

// validate is Validate with the group lookup injected.
func (c *Config) validate(lookupGroup func(string) error) []error {
	var errs []error
	add := func(format string, a ...any) { errs = append(errs, fmt.Errorf(format, a...)) }

	switch c.Log.Level {
	case "debug", "info", "warn", "error":
	default:
		add("log.level %q: use debug, info, warn or error", c.Log.Level)
	}
	switch c.Log.Format {
	case "text", "json":
	default:
		add("log.format %q: use text or json", c.Log.Format)
	}

	if w := c.Notify.Webhook; w.URL != "" {
		if u, err := url.Parse(w.URL); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			add("notify.webhook.url %q: use an http or https URL", w.URL)
		}
		if w.SecretFile == "" {
			add("notify.webhook.url is set but notify.webhook.secret_file is not: the events are signed with its key")
		}
	}
	if c.Notify.Webhook.Timeout <= 0 || c.Notify.Webhook.RetryFor <= 0 {
		add("notify.webhook.timeout and retry_for must be positive")
	}

	l := c.Listen
	if c.Debug.Pprof && l.Admin == "" {
		add("debug.pprof is on but listen.admin is off: the profiler is served on the admin listener")
	}
	if l.LMTP == "" && l.SMTP == "" {
		add("listen: neither lmtp nor smtp is set: Postfix needs one of them to deliver to Postern")
	}
	unixSockets := 0
	if l.LMTP != "" {
		unixSockets++
		if err := checkSocketPath(l.LMTP); err != nil {
			add("listen.lmtp: %v", err)
		}
	}
	if l.SMTP != "" {
		if err := checkLoopback(l.SMTP); err != nil {
			add("listen.smtp: %v", err)
		}
	}
	for _, a := range []struct {
		key, value string
		required   bool
	}{
		{"listen.socketmap", l.Socketmap, true},
		{"listen.milter", l.Milter, false},
	} {
		switch {
		case a.value == "" && a.required:
			add("%s is empty: Postfix asks it which senders Postern serves", a.key)
		case a.value == "":
		case IsUnixPath(a.value):
			unixSockets++
			if err := checkSocketPath(a.value); err != nil {
				add("%s: %v", a.key, err)
			}
		default:
			if err := checkLoopback(a.value); err != nil {
				add("%s: %v (or give a unix socket path)", a.key, err)
			}
		}
	}
	tlsOn := c.Admin.TLS.On()
	authOn := c.Admin.ReadTokenFile != "" || c.API.TokenFile != ""
	for _, a := range []struct{ key, value, needs string }{
		{"listen.admin", l.Admin, "admin.tls (cert_file and key_file) and a token (admin.read_token_file)"},
		{"listen.signin", l.SignIn, "admin.tls (cert_file and key_file)"},
	} {
		if a.value == "" {
			continue
		}
		err := checkLoopback(a.value)
		var nl *notLoopbackError
		switch {
		case errors.As(err, &nl) && tlsOn && (authOn || a.key == "listen.signin"):
		case errors.As(err, &nl):
			add("%s: %v, or set %s: it would serve over plain HTTP, or without a token", a.key, err, a.needs)
		case err != nil:
			add("%s: %v", a.key, err)
		}
	}
	if l.SignIn != "" && l.SignIn == l.Admin {
		add("listen.signin %q is listen.admin: leave listen.signin empty to serve the sign-in pages on the admin listener", l.SignIn)
	}
	if _, err := l.SocketFileMode(); err != nil {
		errs = append(errs, err)
	}
	for _, m := range []struct {
		key string
		n   int
	}{
		{"lmtp", l.MaxConnections.LMTP},
		{"smtp", l.MaxConnections.SMTP},
		{"socketmap", l.MaxConnections.Socketmap},
		{"milter", l.MaxConnections.Milter},
		{"admin", l.MaxConnections.Admin},
	} {
		if m.n < 1 {
			add("listen.max_connections.%s is %d: it must be at least 1", m.key, m.n)
		}
	}
	if l.SocketGroup != "" && unixSockets > 0 {
		if err := lookupGroup(l.SocketGroup); err != nil {
			add("listen.socket_group %q does not exist on this host: install Postfix first, or set socket_group to the group of Postfix's delivery agents (the group of `postconf -h mail_owner`)", l.SocketGroup)
		}
	}

	if c.Transport == "" {
		if l.LMTP != "" || l.SMTP != "" {
			add("transport is empty")
		}
	} else if name, hop, ok := strings.Cut(c.Transport, ":"); !ok || name == "" || hop == "" || strings.ContainsAny(c.Transport, " \t\r\n") {
		add("transport %q: use service:nexthop, for example postern:unix:/run/postern/lmtp.sock", c.Transport)
	}

	errs = append(errs, c.Store.validate()...)

	u := c.Upstream
	if strings.ContainsAny(u.HeloName, " \t\r\n") {
		add("upstream.helo_name %q contains white space", u.HeloName)
	}
	for _, name := range u.TraceProjects {
		if strings.TrimSpace(name) == "" {
			add("upstream.trace_projects: an empty project name")
		}
	}
	for _, d := range []struct {
		key string
		v   time.Duration
	}{
		{"upstream.dial_timeout", u.DialTimeout},
		{"upstream.greeting_timeout", u.GreetingTimeout},
		{"upstream.command_timeout", u.CommandTimeout},
		{"upstream.data_timeout", u.DataTimeout},
		{"upstream.idle_timeout", u.IdleTimeout},
		{"upstream.max_conn_wait", u.MaxConnWait},
		{"upstream.down_backoff", u.DownBackoff},
		{"reload_interval", c.ReloadInterval},
		{"smtpd.command_timeout", c.SMTPD.CommandTimeout},
		{"smtpd.data_timeout", c.SMTPD.DataTimeout},
		{"milter.idle_timeout", c.Milter.IdleTimeout},
		{"milter.packet_timeout", c.Milter.PacketTimeout},
		{"postfix.queue_lifetime", c.Postfix.QueueLifetime},
		{"postfix.backoff_time", c.Postfix.BackoffTime},
	} {
		if d.v <= 0 {
			add("%s %v: must be more than 0", d.key, d.v)
		}
	}
	if c.Milter.MaxHeaderBytes <= 0 {
		add("milter.max_header_bytes %d: must be more than 0", c.Milter.MaxHeaderBytes)
	}
	if c.Limits.MaxMessageBytes <= 0 {
		add("limits.max_message_bytes %d: must be more than 0", c.Limits.MaxMessageBytes)
	}
	if c.Limits.MaxRecipients <= 0 {
		add("limits.max_recipients %d: must be more than 0", c.Limits.MaxRecipients)
	}
	if c.Limits.RateWait < 0 {
		add("limits.rate_wait %v: must not be negative", c.Limits.RateWait)
	}
	if c.Limits.Replicas <= 0 {
		add("limits.replicas %d: must be 1 or more (the Postern processes sharing the store)", c.Limits.Replicas)
	}
	if c.Limits.QuotaPause <= 0 {
		add("limits.quota_pause %v: must be more than 0", c.Limits.QuotaPause)
	}
	errs = append(errs, c.validateSignIn()...)
	errs = append(errs, c.validateAPI()...)
	errs = append(errs, c.validateAdmin()...)
	errs = append(errs, c.validateProviders()...)
	if c.Tokens.RefreshMargin <= 0 {
		add("tokens.refresh_margin %v: must be more than 0", c.Tokens.RefreshMargin)
	}
	if c.Tokens.ClientSecretWarning <= 0 {
		add("tokens.client_secret_warning %v: must be more than 0", c.Tokens.ClientSecretWarning)
	}
	if c.Tokens.KeepaliveInterval < 0 {
		add("tokens.keepalive_interval %v: must not be negative (0 turns keep-alive off)", c.Tokens.KeepaliveInterval)
	}
	if _, err := c.OAuth.ProxyURL(); err != nil {
		errs = append(errs, err)
	}
	return errs
}

// OAuth configures Postern's requests to identity providers: token refreshes, sign-ins, the keys
// that verify id_tokens, revocations.
type OAuth struct {
	// HTTPProxy is the proxy every request to an identity provider goes through, loopback hosts
	// included: http://host:port, https://host:port or socks5://host:port, with user:password@
	// when the proxy wants them. Default "": the standard environment decides, as for any Go
	// program: HTTPS_PROXY (or HTTP_PROXY for http:// endpoints), except for the hosts in NO_PROXY
	// and loopback hosts. When set, the environment is ignored for identity providers.
	HTTPProxy string `yaml:"http_proxy"`
}

// ProxyURL is oauth.http_proxy parsed: nil when it is empty (the environment decides). The error
// names the key and never shows a password in the URL.
func (o OAuth) ProxyURL() (*url.URL, error) {
	s := strings.TrimSpace(o.HTTPProxy)
	if s == "" {
		return nil, nil
	}
	u, err := url.Parse(s)
	if err != nil {
		// url.Parse's error repeats the input, which may hold a password.
		return nil, errors.New("oauth.http_proxy is not a URL: use http://host:port, https://host:port or socks5://host:port")
	}
	switch u.Scheme {
	case "http", "https", "socks5", "socks5h":
	default:
		return nil, fmt.Errorf("oauth.http_proxy %q: use an http://, https:// or socks5:// URL", u.Redacted())
	}
	if u.Hostname() == "" || (u.Path != "" && u.Path != "/") || u.RawQuery != "" || u.Fragment != "" {
		return nil, fmt.Errorf("oauth.http_proxy %q: give the proxy as scheme://host:port, without a path", u.Redacted())
	}
	return u, nil
}

// Tokens configures how OAuth access tokens are refreshed.
type Tokens struct {
	// RefreshMargin: an access token is refreshed, in the background, once it expires within this
	// long; no delivery waits for it. Microsoft's high-volume service refuses tokens close to
	// expiry, so keep the default of 10m for real providers.
	RefreshMargin time.Duration `yaml:"refresh_margin"`
	// KeepaliveInterval: an OAuth project whose token record has not changed for this long (no
	// mail, so no refresh) has its refresh token redeemed anyway, so that the grant never reaches
	// the provider's inactivity expiry (Microsoft: 90 days). 0 turns it off. Default 168h (7 days).
	KeepaliveInterval time.Duration `yaml:"keepalive_interval"`
	// ClientSecretWarning: an OAuth project whose app registration's client secret expires
	// within this long (its date set with --client-secret-expires) is degraded, with time to make
	// a new secret; an expired one is failing. Default 720h (30 days).
	ClientSecretWarning time.Duration `yaml:"client_secret_warning"`
}

// DefaultKeepaliveInterval is the default of tokens.keepalive_interval.
const DefaultKeepaliveInterval = 7 * 24 * time.Hour

// DefaultClientSecretWarning is the default of tokens.client_secret_warning: health's.
const DefaultClientSecretWarning = health.DefaultSecretWarning

// DefaultRefreshMargin is the default of tokens.refresh_margin: the token broker's.
const DefaultRefreshMargin = token.DefaultMargin

// CredentialProvider is a credential provider program (see plugin/README.md).
type CredentialProvider struct {
	// Path is the provider's executable, an absolute path.
	Path string `yaml:"path"`
	// SHA256 is the executable's SHA-256 in hex (as sha256sum prints it). Required: Postern
	// checks the file against it before every start and refuses to run a binary that differs.
	SHA256 string `yaml:"sha256"`
	// Args are its arguments. Never put secrets here: they show in process lists and debug logs.
	Args []string `yaml:"args"`
	// Env is its whole environment (KEY=value); Postern's own environment is not passed on.
	Env []string `yaml:"env"`
	// StartTimeout bounds its start. Default 30s.
	StartTimeout time.Duration `yaml:"start_timeout"`
	// CallTimeout bounds each request to it; a provider that does not answer in time is taken
	// for hung, ended and started again on the next request (the mail waits meanwhile).
	// Default 30s.
	CallTimeout time.Duration `yaml:"call_timeout"`
}

// checkSHA256 checks that want is a hex SHA-256 and that the file at path has it.
func checkSHA256(path, want string) error {
	if want == "" {
		return fmt.Errorf("missing: give the SHA-256 of %s (sha256sum prints it)", path)
	}
	if b, err := hex.DecodeString(want); err != nil || len(b) != sha256.Size {
		return fmt.Errorf("%q is not a SHA-256 in hex (64 hex digits)", want)
	}
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return fmt.Errorf("reading %s: %w", path, err)
	}
	if got := hex.EncodeToString(h.Sum(nil)); !strings.EqualFold(got, want) {
		return fmt.Errorf("%s has SHA-256 %s, not the configured one: it was changed or replaced", path, got)
	}
	return nil
}

func (c *Config) validateProviders() []error {
	var errs []error
	for name, p := range c.CredentialProviders {
		switch fi, err := os.Stat(p.Path); {
		case !filepath.IsAbs(p.Path):
			errs = append(errs, fmt.Errorf("credential_providers.%s.path %q: use an absolute path", name, p.Path))
		case err != nil:
			errs = append(errs, fmt.Errorf("credential_providers.%s.path: %w", name, err))
		case fi.IsDir() || fi.Mode()&0o111 == 0:
			errs = append(errs, fmt.Errorf("credential_providers.%s.path %s is not an executable file", name, p.Path))
		default:
			if err := checkSHA256(p.Path, p.SHA256); err != nil {
				errs = append(errs, fmt.Errorf("credential_providers.%s.sha256: %w", name, err))
			}
		}
		if p.StartTimeout < 0 {
			errs = append(errs, fmt.Errorf("credential_providers.%s.start_timeout %v: must not be negative", name, p.StartTimeout))
		}
		if p.CallTimeout < 0 {
			errs = append(errs, fmt.Errorf("credential_providers.%s.call_timeout %v: must not be negative", name, p.CallTimeout))
		}
	}
	return errs
}

func (c *Config) validateAPI() []error {
	f := c.API.TokenFile
	if f == "" {
		return nil
	}
	var errs []error
	add := func(format string, a ...any) { errs = append(errs, fmt.Errorf(format, a...)) }
	if strings.HasSuffix(f, "/") {
		add("api.token_file %q names a directory, not a file", f)
	}
	if c.Listen.Admin == "" {
		add("api.token_file is set but listen.admin is off: the API is served on the admin listener")
	}
	others := map[string]string{c.SignIn.KeyFile: "signin.key_file"}
	if s := c.Store.File; s != nil {
		others[s.Path], others[s.KeyFile] = "store.file.path", "store.file.key_file"
	}
	if key, ok := others[f]; ok {
		add("api.token_file %q must not be the file of %s", f, key)
	}
	return errs
}

func (c *Config) validateAdmin() []error {
	var errs []error
	add := func(format string, a ...any) { errs = append(errs, fmt.Errorf(format, a...)) }
	if t := c.Admin.TLS; (t.CertFile == "") != (t.KeyFile == "") {
		add("admin.tls: set both cert_file and key_file, or neither")
	}
	f := c.Admin.ReadTokenFile
	if f == "" {
		return errs
	}
	if strings.HasSuffix(f, "/") {
		add("admin.read_token_file %q names a directory, not a file", f)
	}
	others := map[string]string{c.SignIn.KeyFile: "signin.key_file"}
	if c.API.TokenFile != "" {
		others[c.API.TokenFile] = "api.token_file (the read token must not be able to write)"
	}
	if s := c.Store.File; s != nil {
		others[s.Path], others[s.KeyFile] = "store.file.path", "store.file.key_file"
	}
	if key, ok := others[f]; ok {
		add("admin.read_token_file %q must not be the file of %s", f, key)
	}
	return errs
}

func (c *Config) validateSignIn() []error {
	var errs []error
	add := func(format string, a ...any) { errs = append(errs, fmt.Errorf(format, a...)) }
	s := c.SignIn
	if s.KeyFile == "" {
		add("signin.key_file is empty")
	} else if f := c.Store.File; f != nil && (s.KeyFile == f.KeyFile || s.KeyFile == f.Path) {
		add("signin.key_file %q must not be a file of the store", s.KeyFile)
	}
	if s.LinkTTL <= 0 || s.LinkTTL > MaxSignInLinkTTL {
		add("signin.link_ttl %v: must be more than 0 and at most %v", s.LinkTTL, MaxSignInLinkTTL)
	}
	if s.PublicURL == "" {
		return errs
	}
	u, err := url.Parse(s.PublicURL)
	switch {
	case err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" || u.User != nil:
		add("signin.public_url %q: use the URL the mailbox owner's browser reaches the admin listener at, for example https://postern.example.com", s.PublicURL)
	case u.RawQuery != "" || u.Fragment != "" || strings.HasSuffix(s.PublicURL, "?") || strings.HasSuffix(s.PublicURL, "#"):
		add("signin.public_url %q: must have no query or fragment", s.PublicURL)
	case u.Scheme == "http" && !isLoopbackHost(u.Hostname()):
		add("signin.public_url %q: use https; identity providers accept http redirect URIs only for localhost", s.PublicURL)
	}
	return errs
}

// isLoopbackHost reports whether host is localhost or a loopback address.
func isLoopbackHost(host string) bool {
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

func (s Store) validate() []error {
	var errs []error
	add := func(format string, a ...any) { errs = append(errs, fmt.Errorf(format, a...)) }
	switch {
	case s.File != nil && s.Vault != nil:
		add("store: both file and vault are set; use one")
	case s.File != nil:
		if s.File.Path == "" {
			add("store.file.path is empty")
		}
		if s.File.KeyFile == "" {
			add("store.file.key_file is empty")
		}
		if s.File.Path != "" && s.File.Path == s.File.KeyFile {
			add("store.file.key_file must not be the data file")
		}
	case s.Vault != nil:
		v := s.Vault
		if u, err := url.Parse(v.Address); v.Address == "" || err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			add("store.vault.address %q: use Vault's URL, for example https://vault.example.com:8200", v.Address)
		}
		if strings.Trim(v.Mount, "/") == "" {
			add("store.vault.mount is empty")
		}
		if strings.Trim(v.Prefix, "/") == "" {
			add("store.vault.prefix is empty")
		}
		methods := 0
		if v.Auth.TokenFile != "" {
			methods++
		}
		if a := v.Auth.AppRole; a != nil {
			methods++
			if a.RoleID == "" {
				add("store.vault.auth.approle.role_id is empty")
			}
			if a.SecretIDFile == "" {
				add("store.vault.auth.approle.secret_id_file is empty")
			}
		}
		if k := v.Auth.Kubernetes; k != nil {
			methods++
			if k.Role == "" {
				add("store.vault.auth.kubernetes.role is empty")
			}
		}
		if methods != 1 {
			add("store.vault.auth: set exactly one of token_file, approle and kubernetes (%d set)", methods)
		}
	}
	return errs
}

// IsUnixPath reports whether a listen address is a unix socket path rather than host:port.
func IsUnixPath(addr string) bool { return strings.HasPrefix(addr, "/") }

func checkSocketPath(p string) error {
	if !filepath.IsAbs(p) {
		return fmt.Errorf("%q is not an absolute path", p)
	}
	if strings.HasSuffix(p, "/") {
		return fmt.Errorf("%q names a directory, not a socket", p)
	}
	// sun_path holds 108 bytes on Linux, the terminating NUL included.
	if len(p) > 107 {
		return fmt.Errorf("%q is longer than a unix socket path may be (107 bytes)", p)
	}
	return nil
}

// checkLoopback accepts host:port on loopback with a port from 1 to 65535.
func checkLoopback(addr string) error {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("%q is not host:port", addr)
	}
	if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
		return fmt.Errorf("%q: port %q is not a TCP port", addr, port)
	}
	if !isLoopbackHost(host) {
		return &notLoopbackError{addr}
	}
	return nil
}

// notLoopbackError says that an address is well formed but not on loopback.
type notLoopbackError struct{ addr string }

func (e *notLoopbackError) Error() string {
	return fmt.Sprintf("%q is not a loopback address: use 127.0.0.1 or [::1]", e.addr)
}
