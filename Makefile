# pgmux — see README.md. `make help` lists the targets.
GO      ?= go
BIN     ?= bin
FUZZTIME ?= 30s

.PHONY: help build run demo test test-short lint cross fuzz deps bench bench-go profile clean

help: ## List targets.
	@awk 'BEGIN{FS=":.*##"} /^[a-z-]+:.*##/{printf "  %-12s %s\n",$$1,$$2}' $(MAKEFILE_LIST)

build: ## Build bin/pgmux, bin/pgmux-demo and bin/pgmux-load.
	$(GO) build -o $(BIN)/ ./cmd/pgmux ./cmd/pgmux-demo ./cmd/pgmux-load

demo: build ## The main job: pgmux, the demo API and a 20 s load on a throwaway PostgreSQL and Redis; prints the report.
	scripts/demo.sh

run: build ## Run pgmux on 127.0.0.1:6432 in front of the PostgreSQL on 127.0.0.1:5432 (starts one if none answers).
	scripts/run.sh

test: deps ## Everything, race detector on; starts throwaway PostgreSQL and Redis unless PGMUX_TEST_DSN / PGMUX_TEST_REDIS_URL are set.
	$(GO) test -race -count=1 -p 1 -timeout 15m ./...
	PGMUX_TEST_RELAY_LOOP=0 $(GO) test -race -count=1 -timeout 10m ./proxy # again with relay_loop off
	PGMUX_TEST_LOOPS=1 $(GO) test -race -count=1 -timeout 10m ./proxy # again with one event loop (the first run has one per core)

test-short: ## Unit tests only, no servers.
	$(GO) test -race -short -count=1 ./...

lint: ## gofmt and go vet.
	@test -z "$$(gofmt -l .)" || { echo "gofmt would change:"; gofmt -l .; exit 1; }
	$(GO) vet ./...

cross: ## Build and vet for macOS and Windows: the portable driver must stand without the Linux event loop.
	GOOS=darwin $(GO) build ./... && GOOS=darwin $(GO) vet ./...
	GOOS=windows $(GO) build ./... && GOOS=windows $(GO) vet ./...

fuzz: ## Fuzz the startup parser, the message reader, the core's batch scan, the settings literals, the traceparent reader, the read-only lexer and both logins' exchanges (FUZZTIME=30s each).
	$(GO) test -run='^$$' -fuzz=FuzzReadStartup -fuzztime=$(FUZZTIME) ./protocol
	$(GO) test -run='^$$' -fuzz=FuzzReader -fuzztime=$(FUZZTIME) ./protocol
	$(GO) test -run='^$$' -fuzz=FuzzScan -fuzztime=$(FUZZTIME) ./core
	$(GO) test -run='^$$' -fuzz=FuzzAppendLiteral -fuzztime=$(FUZZTIME) ./core
	$(GO) test -run='^$$' -fuzz=FuzzTraceparent -fuzztime=$(FUZZTIME) ./tracing
	$(GO) test -run='^$$' -fuzz=FuzzReadOnly -fuzztime=$(FUZZTIME) ./core
	$(GO) test -run='^$$' -fuzz=FuzzClientAuth -fuzztime=$(FUZZTIME) ./core
	$(GO) test -run='^$$' -fuzz=FuzzServerLogin -fuzztime=$(FUZZTIME) ./core

deps: ## Check for PostgreSQL server binaries, pgbench and psql; install them on Debian when run as root.
	@scripts/deps.sh

bench: ## Side-by-side pgbench matrix: direct, PgBouncer and pgmux (bench/run.sh; BENCH_DURATION=10 seconds a point).
	bench/run.sh

bench-go: ## Go micro-benchmarks of the hot paths (relay, prepared-statement mapping, pool acquire/release, batched sends).
	$(GO) test -short -run='^$$' -bench=. -benchmem -count=5 ./proxy ./protocol ./stats ./pool ./rawio

profile: ## User-space instructions pgmux runs per transaction, under callgrind (bench/profile.sh [BIN...]; steadier than timings on a noisy machine).
	bench/profile.sh

clean: ## Remove build output.
	rm -rf $(BIN)
