# The two commands of the README: `make demo` and `make test`. Both set up the environment first
# (once: later runs find it done and go straight to the job).
PYTHON ?= python3
VENV ?= .venv
# Fresh environments pin these (see ../shared/reference/environment.md and README "Installing").
# To use a torch you already have: make setup VENV=/path/to/env TORCH_SPEC=
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1

PY := $(VENV)/bin/python
STAMP := $(VENV)/.det-scaling-setup

# The embedded default: no download. Faster R-CNN trained from scratch on a generated VOC-layout
# data set (datasets/synthetic_voc), on 2 processes (gloo on the CPU, NCCL on GPUs).
DEMO_CONFIG ?= configs/VOC07-Detection/faster_rcnn_synthetic_tiny.yaml
DEMO_GPUS ?= 2
CLS_CONFIG ?= configs/ImageNet-Classification/resnet50_digits.yaml
# The demo config's LazyConfig twin (the same network, data and schedule, as a .py config).
LAZY_CONFIG ?= configs/VOC07-Detection/faster_rcnn_synthetic_tiny.py

.PHONY: setup demo demo-cls demo-lazy test lint clean-venv

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
	$(PY) tools/train.py --config-file $(DEMO_CONFIG) --num-gpus $(DEMO_GPUS) OUTPUT_DIR output/demo

# The classification baseline on the embedded data (scikit-learn's digits as image folders).
demo-cls: setup
	$(PY) tools/train.py --config-file $(CLS_CONFIG) --num-gpus $(DEMO_GPUS) OUTPUT_DIR output/demo-cls

# The same job from the LazyConfig twin: plan, then training on 2 processes.
demo-lazy: setup
	$(PY) -m det_scaling plan $(LAZY_CONFIG) --num-gpus 1 2 4 8
	$(PY) tools/train.py --config-file $(LAZY_CONFIG) --num-gpus $(DEMO_GPUS) train.output_dir=output/demo-lazy

test: setup lint
	$(PY) -m pytest

lint: setup
	$(VENV)/bin/ruff check .

clean-venv:
	rm -rf $(VENV)
