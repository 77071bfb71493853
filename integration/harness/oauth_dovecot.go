package harness

import (
	"bufio"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"text/template"
	"time"
)

// XOAUTH2SubmissionOptions configures StartXOAUTH2Submission.
type XOAUTH2SubmissionOptions struct {
	// IdP validates the tokens (required): Dovecot posts each token to its introspection endpoint,
	// authenticated as IdP.IntrospectionClient, and takes the mailbox from the `email` field.
	IdP *IdP
	// RelayHost and RelayPort are where accepted mail goes, in plain SMTP (required port; host
	// defaults to 127.0.0.1).
	RelayHost string
	RelayPort int
	// ListenIP is the loopback address to listen on; empty means 127.0.0.1. Dovecot treats a
	// connection as secure when the client's address equals this one, and then offers AUTH before
	// STARTTLS: connect from another loopback address (127.0.0.2) to see the real TLS policy.
	ListenIP string
	// Hostname is the name in the greeting and EHLO; empty means "submission.test".
	Hostname string
	// AuthDebug turns on Dovecot's auth_debug. Its log then carries the raw AUTH responses, the
	// tokens and the introspection client's secret, so it is never printed: on failure only the
	// log's path is. For diagnosing by hand.
	AuthDebug bool
	// StartTimeout bounds the start; zero means 30 s.
	StartTimeout time.Duration
}

// XOAUTH2Submission is a running Dovecot submission server that signs clients in with XOAUTH2 or
// OAUTHBEARER against an IdP (plus PLAIN and LOGIN, which the oauth2 passdb refuses), requires
// STARTTLS and relays accepted mail to the configured relay.
type XOAUTH2Submission struct {
	// Addr is host:port of the submission listener.
	Addr string
	// CAPEM is the PEM certificate that signs the server certificate (it is self-signed: CA and
	// leaf are the same), for Postern's upstream CA setting.
	CAPEM []byte
	// CertPool holds CAPEM.
	CertPool *x509.CertPool
	// Dir holds the configuration, state and log (removed at cleanup, unless POSTERN_IT_KEEP=1,
	// or AuthDebug was set and the test failed).
	Dir string
	// ConfigPath is the dovecot.conf in Dir.
	ConfigPath string

	proc    *Process
	logPath string
}

// TLSConfig returns a client TLS configuration that trusts the server certificate.
func (s *XOAUTH2Submission) TLSConfig() *tls.Config {
	host, _, _ := net.SplitHostPort(s.Addr)
	return &tls.Config{RootCAs: s.CertPool, ServerName: host, MinVersion: tls.VersionTLS12}
}

const dovecotXOAUTH2Config = `# Generated for a test: a private Dovecot submission instance.
base_dir = {{.Dir}}/run
state_dir = {{.Dir}}/state
instance_name = {{.Instance}}
log_path = {{.Dir}}/dovecot.log
info_log_path = {{.Dir}}/dovecot.log
debug_log_path = {{.Dir}}/dovecot.log
protocols = submission
listen = {{.ListenIP}}
hostname = {{.Hostname}}

ssl = required
ssl_cert = <{{.Dir}}/cert.pem
ssl_key = <{{.Dir}}/key.pem
disable_plaintext_auth = yes

auth_mechanisms = xoauth2 oauthbearer plain login
auth_failure_delay = 0
auth_verbose = yes
auth_debug = {{if .AuthDebug}}yes{{else}}no{{end}}
auth_debug_passwords = no

submission_relay_host = {{.RelayHost}}
submission_relay_port = {{.RelayPort}}
submission_relay_trusted = no
submission_relay_ssl = no

mail_location = maildir:{{.Dir}}/mail/%u
first_valid_uid = 1

passdb {
  driver = oauth2
  mechanisms = xoauth2 oauthbearer
  args = {{.Dir}}/dovecot-oauth2.conf.ext
}
userdb {
  driver = static
  args = uid=nobody gid=nogroup home={{.Dir}}/home/%u allow_all_users=yes
}

service submission-login {
  inet_listener submission {
    address = {{.ListenIP}}
    port = {{.Port}}
  }
}
# No auth penalty (anvil) for repeated failures.
service anvil {
  chroot =
  unix_listener anvil-auth-penalty {
    mode = 0
  }
}
service stats {
  inet_listener http {
    port = 0
  }
}
`

const dovecotXOAUTH2OAuth2Config = `introspection_mode = post
introspection_url = {{.IntrospectionURL}}
force_introspection = yes
username_attribute = email
active_attribute = active
active_value = true
timeout_msecs = 10000
`

// StartXOAUTH2Submission starts `dovecot -F -c CONF` with a configuration of its own (nothing from
// /etc) in a fresh directory, and stops it when the test ends. Its log is shown if the test failed.
// It needs dovecot-core and dovecot-submissiond (integration/oauth/install.sh).
func StartXOAUTH2Submission(t T, opts XOAUTH2SubmissionOptions) *XOAUTH2Submission {
	t.Helper()
	requirePrereqs(t, SkipEnv, checkMailPrograms)
	started := time.Now()
	if opts.IdP == nil {
		t.Fatalf("StartXOAUTH2Submission: IdP is required")
	}
	if opts.RelayPort <= 0 {
		t.Fatalf("StartXOAUTH2Submission: RelayPort is required")
	}
	if opts.RelayHost == "" {
		opts.RelayHost = "127.0.0.1"
	}
	if opts.ListenIP == "" {
		opts.ListenIP = "127.0.0.1"
	}
	if ip := net.ParseIP(opts.ListenIP); ip == nil || !ip.IsLoopback() {
		t.Fatalf("StartXOAUTH2Submission: ListenIP %q is not a loopback address", opts.ListenIP)
	}
	if opts.Hostname == "" {
		opts.Hostname = "submission.test"
	}
	if opts.StartTimeout <= 0 {
		opts.StartTimeout = 30 * time.Second
	}
	dovecot, err := exec.LookPath("dovecot")
	if err != nil {
		t.Fatalf("dovecot not found (run integration/oauth/install.sh): %v", err)
	}
	if _, err := os.Stat("/usr/lib/dovecot/submission"); err != nil {
		t.Fatalf("dovecot-submissiond is not installed (run integration/oauth/install.sh): %v", err)
	}

	// Dovecot's unprivileged processes must reach the sockets in base_dir: t.TempDir is 0700, so
	// the directory is made here with 0755.
	dir, err := os.MkdirTemp("", "postern-dovecot-")
	if err != nil {
		t.Fatalf("creating Dovecot dir: %v", err)
	}
	t.Cleanup(func() {
		if oauthKeep() || (opts.AuthDebug && t.Failed()) {
			return // kept for reading by hand
		}
		_ = os.RemoveAll(dir)
	})
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatalf("chmod Dovecot dir: %v", err)
	}

	caPEM, err := dovecotXOAUTH2WriteCert(dir, opts.ListenIP)
	if err != nil {
		t.Fatalf("%v", err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(caPEM)

	introspection, err := url.Parse(opts.IdP.IntrospectionURL)
	if err != nil {
		t.Fatalf("parsing introspection URL: %v", err)
	}
	introspection.User = url.UserPassword(opts.IdP.IntrospectionClient.ID, opts.IdP.IntrospectionClient.Secret.Reveal())

	port := oauthFreePort(t, opts.ListenIP)
	data := map[string]any{
		"Dir":              dir,
		"Instance":         filepath.Base(dir),
		"ListenIP":         opts.ListenIP,
		"Port":             port,
		"Hostname":         opts.Hostname,
		"RelayHost":        opts.RelayHost,
		"RelayPort":        opts.RelayPort,
		"AuthDebug":        opts.AuthDebug,
		"IntrospectionURL": introspection.String(),
	}
	confPath := filepath.Join(dir, "dovecot.conf")
	if err := dovecotXOAUTH2Render(confPath, dovecotXOAUTH2Config, data, 0o644); err != nil {
		t.Fatalf("%v", err)
	}
	// The auth process runs as user dovecot and reads this file; it holds the introspection
	// client's secret, which exists only for this test.
	if err := dovecotXOAUTH2Render(filepath.Join(dir, "dovecot-oauth2.conf.ext"), dovecotXOAUTH2OAuth2Config, data, 0o644); err != nil {
		t.Fatalf("%v", err)
	}
	for _, sub := range []string{"run", "state", "mail", "home"} {
		if err := os.MkdirAll(filepath.Join(dir, sub), 0o755); err != nil {
			t.Fatalf("creating %s: %v", sub, err)
		}
	}

	proc, err := StartProcess(ProcessOptions{Name: "dovecot submission", Path: dovecot, Args: []string{"-F", "-c", confPath},
		LogFile: filepath.Join(dir, "dovecot.stderr"), Group: true, StopTimeout: 5 * time.Second})
	if err != nil {
		t.Fatalf("%v", err)
	}
	s := &XOAUTH2Submission{
		Addr:       net.JoinHostPort(opts.ListenIP, strconv.Itoa(port)),
		CAPEM:      caPEM,
		CertPool:   pool,
		Dir:        dir,
		ConfigPath: confPath,
		proc:       proc,
		logPath:    filepath.Join(dir, "dovecot.log"),
	}
	stopAtCleanup(t, "dovecot submission "+s.Addr, proc.Stop, func() string {
		if opts.AuthDebug {
			return "(the log holds secrets with AuthDebug and is not shown: " + s.logPath + ")"
		}
		return s.Log()
	})
	ctx, cancel := context.WithTimeout(context.Background(), opts.StartTimeout)
	defer cancel()
	if err := proc.WaitReady(ctx, func() (bool, error) { return dovecotXOAUTH2Greets(s.Addr) == nil, nil }); err != nil {
		if opts.AuthDebug {
			t.Fatalf("dovecot did not greet on %s within %s (its log holds secrets with AuthDebug: %s)", s.Addr, opts.StartTimeout, s.logPath)
		}
		t.Fatalf("%v\n%s", err, s.Log())
	}
	t.Logf("Dovecot submission %s started in %s", s.Addr, time.Since(started).Round(time.Millisecond))
	return s
}

// Stop ends Dovecot (SIGTERM to its process group, then SIGKILL after 5 s). Safe to call more
// than once.
func (s *XOAUTH2Submission) Stop() { _ = s.proc.Stop() }

// Log returns Dovecot's log and anything it printed.
func (s *XOAUTH2Submission) Log() string {
	b, _ := os.ReadFile(s.logPath)
	out := string(b)
	if e := s.proc.Log(); e != "" {
		out += "\n[stderr]\n" + e
	}
	return out
}

func dovecotXOAUTH2Greets(addr string) error {
	c, err := net.DialTimeout("tcp", addr, time.Second)
	if err != nil {
		return err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(2 * time.Second))
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return fmt.Errorf("reading greeting: %w", err)
	}
	if !strings.HasPrefix(line, "220 ") {
		return fmt.Errorf("unexpected greeting %q", strings.TrimSpace(line))
	}
	_, _ = c.Write([]byte("QUIT\r\n"))
	return nil
}

func dovecotXOAUTH2Render(path, text string, data any, mode os.FileMode) error {
	tmpl, err := template.New(filepath.Base(path)).Option("missingkey=error").Parse(text)
	if err != nil {
		return fmt.Errorf("parsing template for %s: %w", path, err)
	}
	var b strings.Builder
	if err := tmpl.Execute(&b, data); err != nil {
		return fmt.Errorf("rendering %s: %w", path, err)
	}
	if err := os.WriteFile(path, []byte(b.String()), mode); err != nil {
		return fmt.Errorf("writing %s: %w", path, err)
	}
	return nil
}

// dovecotXOAUTH2WriteCert writes a self-signed ECDSA certificate for the loopback names into
// dir/cert.pem and dir/key.pem and returns the certificate PEM.
func dovecotXOAUTH2WriteCert(dir, ip string) ([]byte, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("generating key: %w", err)
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 62))
	if err != nil {
		return nil, fmt.Errorf("generating serial: %w", err)
	}
	ips := []net.IP{net.ParseIP("127.0.0.1"), net.ParseIP("127.0.0.2"), net.IPv6loopback}
	if p := net.ParseIP(ip); p != nil && !p.Equal(ips[0]) && !p.Equal(ips[1]) && !p.Equal(ips[2]) {
		ips = append(ips, p)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: ip, Organization: []string{"Postern test submission"}},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		IsCA:                  true,
		IPAddresses:           ips,
		DNSNames:              []string{"localhost"},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, fmt.Errorf("creating certificate: %w", err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, fmt.Errorf("encoding key: %w", err)
	}
	certPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	keyPEM := pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER})
	if err := os.WriteFile(filepath.Join(dir, "cert.pem"), certPEM, 0o644); err != nil {
		return nil, fmt.Errorf("writing certificate: %w", err)
	}
	if err := os.WriteFile(filepath.Join(dir, "key.pem"), keyPEM, 0o600); err != nil {
		return nil, fmt.Errorf("writing key: %w", err)
	}
	return certPEM, nil
}
