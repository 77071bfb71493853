// Package integration holds Postern's end-to-end tests against real software. They are behind the
// build tag "integration" and need root, Postfix and Dovecot (integration/scripts/install-deps.sh
// installs them). `make test-integration` runs them; by hand, from this directory:
//
//	cd integration && go test -race -tags integration -count=1 -timeout 25m ./...
//
// # A module of its own
//
// This directory is the Go module github.com/postern/postern/integration, apart from the product
// module at the repository's root, so that what only the tests, the harness, the benchmark and the
// demo need (chromedp for the sign-in page in Chromium, and what it pulls in) never appears in the
// product's go.mod: a user building Postern or a plugin author importing plugin/ inherits none of
// it. `replace github.com/postern/postern => ../` makes it test the working tree, never a released
// version. From the root, `./...` therefore no longer covers these packages; the Makefile runs
// every target (test-unit, vet, staticcheck, tidy-check, bench, demo) over each module.
//
// The repository keeps no go.work, and the Makefile sets GOWORK=off. A workspace would let
// `go test ./integration/...` work from the root, but it also changes what every other command
// resolves: versions are then chosen over the union of the modules' requirements, so the product
// would be built and tested against whatever the test module requires (a newer go-smtp, say)
// rather than against its own go.mod, which is what a user gets; `go mod tidy` ignores go.work,
// so the two could disagree without any check failing. The replace directive already gives the
// one thing a workspace would: the tests see the root's current source. A developer who wants a
// workspace may keep an untracked one; the Makefile does not use it.
//
// The relay tests (relay_test.go) run the whole path of a message:
//
//  1. the test submits mail to the front Postfix, which carries contrib/postfix/main.cf and
//     master.cf verbatim;
//  2. Postfix asks Postern's socketmap for the sender's transport and delivers the mail of
//     routed senders to Postern's LMTP socket, everything else to the direct destination;
//  3. Postern, built from ./sidecar/cmd/postern (or POSTERN_BIN), relays it with STARTTLS and AUTH
//     to the organisation's own server, played by the upstream Postfix with Dovecot SASL;
//  4. the test reads the delivered mail from the upstream's Maildirs and Postfix's queue and log.
//
// The container scenarios (container_test.go, compose_test.go) run the operator's Postfix from
// contrib/postfix/Dockerfile's postfix image against Postern on the host, over the shared socket
// directory and over loopback TCP, and bring up contrib/postfix/compose.yaml (Postfix, Postern's
// image, a Vault dev server). They use Docker where its engine answers and Podman otherwise, which
// integration/scripts/container-base.sh installs along with the locally made base images; they
// are skipped only with POSTERN_IT_SKIP_CONTAINERS=1.
//
// The parts are started by package integration/harness. Without Postfix or Dovecot the tests
// fail, unless POSTERN_IT_SKIP=1; POSTERN_IT_KEEP=1 keeps each test's directory for inspection.
package integration
