# The one entry point. CI runs `bash .ci/run`, which runs `make ci-deps test`.
GO        ?= go
BIN       ?= bin/postern
GOFLAGS_T ?= -race -count=1
PKGS      := ./...
# The repository's Go modules: the product (.), and the end-to-end suite with its harness, benchmark
# and demo (integration, a module of its own so that its test-only dependencies stay out of the
# product's go.mod; see integration/doc.go). integration/vaultdev, the Vault dev server, is a third,
# built by its own script and only tidy-checked here. GOWORK=off: every module builds against its
# own go.mod, as a user's build does, whatever go.work a developer keeps locally.
MODULES   := . integration
export GOWORK := off
# The version stamped into the binary (package sidecar/buildinfo): git describe, or VERSION.
VERSION   := $(shell sh contrib/package/version.sh)
REVISION  := $(shell git rev-parse --short=12 HEAD 2>/dev/null)
LDFLAGS   := -X github.com/postern/postern/sidecar/buildinfo.version=$(VERSION) -X github.com/postern/postern/sidecar/buildinfo.revision=$(REVISION)

.PHONY: all build dist test test-unit test-integration fuzz fuzz-short check vet staticcheck tidy-check fmt-check deps ci-deps bench-deps demo bench clean

all: build

build:
	$(GO) build -ldflags "$(LDFLAGS)" -o $(BIN) ./sidecar/cmd/postern

## dist: static binaries for linux/amd64 and linux/arm64 and their Debian packages, under dist/.
dist:
	GO="$(GO)" VERSION="$(VERSION)" REVISION="$(REVISION)" bash contrib/package/dist.sh

## test: everything — formatting, vet, unit tests, a short run of every fuzz target and the
## integration suite against real Postfix, Dovecot, Vault and an OAuth2 server (installed by
## `make deps` on a fresh machine).
test: check test-unit fuzz-short test-integration

## check: the static checks CI runs before any test: gofmt, go vet (also with the integration tag),
## staticcheck (both ways) and `go mod tidy -diff` for every module of the repository.
check: fmt-check vet staticcheck tidy-check

## test-unit: the unit tests of every module (the integration module's harness has some too).
test-unit:
	@set -e; for m in $(MODULES); do echo "go test ($$m)"; (cd $$m && $(GO) test $(GOFLAGS_T) $(PKGS)); done

## test-integration prints the fault matrix's counts (one row per case) after the suite, pass or fail.
test-integration: deps
	@mkdir -p integration/artifacts && rm -f integration/artifacts/fault-matrix.md
	cd integration && POSTERN_IT_ARTIFACTS=$(CURDIR)/integration/artifacts $(GO) test $(GOFLAGS_T) -tags integration -timeout 25m ./...; \
	status=$$?; \
	if [ -s artifacts/fault-matrix.md ]; then \
		echo "fault matrix:"; \
		echo "| case                             |  sent | delivered | queued | bounced | duplicates | deferred |"; \
		sort artifacts/fault-matrix.md; \
	fi; \
	exit $$status

## fuzz-short: every fuzz target (each `func Fuzz...` in a test file), FUZZTIME_SHORT each; part of
## `make test`. fuzz: the same for FUZZTIME each (default 5m), to run now and then. Whatever a run
## finds is written under the package's testdata/fuzz and fails the run.
# The short run counts executions, not seconds: with a duration, Go 1.26's fuzz coordinator can
# report its own deadline as a failure ("context deadline exceeded", no failing input) when a
# worker is still busy as time runs out on a loaded machine (go.dev/issue/75804, fixed in Go 1.27).
FUZZTIME_SHORT ?= 20000x
FUZZTIME       ?= 5m
FUZZ_DIRS      := sidecar plugin vault

fuzz-short: FUZZTIME := $(FUZZTIME_SHORT)
fuzz-short fuzz:
	@set -e; grep -rHo --include='*_test.go' '^func Fuzz[A-Za-z0-9_]*' $(FUZZ_DIRS) | sort | \
	while IFS=: read -r file fn; do \
		name=$${fn#func }; pkg=./$$(dirname "$$file"); \
		echo "fuzz: $$pkg $$name for $(FUZZTIME)"; \
		$(GO) test -run '^$$' -fuzz "^$$name\$$" -fuzztime $(FUZZTIME) "$$pkg"; \
	done

## vet, staticcheck: every module; the integration module's files are all checked with the
## integration tag (no file there is excluded by it).
vet:
	$(GO) vet $(PKGS)
	cd integration && $(GO) vet -tags integration $(PKGS)

STATICCHECK_VERSION ?= 2026.2.2
STATICCHECK := $(shell $(GO) env GOPATH)/bin/staticcheck

$(STATICCHECK):
	GOFLAGS= $(GO) install honnef.co/go/tools/cmd/staticcheck@$(STATICCHECK_VERSION)

staticcheck: $(STATICCHECK)
	$(STATICCHECK) $(PKGS)
	cd integration && $(STATICCHECK) -tags integration $(PKGS)

tidy-check:
	@set -e; for m in $(MODULES) integration/vaultdev; do echo "go mod tidy -diff ($$m)"; (cd $$m && $(GO) mod tidy -diff); done

fmt-check:
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt would change:"; echo "$$out"; exit 1; fi

## deps: install what the integration tests need (Debian packages, npm packages, the Vault dev server,
## and for the container scenarios a container engine — Podman when no Docker engine answers — with
## the base images made locally; POSTERN_IT_SKIP_CONTAINERS=1 leaves that out and skips them).
deps:
	bash integration/scripts/install-deps.sh
	bash integration/oauth/install.sh --chromium
	bash integration/vaultdev/build.sh >/dev/null
	@if [ "$(POSTERN_IT_SKIP_CONTAINERS)" = 1 ]; then \
		echo "POSTERN_IT_SKIP_CONTAINERS=1: no container engine, the container scenarios will be skipped"; \
	else \
		bash integration/scripts/container-base.sh >/dev/null; \
	fi

ci-deps: deps

## demo: on a fresh machine, build Postern, start a private Postfix, an upstream mail server and
## Postern with the embedded store, relay one message and show where it arrived.
demo:
	bash integration/scripts/demo.sh

## bench-deps: what `make bench` needs on a fresh machine (Postfix with smtp-source, the OAuth
## server's npm packages); no browser, no Vault.
bench-deps:
	bash integration/scripts/install-deps.sh
	bash integration/oauth/install.sh

## bench: Postern against Postfix relaying directly, on this machine (not part of `make test`).
bench: bench-deps
	bash integration/scripts/bench.sh

clean:
	rm -rf bin dist
