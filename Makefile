# Quick start: `make demo` (full pipeline on synthetic data, CPU) and `make test`.
# Both create .venv and install requirements.txt on first use (GPU=1: requirements-gpu.txt).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# GPU=1 (`make test GPU=1`, `make demo GPU=1`, `make setup-gpu`) builds .venv from
# requirements-gpu.txt (tensorflow[and-cuda]) instead of requirements.txt (tensorflow-cpu); both
# include requirements-common.txt. Each variant has its own stamp, so switching reinstalls.
GPU ?= 0
ifeq ($(GPU),1)
REQ := requirements-gpu.txt
STAMP := $(VENV)/.installed-gpu
OTHER_STAMP := $(VENV)/.installed
OTHER_TF := tensorflow-cpu
else
REQ := requirements.txt
STAMP := $(VENV)/.installed
OTHER_STAMP := $(VENV)/.installed-gpu
OTHER_TF := tensorflow
endif

DEMO_CONFIG := configs/demo.yaml
DEMO_DATA := input/synthetic
DEMO_EXP := demo
DEMO_OUT := output/$(DEMO_EXP)
DEMO_FOLDS := 0 1

.PHONY: demo test test-fast bench clean-demo pretrain-synthetic setup setup-gpu

# tensorflow and tensorflow-cpu install the same module: the other variant's package goes first.
$(STAMP): $(REQ) requirements-common.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	if [ -e $(OTHER_STAMP) ]; then $(PY) -m pip uninstall -q -y $(OTHER_TF); fi
	$(PY) -m pip install -q -r $(REQ)
	rm -f $(OTHER_STAMP)
	touch $(STAMP)

setup: $(STAMP)

setup-gpu:
	$(MAKE) setup GPU=1

# generate -> folds -> train folds 0,1 -> tune -> infer (2-fold ensemble x TTA) -> evaluate.
# The demo re-creates its own data and experiment each time (--overwrite); nothing else is touched.
demo: $(STAMP)
	$(PY) src/make_synthetic.py --out $(DEMO_DATA) --n-train 60 --n-test 12 --seed 0 --overwrite
	$(PY) src/make_folds.py --data-dir $(DEMO_DATA) --n-folds 3 --seed 42
	for k in $(DEMO_FOLDS); do \
	  $(PY) src/train.py --fold $$k --config $(DEMO_CONFIG) --overwrite || exit 1; \
	done
	$(PY) src/tune.py --config $(DEMO_CONFIG) --folds 0,1
	$(PY) src/infer.py --config $(DEMO_CONFIG) --out $(DEMO_OUT)/submission.csv
	$(PY) src/evaluate.py --submission $(DEMO_OUT)/submission.csv \
	  --truth $(DEMO_DATA)/test_truth.csv --images $(DEMO_DATA)/test --out $(DEMO_OUT)/eval

# Pre-training for configs/real_cpu.yaml (its train.init_from): 20 epochs of the real_cpu network
# on 100 synthetic images; ~10-15 min on 2 CPU cores. On real cells it raised the held-out
# tuned score from 0.203 to 0.221 (bench/results/recipes_real.md). With the competition data,
# LIVECell is the better pre-training set (README "More training data").
PRETRAIN_DATA := input/synthetic_pretrain
pretrain-synthetic: $(STAMP)
	$(PY) src/make_synthetic.py --out $(PRETRAIN_DATA) --n-train 100 --n-test 0 --seed 7 --overwrite
	$(PY) src/make_folds.py --data-dir $(PRETRAIN_DATA) --n-folds 5 --seed 42
	$(PY) src/train.py --fold 0 --config configs/real_cpu.yaml --data-dir $(PRETRAIN_DATA) \
	  --exp pretrain_synthetic --set train.epochs=20 --set 'train.init_from=""' \
	  --set train.time_budget_min=30 --overwrite

test: $(STAMP)
	$(PY) -m pytest -q

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow"

bench: $(STAMP)
	$(PY) bench/run_all.py

clean-demo:
	rm -rf $(DEMO_DATA) $(DEMO_OUT)
