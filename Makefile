# The one entry point. CI runs `bash .ci/run`, which runs `make ci-deps test`.
GO        ?= go
BIN       ?= bin/postern
GOFLAGS_T ?= -race -count=1
PKGS      := ./...
# The version stamped into the binary (package sidecar/buildinfo): git describe, or VERSION.
VERSION   := $(shell sh contrib/package/version.sh)
REVISION  := $(shell git rev-parse --short=12 HEAD 2>/dev/null)
LDFLAGS   := -X github.com/postern/postern/sidecar/buildinfo.version=$(VERSION) -X github.com/postern/postern/sidecar/buildinfo.revision=$(REVISION)

.PHONY: all build dist test test-unit test-integration vet fmt-check deps ci-deps bench-deps demo bench clean

all: build

build:
	$(GO) build -ldflags "$(LDFLAGS)" -o $(BIN) ./sidecar/cmd/postern

## dist: static binaries for linux/amd64 and linux/arm64 and their Debian packages, under dist/.
dist:
	GO="$(GO)" VERSION="$(VERSION)" REVISION="$(REVISION)" bash contrib/package/dist.sh

## test: everything — formatting, vet, unit tests and the integration suite against real Postfix,
## Dovecot, Vault and an OAuth2 server (installed by `make deps` on a fresh machine).
test: fmt-check vet test-unit test-integration

test-unit:
	$(GO) test $(GOFLAGS_T) $(PKGS)

test-integration: deps
	$(GO) test $(GOFLAGS_T) -tags integration -timeout 25m ./integration/...

vet:
	$(GO) vet $(PKGS)
	$(GO) vet -tags integration ./integration/...

fmt-check:
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt would change:"; echo "$$out"; exit 1; fi

## deps: install what the integration tests need (Debian packages, npm packages, the Vault dev server).
deps:
	bash integration/scripts/install-deps.sh
	bash integration/oauth/install.sh --chromium
	bash integration/vaultdev/build.sh >/dev/null

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
