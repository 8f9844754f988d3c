# Two commands on a fresh machine: `make quickstart` and `make test` (each installs first).
PYTHON ?= python3
VENV ?= .venv
# The CPU wheel that lies on the development and CI machines; on a GPU node pass your CUDA build,
# e.g. make install TORCH='torch==2.5.1 --index-url https://download.pytorch.org/whl/cu124'
TORCH ?= torch==2.13.0
BIN = $(VENV)/bin

.PHONY: install quickstart test test-gpu test-deps clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml requirements/lean.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q $(TORCH)
	$(BIN)/pip install -q -r requirements/lean.txt
	$(BIN)/pip install -q --no-deps colossalai==0.5.0
	$(BIN)/pip install -q --no-deps -e .
	touch $@

quickstart: install
	$(BIN)/ominix quickstart

# Tests start a private sshd, a private SLURM cluster (slurmctld + slurmd) and multi-process torchrun
# jobs: they run inside a private network namespace that has only loopback (torchrun listens on all
# interfaces). test-deps installs the system packages they need where missing (Debian/Ubuntu).
TEST_DEBS = $(if $(wildcard /usr/sbin/sshd),,openssh-server) $(if $(wildcard /usr/sbin/slurmctld),,slurm-wlm)
test-deps:
	@test -z "$(strip $(TEST_DEBS))" || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(TEST_DEBS))

test: install test-deps
	unshare -n sh -c 'ip link set lo up && $(BIN)/python -m pytest -q --durations=25 $(PYTEST_ARGS)'

test-gpu:
	$(BIN)/python -m pytest -q -m gpu tests/gpu

clean:
	rm -rf $(VENV) runs .pytest_cache
