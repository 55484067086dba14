"""The detectron2 compatibility layer: each fix is applied only when needed, and works."""

from __future__ import annotations

import importlib.util
import inspect
import subprocess
import sys
import types
from pathlib import Path

import numpy
import pytest
from PIL import Image

import det_scaling
from det_scaling import compat


def test_pil_linear_fix_applies_only_when_pillow_lacks_it():
    assert compat._pil_linear_needed(types.SimpleNamespace())
    assert not compat._pil_linear_needed(types.SimpleNamespace(LINEAR=2))


def test_pil_linear_fix_applies_only_to_a_detectron2_that_uses_it():
    # v0.6 uses Image.LINEAR; upstream main (told by a feature: it still says 0.6) does not.
    from detectron2.config import get_cfg

    upstream_main = "RESCALE_INTERVAL" in get_cfg().SOLVER
    transform = importlib.util.find_spec("detectron2.data.transforms.transform").origin
    assert ("Image.LINEAR" in Path(transform).read_text()) == (not upstream_main)
    if upstream_main:
        assert "pil_linear" not in compat.applied_fixes()


def test_extent_transform_default_interpolation_is_bilinear():
    from detectron2.data.transforms import ExtentTransform

    default = inspect.signature(ExtentTransform.__init__).parameters["interp"].default
    assert default == Image.BILINEAR


def test_numpy_alias_fix_applies_only_to_sources_using_a_missing_alias():
    missing = [a for a in ("int", "float", "str", "object") if not compat._numpy_has(a)]
    for alias in missing:
        assert compat._uses_missing_numpy_alias(f"x = np.{alias}(3)")
    assert not compat._uses_missing_numpy_alias("x = np.int64(3); y = np.float32")
    assert not compat._uses_missing_numpy_alias("import numpy as np")


def test_numpy_itself_is_not_changed():
    import detectron2.data.build as build

    assert ("int" in vars(numpy)) == compat._numpy_has("int")
    if "numpy_removed_aliases" in compat.applied_fixes():
        assert build.np is not numpy
        assert build.np.int is int
        assert build.np.zeros is numpy.zeros


def test_class_histogram_printed_when_building_a_train_loader_works():
    from detectron2.data.build import print_instances_class_histogram

    dicts = [{"annotations": [{"category_id": 0}, {"category_id": 1}, {"category_id": 1}]}]
    print_instances_class_histogram(dicts, ["cat", "dog"])


def test_detectron2_layers_and_evaluation_import():
    import detectron2.evaluation
    import detectron2.layers
    import detectron2.modeling  # noqa: F401


def test_missing_compiled_op_raises_a_clear_error():
    if "placeholder_c_ops" not in compat.applied_fixes():
        pytest.skip(
            "needs a detectron2 without compiled ops (the registry's v0.6, pure Python); this "
            "one has detectron2._C (a source build such as upstream main)"
        )
    import torch
    from detectron2.layers.rotated_boxes import pairwise_iou_rotated

    boxes = torch.zeros((1, 5))
    with pytest.raises(compat.MissingCompiledOpsError, match="--source"):
        pairwise_iou_rotated(boxes, boxes)


def test_collect_env_reports_the_missing_ops_instead_of_crashing():
    from detectron2.utils.collect_env import collect_env_info

    info = collect_env_info()
    if "placeholder_c_ops" in compat.applied_fixes():
        assert "not compiled" in info


def test_install_is_idempotent():
    before = compat.applied_fixes()
    compat.install()
    assert sum(isinstance(finder, compat._FixingFinder) for finder in sys.meta_path) == 1
    assert compat.applied_fixes() == before


def _python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)


def test_import_prints_nothing():
    result = _python("import det_scaling")
    assert result.returncode == 0, result.stderr
    assert result.stdout == ""


def test_import_loads_neither_torch_nor_detectron2_until_a_name_needs_them():
    result = _python(
        "import sys, det_scaling\n"
        "print(sorted(m for m in ('torch', 'detectron2') if m in sys.modules))\n"
        "det_scaling.scale_cfg\n"
        "print(sorted(m for m in ('torch', 'detectron2') if m in sys.modules))"
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["[]", "['detectron2', 'torch']"]


def test_every_public_name_is_exported_and_resolves():
    assert sorted(det_scaling._PUBLIC) == sorted(det_scaling.__all__)
    for name in det_scaling.__all__:
        assert getattr(det_scaling, name) is not None, name


def test_fixes_run_when_detectron2_is_imported_first():
    modules = "detectron2.data.build, detectron2.layers, detectron2.evaluation"
    fixes = "from det_scaling import compat; print(sorted(compat.applied_fixes()))"
    first = _python(f"import detectron2\nimport det_scaling\nimport {modules}\n{fixes}")
    after = _python(f"import det_scaling\nimport {modules}\n{fixes}")
    assert first.returncode == 0, first.stderr
    assert after.returncode == 0, after.stderr
    assert first.stdout == after.stdout


def test_missing_detectron2_gives_install_instructions():
    result = _python("import sys; sys.modules['detectron2'] = None; import det_scaling")
    assert result.returncode != 0
    assert "tools/install_detectron2.py" in result.stderr


def test_test_loader_gives_every_item_once_in_batches_of_the_size_asked():
    items = [{"value": v} for v in range(7)]
    loader = compat.build_test_loader(items, lambda item: item["value"] * 10, batch_size=3)
    assert list(loader) == [[0, 10, 20], [30, 40, 50], [60]]
