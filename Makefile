# p2pdma-testbed — the two commands:
#   make boot [TOPO=switch-cmb] [KERNEL=path]   boot a topology, shell in the guest
#   make test                                     unit + real-guest integration tests
# Both install what they need first (Debian packages, .venv) and build the
# guest image on first use (cached under ~/.cache/p2pdma-testbed).

TOPO   ?= switch-cmb
KERNEL ?= default
PYTEST_ARGS ?=
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: boot test unit integration image validate verify bench kernel test-kernel-build clean setup typecheck

$(STAMP): pyproject.toml scripts/setup-host.sh
	sh scripts/setup-host.sh

setup: $(STAMP)

boot: $(STAMP)
	$(PY) -m testbed boot $(TOPO) --kernel $(KERNEL)

image: $(STAMP)
	$(PY) -m testbed image build

validate: $(STAMP)
	$(PY) -m testbed validate topologies/*.yaml

verify: $(STAMP)
	$(PY) -m testbed verify topologies/*.yaml

# unit tests on every core (pure, no guests); the real-guest tests one guest at a time
# (a TCG guest wants a core of its own).  A --junitxml=F.xml in PYTEST_ARGS becomes
# F-unit.xml for the unit run and stays F.xml for the integration run.
test: $(STAMP)
	$(PY) -m mypy
	$(PY) -m testbed image build
	$(PY) -m pytest -p no:cacheprovider -n auto tests/unit \
		$(patsubst --junitxml=%.xml,--junitxml=%-unit.xml,$(PYTEST_ARGS))
	$(PY) -m pytest -p no:cacheprovider tests/integration $(PYTEST_ARGS)

typecheck: $(STAMP)
	$(PY) -m mypy

unit: $(STAMP)
	$(PY) -m pytest -q tests/unit $(PYTEST_ARGS)

integration: $(STAMP)
	$(PY) -m pytest tests/integration $(PYTEST_ARGS)

bench: $(STAMP)
	$(PY) -m testbed image build
	$(PY) bench/bench.py $(BENCH_ARGS)

kernel: $(STAMP)
	@test -n "$(KSRC)" || { echo "usage: make kernel KSRC=/path/to/linux [O=builddir]" >&2; exit 2; }
	$(PY) -m testbed kernel build $(KSRC) $(if $(O),--output $(O))

test-kernel-build: $(STAMP)
	@test -n "$(KSRC)" || { echo "usage: make test-kernel-build KSRC=/path/to/linux" >&2; exit 2; }
	TESTBED_KSRC=$(KSRC) $(PY) -m pytest tests/integration/test_kernel_build.py $(PYTEST_ARGS)

clean:
	rm -rf runs .pytest_cache
