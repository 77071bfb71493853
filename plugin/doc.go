// Package plugin owns the stable contract between Postern and out-of-process credential
// providers, and the host side that runs them.
//
// A credential provider is a separate binary that hands Postern the credential for a project
// whose secrets live somewhere Postern does not know: a corporate secret manager, a hardware
// security module, a custom OAuth flow. Postern starts it with hashicorp/go-plugin and calls it
// over gRPC; the wire contract is proto/credential.proto (package postern.plugin.v1).
//
// The flow:
//
//  1. Postern's configuration names a provider binary for projects with auth.type "plugin". The
//     sidecar calls Open, which starts the binary with only the environment in HostOptions.Env,
//     completes go-plugin's handshake (the Handshake magic cookie, gRPC only, automatic mutual
//     TLS on a private Unix socket) and returns a Host.
//  2. In the provider process, Serve registers the Provider with go-plugin's gRPC server and
//     prints the handshake line on standard output; that line is the only thing that may ever be
//     written there. The provider's log lines go as hclog JSON to standard error (NewLogger), and
//     the Host re-logs them at their level under logger=<binary name>.
//  3. When the sidecar needs a project's credential it calls Host.Credential with the project's
//     name, mailbox and the provider-specific config map from the project record. The request,
//     ctx's deadline and ctx's cancellation cross to the provider.
//  4. The provider answers with a mechanism (PLAIN, LOGIN or XOAUTH2), a username, the secret and
//     an optional expiry, or with an error: *NeedsReauthError when a person must act,
//     *TemporaryError when asking later may work. Any other error travels as a TemporaryError.
//     The Host returns the same typed error, so errors.As works on the sidecar's side.
//  5. The Host checks the answer (known mechanism, a username, a non-empty secret) and wraps the
//     secret in a Secret, which redacts itself in every log and error.
//  6. If the upstream server refuses the credential, the sidecar calls Host.Rejected with the
//     upstream's reply, then Host.Credential again with ForceRefresh set.
//  7. If the provider process dies, the next call starts a new one; a call that finds the
//     connection broken restarts the process and is tried once more. Host.Close ends the
//     process.
//
// This package imports nothing else from Postern: provider authors depend on it alone.
package plugin
