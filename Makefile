# tidemark: `make test` is what CI runs (.ci/run). It starts the servers it needs.
GO        ?= go
PKGS      ?= ./...
STACK     := deploy/local/stack
ITIMEOUT  ?= 15m

CHROMIUM  ?= chromium
SUDO      := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: test vet unit integration chaos stack-up stack-down stack-status bench demo demo-load build clean test-deps screenshot soak

test: vet test-deps unit integration

build:
	$(GO) build -o bin/tidemark ./cmd/tidemark

vet:
	@unformatted=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go' -not -path './.cache/*')); \
	  if [ -n "$$unformatted" ]; then echo "gofmt would change: $$unformatted"; exit 1; fi
	$(GO) vet $(PKGS)
	$(GO) vet -tags integration $(PKGS)

unit:
	$(GO) test -race -count=1 $(PKGS)

integration: stack-up test-deps
	$(GO) test -tags integration -count=1 -p 1 -run '^TestIntegration' -timeout $(ITIMEOUT) $(PKGS)

# The chaos suite's full variant (docs/testing.md, "The chaos suite"): 20
# SIGKILLs of every role and of the leader, Kafka and then Cassandra frozen
# for 60 s each under a live workload, every row checked. About 4 minutes;
# it stops by itself. make test runs the short variant. TIDEMARK_CHAOS_SEED
# replays a run's choices.
chaos: stack-up
	TIDEMARK_CHAOS=full $(GO) test -tags integration -count=1 -v -run '^TestIntegrationChaos$$' -timeout 25m ./internal/chaos/

# Test tools from Debian, installed once: headless Chromium for the status
# page's browser tests, promtool (package prometheus) for the alert-rule tests.
# Under CI those tests fail without them.
TEST_DEBS := $(if $(shell command -v $(CHROMIUM)),,chromium) $(if $(shell command -v promtool),,prometheus)
test-deps:
	@if [ -n "$(strip $(TEST_DEBS))" ]; then echo "installing $(strip $(TEST_DEBS)) with apt-get (test tools)"; \
	  $(SUDO) apt-get update -qq && $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(TEST_DEBS) >/dev/null; fi

# docs/status-page.png, from a real daemon on the local stack.
screenshot: stack-up test-deps
	TIDEMARK_STATUSPAGE_SCREENSHOT=docs/status-page.png $(GO) test -tags integration -count=1 \
	  -run '^TestIntegrationStatusPageInBrowser$$$$' ./cmd/tidemark/

stack-up:
	@$(STACK) up

stack-down:
	@$(STACK) down

stack-status:
	@$(STACK) status

# Reconcile's benchmarks load TIDEMARK_RECONCILE_BENCH_ROWS documents
# (default 100,000; 1,000,000 takes about 15 minutes to load on the 2-core
# stack, per benchmark) and run TIDEMARK_RECONCILE_BENCH_PASSES passes (2).
RECONCILE_BENCH_TIMEOUT ?= 120m
bench: stack-up
	$(GO) test -run '^$$' -bench . -benchtime 2s ./transform
	$(GO) test -run '^$$' -bench 'BenchmarkDecodeEvent|BenchmarkEventPath' -benchtime 1s ./capture
	$(GO) test -tags integration -run '^$$' -bench 'BenchmarkCapture|BenchmarkBackfillVsScan' -benchtime 1x -timeout 20m ./capture
	$(GO) test -tags integration -run '^$$' -bench . -benchtime 1x -timeout 20m ./sink
	$(GO) test -tags integration -run '^$$' -bench . -benchtime 1x -timeout 20m ./internal/standin
	$(GO) test -tags integration -run '^$$' -bench . -benchtime 1x -timeout $(RECONCILE_BENCH_TIMEOUT) ./reconcile

demo:
	@deploy/local/demo

# The demo's three-stage plan with 100,000 documents while two busy loops
# hold both cores, then with the sink capped so rounds run minutes behind
# (10 to 50 minutes; not part of make test): no false divergence, only the
# injected corruption fires a trigger, plan complete.
demo-load: stack-up
	TIDEMARK_DEMO_LOAD=1 $(GO) test -tags integration -count=1 -run '^TestDemo(UnderLoad|SlowSink)$$' -timeout 80m -v ./examples/demo/

# One daemon with every role under a steady live workload for
# TIDEMARK_SOAK_DURATION (default 30m; it stops by itself), a table of RSS,
# goroutines, open files, metric series, checkpoint topic and report files
# every TIDEMARK_SOAK_SAMPLE (1m); fails if any of them keeps growing
# (docs/testing.md). Not part of make test.
TIDEMARK_SOAK_DURATION ?= 30m
# go test's own timeout: the duration in whole minutes (a Go duration such as
# 1h30m or 300s) plus 15 for the build, the catch-up and the comparison.
SOAK_MINUTES = $(shell echo '$(TIDEMARK_SOAK_DURATION)' | awk '{ s = $$0; t = 0; \
	while (match(s, /^[0-9.]+[hms]/)) { v = substr(s, 1, RLENGTH - 1); u = substr(s, RLENGTH, 1); \
	t += (u == "h" ? 60 * v : (u == "m" ? v : v / 60)); s = substr(s, RLENGTH + 1) } print int(t) + 16 }')
soak: stack-up
	TIDEMARK_SOAK=1 TIDEMARK_SOAK_DURATION=$(TIDEMARK_SOAK_DURATION) $(GO) test -tags integration -count=1 -v \
	  -run '^TestSoak$$' -timeout $(SOAK_MINUTES)m ./cmd/tidemark/

clean: stack-down
	rm -rf .stack bin
