# The two commands of the README: `make demo` and `make test`. Both set up the environment first
# (once: later runs find it done and go straight to the job).
PYTHON ?= python3
VENV ?= .venv
# Fresh environments pin these (see ../shared/reference/environment.md and README "Installing").
# To use a torch you already have: make setup VENV=/path/to/env TORCH_SPEC=
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1

PY := $(VENV)/bin/python
STAMP := $(VENV)/.det-scaling-setup

.PHONY: setup demo test lint clean-venv

setup: $(STAMP)

$(STAMP): pyproject.toml tools/install_detectron2.py Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(if $(strip $(TORCH_SPEC)),$(PY) -m pip install $(TORCH_SPEC))
	$(PY) -m pip install -e '.[test]'
	$(PY) tools/install_detectron2.py
	$(PY) -c "import det_scaling, detectron2, torch; print('det_scaling ready: detectron2', detectron2.__version__, '/ torch', torch.__version__)"
	touch $@

demo: setup
	$(PY) -m det_scaling plan configs/VOC07-Detection/faster_rcnn_R_50_FPN.yaml --num-gpus 1 2 4 8
	$(PY) -m det_scaling diff configs/VOC07-Detection/faster_rcnn_R_50_FPN.yaml --num-gpus 8

test: setup lint
	$(PY) -m pytest

lint: setup
	$(VENV)/bin/ruff check .

clean-venv:
	rm -rf $(VENV)
