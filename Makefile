# Build, test and package the agent.
#   make build     static binary bin/agent (+ bin/agentctl symlink)
#   make test      go test -race ./...
#   make lint      leftover files, gofmt and go vet
#   make package   .deb and .rpm into dist/
#   make e2e       the end-to-end test on a real systemd (root; see deploy/e2e/prepare.sh)
#   make vm        the VM tests: a real kernel, cgroup v2, cloud-init (root; see deploy/vm/image.sh)
#   make bench     benchmarks

VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo 0.1.0-dev)
BINDIR ?= bin
DISTDIR ?= dist
GO ?= go
GOARCH ?= $(shell $(GO) env GOARCH)

LDFLAGS := -s -w -X main.version=$(VERSION)

.PHONY: all build test lint package e2e e2e-prepare vm vm-image bench clean

all: lint test build

# GOWORK=off: the shipped binary is built from the main module's go.mod
# alone (deploy/ is a module of its own for the deploy tests and nfpm).
build:
	GOWORK=off CGO_ENABLED=0 GOARCH=$(GOARCH) $(GO) build -trimpath -ldflags "$(LDFLAGS)" -o $(BINDIR)/agent .
	ln -sf agent $(BINDIR)/agentctl

test:
	$(GO) test -race ./... ./deploy/...

# Merge and editor leftovers tracked by git, gofmt of every tracked .go
# file, go vet of both modules (go.work joins them).
lint:
	@out=$$(git ls-files -- '*.orig' '*.rej' '*~'); \
	if [ -n "$$out" ]; then echo "leftover files tracked (git rm them):"; echo "$$out"; exit 1; fi
	@out=$$(git ls-files -z -- '*.go' | xargs -0 -r gofmt -l); \
	if [ -n "$$out" ]; then echo "gofmt needed on:"; echo "$$out"; exit 1; fi
	$(GO) vet ./... ./deploy/...

# Package version: v1.2.3-4-gabc -> 1.2.3+4+gabc (sorts after 1.2.3 for dpkg and
# rpm); without a tag, git describe gives a bare hash -> 0.0.0+hash.
PKG_VERSION := $(shell echo '$(VERSION)' | sed -E 's/^v//; s/-/+/g; /^[0-9]+\.[0-9]+/!s/^/0.0.0+/')

package: build
	mkdir -p $(DISTDIR)
	VERSION='$(PKG_VERSION)' ARCH=$(GOARCH) BINDIR=$(BINDIR) \
		$$(cd deploy && $(GO) tool -n nfpm) package --config packaging/nfpm.yaml --packager deb --target $(DISTDIR)/
	VERSION='$(PKG_VERSION)' ARCH=$(GOARCH) BINDIR=$(BINDIR) \
		$$(cd deploy && $(GO) tool -n nfpm) package --config packaging/nfpm.yaml --packager rpm --target $(DISTDIR)/

e2e-prepare:
	deploy/e2e/prepare.sh

e2e:
	$(GO) test -v -count=1 -timeout 30m -run 'EndToEnd' ./deploy/

vm-image:
	deploy/vm/image.sh

vm: vm-image
	$(GO) test -v -count=1 -timeout 20m -run 'VM' ./deploy/

# The Go benchmarks, then the side-by-side run against PM2 (about 17 min;
# needs the npm registry). Not run by CI.
bench: build
	$(GO) test -run XXX -bench . ./...
	$(GO) run ./bench/pm2 -agent $(BINDIR)/agent

clean:
	rm -rf $(BINDIR) $(DISTDIR)
