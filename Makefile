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
TEST_STAMP := $(VENV)/.installed-test

.PHONY: boot test unit integration image validate verify bench kernel test-kernel-build clean setup typecheck

# `make boot` and `make image` need only the runtime packages (setup-host.sh); the other
# targets add the test tools, compilers and arm64 emulator (setup-host.sh test).
$(STAMP): pyproject.toml scripts/setup-host.sh
	sh scripts/setup-host.sh

$(TEST_STAMP): pyproject.toml scripts/setup-host.sh
	sh scripts/setup-host.sh test

setup: $(STAMP)

boot: $(STAMP)
	$(PY) -m testbed boot $(TOPO) --kernel $(KERNEL)

image: $(STAMP)
	$(PY) -m testbed image build

validate: $(TEST_STAMP)
	$(PY) -m testbed qemu install trixie-backports  # the AMD vIOMMU topologies name it
	$(PY) -m testbed validate topologies/*.yaml

verify: $(TEST_STAMP)
	$(PY) -m testbed qemu install trixie-backports  # the AMD vIOMMU topologies name it
	$(PY) -m testbed verify topologies/*.yaml

# `make test`, in timed steps (each prints its wall time): typecheck, the guest image,
# QEMU 11.1 (before the unit tests: they validate the library with probes, and its AMD
# vIOMMU and arm64 SMMU topologies name that QEMU), the unit tests on every core, then
# the real-guest tests.  The tests that run on the
# image's own kernel come first, on INTEGRATION_WORKERS pytest-xdist workers (each test
# module stays on one worker, --dist loadscope, so a module's guests boot once; not
# loadgroup: pytest 9.2 ignores the group xdist 3.8 writes into item._nodeid; budget
# <= 8 min on a fresh machine); the tests
# that need a profile kernel (issue 20), an installed QEMU (issue 21) or arm64 (issue 25)
# follow as steps of their own.  --durations names the slowest tests of each step.  A step
# that fails does not stop the others (scripts/step.sh --log); the last line lists every
# step with its time and fails when one did.
# A --junitxml=F.xml in PYTEST_ARGS becomes F-unit.xml, F.xml (image kernel),
# F-profile-kernel.xml, F-qemu-install.xml and F-arm64.xml.
INTEGRATION_WORKERS ?= 2
DURATIONS ?= 25
OTHER_KERNELS := profile_kernel or qemu_install or arm64
STEP_LOG := runs/make-test-steps.tsv
STEP   := sh scripts/step.sh --log $(STEP_LOG)
PYTEST := $(PY) -m pytest -p no:cacheprovider
junit   = $(patsubst --junitxml=%.xml,--junitxml=%-$(1).xml,$(PYTEST_ARGS))

test: $(TEST_STAMP)
	@mkdir -p $(dir $(STEP_LOG)) && rm -f $(STEP_LOG)
	@$(STEP) typecheck -- $(PY) -m mypy
	@$(STEP) "guest image" -- $(PY) -m testbed image build
	@$(STEP) "QEMU 11.1 (trixie-backports, private root)" -- \
		$(PY) -m testbed qemu install trixie-backports
	@$(STEP) unit -- $(PYTEST) -n auto --durations=10 tests/unit $(call junit,unit)
	@$(STEP) "integration, image kernel" -- $(PYTEST) -n $(INTEGRATION_WORKERS) \
		--dist loadscope --durations=$(DURATIONS) -m "not ($(OTHER_KERNELS))" \
		tests/integration $(PYTEST_ARGS)
	@$(STEP) --may-be-empty "integration, profile kernel" -- $(PYTEST) \
		--durations=$(DURATIONS) -m profile_kernel tests/integration \
		$(call junit,profile-kernel)
	@$(STEP) --may-be-empty "integration, installed QEMU" -- $(PYTEST) \
		--durations=$(DURATIONS) -m qemu_install tests/integration $(call junit,qemu-install)
	@$(STEP) --may-be-empty "integration, arm64" -- $(PYTEST) \
		--durations=$(DURATIONS) -m arm64 tests/integration $(call junit,arm64)
	@sh scripts/step.sh --summary $(STEP_LOG)

typecheck: $(TEST_STAMP)
	$(PY) -m mypy

unit: $(TEST_STAMP)
	$(PY) -m pytest -q tests/unit $(PYTEST_ARGS)

integration: $(TEST_STAMP)
	$(PY) -m pytest tests/integration $(PYTEST_ARGS)

bench: $(TEST_STAMP)
	$(PY) -m testbed image build
	$(PY) bench/bench.py $(BENCH_ARGS)

kernel: $(TEST_STAMP)
	@test -n "$(KSRC)" || { echo "usage: make kernel KSRC=/path/to/linux [O=builddir]" >&2; exit 2; }
	$(PY) -m testbed kernel build $(KSRC) $(if $(O),--output $(O))

test-kernel-build: $(TEST_STAMP)
	@test -n "$(KSRC)" || { echo "usage: make test-kernel-build KSRC=/path/to/linux" >&2; exit 2; }
	TESTBED_KSRC=$(KSRC) $(PY) -m pytest tests/integration/test_kernel_build.py $(PYTEST_ARGS)

clean:
	rm -rf runs .pytest_cache
