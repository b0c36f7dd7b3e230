# The P2P file-sharing system. `make run` brings the whole system up; `make test` runs every test.
SHELL := /bin/bash
.DEFAULT_GOAL := all

SWIFT ?= swift
# Builds go through scripts/swift.sh: a fixed environment, so that make's variables
# (TIME_PORT=..., MAKEFLAGS) do not make SwiftPM rebuild everything.
SWIFT_BUILD = SWIFT=$(SWIFT) scripts/swift.sh build
CONFIG ?= debug
PREFIX ?= /usr/local
PROGRAMS := p2p-server p2p-client p2p-time p2p-conformance
TIRPC_CFLAGS = $(shell pkg-config --cflags libtirpc)
TIRPC_LIBS = $(shell pkg-config --libs libtirpc)
CFLAGS ?= -O2 -g
WARNINGS := -Wall -Wextra
GENERATED_DIR := Sources/COperationLog
# Everything rpcgen makes from rpc/operations.x; `make rpcgen` rewrites exactly these.
GENERATED := $(GENERATED_DIR)/include/operations.h $(GENERATED_DIR)/operations_clnt.c \
	$(GENERATED_DIR)/operations_xdr.c rpc/operations_svc.c
SETUP_STAMP := .build/.setup-done

.PHONY: all setup build release oplog rpcgen check-rpcgen check-line-length test bench fuzz run run-cluster install uninstall clean

all: build oplog

# setup.sh installs what the system needs; it runs again only when it changed.
$(SETUP_STAMP): setup.sh
	./setup.sh
	@mkdir -p $(dir $@) && touch $@

setup: $(SETUP_STAMP)

build: $(SETUP_STAMP)
	$(SWIFT_BUILD) -c $(CONFIG)

release: $(SETUP_STAMP)
	$(SWIFT_BUILD) -c release

# ---- operation-log server (C) -------------------------------------------------------------
oplog: rpc/p2p-oplog

# Warnings are on for the hand-written server; rpcgen's code is compiled as generated.
rpc/p2p-oplog: rpc/oplog_server.c rpc/operations_svc.c $(GENERATED_DIR)/operations_xdr.c \
		$(GENERATED_DIR)/include/operations.h | $(SETUP_STAMP)
	$(CC) $(CFLAGS) $(WARNINGS) $(TIRPC_CFLAGS) -I$(GENERATED_DIR)/include -c rpc/oplog_server.c -o rpc/oplog_server.o
	$(CC) $(CFLAGS) $(TIRPC_CFLAGS) -I$(GENERATED_DIR)/include -c rpc/operations_svc.c -o rpc/operations_svc.o
	$(CC) $(CFLAGS) $(TIRPC_CFLAGS) -I$(GENERATED_DIR)/include -c $(GENERATED_DIR)/operations_xdr.c -o rpc/operations_xdr.o
	$(CC) -o $@ rpc/oplog_server.o rpc/operations_svc.o rpc/operations_xdr.o $(TIRPC_LIBS)

# Regenerates every generated file from rpc/operations.x.
rpcgen: | $(SETUP_STAMP)
	rpc/generate.sh $(GENERATED_DIR)/include $(GENERATED_DIR) rpc

# Fails when the committed generated files differ from what rpcgen makes of operations.x now.
check-rpcgen: | $(SETUP_STAMP)
	@tmp=$$(mktemp -d) && trap 'rm -rf "$$tmp"' EXIT && \
	rpc/generate.sh "$$tmp" "$$tmp" "$$tmp" && \
	status=0 && \
	for pair in include/operations.h:operations.h operations_clnt.c:operations_clnt.c \
			operations_xdr.c:operations_xdr.c; do \
		diff -u "$(GENERATED_DIR)/$${pair%%:*}" "$$tmp/$${pair##*:}" || status=1; \
	done && \
	{ diff -u rpc/operations_svc.c "$$tmp/operations_svc.c" || status=1; } && \
	if [ $$status -ne 0 ]; then echo "check-rpcgen: generated RPC code is out of date: run 'make rpcgen'"; exit 1; fi
	@echo "check-rpcgen: generated RPC code matches rpc/operations.x"

# ---- tests, benchmarks, running --------------------------------------------------------------
# Tests that need rpcbind get it from scripts/with-rpcbind.sh, which stops it again if it
# started it.
test: $(SETUP_STAMP) check-rpcgen check-line-length oplog
	$(SWIFT_BUILD) --build-tests
	scripts/check-oplog-without-rpcbind.sh
	# The multi-GiB transfers run alone, after the rest, so their load does not skew the
	# timing of the others.
	# One test at a time: on two cores, dozens of servers, stores and client processes at once
	# starved some tests' event loops for seconds, past their deadlines (37 s in all).
	scripts/with-rpcbind.sh $(SWIFT) test --skip-build --no-parallel --skip LargeTransferTests
	$(SWIFT) test --skip-build --filter LargeTransferTests
	# The fuzz targets, a few seconds each from their seed corpus (make fuzz runs them longer).
	fuzz/run.sh 5

# .swift-format's 120 columns, on every Swift file of ours.
check-line-length:
	python3 scripts/check-line-length.py

bench: $(SETUP_STAMP) oplog
	$(SWIFT_BUILD) -c release
	scripts/with-rpcbind.sh python3 bench/bench.py

# Coverage-guided fuzzing of the decoders that read bytes from strangers: each target
# FUZZ_SECONDS seconds from its committed seed corpus (fuzz/run.sh says more).
FUZZ_SECONDS ?= 60
fuzz: $(SETUP_STAMP)
	fuzz/run.sh $(FUZZ_SECONDS)

run: $(SETUP_STAMP) oplog
	$(SWIFT_BUILD) -c release
	scripts/run.sh

# Several directory servers: PostgreSQL, three servers on it and HAProxy on 4242.
run-cluster: $(SETUP_STAMP) oplog
	$(SWIFT_BUILD) -c release
	scripts/run.sh --cluster

# The four programs on PATH (PREFIX=/usr/local by default; DESTDIR for packaging). The Swift
# programs use the Swift runtime of the toolchain that built them.
install: release oplog
	install -d "$(DESTDIR)$(PREFIX)/bin"
	install -m 755 $(addprefix .build/release/,$(PROGRAMS)) rpc/p2p-oplog "$(DESTDIR)$(PREFIX)/bin/"
	@echo "installed $(PROGRAMS) p2p-oplog in $(DESTDIR)$(PREFIX)/bin"

uninstall:
	rm -f $(addprefix "$(DESTDIR)$(PREFIX)/bin/",$(PROGRAMS) p2p-oplog)

clean:
	rm -rf .build rpc/*.o rpc/p2p-oplog
