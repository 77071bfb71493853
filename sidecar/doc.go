// Package sidecar is Postern: a sidecar for an existing Postfix that delivers each client
// organisation's mail through that organisation's own mail server, signed in with the
// organisation's own credentials (basic SMTP AUTH, or OAuth 2.0 with XOAUTH2).
//
// Start here. The path of one message:
//
//  1. An application submits mail to Postfix (port 25/587, or sendmail).
//  2. Postfix asks Postern which transport serves the envelope sender, over the socketmap lookup
//     protocol (sender_dependent_default_transport_maps = socketmap:...; package socketmap).
//     Postern answers "postern:unix:<lmtp socket>" for the senders of a known project (package
//     route, over the live view of the store kept by package directory) and NOTFOUND for
//     everyone else, so unrelated mail never touches Postern.
//  3. Optionally, at submission, Postfix's smtpd_milters asks Postern's milter (package milter),
//     which rejects early what the upstream would reject later.
//  4. Postfix's queue manager delivers the message to Postern's LMTP server on a unix socket, or
//     its SMTP server on loopback (package smtpd).
//  5. At MAIL FROM, Postern resolves the project, gets a credential (package credential for basic
//     auth, package token for OAuth: cache first, store second, the identity provider only when a
//     token is near expiry) and takes an authenticated connection to the project's upstream from
//     that project's pool, or opens one: TCP, STARTTLS or implicit TLS with verification, EHLO
//     again, AUTH PLAIN, LOGIN or XOAUTH2 (packages upstream and xoauth2).
//  6. MAIL, RCPT and DATA go to the upstream (in one round trip where it offers PIPELINING; over
//     LMTP the recipients go with DATA) and the message streams on while Postfix waits. Postern
//     stores no mail: Postfix's queue owns every message until the upstream has accepted it. The
//     upstream's reply goes back to Postfix, per recipient over LMTP.
//  7. Postfix logs, defers, retries or bounces as it does for any other transport. Every
//     operational fault is a temporary (4xx) reply, so mail waits in Postfix's queue; only a
//     definite no from the upstream is a 5xx.
//
// A mailbox owner signs an OAuth project in once, through the provider's own login page, from a
// signed, expiring, single-use link on Postern's admin listener (package signin; `postern
// authorize-link`). After that the token broker refreshes by itself and writes every rotated
// refresh token back to the store before using the new access token; a revoked grant marks the
// project needs_reauth, its mail waits in Postfix's queue, and flows once the owner signs in again.
//
// Projects and tokens live in a store (package store): an embedded database on a single host,
// each record encrypted (store/boltstore, which migrates the earlier single-file store/filestore),
// or HashiCorp Vault (store/vaultstore over package vault). Run wires the parts together and shuts them down in
// order: stop accepting, let transactions in flight finish, close upstream connections, close
// the store.
package sidecar
