# tidemark: `make test` is what CI runs (.ci/run). It starts the servers it needs.
GO        ?= go
PKGS      ?= ./...
STACK     := deploy/local/stack
ITIMEOUT  ?= 15m

CHROMIUM  ?= chromium
SUDO      := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: test vet unit integration stack-up stack-down stack-status bench demo build clean browser-deps screenshot

test: vet unit integration

build:
	$(GO) build -o bin/tidemark ./cmd/tidemark

vet:
	@unformatted=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go' -not -path './.cache/*')); \
	  if [ -n "$$unformatted" ]; then echo "gofmt would change: $$unformatted"; exit 1; fi
	$(GO) vet $(PKGS)
	$(GO) vet -tags integration $(PKGS)

unit:
	$(GO) test -race -count=1 $(PKGS)

integration: stack-up browser-deps
	$(GO) test -tags integration -count=1 -p 1 -run '^TestIntegration' -timeout $(ITIMEOUT) $(PKGS)

# The status page's browser tests drive Debian's headless Chromium; under CI
# they fail without it, so it is installed here (once, about a minute).
browser-deps:
	@command -v $(CHROMIUM) >/dev/null 2>&1 || { echo "installing chromium with apt-get (for the status page's browser tests)"; \
	  $(SUDO) apt-get update -qq && $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }

# docs/status-page.png, from a real daemon on the local stack.
screenshot: stack-up browser-deps
	TIDEMARK_STATUSPAGE_SCREENSHOT=docs/status-page.png $(GO) test -tags integration -count=1 \
	  -run '^TestIntegrationStatusPageInBrowser$$$$' ./cmd/tidemark/

stack-up:
	@$(STACK) up

stack-down:
	@$(STACK) down

stack-status:
	@$(STACK) status

bench: stack-up
	$(GO) test -run '^$$' -bench . -benchtime 2s ./transform
	$(GO) test -tags integration -run '^$$' -bench . -benchtime 1x -timeout 20m ./capture
	$(GO) test -tags integration -run '^$$' -bench . -benchtime 1x -timeout 20m ./sink

demo:
	@deploy/local/demo

clean: stack-down
	rm -rf .stack bin
