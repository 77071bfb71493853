package admin

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"sync"
	"syscall"
	"time"
)

// Certificate serves the admin listener's TLS certificate from a certificate and a key file, and
// reads them again when either changes, so that a renewed certificate (certbot, cert-manager, an
// operator copying files) is served from the next connection on, without a restart:
//
//  1. NewCertificate loads both files, failing when they do not hold a certificate and its key.
//  2. GetCertificate, called by crypto/tls at every handshake, stats both files and compares
//     their modification time, size and inode with those of the last load; on a change it loads
//     them again.
//  3. A change that does not load (a key written before its certificate, a half-copied file) keeps
//     the previous certificate and logs why; the next handshake tries again.
type Certificate struct {
	certFile, keyFile string
	log               *slog.Logger

	mu    sync.Mutex
	cert  *tls.Certificate
	stamp [2]fileStamp
}

// fileStamp is what tells that a file changed without reading it.
type fileStamp struct {
	mod   time.Time
	size  int64
	inode uint64
}

func stampOf(path string) (fileStamp, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return fileStamp{}, err
	}
	s := fileStamp{mod: fi.ModTime(), size: fi.Size()}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		s.inode = st.Ino
	}
	return s, nil
}

// NewCertificate loads the PEM certificate chain in certFile and its key in keyFile.
func NewCertificate(certFile, keyFile string, log *slog.Logger) (*Certificate, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	c := &Certificate{certFile: certFile, keyFile: keyFile, log: log}
	if err := c.load(); err != nil {
		return nil, err
	}
	return c, nil
}

// load reads both files; c.mu is held or c is not shared yet.
func (c *Certificate) load() error {
	var stamp [2]fileStamp
	for i, f := range []string{c.certFile, c.keyFile} {
		s, err := stampOf(f)
		if err != nil {
			return fmt.Errorf("admin.tls: %w", err)
		}
		stamp[i] = s
	}
	cert, err := tls.LoadX509KeyPair(c.certFile, c.keyFile)
	if err != nil {
		return fmt.Errorf("admin.tls: loading %s and %s: %w", c.certFile, c.keyFile, err)
	}
	c.cert, c.stamp = &cert, stamp
	return nil
}

// GetCertificate returns the current certificate, read again first when a file changed. It is
// tls.Config.GetCertificate.
func (c *Certificate) GetCertificate(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	changed := false
	for i, f := range []string{c.certFile, c.keyFile} {
		s, err := stampOf(f)
		if err != nil || s != c.stamp[i] {
			changed = true
		}
	}
	if changed {
		prev := c.cert
		if err := c.load(); err != nil {
			c.log.Warn("the admin listener's certificate files changed but do not load; serving the previous certificate", "err", err)
		} else if prev == nil || !bytes.Equal(prev.Certificate[0], c.cert.Certificate[0]) {
			c.log.Info("serving a new certificate on the admin listener", "cert_file", c.certFile)
		}
	}
	return c.cert, nil
}

// TLSConfig is the server configuration of the admin listener: TLS 1.2 or later, with c's
// certificate.
func (c *Certificate) TLSConfig() *tls.Config {
	return &tls.Config{MinVersion: tls.VersionTLS12, GetCertificate: c.GetCertificate}
}

// ProbeClient returns the HTTP client with which a command on the same host (`postern
// healthcheck`) reaches the admin listener. With certFile "" it is plain HTTP. Else it trusts
// exactly the certificate in certFile, whoever issued it and whatever names it holds: the probe
// dials the listen address (often 127.0.0.1 or a container's address, which no certificate names),
// and reading the certificate from the file the server serves is the stronger check.
func ProbeClient(certFile string) (*http.Client, error) {
	if certFile == "" {
		return &http.Client{}, nil
	}
	b, err := os.ReadFile(certFile)
	if err != nil {
		return nil, fmt.Errorf("admin.tls.cert_file: %w", err)
	}
	block, _ := pem.Decode(b)
	if block == nil || block.Type != "CERTIFICATE" {
		return nil, fmt.Errorf("admin.tls.cert_file %s holds no PEM certificate", certFile)
	}
	want := block.Bytes
	t := http.DefaultTransport.(*http.Transport).Clone()
	t.Proxy = nil
	t.TLSClientConfig = &tls.Config{
		MinVersion:         tls.VersionTLS12,
		InsecureSkipVerify: true, // VerifyConnection pins the certificate instead
		VerifyConnection: func(cs tls.ConnectionState) error {
			if len(cs.PeerCertificates) == 0 || !bytes.Equal(cs.PeerCertificates[0].Raw, want) {
				return errors.New("the admin listener serves another certificate than admin.tls.cert_file holds")
			}
			if now := time.Now(); now.After(cs.PeerCertificates[0].NotAfter) {
				return x509.CertificateInvalidError{Cert: cs.PeerCertificates[0], Reason: x509.Expired}
			}
			return nil
		},
	}
	return &http.Client{Transport: t}, nil
}

// ProbeURL is the URL of path on the admin listener at addr, for a command on the same host: a
// wildcard address (0.0.0.0, [::]) is reached on loopback.
func ProbeURL(addr string, tlsOn bool, path string) string {
	if host, port, err := net.SplitHostPort(addr); err == nil {
		if ip := net.ParseIP(host); host == "" || (ip != nil && ip.IsUnspecified()) {
			addr = net.JoinHostPort("127.0.0.1", port)
			if ip != nil && ip.To4() == nil {
				addr = net.JoinHostPort("::1", port)
			}
		}
	}
	scheme := "http"
	if tlsOn {
		scheme = "https"
	}
	return scheme + "://" + addr + path
}

// tlsListener wraps l in TLS with cfg, or returns l when cfg is nil.
func tlsListener(l net.Listener, cfg *tls.Config) net.Listener {
	if cfg == nil {
		return l
	}
	return tls.NewListener(l, cfg)
}
