package harness

// The OAuth part of the harness: a real OAuth 2.0 authorization server (oidc-provider, started
// with node from integration/oauth/idp) and a real XOAUTH2-validating submission server (Dovecot
// with an oauth2 passdb that introspects tokens at that server).
//
//  1. StartIdP writes a JSON config (clients, accounts, lifetimes), starts server.mjs on
//     127.0.0.1 with a free port and reads the issuer and endpoint URLs from its ready line.
//  2. IdP.SignIn runs authorization code + PKCE through the sign-in and consent forms with plain
//     HTTP; IdP.Refresh, RevokeToken, Introspect and Revoke (test-only admin route) cover the rest.
//  3. StartXOAUTH2Submission writes a dovecot.conf of its own (no /etc), a self-signed certificate
//     for the loopback names, and starts `dovecot -F -c CONF` on a free port, relaying to the
//     caller's relay target.
//  4. At cleanup both stop; a failed test gets their logs (which hold no tokens).

import (
	"net"
	"os"
	"path/filepath"
	"runtime"
)

// oauthKeep reports whether temporary directories are kept (POSTERN_IT_KEEP=1).
func oauthKeep() bool { return os.Getenv("POSTERN_IT_KEEP") == "1" }

// oauthDir returns the absolute path of integration/oauth in this source tree.
func oauthDir(t T) string {
	t.Helper()
	_, file, _, ok := runtime.Caller(0)
	if !ok {
		t.Fatalf("locating integration/oauth: runtime.Caller failed")
	}
	return filepath.Join(filepath.Dir(file), "..", "oauth")
}

// oauthFreePort returns a TCP port on ip that was free a moment ago. Servers that cannot report the
// port they bound (Dovecot) are given one this way.
func oauthFreePort(t T, ip string) int {
	t.Helper()
	l, err := net.Listen("tcp", net.JoinHostPort(ip, "0"))
	if err != nil {
		t.Fatalf("finding a free port on %s: %v", ip, err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}
