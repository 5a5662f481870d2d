# Quick start: `make demo` (full pipeline on synthetic data, CPU) and `make test`.
# Both create .venv and install requirements.txt on first use.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

DEMO_CONFIG := configs/demo.yaml
DEMO_DATA := input/synthetic
DEMO_EXP := demo
DEMO_OUT := output/$(DEMO_EXP)
DEMO_FOLDS := 0 1

.PHONY: demo test test-fast bench clean-demo

$(STAMP): requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt
	touch $(STAMP)

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

test: $(STAMP)
	$(PY) -m pytest -q

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow"

bench: $(STAMP)
	$(PY) bench/run_all.py

clean-demo:
	rm -rf $(DEMO_DATA) $(DEMO_OUT)
