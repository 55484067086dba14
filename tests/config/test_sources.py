"""Which file sets a key: the nearest file of a YAML config's _BASE_ chain (later bases over
earlier ones), or the LazyConfig file with the most specific assignment, through its imports."""

from __future__ import annotations

import textwrap

from det_scaling.config.sources import key_sources


def write(root, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))


def test_yaml_keys_come_from_the_nearest_file_of_the_base_chain(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write(
        tmp_path,
        {
            "configs/Base.yaml": "SOLVER:\n  BASE_LR: 0.02\n  MAX_ITER: 100\n",
            "configs/Schedule.yaml": "SOLVER:\n  MAX_ITER: 200\n  STEPS: (50,)\n",
            "configs/sub/child.yaml": """\
                _BASE_: ["../Base.yaml", "../Schedule.yaml"]
                SOLVER:
                  STEPS: (60,)
                """,
            "configs/grandchild.yaml": '_BASE_: "sub/child.yaml"\nSEED: 3\n',
        },
    )
    keys = ["SOLVER.BASE_LR", "SOLVER.MAX_ITER", "SOLVER.STEPS", "SEED", "SOLVER.GAMMA"]
    assert key_sources("configs/grandchild.yaml", keys) == {
        "SOLVER.BASE_LR": "configs/Base.yaml",
        "SOLVER.MAX_ITER": "configs/Schedule.yaml",  # the later base wins
        "SOLVER.STEPS": "configs/sub/child.yaml",
        "SEED": "configs/grandchild.yaml",
        "SOLVER.GAMMA": None,  # a default
    }


def test_lazyconfig_keys_follow_assignments_and_relative_imports(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write(
        tmp_path,
        {
            "configs/common/optim.py": """\
                from detectron2.config import LazyCall as L
                import torch
                SGD = L(torch.optim.SGD)(params=None, lr=0.02, momentum=0.9)
                """,
            "configs/common/train.py": "train = dict(max_iter=100, eval_period=10)\n",
            "configs/exp/my.py": """\
                from ..common.optim import SGD as optimizer
                from ..common.train import train

                optimizer.momentum = 0.8
                train["eval_period"] = 20
                if True:
                    train.scaling = dict(rule="sqrt")

                def helper():
                    train = dict(max_iter=1)  # a local name: not the config's
                    return train
                """,
        },
    )
    keys = [
        "optimizer.lr",
        "optimizer.momentum",
        "optimizer._target_",
        "train.max_iter",
        "train.eval_period",
        "train.scaling.rule",
        "train.scaling.keep_reference_batch",
        "train.reference_world_size",
    ]
    assert key_sources("configs/exp/my.py", keys) == {
        "optimizer.lr": "configs/common/optim.py",
        "optimizer.momentum": "configs/exp/my.py",
        "optimizer._target_": "configs/common/optim.py",
        "train.max_iter": "configs/common/train.py",
        "train.eval_period": "configs/exp/my.py",
        "train.scaling.rule": "configs/exp/my.py",
        # Keys no file writes: the toolkit's, at their defaults.
        "train.scaling.keep_reference_batch": None,
        "train.reference_world_size": None,
    }
