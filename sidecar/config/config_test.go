package config

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
)

// exampleFile is the annotated example configuration, shipped in the package as
// /etc/postern/postern.yaml.
const exampleFile = "../../contrib/postern.yaml"

func groupExists(string) error { return nil }

func noGroup(string) error { return errors.New("unknown group") }

func mustParse(t *testing.T, s string) *Config {
	t.Helper()
	c, err := Parse([]byte(s))
	if err != nil {
		t.Fatalf("Parse: %v", err)
	}
	return c
}

// The annotated example shows every key at its default value; loading it must give Default(), and
// the documented defaults must be valid.
func TestExampleFileIsTheDefault(t *testing.T) {
	t.Parallel()
	c, err := Load(exampleFile)
	if err != nil {
		t.Fatal(err)
	}
	if want := Default(); !reflect.DeepEqual(c, want) {
		t.Fatalf("%s differs from Default():\n got  %+v\n want %+v", exampleFile, c, want)
	}
	if errs := c.validate(groupExists); len(errs) != 0 {
		t.Fatalf("the example is not valid: %v", errs)
	}
}

// The commented-out vault section of the example names real keys.
func TestExampleVaultSectionParses(t *testing.T) {
	t.Parallel()
	b, err := os.ReadFile(exampleFile)
	if err != nil {
		t.Fatal(err)
	}
	var block []string
	in := false
	for _, line := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(line, "  # vault:") {
			in = true
		}
		if in && !strings.HasPrefix(line, "  #") {
			break
		}
		if in {
			block = append(block, "  "+strings.TrimPrefix(line, "  # "))
		}
	}
	if len(block) < 10 {
		t.Fatalf("found no vault section in the example (%d lines)", len(block))
	}
	c := mustParse(t, "store:\n"+strings.Join(block, "\n")+"\n")
	v := c.Store.Vault
	if c.Store.File != nil || v == nil || v.Address != "https://vault.example.com:8200" || v.Auth.AppRole == nil || v.Auth.Kubernetes == nil || v.Auth.TokenFile == "" {
		t.Fatalf("the vault example did not decode fully: %+v", c.Store)
	}
}

func TestDefaults(t *testing.T) {
	t.Parallel()
	host, _ := os.Hostname()
	c := Default()
	if c.Instance != host || c.Upstream.HeloName != host {
		t.Errorf("instance %q helo %q, want the host name %q", c.Instance, c.Upstream.HeloName, host)
	}
	if c.Transport != "postern:unix:/run/postern/lmtp.sock" {
		t.Errorf("transport %q", c.Transport)
	}
	if c.Store.File == nil || c.Store.File.Path != DefaultStorePath || c.Store.File.KeyFile != DefaultStoreKeyFile || c.Store.Vault != nil {
		t.Errorf("store %+v", c.Store)
	}
	if c.Upstream.DataTimeout != 10*time.Minute || c.Limits.MaxMessageBytes != 52428800 || c.ReloadInterval != 10*time.Second {
		t.Errorf("defaults %+v %+v %v", c.Upstream, c.Limits, c.ReloadInterval)
	}
	for _, empty := range []string{"", "# nothing\n", "{}\n"} {
		if got := mustParse(t, empty); !reflect.DeepEqual(got, c) {
			t.Errorf("Parse(%q) differs from Default()", empty)
		}
	}
}

func TestParse(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name  string
		yaml  string
		check func(t *testing.T, c *Config)
	}{
		{
			name: "a partial section keeps the other defaults",
			yaml: "upstream:\n  data_timeout: 2m\nlog:\n  level: debug\n",
			check: func(t *testing.T, c *Config) {
				if c.Upstream.DataTimeout != 2*time.Minute || c.Upstream.DialTimeout != 30*time.Second || c.Log.Format != "text" || c.Log.Level != "debug" {
					t.Errorf("got %+v %+v", c.Upstream, c.Log)
				}
			},
		},
		{
			name: "an empty string turns a listener off",
			yaml: "listen:\n  lmtp: \"\"\n  smtp: 127.0.0.1:10025\n  admin: \"\"\n",
			check: func(t *testing.T, c *Config) {
				if c.Listen.LMTP != "" || c.Listen.Admin != "" || c.Listen.Socketmap != "/run/postern/socketmap.sock" {
					t.Errorf("listen %+v", c.Listen)
				}
				if c.Transport != "postern:[127.0.0.1]:10025" {
					t.Errorf("transport %q", c.Transport)
				}
			},
		},
		{
			name: "smtp on ipv6 loopback",
			yaml: "listen:\n  lmtp: \"\"\n  smtp: \"[::1]:10025\"\n",
			check: func(t *testing.T, c *Config) {
				if c.Transport != "postern:[::1]:10025" {
					t.Errorf("transport %q", c.Transport)
				}
			},
		},
		{
			name: "transport follows a non-default lmtp path",
			yaml: "listen:\n  lmtp: /var/spool/postfix/private/postern\n",
			check: func(t *testing.T, c *Config) {
				if c.Transport != "postern:unix:/var/spool/postfix/private/postern" || c.TransportName() != "postern" {
					t.Errorf("transport %q", c.Transport)
				}
			},
		},
		{
			name: "an explicit transport is kept",
			yaml: "transport: relay-postern:unix:/run/p.sock\n",
			check: func(t *testing.T, c *Config) {
				if c.Transport != "relay-postern:unix:/run/p.sock" || c.TransportName() != "relay-postern" {
					t.Errorf("transport %q name %q", c.Transport, c.TransportName())
				}
			},
		},
		{
			name: "an unquoted socket mode stays octal text",
			yaml: "listen:\n  socket_mode: 0640\n",
			check: func(t *testing.T, c *Config) {
				if m, err := c.Listen.SocketFileMode(); err != nil || m != 0o640 {
					t.Errorf("mode %v %v (from %q)", m, err, c.Listen.SocketMode)
				}
			},
		},
		{
			name: "vault alone, with defaults",
			yaml: "store:\n  vault:\n    address: https://127.0.0.1:8200\n    auth:\n      approle:\n        role_id: r\n        secret_id_file: /s\n",
			check: func(t *testing.T, c *Config) {
				v := c.Store.Vault
				if c.Store.File != nil || v == nil || v.Mount != "secret" || v.Prefix != "postern" || v.Auth.AppRole.Mount != "approle" {
					t.Errorf("store %+v vault %+v", c.Store, v)
				}
				if errs := c.validate(groupExists); len(errs) != 0 {
					t.Errorf("valid vault config: %v", errs)
				}
			},
		},
		{
			name: "kubernetes defaults",
			yaml: "store:\n  vault:\n    address: http://127.0.0.1:8200\n    auth:\n      kubernetes:\n        role: postern\n",
			check: func(t *testing.T, c *Config) {
				k := c.Store.Vault.Auth.Kubernetes
				if k.Mount != "kubernetes" || k.TokenFile != DefaultVaultKubernetesJWTFile {
					t.Errorf("kubernetes %+v", k)
				}
			},
		},
		{
			name: "file store with only a path keeps the default key file",
			yaml: "store:\n  file:\n    path: /srv/postern/store.db\n",
			check: func(t *testing.T, c *Config) {
				if c.Store.File.Path != "/srv/postern/store.db" || c.Store.File.KeyFile != DefaultStoreKeyFile {
					t.Errorf("file %+v", c.Store.File)
				}
			},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			tc.check(t, mustParse(t, tc.yaml))
		})
	}
}

func TestParseErrors(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		yaml string
		want []string
	}{
		{
			name: "every unknown key, with its line",
			yaml: "log:\n  levl: debug\nlisten:\n  lmtp: /run/x.sock\n  socketmapp: /run/y.sock\nreload: 5s\n",
			want: []string{`line 2: unknown key "levl"`, `line 5: unknown key "socketmapp"`, `line 6: unknown key "reload"`},
		},
		{
			name: "a duration without a unit",
			yaml: "upstream:\n  dial_timeout: 30\n",
			want: []string{"line 2: cannot unmarshal !!int `30` into time.Duration"},
		},
		{
			name: "a bad duration",
			yaml: "reload_interval: ten seconds\n",
			want: []string{"line 1:"},
		},
		{
			name: "a list where a value belongs",
			yaml: "instance: [a, b]\n",
			want: []string{"line 1:"},
		},
		{
			name: "broken yaml",
			yaml: "log:\n\tlevel: debug\n",
			want: []string{"line 2: found character"},
		},
		{
			name: "two documents",
			yaml: "log: {level: debug}\n---\nlog: {level: info}\n",
			want: []string{"line 2: a second YAML document"},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			_, err := Parse([]byte(tc.yaml))
			if err == nil {
				t.Fatal("Parse accepted it")
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not say %q", err, w)
				}
			}
		})
	}
}

func TestLoadNamesTheFile(t *testing.T) {
	t.Parallel()
	path := t.TempDir() + "/postern.yaml"
	if err := os.WriteFile(path, []byte("bogus: 1\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err := Load(path)
	if err == nil || !strings.Contains(err.Error(), path) || !strings.Contains(err.Error(), `line 1: unknown key "bogus"`) {
		t.Fatalf("Load: %v", err)
	}
	if _, err := Load(path + ".missing"); err == nil || !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("Load of a missing file: %v", err)
	}
}

func TestValidate(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		yaml string
		want string // "" means valid
	}{
		{"defaults", "", ""},
		{"smtp only", "listen: {lmtp: '', smtp: '127.0.0.1:10025'}\n", ""},
		{"lmtp and smtp", "listen: {smtp: 'localhost:10025'}\n", ""},
		{"tcp socketmap and milter", "listen: {socketmap: '127.0.0.1:10026', milter: '[::1]:10027'}\n", ""},
		{"no unix sockets need no group", "listen: {lmtp: '', smtp: '127.0.0.1:1', socketmap: '127.0.0.1:2', socket_group: nosuchgroup}\n", ""},
		{"bad log level", "log: {level: verbose}\n", `log.level "verbose"`},
		{"bad log format", "log: {format: xml}\n", `log.format "xml"`},
		{"no delivery listener", "listen: {lmtp: ''}\n", "neither lmtp nor smtp"},
		{"relative lmtp", "listen: {lmtp: run/lmtp.sock}\n", "listen.lmtp: \"run/lmtp.sock\" is not an absolute path"},
		{"long lmtp path", "listen: {lmtp: /" + strings.Repeat("x", 120) + "}\n", "longer than a unix socket path"},
		{"public smtp", "listen: {smtp: '0.0.0.0:25'}\n", `listen.smtp: "0.0.0.0:25" is not a loopback address`},
		{"smtp without port", "listen: {smtp: '127.0.0.1'}\n", "is not host:port"},
		{"smtp port 0", "listen: {smtp: '127.0.0.1:0'}\n", "is not a TCP port"},
		{"public admin", "listen: {admin: '192.0.2.1:8025'}\n", "listen.admin:"},
		{"hostname admin", "listen: {admin: 'postern.example:8025'}\n", "is not a loopback address"},
		{"public admin with tls and token", "listen: {admin: '0.0.0.0:8025'}\nadmin: {tls: {cert_file: /c.pem, key_file: /k.pem}}\n", ""},
		{"public admin without tls", "listen: {admin: '0.0.0.0:8025'}\nadmin: {read_token_file: /r.token}\n", "or set admin.tls"},
		{"public admin with tls, no token", "listen: {admin: '0.0.0.0:8025'}\nsignin: {key_file: ''}\nadmin: {tls: {cert_file: /c.pem, key_file: /k.pem}}\n", "a token (admin.read_token_file)"},
		{"tls cert without key", "admin: {tls: {cert_file: /c.pem}}\n", "admin.tls: set both"},
		{"loopback signin listener", "listen: {signin: '127.0.0.1:8026'}\n", ""},
		{"public signin listener without tls", "listen: {signin: '0.0.0.0:8026'}\n", "listen.signin:"},
		{"public signin listener with tls", "listen: {signin: '0.0.0.0:8026'}\nadmin: {tls: {cert_file: /c.pem, key_file: /k.pem}}\n", ""},
		{"signin listener is the admin listener", "listen: {signin: '127.0.0.1:8025'}\n", "listen.signin \"127.0.0.1:8025\" is listen.admin"},
		{"no socketmap", "listen: {socketmap: ''}\n", "listen.socketmap is empty"},
		{"public socketmap", "listen: {socketmap: '10.0.0.1:1'}\n", "listen.socketmap:"},
		{"public milter", "listen: {milter: ':8891'}\n", "listen.milter:"},
		{"zero command timeout", "smtpd: {command_timeout: 0s}\n", "smtpd.command_timeout 0s"},
		{"zero data timeout", "smtpd: {data_timeout: 0s}\n", "smtpd.data_timeout 0s"},
		{"zero milter packet timeout", "milter: {packet_timeout: 0s}\n", "milter.packet_timeout 0s"},
		{"no milter header bytes", "milter: {max_header_bytes: 0}\n", "milter.max_header_bytes 0"},
		{"non-octal mode", "listen: {socket_mode: '0690'}\n", `listen.socket_mode "0690"`},
		{"mode too large", "listen: {socket_mode: '1777'}\n", `listen.socket_mode "1777"`},
		{"connection cap raised", "listen: {max_connections: {lmtp: 1000, socketmap: 1}}\n", ""},
		{"no connections", "listen: {max_connections: {socketmap: 0}}\n", "listen.max_connections.socketmap is 0: it must be at least 1"},
		{"negative cap", "listen: {max_connections: {admin: -1}}\n", "listen.max_connections.admin is -1"},
		{"world-writable mode", "listen: {socket_mode: '0666'}\n", `listen.socket_mode "0666" lets every local user connect`},
		{"world-writable 0777", "listen: {socket_mode: '0777'}\n", `listen.socket_mode "0777" lets every local user connect`},
		{"others write only", "listen: {socket_mode: '0662'}\n", `listen.socket_mode "0662" lets every local user connect`},
		{"bad transport", "transport: postern\n", `transport "postern"`},
		{"both stores", "store: {file: {}, vault: {address: 'https://127.0.0.1:8200', auth: {token_file: /t}}}\n", "both file and vault"},
		{"vault without address", "store: {vault: {auth: {token_file: /t}}}\n", "store.vault.address"},
		{"vault with a bad address", "store: {vault: {address: 'vault:8200', auth: {token_file: /t}}}\n", "store.vault.address"},
		{"vault without auth", "store: {vault: {address: 'https://127.0.0.1:8200'}}\n", "exactly one of token_file, approle and kubernetes (0 set)"},
		{"vault with two auth methods", "store: {vault: {address: 'https://127.0.0.1:8200', auth: {token_file: /t, kubernetes: {role: r}}}}\n", "(2 set)"},
		{"approle incomplete", "store: {vault: {address: 'https://127.0.0.1:8200', auth: {approle: {role_id: r}}}}\n", "approle.secret_id_file is empty"},
		{"kubernetes without role", "store: {vault: {address: 'https://127.0.0.1:8200', auth: {kubernetes: {}}}}\n", "kubernetes.role is empty"},
		{"key file is the data file", "store: {file: {path: /x, key_file: /x}}\n", "must not be the data file"},
		{"zero timeout", "upstream: {command_timeout: 0s}\n", "upstream.command_timeout 0s"},
		{"negative reload", "reload_interval: -1s\n", "reload_interval -1s"},
		{"zero message size", "limits: {max_message_bytes: 0}\n", "limits.max_message_bytes 0"},
		{"negative rate wait", "limits: {rate_wait: -5s}\n", "limits.rate_wait"},
		{"helo with a space", "upstream: {helo_name: 'a b'}\n", "upstream.helo_name"},
		{"https public url", "signin: {public_url: 'https://postern.example.com/'}\n", ""},
		{"public url with a path", "signin: {public_url: 'https://example.com/postern'}\n", ""},
		{"http public url on loopback", "signin: {public_url: 'http://127.0.0.1:8025'}\n", ""},
		{"http public url elsewhere", "signin: {public_url: 'http://postern.example.com'}\n", "signin.public_url \"http://postern.example.com\": use https"},
		{"public url without scheme", "signin: {public_url: 'postern.example.com'}\n", "signin.public_url \"postern.example.com\": use the URL"},
		{"public url with a query", "signin: {public_url: 'https://postern.example.com/?a=b'}\n", "no query or fragment"},
		{"public url with credentials", "signin: {public_url: 'https://u:p@postern.example.com'}\n", "signin.public_url"},
		{"zero link ttl", "signin: {link_ttl: 0s}\n", "signin.link_ttl 0s"},
		{"link ttl too long", "signin: {link_ttl: 2000h}\n", "at most 720h"},
		{"no signin key file", "signin: {key_file: ''}\n", "signin.key_file is empty"},
		{"signin key is the store key", "signin: {key_file: /var/lib/postern/store.key}\n", "must not be a file of the store"},
		{"api on", "api: {token_file: /var/lib/postern/api.token}\n", ""},
		{"api token file is a directory", "api: {token_file: /var/lib/postern/}\n", `api.token_file "/var/lib/postern/" names a directory`},
		{"profiler", "debug: {pprof: true}\n", ""},
		{"profiler without the admin listener", "listen: {admin: ''}\ndebug: {pprof: true}\n", "debug.pprof is on but listen.admin is off"},
		{"api without the admin listener", "listen: {admin: ''}\napi: {token_file: /var/lib/postern/api.token}\n", "listen.admin is off"},
		{"api token is the store key", "api: {token_file: /var/lib/postern/store.key}\n", "must not be the file of store.file.key_file"},
		{"api token is the store data", "api: {token_file: /var/lib/postern/store.db}\n", "must not be the file of store.file.path"},
		{"api token is the signin key", "api: {token_file: /var/lib/postern/signin.key}\n", "must not be the file of signin.key_file"},
		{"api off without the admin listener", "listen: {admin: ''}\n", ""},
		{"oauth proxy", "oauth: {http_proxy: 'http://proxy.internal:3128'}\n", ""},
		{"oauth proxy with credentials", "oauth: {http_proxy: 'http://u:p@proxy.internal:3128'}\n", ""},
		{"oauth socks proxy", "oauth: {http_proxy: 'socks5://127.0.0.1:1080'}\n", ""},
		{"oauth proxy without scheme", "oauth: {http_proxy: 'proxy.internal:3128'}\n", "oauth.http_proxy"},
		{"oauth proxy with a path", "oauth: {http_proxy: 'http://proxy.internal:3128/x'}\n", "without a path"},
		{"oauth proxy of another scheme", "oauth: {http_proxy: 'ftp://proxy.internal'}\n", "oauth.http_proxy \"ftp://proxy.internal\""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			errs := mustParse(t, tc.yaml).validate(groupExists)
			if tc.want == "" {
				if len(errs) != 0 {
					t.Fatalf("valid config refused: %v", errs)
				}
				return
			}
			if !strings.Contains(errors.Join(errs...).Error(), tc.want) {
				t.Fatalf("errors %v do not say %q", errs, tc.want)
			}
		})
	}
}

// A refused proxy URL never shows its password.
func TestOAuthProxyErrorsHidePasswords(t *testing.T) {
	t.Parallel()
	for _, u := range []string{"ftp://u:Pass-w0rd@proxy.internal", "http://u:Pass-w0rd@proxy.internal/x", "http://u:Pass-w0rd@proxy.internal:bad port", "http://u:Pass-w0rd@[::1"} {
		_, err := OAuth{HTTPProxy: u}.ProxyURL()
		if err == nil {
			t.Fatalf("%q accepted", "[the URL]")
		}
		if strings.Contains(err.Error(), "Pass-w0rd") {
			t.Fatalf("the error shows the password: %v", err)
		}
	}
}

func TestValidateReportsEveryProblem(t *testing.T) {
	t.Parallel()
	c := mustParse(t, `
log: {level: loud, format: xml}
listen: {lmtp: relative.sock, admin: '0.0.0.0:80', socket_mode: rw}
upstream: {dial_timeout: 0s}
limits: {max_recipients: 0}
`)
	errs := c.validate(groupExists)
	if len(errs) != 7 {
		t.Fatalf("got %d problems, want 7: %v", len(errs), errs)
	}
}

func TestValidateChecksTheSocketGroup(t *testing.T) {
	t.Parallel()
	c := Default()
	errs := c.validate(noGroup)
	if len(errs) != 1 || !strings.Contains(errs[0].Error(), `listen.socket_group "postfix" does not exist`) ||
		!strings.Contains(errs[0].Error(), "postconf -h mail_owner") {
		t.Fatalf("errors %v", errs)
	}
	c.Listen.SocketGroup = ""
	if errs := c.validate(noGroup); len(errs) != 0 {
		t.Fatalf("an empty socket_group is looked up: %v", errs)
	}
}

func TestSignIn(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name, yaml, url string
		ttl             time.Duration
		keyFile         string
	}{
		{"defaults", "", "http://127.0.0.1:8025", DefaultSignInLinkTTL, DefaultSignInKeyFile},
		{"admin elsewhere", "listen: {admin: '[::1]:9000'}\n", "http://[::1]:9000", DefaultSignInLinkTTL, DefaultSignInKeyFile},
		{"admin off", "listen: {admin: ''}\n", "", DefaultSignInLinkTTL, DefaultSignInKeyFile},
		{"signin listener", "listen: {signin: '127.0.0.1:8026'}\n", "http://127.0.0.1:8026", DefaultSignInLinkTTL, DefaultSignInKeyFile},
		{"admin over tls", "admin: {tls: {cert_file: /c.pem, key_file: /k.pem}}\n", "https://127.0.0.1:8025", DefaultSignInLinkTTL, DefaultSignInKeyFile},
		{"public url wins, trailing slash dropped", "signin: {public_url: 'https://postern.example.com/'}\n", "https://postern.example.com", DefaultSignInLinkTTL, DefaultSignInKeyFile},
		{"partial section keeps defaults", "signin: {link_ttl: 24h}\n", "http://127.0.0.1:8025", 24 * time.Hour, DefaultSignInKeyFile},
		{"key file", "signin: {key_file: /etc/postern/signin.key}\n", "http://127.0.0.1:8025", DefaultSignInLinkTTL, "/etc/postern/signin.key"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			c := mustParse(t, tc.yaml)
			if got := c.SignInURL(); got != tc.url {
				t.Errorf("SignInURL() = %q, want %q", got, tc.url)
			}
			if c.SignIn.LinkTTL != tc.ttl || c.SignIn.KeyFile != tc.keyFile {
				t.Errorf("signin %+v", c.SignIn)
			}
		})
	}
	if _, err := Parse([]byte("signin: {link_tl: 1h}\n")); err == nil || !strings.Contains(err.Error(), `unknown key "link_tl"`) {
		t.Errorf("a misspelt signin key: %v", err)
	}
}

func TestAPI(t *testing.T) {
	t.Parallel()
	if f := Default().API.TokenFile; f != "" {
		t.Errorf("the API is on by default: token_file %q", f)
	}
	if c := mustParse(t, "api: {token_file: /etc/postern/api.token}\n"); c.API.TokenFile != "/etc/postern/api.token" {
		t.Errorf("api %+v", c.API)
	}
	if _, err := Parse([]byte("api: {token: x}\n")); err == nil || !strings.Contains(err.Error(), `unknown key "token"`) {
		t.Errorf("a misspelt api key: %v", err)
	}
}

func TestNewLogger(t *testing.T) {
	t.Parallel()
	var buf bytes.Buffer
	log := Log{Level: "warn", Format: "json"}.NewLogger(&buf)
	log.Info("hidden")
	log.Warn("shown", "k", "v")
	if out := buf.String(); strings.Contains(out, "hidden") || !strings.Contains(out, `"msg":"shown"`) {
		t.Fatalf("output %q", out)
	}
}

// JSON logs carry durations as seconds, which log processors read as numbers; text keeps Go's form.
func TestLoggerDurationsInSeconds(t *testing.T) {
	var js, text strings.Builder
	Log{Level: "info", Format: "json"}.NewLogger(&js).Info("delivered", "duration", 1500*time.Millisecond)
	if !strings.Contains(js.String(), `"duration":1.5`) {
		t.Errorf("JSON log: %s; want \"duration\":1.5", js.String())
	}
	Log{Level: "info", Format: "text"}.NewLogger(&text).Info("delivered", "duration", 1500*time.Millisecond)
	if !strings.Contains(text.String(), "duration=1.5s") {
		t.Errorf("text log: %s; want duration=1.5s", text.String())
	}
}

// A credential provider's binary is pinned by its SHA-256: a missing, malformed or different
// checksum is a configuration error.
func TestValidateCredentialProviderChecksum(t *testing.T) {
	t.Parallel()
	bin := filepath.Join(t.TempDir(), "provider")
	if err := os.WriteFile(bin, []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	good := sha256.Sum256([]byte("#!/bin/sh\n"))
	other := sha256.Sum256([]byte("something else"))
	tests := []struct {
		name, sum, want string
	}{
		{"pinned", hex.EncodeToString(good[:]), ""},
		{"pinned, upper case", strings.ToUpper(hex.EncodeToString(good[:])), ""},
		{"missing", "", "credential_providers.p.sha256: missing"},
		{"not hex", "xyz", "is not a SHA-256 in hex"},
		{"another binary's", hex.EncodeToString(other[:]), "not the configured one"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			c := mustParse(t, "credential_providers: {p: {path: "+bin+", sha256: '"+tc.sum+"'}}\n")
			errs := c.validate(groupExists)
			if tc.want == "" {
				if len(errs) != 0 {
					t.Fatalf("valid config refused: %v", errs)
				}
				return
			}
			if !strings.Contains(errors.Join(errs...).Error(), tc.want) {
				t.Fatalf("errors %v do not say %q", errs, tc.want)
			}
		})
	}
}

// FuzzParse feeds configuration files: parsing and validating never panic, and every problem is
// an error, not a crash.
func FuzzParse(f *testing.F) {
	if b, err := os.ReadFile("testdata/postern.yaml"); err == nil {
		f.Add(b)
	}
	f.Add([]byte("listen: {smtp: '127.0.0.1:10025', socket_mode: '0777'}\n"))
	f.Add([]byte("upstream: {dial_timeout: -1s}\nlimits: {max_recipients: 0}\n"))
	f.Add([]byte("credential_providers: {p: {path: /bin/true, sha256: zz}}\n"))
	f.Add([]byte("a: &a [*a, *a]\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		c, err := Parse(b)
		if err != nil {
			return
		}
		_ = c.validate(groupExists)
	})
}
