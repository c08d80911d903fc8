# Two commands do all set-up on a fresh machine:
#   make run    # venv + install + the CIFAR-10 regularisation study (quick preset) + report
#   make test   # venv + install with test extras + the whole test suite
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# a local copy of the datasets is used when present (offline machines); otherwise they download
SHARED := $(abspath ../shared/datasets)
ABLATIONS_DATA ?= $(if $(wildcard $(SHARED)/README.md),$(SHARED),)
export ABLATIONS_DATA
STUDY  ?= cifar10-regularization
PRESET ?= quick

.PHONY: run test venv clean full

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# torch first, pinned, so the optional packages that depend on an unpinned torch keep this one
	$(BIN)/python -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(BIN)/python -m pip install -q -e '.[test,transfer,glove,explain,cluster]'
	touch $(STAMP)

venv: $(STAMP)

run: $(STAMP)
	$(BIN)/ablations run $(STUDY) --preset $(PRESET) --continue

full: $(STAMP)
	$(BIN)/ablations run $(STUDY) --preset full --continue

test: $(STAMP)
	$(BIN)/python -m pytest

clean:
	rm -rf $(VENV) build src/*.egg-info .pytest_cache
