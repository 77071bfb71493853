// Package harness starts the real parts of Postern's end-to-end tests: private Postfix instances,
// a Dovecot SASL server, a test certificate authority and the postern binary itself, each in a
// temporary directory, on loopback only, on free ports.
//
// A test (or the demo program) uses it like this:
//
//  1. Require checks that Postfix and Dovecot are installed and fails the test at once, naming
//     `make deps`, when they are not, unless POSTERN_IT_SKIP=1; every Start function checks its
//     own prerequisites the same way before it starts anything (prereq.go): the OAuth server's
//     npm packages, the Vault dev server, Chromium, a container engine.
//  2. Start brings up, in one temporary directory:
//     a. a test CA and a server certificate for 127.0.0.1, localhost and every mx.*.test name;
//     b. Dovecot, answering SASL (PLAIN, LOGIN) from a passwd-file of the organisations' users;
//     c. the upstream Postfix: one listener per client organisation (mx.client-a.test,
//     mx.client-b.test) that requires STARTTLS and AUTH, plus a "direct" listener
//     (mx.direct.test) without AUTH, all delivering into Maildirs and rejecting unknown
//     recipients with 550 5.1.1;
//     d. postern serve (when a binary is given), with a generated config and the embedded store;
//     e. the front Postfix, the operator's Postfix: contrib/postfix/main.cf and master.cf appended
//     verbatim, postern_run_dir pointed at Postern's directory, everything else relayed to the
//     direct listener.
//  3. The test adds projects with Postern.CLI, submits mail with Front.Submit, watches the queue
//     with Front.Queue, Flush and WaitQueueEmpty, and finds delivered mail with
//     Upstream.WaitForMessage.
//  4. At cleanup everything is stopped (Postfix masters, Dovecot, Postern) and the directory is
//     removed; when the test failed, the Postfix, Dovecot and Postern logs are written to the
//     test log as well.
//
// Every server the harness runs (Postern, Postfix with `postfix start-fg`, Dovecot with
// `dovecot -F`, the Vault dev server, the OAuth server) runs as a child under one helper,
// Process (process.go): start, wait until a probe says it serves, stop with SIGTERM (or the
// server's own stop command) and then SIGKILL, and its log in the test log when the test failed.
// Every helper takes the one test interface T.
//
// The harness needs root (Postfix's daemons run as the postfix user, Dovecot's as dovecot).
package harness
