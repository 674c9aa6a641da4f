# `make run` and `make test` set up everything they need: a virtualenv in .venv for Python
# packages, and Debian packages through apt-get where a command is missing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
BUILT := $(VENV)/.built
PURE := build/pure
CONFIG ?= etc/proxyd.ini

# command:debian-package pairs the test suite needs on the machine.
TEST_DEBS := mariadbd:mariadb-server mariadb:mariadb-client curl:curl openssl:openssl testssl:testssl.sh dnsmasq:dnsmasq-base sipp:sip-tester patch:patch htpasswd:apache2-utils lua5.1:lua5.1 redis-server:redis-server h2load:nghttp2-client pebble:pebble etcd:etcd-server
# The stats page's test drives Debian's Chromium through its chromedriver (tests/browser).
BROWSER_DEBS := chromium:chromium chromedriver:chromium-driver
BENCH_DEBS := haproxy:haproxy iperf3:iperf3 nginx:nginx wrk:wrk openssl:openssl redis-server:redis-server

.PHONY: venv run test unit integration browser stats-screenshot lint typecheck bench conformance clean

$(STAMP): pyproject.toml setup.cfg
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# compat mode puts the project root on sys.path, which twistd's plugin scan can see. Pure
	# Python here: $(BUILT) compiles.
	PROXYD_PURE=1 $(BIN)/pip install --quiet --config-settings editable_mode=compat -e '.[test]'
	touch $(STAMP)

# The modules mypyc compiles (pyproject.toml's [tool.proxyd] mypyc) are built into the tree as
# C extensions, and built again whenever a module changes: an extension module is imported in
# place of the .py beside it, and is compiled against the types of the modules it imports.
# Pure Python without a C compiler (setup.py). Those of an earlier build go first: a module no
# longer compiled would still be imported from its extension.
$(BUILT): $(STAMP) setup.py build_backend/proxyd_build.py $(shell find proxyd -name '*.py')
	find proxyd -name '*.so' -delete
	rm -f ./*.so
	$(BIN)/pip install --quiet --no-deps --config-settings editable_mode=compat -e .
	touch $(BUILT)

venv: $(BUILT)

run: venv
	scripts/apt-need redis-server:redis-server pebble:pebble dnsmasq:dnsmasq-base
	$(BIN)/python examples/demo.py --config $(CONFIG)

test: venv
	scripts/apt-need $(TEST_DEBS) $(BROWSER_DEBS)
	$(BIN)/ruff check proxyd tests twisted examples bench build_backend setup.py
	$(BIN)/mypy
	# Against the compiled modules (pure with PROXYD_PURE=1): tests/unit/test_build.py checks.
	PROXYD_TEST_BUILD=$(if $(filter-out 0,$(PROXYD_PURE)),pure,compiled) \
		$(BIN)/pytest -q -p no:cacheprovider
	# The unit tests again against the pure-Python package that installs without a C compiler:
	# on the path before the tree's compiled modules (pytest appends the tree, not prepends).
	rm -rf $(PURE)
	PROXYD_PURE=1 $(BIN)/pip install --quiet --no-deps --target $(PURE) .
	PYTHONPATH=$(PURE) PROXYD_TEST_BUILD=pure $(BIN)/pytest -q -p no:cacheprovider \
		--import-mode=append tests/unit

unit: venv
	$(BIN)/pytest -q tests/unit

integration: venv
	scripts/apt-need $(TEST_DEBS)
	$(BIN)/pytest -q tests/integration

browser: venv
	scripts/apt-need $(BROWSER_DEBS)
	$(BIN)/pytest -q tests/browser

# Takes docs/stats-page.png again: the browser test writes its screenshot there only when asked.
stats-screenshot: venv
	scripts/apt-need $(BROWSER_DEBS)
	PROXYD_SCREENSHOT=1 $(BIN)/pytest -q tests/browser -k drains_a_server

lint: venv
	$(BIN)/ruff check proxyd tests twisted examples bench build_backend setup.py
	$(BIN)/ruff format --check proxyd tests twisted examples bench build_backend setup.py

typecheck: venv
	$(BIN)/mypy

# The WebSocket load client and echo server run on Node.js with the ws version pinned in
# bench/ws/package-lock.json, installed into bench/ws/node_modules (git-ignored).
bench/ws/node_modules/.package-lock.json: bench/ws/package.json bench/ws/package-lock.json
	scripts/apt-need node:nodejs npm:npm
	cd bench/ws && npm ci --no-audit --no-fund

# Every scenario against direct, proxyd (workers = 1 and auto), nginx and HAProxy, side by side
# (docs/performance.md); about 12 minutes on 2 cores. A part of it:
#   make bench SCENARIOS=http-keepalive,tcp-bulk TARGETS=nginx,proxyd-1 BENCH_ARGS="--runs 1"
bench: venv bench/ws/node_modules/.package-lock.json
	scripts/apt-need $(BENCH_DEBS) dnsperf:dnsperf dnsmasq:dnsmasq-base
	scripts/apt-need-file /usr/lib/nginx/modules/ngx_stream_module.so:libnginx-mod-stream
	$(BIN)/python -m bench $(if $(SCENARIOS),--scenarios $(SCENARIOS)) \
		$(if $(TARGETS),--targets $(TARGETS)) $(BENCH_ARGS)

# The Autobahn WebSocket suite's 517 fuzzing-client cases against an echo server, directly and
# through proxyd in each WebSocket mode, with a verdict table per mode (docs/conformance.md).
# PROXYD_CONFORMANCE='1.*,9.*' runs only those cases. About two hours, most of it 12.x/13.x.
conformance: venv
	scripts/apt-need patch:patch
	PROXYD_CONFORMANCE=$${PROXYD_CONFORMANCE:-full} $(BIN)/pytest -q -s -p no:cacheprovider \
		tests/integration/test_websocket_conformance.py

clean:
	rm -rf $(VENV) build *.egg-info dropin.cache twisted/plugins/dropin.cache
	find proxyd -name '*.so' -delete
	rm -f ./*.so
