# The two commands of the README: `make demo` and `make test`. Both set up the environment first
# (once: later runs find it done and go straight to the job).
PYTHON ?= python3
VENV ?= .venv
# Fresh environments pin these (see ../shared/reference/environment.md and docs/installing.md).
# To use a torch you already have: make setup VENV=/path/to/env TORCH_SPEC=
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1

PY := $(VENV)/bin/python
STAMP := $(VENV)/.det-scaling-setup
# Passed to tools/install_detectron2.py, which also reads $$DETECTRON2_SOURCE (a detectron2
# checkout or source .tar.gz to build instead of the default order; see docs/installing.md).
INSTALL_FLAGS ?=
DETECTRON2_SOURCE ?=
# make test-upstream: the suite against upstream detectron2 main built from DETECTRON2_SOURCE,
# in its own environment (same torch pins), beside the v0.6 one in $(VENV).
UPSTREAM_VENV ?= .venv-upstream

# The embedded default: no download. Faster R-CNN trained from scratch on a generated VOC-layout
# data set (datasets/synthetic_voc/<key>/), on 2 processes (gloo on the CPU, NCCL on GPUs).
DEMO_CONFIG ?= configs/VOC07-Detection/faster_rcnn_synthetic_tiny.yaml
DEMO_GPUS ?= 2
CLS_CONFIG ?= configs/ImageNet-Classification/resnet50_digits.yaml
# The demo config's LazyConfig twin (the same network, data and schedule, as a .py config).
LAZY_CONFIG ?= configs/VOC07-Detection/faster_rcnn_synthetic_tiny.py
# Config overrides appended to the demos' training, e.g. a short run:
# make demo DEMO_OPTS='SOLVER.MAX_ITER 100 SOLVER.STEPS "(60, 80)" SOLVER.WARMUP_ITERS 10'
# (KEY VALUE pairs for demo and demo-cls, key=value for demo-lazy).
DEMO_OPTS ?=

# The wheels the GPU machine lacks, for its Python 3.12 (benchmarks/README.md, "GPU check").
GPU_WHEELHOUSE ?= .gpu-wheelhouse

.PHONY: setup demo demo-cls demo-lazy test test-upstream lint docs mutation clean-venv
.PHONY: gpu-wheelhouse gpu-check gpu-check-dry-run

setup: $(STAMP)

# A new source snapshot (DETECTRON2_SOURCE) also redoes the set-up.
$(STAMP): pyproject.toml tools/install_detectron2.py Makefile $(wildcard $(DETECTRON2_SOURCE))
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(if $(strip $(TORCH_SPEC)),$(PY) -m pip install $(TORCH_SPEC))
	$(PY) -m pip install -e '.[test]'
	$(PY) tools/install_detectron2.py $(INSTALL_FLAGS)
	$(PY) -c "import det_scaling, detectron2, torch; from detectron2.config import get_cfg; \
	  kind = 'upstream main' if 'RESCALE_INTERVAL' in get_cfg().SOLVER else 'v0.6'; \
	  print('det_scaling ready: detectron2', detectron2.__version__, f'({kind})', '/ torch', torch.__version__)"
	touch $@

demo: setup
	$(PY) -m det_scaling plan configs/VOC07-Detection/faster_rcnn_R_50_FPN.yaml --num-gpus 1 2 4 8
	$(PY) tools/train.py --config-file $(DEMO_CONFIG) --num-gpus $(DEMO_GPUS) OUTPUT_DIR output/demo $(DEMO_OPTS)

# The classification baseline on the embedded data (scikit-learn's digits as image folders).
demo-cls: setup
	$(PY) tools/train.py --config-file $(CLS_CONFIG) --num-gpus $(DEMO_GPUS) OUTPUT_DIR output/demo-cls $(DEMO_OPTS)

# The same job from the LazyConfig twin: plan, then training on 2 processes.
demo-lazy: setup
	$(PY) -m det_scaling plan $(LAZY_CONFIG) --num-gpus 1 2 4 8
	$(PY) tools/train.py --config-file $(LAZY_CONFIG) --num-gpus $(DEMO_GPUS) train.output_dir=output/demo-lazy $(DEMO_OPTS)

test: setup lint
	$(PY) -m pytest

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

# docs/config-keys.md, written from the comments in det_scaling/config/defaults.py (a test fails
# when the committed page differs).
docs: setup
	$(PY) tools/config_keys_doc.py

# The same set-up, lint and suite in $(UPSTREAM_VENV), with detectron2 built (--force: always
# this source, never a detectron2 found there) from DETECTRON2_SOURCE.
test-upstream:
	@test -n "$(DETECTRON2_SOURCE)" || { echo "make test-upstream: set DETECTRON2_SOURCE to an upstream detectron2 checkout or source .tar.gz, e.g. make test-upstream DETECTRON2_SOURCE=../shared/vendor/detectron2-02b5c4e295e9.tar.gz" >&2; exit 2; }
	$(MAKE) test VENV=$(UPSTREAM_VENV) INSTALL_FLAGS=--force DETECTRON2_SOURCE="$(abspath $(DETECTRON2_SOURCE))"

# Mutation testing of the core math and state modules against their fast tests ([tool.mutmut] in
# pyproject.toml; the dev extra). Not part of CI: run it after changing those modules or their
# tests, and update tests/MUTATION.md. MUTMUT_ARGS: e.g. a glob of mutants to run.
MUTMUT_ARGS ?=
mutation: setup
	$(PY) -m pip install -e '.[test,dev]'
	time $(PY) -m mutmut run $(MUTMUT_ARGS)
	$(PY) -m mutmut results

clean-venv:
	rm -rf $(VENV) $(UPSTREAM_VENV)

# Here, with the registry: fvcore, iopath, yacs, omegaconf, hydra-core, pycocotools, detectron2
# v0.6 (built from the pinned sdist) and what they need, as wheels for CPython 3.12 manylinux
# x86-64, into $(GPU_WHEELHOUSE) (git-ignored; carried to the GPU machine). Not part of `make test`.
gpu-wheelhouse: setup
	$(PY) tools/gpu_wheelhouse.py build --dest $(GPU_WHEELHOUSE)

# On the GPU machine, with its python3 and the wheelhouse beside the checkout.
gpu-check:
	bash benchmarks/gpu_check.sh --wheelhouse $(GPU_WHEELHOUSE)

# The same steps on this machine's CPU, small (CI runs it through the test suite).
gpu-check-dry-run: setup
	PYTHON=$(PY) bash benchmarks/gpu_check.sh --dry-run
