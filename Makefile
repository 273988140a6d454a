# The README's two commands: `make run` and `make test`. Each sets up what it
# needs on a fresh Debian machine (system packages, .venv, the project).
# Debian's interpreter when present: world-readable, so the test that runs the
# server as `nobody` can use the venv (a pyenv under /root cannot be)
PY ?= $(shell test -x /usr/bin/python3 && echo /usr/bin/python3 || echo python3)
VENV := .venv
VPY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
HOST ?= 127.0.0.1
PORT ?= 8000
# system packages: compiler and headers for the cffi build, taskset for benchmarks
# libpython3.11-testsuite: CPython's test_asyncio, run against the loop by tests/conformance
# redis-tools (redis-cli, redis-benchmark) and redis-server: the RESP demo's tests talk
# to it with them and compare its replies with redis-server's (started by the tests)
# systemd: systemd-socket-activate and systemd-analyze for the socket-activation and unit tests
# haproxy, nginx-light and its stream module: real proxies in front of the server (tests/test_behind_proxies.py)
# libssl-dev: headers for the core's TLS (tls.c links the libssl the interpreter's ssl module links); openssl (s_client), sslscan: tests/test_tls_core.py
# wrk: a real client's count of socket errors across drains and lingering closes (test_drain_under_load.py,
# test_lingering_close.py)
# chromium: a real browser runs the WebSocket demo page's self-test (tests/test_ws_browser.py)
# zlib1g-dev: the load generator inflates permessage-deflate echoes (loadgen.c)
# libssl-dev, openssl, sslscan: TLS in the core (tls.c) links libssl; tests drive s_client and sslscan
DEBS := gcc libc6-dev libjemalloc2 zlib1g-dev python3-dev python3-venv libffi-dev util-linux libpython3.11-testsuite redis-tools redis-server systemd \
	haproxy nginx-light libnginx-mod-stream wrk chromium libssl-dev openssl sslscan
BENCH_DEBS := curl

.PHONY: run echo resp bench-asgi bench-wsgi bench-ws bench-files bench-echo bench-loadgen bench-resp bench-tls test lint test-stress mutate fuzz soak bench bench-uvicorn bench-http conformance deps bench-deps apt clean doctor

deps:
	@$(MAKE) --no-print-directory apt PKGS="$(DEBS)"

bench-deps:
	@$(MAKE) --no-print-directory apt PKGS="$(DEBS) $(BENCH_DEBS)"

# RUNLEVEL=1: Debian does not start a service it installs (nginx, redis-server)
apt:
	@missing=""; for p in $(PKGS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && $$SUDO env RUNLEVEL=1 DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	fi

$(VPY):
	$(PY) -m venv $(VENV)

# reinstall when the native core or packaging changes
$(STAMP): $(VPY) pyproject.toml setup.py $(wildcard uringserve/_native/*.c uringserve/_native/*.h uringserve/_native/build.py)
	$(VPY) -m pip install -q --upgrade pip setuptools wheel cffi
	$(VPY) -m pip install -q --no-build-isolation -e '.[test,bench]'
	touch $(STAMP)

# the HTTP demo: / hello, /echo, /static/..., /stats (apps/http.py)
run: deps $(STAMP)
	$(VPY) apps/http.py --host $(HOST) --port $(PORT)

echo: deps $(STAMP)
	$(VPY) apps/echo.py --host $(HOST) --port $(PORT)

# the RESP demo (redis-cli -p 6379 ping): Redis's port unless PORT is given on
# make's command line (`make resp PORT=7379`); PORT's default, 8000, is the HTTP
# demo's, and a PORT the environment exports (a PaaS's) is not meant for Redis
RESP_PORT = $(if $(findstring command line,$(origin PORT)),$(PORT),6379)
resp: deps $(STAMP)
	$(VPY) apps/resp_server.py --host $(HOST) --port $(RESP_PORT)

test: deps $(STAMP) lint
	$(VPY) -m pytest -q

# ruff (lint and format) over everything, mypy over the package; configured in pyproject.toml
lint: deps $(STAMP)
	$(VENV)/bin/ruff check uringserve loadtest apps tests bench deploy
	$(VENV)/bin/ruff format --check uringserve loadtest apps tests bench deploy
	$(VENV)/bin/mypy

# the suite REPEAT times (3) with a CPU hog on every core: timing hopes fail here
test-stress: deps $(STAMP)
	$(VPY) tests/stress.py

# the planted bugs, then mutmut over protocol.py, parser.py, scan.py, static.py, transport.py, ring.py, fs.py, the
# server layer, the RESP parser, commands and keyspace, cli.py, workers.py, metrics.py and loadtest/ (also through
# the processes tests start); SAMPLE=N: N mutants per module (a full run takes hours), SEED=15; MODULE=parser narrows
# it; JOBS=1 one mutmut child; PLANTED=0 skips the planted bugs
mutate: deps $(STAMP)
	$(VPY) -m pip install -q 'mutmut==3.8.1'
	$(VPY) tests/mutation/run.py

# the fuzz harnesses (tests/fuzz/, atheris) for FUZZ_SECONDS (600) each: the
# corpus in the repository grows, crashes land in tests/fuzz/crashes/ (each
# one becomes a regression input under tests/fuzz/regressions/ once fixed)
fuzz: deps $(STAMP)
	$(VPY) tests/fuzz/run.py --keep --seconds $(or $(FUZZ_SECONDS),600)

# mixed load with churn, resets and slow peers for SOAK_SECONDS (600); samples,
# plot and verdict in bench/build/soak/ (bench/soak.py)
soak: deps $(STAMP)
	$(VPY) -m pip install -q matplotlib
	$(VPY) bench/soak.py --seconds $(or $(SOAK_SECONDS),600)

# CPython's test_asyncio on the stdlib loop (baseline) and on UringEventLoop
conformance: deps $(STAMP)
	$(VPY) tests/conformance/run.py --loop asyncio
	$(VPY) tests/conformance/run.py --loop uring

doctor: deps $(STAMP)
	$(VPY) -m uringserve doctor

# the Markdown report (bench/build/report.md): echo, HTTP, the io_uring ablation
# and the load generator vs wrk / the C echo client, all on `python -m loadtest`
bench: bench-deps $(STAMP)
	$(VPY) bench/report.py

bench-echo: bench-deps $(STAMP)
	$(VPY) bench/echo_bench.py

# loadtest vs wrk on nginx, loadtest vs bench/echo_load.c on apps/echo.py
bench-loadgen: bench-deps $(STAMP)
	$(VPY) bench/loadgen_bench.py

# redis-benchmark against the RESP demo (uring, uvloop) and redis-server
bench-resp: bench-deps $(STAMP)
	$(VPY) bench/resp_bench.py

bench-uvicorn: bench-deps $(STAMP)
	$(VPY) bench/uvicorn_bench.py

# ASGI hello and a FastAPI JSON endpoint vs uvicorn and granian; what --proxy-headers costs
bench-asgi: bench-deps $(STAMP)
	$(VPY) bench/asgi_bench.py

# WSGI hello and a Flask JSON endpoint vs gunicorn (sync, gthread) and granian; a 1 MiB file vs gunicorn
bench-wsgi: bench-deps $(STAMP)
	$(VPY) bench/wsgi_bench.py

# WebSocket echo (64 B, 16 KiB, deflate off/on): uringserve ASGI and native vs uvicorn, granian,
# hypercorn, websockets and picows; which load generator (uringload, picows client) drove each figure
bench-ws: bench-deps $(STAMP)
	$(VPY) bench/ws_bench.py

# uringserve.http (native, ASGI) vs uvicorn, granian and nginx; a 1 MiB file vs nginx
bench-http: bench-deps $(STAMP)
	$(VPY) bench/http_bench.py

# HTTPS: uringserve (TLS in the core) against nginx ssl and uvicorn --ssl-*, keep-alive and one request per
# connection; then wss:// against ws:// echo, each server against itself (the issue: TLS's cost per message)
bench-tls: bench-deps $(STAMP)
	$(VPY) bench/tls_bench.py
	$(VPY) bench/ws_bench.py --cases 64B,64B-tls,16KiB,16KiB-tls

# the ways to send a cached file, side by side, without Python: sendfile,
# io_uring splice, send from memory, read + send (bench/file_paths.c)
bench-files:
	mkdir -p bench/build
	cc -O2 -Wall -o bench/build/file_paths bench/file_paths.c
	taskset -c 0 bench/build/file_paths 4096 50000 3
	taskset -c 0 bench/build/file_paths 65536 20000 3
	taskset -c 0 bench/build/file_paths 1048576 2000 3

clean:
	rm -rf $(VENV) build *.egg-info uringserve/_native/_core*.so bench/build mutants
