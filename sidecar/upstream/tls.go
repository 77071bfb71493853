package upstream

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"strconv"

	"github.com/postern/postern/sidecar/project"
)

// address is the upstream's host:port (IPv6 literals bracketed).
func address(u project.Upstream) string {
	return net.JoinHostPort(u.Host, strconv.Itoa(u.Port))
}

// serverName is the name the upstream's certificate must carry.
func serverName(u project.Upstream) string {
	if u.ServerName != "" {
		return u.ServerName
	}
	return u.Host
}

// tlsConfig verifies the upstream's certificate against roots (the system's when nil) plus the
// project's own CAs, for the project's server name.
func tlsConfig(u project.Upstream, roots *x509.CertPool) (*tls.Config, error) {
	cfg := &tls.Config{
		ServerName:         serverName(u),
		MinVersion:         tls.VersionTLS12,
		InsecureSkipVerify: u.InsecureSkipVerify,
		RootCAs:            roots,
	}
	if u.CAPEM != "" {
		var pool *x509.CertPool
		if roots != nil {
			pool = roots.Clone()
		} else if sys, err := x509.SystemCertPool(); err == nil {
			pool = sys
		} else {
			pool = x509.NewCertPool()
		}
		if !pool.AppendCertsFromPEM([]byte(u.CAPEM)) {
			return nil, errors.New("upstream.ca_pem holds no PEM certificate")
		}
		cfg.RootCAs = pool
	}
	return cfg, nil
}

// handshakeError describes a failed TLS handshake, saying what to set when the certificate was the
// trouble.
func handshakeError(addr, name string, err error) *Error {
	var (
		host    x509.HostnameError
		unknown x509.UnknownAuthorityError
		invalid x509.CertificateInvalidError
		verify  *tls.CertificateVerificationError
	)
	msg := "TLS handshake failed"
	switch {
	case errors.As(err, &host):
		msg = fmt.Sprintf("the upstream's certificate is not valid for %q: set upstream.server_name to a name it carries", name)
	case errors.As(err, &unknown):
		msg = "the upstream's certificate is signed by an unknown authority: set upstream.ca_pem to the CA that signed it"
	case errors.As(err, &invalid):
		msg = "the upstream's certificate is not valid (expired, or not for a server): renew it, or set upstream.ca_pem and upstream.server_name to match it"
	case errors.As(err, &verify):
		msg = "the upstream's certificate was not accepted: set upstream.ca_pem or upstream.server_name to match it"
	}
	return &Error{Stage: StageTLS, Addr: addr, Message: msg, Err: err}
}
