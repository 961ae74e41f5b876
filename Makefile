# Two commands on a fresh machine (see README): `make demo` and `make test`.
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
export HF_HUB_OFFLINE ?= 1
export TRANSFORMERS_OFFLINE ?= 1
export WANDB_MODE ?= offline

.PHONY: install demo lint slurm test bench clean-outputs

# The venv is rebuilt only when requirements.txt or pyproject.toml change.
$(VENV)/.installed: requirements.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --disable-pip-version-check -q -r requirements.txt
	$(BIN)/pip install --disable-pip-version-check -q --no-deps -e .
	touch $@

install: $(VENV)/.installed

# The main job: CSD-Edit of the bundled panorama with the exact-score prior (a few minutes on 2 cores).
demo: install
	$(BIN)/csd-exp experiment=panorama_exact_cpu

# ruff's lint and format rules (pyproject.toml); `make test` runs them first.
lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# The whole suite, then the numerics-sensitive tests again with the vector ISA capped to AVX2, so a
# tolerance that holds only on an AVX-512 CPU fails here too (PyTorch, oneDNN and MKL each have a switch).
ISA_CAP := ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2

# The cluster tests (tests/cluster/) run jobs on a one-node SLURM cluster that they start and stop themselves
# (scripts/slurm_cluster.sh). Its packages, slurm-wlm and munge, are installed here when absent and running as root
# with apt (as CI does); elsewhere those tests skip saying why. Under CI (CI=true) that skip is a failure
# (CSD_EXP_REQUIRE_CLUSTER=1), so CI cannot pass without them. docs/clusters.md
export CSD_EXP_REQUIRE_CLUSTER ?= $(if $(filter true 1,$(CI)),1,0)
slurm:
	scripts/slurm_cluster.sh install

test: lint slurm
	$(BIN)/python -m pytest -q
	$(ISA_CAP) $(BIN)/python -m pytest -q -m numerics -p no:cacheprovider

# Every benchmark at real size (random-weight SD-1.5 UNets, no download), one report in benchmarks/results/.
# `make bench BENCH_ARGS=--quick`: every table on tiny models, a smoke run (tests/test_benchmarks_quick.py).
bench: install
	$(BIN)/python -m benchmarks.run_all $(BENCH_ARGS)
