// Package sidecar is Postern: a sidecar for an existing Postfix that delivers each client
// organisation's mail through that organisation's own mail server, signed in with the
// organisation's own credentials (basic SMTP AUTH, or OAuth 2.0 with XOAUTH2).
//
// Start here. Wiring goes one way: cmd/postern → cli → sidecar → the parts. cmd/postern wires the
// process (streams, signals, exit code); package cli parses the commands and calls into this
// package; this package builds the parts, once and the same way for every command (NewParts:
// the store, the credential sources behind one credential.Manager, the upstream pools), and
// composes `postern serve` (Run), `check`, `send-test` and the test of `authorize`. It imports no
// cli (a test enforces it). The parts:
//
//	route, directory, socketmap   which project serves a sender
//	smtpd, milter                 what Postfix hears; their replies come from one policy (reply)
//	credential                    the one sign-in to an upstream (sources: credential.Basic,
//	                              token.Broker for OAuth, credential.Plugins over plugin)
//	upstream, xoauth2             the client session and the pools
//	limits                        per-mailbox limits, shared out across replicas; quota pauses
//	token, oauth, signin          OAuth tokens, the identity providers, the sign-in pages
//	keepalive                     refreshes idle OAuth grants before they expire of inactivity
//	advice                        what the operator must do next, for check, CLI, status, sign-in
//	health, notify                each project's health from its last attempts (projecthealth.go
//	                              wires it); webhooks when a project fails, needs a sign-in, recovers
//	admin                         status page, JSON API, metrics, health checks
//	store (boltstore, vaultstore) projects and tokens
//	config                        the file's schema; each default is the part's own (defaults_test.go)
//	backoff                       the one source of waits between retries
//
// The path of one message:
//
//  1. An application submits mail to Postfix (port 25/587, or sendmail).
//  2. Postfix asks Postern which transport serves the envelope sender, over the socketmap lookup
//     protocol (package socketmap). Postern answers "postern:unix:<lmtp socket>" for the senders
//     of a known project (package route, over the live view of the store kept by package
//     directory) and NOTFOUND for everyone else, so unrelated mail never touches Postern.
//  3. Optionally, at submission, Postfix's smtpd_milters asks Postern's milter (package milter),
//     which rejects early what the upstream would reject later; a credential that needs a sign-in
//     is read from credential.Manager.State. Its replies come from package reply.
//  4. Postfix's queue manager delivers the message to Postern's LMTP server on a unix socket, or
//     its SMTP server on loopback (package smtpd).
//  5. At MAIL FROM, smtpd resolves the project and hands the sign-in to credential.Manager.SignIn,
//     which knows the auth types: it picks the source (basic password, the token broker: cache
//     first, store second, the identity provider only when a token is near expiry; or a
//     credential provider), and calls smtpd back to take an authenticated connection from the
//     project's pool, or to open one (package upstream: TCP, STARTTLS or implicit TLS with
//     verification, EHLO again, AUTH PLAIN, LOGIN or XOAUTH2).
//  6. If the upstream refuses the credential, the Manager asks the source to renew it, once per
//     refused credential (token.Broker.Renew: callers refused with the same token share one
//     refresh, and no token is renewed twice), and smtpd tries once more. A refusal that stands is
//     reported to the source (the project shows unhealthy on /status, with advice.Status saying
//     what to fix) and the mail is deferred with 451 4.7.0 (package reply); an accepted sign-in is
//     reported too, and clears that mark.
//  7. MAIL, RCPT and DATA go to the upstream (in one round trip where it offers PIPELINING; over
//     LMTP the recipients go with DATA) and the message streams on while Postfix waits. Postern
//     stores no mail: Postfix's queue owns every message until the upstream has accepted it. The
//     upstream's reply goes back to Postfix, per recipient over LMTP.
//  8. Postfix logs, defers, retries or bounces as it does for any other transport. Every
//     operational fault is a temporary (4xx) reply, so mail waits in Postfix's queue; only a
//     definite no from the upstream is a 5xx.
//  9. How the transaction ended, at the stage where it ended and with the same reason that chose
//     Postfix's reply, is recorded in the project's health (package health): /status, the API,
//     the metrics and the webhooks (package notify) read it there.
//
// The path of one sign-in (an OAuth mailbox):
//
//  1. The operator runs `postern authorize-link NAME` (cli → package signin) and sends the signed,
//     expiring, single-use link to the mailbox owner; advice.SignIn says which command fits the
//     project's grant.
//  2. The owner opens it on Postern's admin listener (package signin, served by Run), which sends
//     them to the identity provider's login (package oauth: authorization code with PKCE).
//  3. The callback checks the account that signed in is the project's mailbox and saves the grant
//     through the token broker (token.Broker.Store), which clears needs_reauth.
//  4. The page tests the new token on a new upstream connection: Parts.SignInCheck, which is
//     credential.Manager.Verify (the same sign-in as a delivery, without renewing a token just
//     issued). Accepted: the project is healthy, and queued mail flows at Postfix's next retry.
//     Refused: the page shows the upstream's words and advice.Next's fix (for 535 5.7.139: enable
//     SMTP AUTH for the mailbox or the tenant). `postern authorize --device` does steps 2-4 at a
//     terminal, with the same Parts.
//  5. After that the broker refreshes by itself and writes every rotated refresh token back to the
//     store before using the new access token; a revoked grant marks the project needs_reauth, its
//     mail waits in Postfix's queue, and flows once the owner signs in again. A grant that sends
//     nothing is refreshed anyway every tokens.keepalive_interval (package keepalive), so that it
//     never dies of inactivity.
//
// Projects and tokens live in a store (package store, opened by OpenStore): an embedded database
// on a single host, each record encrypted (store/boltstore, which migrates the earlier single-file
// store/filestore), or HashiCorp Vault (store/vaultstore over package
// vault), which Run opens in the background (store.Pending) so that Postern serves while Vault is
// unreachable. Run shuts the parts down in order: stop accepting, let transactions in flight
// finish, close upstream connections, stop the credential sources, close the store.
package sidecar
