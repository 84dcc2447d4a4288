# Quick start: `make run` (the main job) and `make test` (the full suite). Both create .venv on first use.
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
TORCH_PIN := torch==2.13.0
EXTRAS := rl,oracles,examples,dev,sweep,docs
# torch threads of make run: the main job runs alone on a 2-core machine, where 2 threads measured 1.18x faster than 1
# per TEMPO update (docs/performance.md); use THREADS=1 when another job shares the machine.
THREADS ?= 2
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml Makefile | sha1sum | cut -c1-12)
# Headless MuJoCo rendering (dm_control pixels): Mesa's EGL, with OSMesa as the fallback (recipes/envs/gl.py).
MESA_PKGS := libegl1 libegl-mesa0 libgl1-mesa-dri libosmesa6

.PHONY: run example test setup lint docs bench bench-peers bench-mismatch clean

$(STAMP): pyproject.toml Makefile
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	@# CPU torch first: an unpinned torch would pull a multi-GB CUDA build. GPU users keep the torch they have.
	@$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install -q "$(TORCH_PIN)"
	$(BIN)/pip install -q -e ".[$(EXTRAS)]"
	@# Debian's Mesa packages, only where missing and only as root; otherwise say what to install.
	@if ! command -v dpkg >/dev/null 2>&1; then \
	  echo "note: not a Debian system; for MuJoCo pixels install Mesa EGL/OSMesa (Debian names: $(MESA_PKGS))"; \
	elif dpkg -s $(MESA_PKGS) >/dev/null 2>&1; then :; \
	elif [ "$$(id -u)" = 0 ]; then \
	  echo "installing Mesa for headless MuJoCo rendering: $(MESA_PKGS)"; \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(MESA_PKGS) >/dev/null) || \
	    echo "warning: apt-get could not install $(MESA_PKGS); MuJoCo pixel observations may not render"; \
	else \
	  echo "warning: Mesa packages missing and not root; MuJoCo pixels need: sudo apt-get install $(MESA_PKGS)"; \
	fi
	@rm -f $(VENV)/.installed-*
	@touch $@

setup: $(STAMP)

# The main job: TEMPO (meta-weighted RSSM + Dreamer actor-critic) on DMC cartpole swing-up, cpu preset, proprio.
# 100k env steps with the compiled train step (bf16 actor-critic only where the CPU measures it faster), one model
# update every 10 env steps (~9,500 updates) on batches of 40 sequences of 20 steps (the preset's 16 x 50 filters
# 50 steps at a batch of 16, which costs as much per update in latency as 800 samples at once), the filtering loop
# and the imagination compiled in 5-step chunks (less cold compile): numbers in README and docs/recipe-tempo.md.
# The weighter as those numbers were measured: the exact hypergradient scale and no output normalisation (TEMPO's
# defaults now normalise both; make run keeps the measured settings until they are measured: docs/results.md).
# Re-running resumes from runs/tempo-cartpole-swingup (a finished run only re-plots).
run: $(STAMP)
	$(BIN)/reweigh run tempo --env dmc:cartpole_swingup --preset cpu --steps 100000 --seed 0 \
	  --logdir runs/tempo-cartpole-swingup --set compile=true --set ac_precision=auto --set train_every=10 \
	  --set batch_size=40 --set seq_len=20 --set compile_chunk=5 --set imag_chunk=5 --set threads=$(THREADS) \
	  --set hypergradient_scale=exact --set weighter_output_norm=false

example: $(STAMP)
	$(BIN)/reweigh noisy-labels --seeds 0,1,2 --out runs/noisy-labels/results.json

test: $(STAMP)
	$(BIN)/python -m pytest -q tests; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests: failing"; exit 1; fi; exit $$rc

# The documentation site (mkdocs-material, API reference from the docstrings) into site/; strict: any warning fails.
# `make test` builds it too (tests/test_docs.py), so CI checks it.
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --site-dir site

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

bench: $(STAMP)
	$(BIN)/python benchmarks/hypergrad.py
	$(BIN)/python benchmarks/tempo_overhead.py
	$(BIN)/python benchmarks/tempo_overhead.py --variants dreamerv2+compile=true,tempo+meta_every=1+compile=true,tempo+compile=true --out benchmarks/results/tempo_overhead_cpu_compile.json
	$(BIN)/python benchmarks/roofline.py --configs cpu,cpu-pixels,sheeprl,cpu-bf16,sheeprl-bf16
	$(BIN)/python benchmarks/dreamer_ab.py --a dreamerv2 --b dreamerv2+compile=true
	$(BIN)/python benchmarks/step_phases.py --preset paper --threads 2

# The objective-mismatch benchmark: 45 runs, two at a time (docs/results.md: its protocol and cost).
bench-mismatch: $(STAMP)
	$(BIN)/reweigh sweep benchmarks/mismatch/distractors.yaml
	$(BIN)/reweigh sweep benchmarks/mismatch/random.yaml

# Side by side with sheeprl 0.8.4 and mbrl-lib 0.2.0 (each builds its scratch venv outside the repo on first use:
# network, ~1.5 GB).  PRECISION=bf16-mixed / --set model_precision=bf16 --set ac_precision=bf16 for the mixed-precision pair where bf16 pays.
bench-peers: $(STAMP)
	THREADS=2 bash benchmarks/peers/sheeprl_dreamerv2.sh
	$(BIN)/python benchmarks/peers/side_by_side.py --threads 2
	$(BIN)/python benchmarks/ensemble_speed.py

clean:
	rm -rf $(VENV) runs site
