"""Every bad input is one clear line: the table of them, run through the real commands.

Each case runs a command on a bad input and checks what a user sees: exit status 2, exactly one
line on stderr, starting ``det-scaling COMMAND: error:`` and naming the file, key or option and
what to do; no traceback; nothing written (the working directory, data sets directory and inputs
are compared before and after). ``plan``, ``diff``, ``lr-plot`` and ``lr-find`` run in this
process (``det_scaling.cli.main``); ``train`` runs as ``tools/train.py`` in a subprocess.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from det_scaling.cli import main

REPO = Path(__file__).resolve().parents[2]
TINY = str(REPO / "configs" / "VOC07-Detection" / "faster_rcnn_synthetic_tiny.yaml")
VOC07 = str(REPO / "configs" / "VOC07-Detection" / "faster_rcnn_R_50_FPN.yaml")
DIGITS = str(REPO / "configs" / "ImageNet-Classification" / "resnet50_digits.yaml")
TINY_PY = str(REPO / "configs" / "VOC07-Detection" / "faster_rcnn_synthetic_tiny.py")


def write_inputs(root: Path) -> dict[str, str]:
    """The bad (and good) inputs the cases name, as ``{name}`` in their arguments."""
    inputs = root / "inputs"
    (inputs / "a_folder").mkdir(parents=True)
    files = {
        "binary.yaml": b"\x89PNG\r\n\x1a\n\x00\x00\xff\xfe",
        "syntax.yaml": b"SOLVER:\n  BASE_LR: [0.1\n",
        "list.yaml": b"- a list\n- not a config\n",
        "misspelt.yaml": f'_BASE_: "{TINY}"\nSOLVER:\n  BASE_LRR: 0.1\n'.encode(),
        "wrong_type.yaml": f'_BASE_: "{TINY}"\nSOLVER:\n  MAX_ITER: "ten"\n'.encode(),
        "a_file": b"not a directory",
    }
    for name, content in files.items():
        (inputs / name).write_bytes(content)
    other_model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.Linear(8, 2))
    torch.save({"model": other_model.state_dict()}, inputs / "other_model.pth")
    torch.save({"model": other_model.state_dict()}, inputs / "cut.pth")
    with open(inputs / "cut.pth", "r+b") as f:
        f.truncate(200)  # a download or copy cut short
    named = {name.split(".")[0]: str(inputs / name) for name in [*files, "a_folder"]}
    named |= {"other_model": str(inputs / "other_model.pth"), "cut": str(inputs / "cut.pth")}
    named |= {"missing": str(inputs / "missing.yaml"), "tiny": TINY, "voc07": VOC07}
    named |= {"digits": DIGITS, "tiny_py": TINY_PY}
    return named | {"nowhere": str(inputs / "no_such_folder")}


# (arguments, what the one line must contain)
CASES = [
    # ---- plan: files ----
    (["plan", "{missing}"], "{missing}: no such config file"),
    (["plan", "{a_folder}"], "{a_folder}: is a directory; give a config file"),
    (["plan", "{binary}"], "{binary}: not a text file; give a YAML config"),
    (["plan", "{syntax}"], "{syntax}: not a detectron2 YAML config (while parsing"),
    (["plan", "{list}"], "{list}: not a detectron2 YAML config"),
    # ---- plan: keys and values ----
    (["plan", "{misspelt}"], "SOLVER.BASE_LRR: no such config key; did you mean SOLVER.BASE_LR?"),
    (["plan", "{tiny}", "SOLVER.BASE_LRR", "0.1"], "did you mean SOLVER.BASE_LR?"),
    (["plan", "{wrong_type}"], "SOLVER.MAX_ITER: expected int (like 40000), got str 'ten'"),
    (["plan", "{tiny}", "SOLVER.MAX_ITER", "abc"], "SOLVER.MAX_ITER: expected int"),
    (
        ["plan", "{tiny}", "SCALING.KEEP_REFERENCE_BATCH", "1"],
        "SCALING.KEEP_REFERENCE_BATCH: expected bool (like False), got int '1'",
    ),
    (["plan", "{tiny}", "SOLVER.STEPS", "(1350, 1125)"], "steps must increase"),
    (["plan", "{tiny}", "SOLVER.STEPS", "(1125, 2000)"], "step 2000 is not inside the run"),
    (["plan", "{tiny}", "SOLVER.WARMUP_ITERS", "2000"], "longer than the run (SOLVER.MAX_ITER"),
    (["plan", "{tiny}", "SOLVER.BASE_LR", "-0.1"], "SOLVER.BASE_LR must be positive"),
    (["plan", "{tiny}", "SCALING.RULE", "cubic"], "SCALING.RULE: unknown scaling rule 'cubic'"),
    # ---- plan: periods detectron2 would misread ----
    (
        ["plan", "{tiny}", "SOLVER.CHECKPOINT_PERIOD", "-5"],
        "SOLVER.CHECKPOINT_PERIOD is -5: detectron2 would misread it",
    ),
    (
        ["plan", "{tiny}", "SOLVER.CHECKPOINT_PERIOD", "0"],
        "SOLVER.CHECKPOINT_PERIOD is 0: detectron2 would misread it",
    ),
    (["plan", "{tiny}", "TEST.EVAL_PERIOD", "-1"], "TEST.EVAL_PERIOD is -1: detectron2 would"),
    (
        ["plan", "{tiny}", "SCALING.EPOCHS.MAX", "6.0", "SCALING.EPOCHS.EVAL_PERIOD", "-1.0"],
        "SCALING.EPOCHS.EVAL_PERIOD is -1: a period cannot be negative",
    ),
    (
        ["plan", "{tiny_py}", "train.checkpointer.period=-5"],
        "train.checkpointer.period is -5: detectron2 would misread it",
    ),
    (["plan", "{tiny_py}", "train.eval_period=-1"], "train.eval_period is -1: detectron2 would"),
    (
        ["train", "--config-file", "{tiny}", "SOLVER.CHECKPOINT_PERIOD", "-5"],
        "SOLVER.CHECKPOINT_PERIOD is -5: detectron2 would misread it",
    ),
    # ---- plan: GPU counts ----
    (["plan", "{tiny}", "--num-gpus", "0"], "argument --num-gpus: must be >= 1, got 0"),
    (
        ["plan", "{tiny}", "--num-gpus", "3", "SCALING.KEEP_REFERENCE_BATCH", "True"],
        "do not divide evenly among 3 GPUs",
    ),
    (
        ["plan", "{tiny}", "SOLVER.IMS_PER_BATCH", "3"],
        "SOLVER.IMS_PER_BATCH (3) must be divisible by SOLVER.REFERENCE_WORLD_SIZE (2)",
    ),
    (
        ["plan", "{tiny}", "--num-gpus", "1", "SCALING.RULE", "adascale"],
        "AdaScale scales up from the batch its schedule is written for (2)",
    ),
    # ---- diff ----
    (["diff", "{tiny}", "{missing}"], "{missing}: no such config file"),
    (["diff", "{tiny}", "{misspelt}"], "SOLVER.BASE_LRR: no such config key"),
    (["diff", "{tiny}", "--num-gpus", "-2"], "argument --num-gpus: must be >= 1, got -2"),
    # ---- lr-plot ----
    (["lr-plot", "{tiny}", "-o", "{nowhere}/lr.png"], "-o {nowhere}/lr.png: no such directory"),
    (["lr-plot", "{tiny}", "-o", "{a_folder}"], "-o {a_folder}: is a directory"),
    (["lr-plot", "{tiny}", "-o", "{nowhere}.xyz"], "-o {nowhere}.xyz: cannot write .xyz images"),
    (["lr-plot"], "give either a CONFIG or --metrics"),
    (["lr-plot", "{tiny}", "--metrics", "{missing}"], "give either a CONFIG or --metrics"),
    (["lr-plot", "--metrics", "{missing}"], "--metrics {missing}: no such file"),
    (["lr-plot", "--metrics", "{binary}"], "{binary}: not a text file"),
    (["lr-plot", "--metrics", "{list}"], "{list}:1: not a metrics.json line"),
    # ---- lr-find ----
    (["lr-find", "{tiny}", "--start-lr", "1", "--end-lr", "0.1"], "need 0 < start LR < end LR"),
    (["lr-find", "{tiny}", "--smoothing", "1.5"], "--smoothing 1.5: must be in [0, 1)"),
    (["lr-find", "{tiny}", "--diverge-factor", "0.5"], "--diverge-factor 0.5: must be > 1"),
    (["lr-find", "{tiny}", "--num-iter", "x"], "argument --num-iter: not an integer: 'x'"),
    (["lr-find", "{tiny}", "-o", "{nowhere}/f.png"], "-o {nowhere}/f.png: no such directory"),
    (["lr-find", "{voc07}"], "cannot load the training data ['voc_2007_trainval']"),
    (["lr-find", "{tiny}", "DATASETS.TRAIN", "('nope',)"], "data set 'nope' is not registered"),
    (["lr-find", "{tiny}", "MODEL.WEIGHTS", "{other_model}"], "none of its 4 tensors matches"),
    # ---- train (tools/train.py) ----
    (["train", "--config-file", "{missing}"], "{missing}: no such config file"),
    (["train", "--config-file", "{misspelt}"], "did you mean SOLVER.BASE_LR?"),
    (
        ["train", "--config-file", "{tiny}", "--num-gpus", "0"],
        "--num-gpus 0 --num-machines 1: both must be >= 1",
    ),
    (
        [
            "train",
            "--config-file",
            "{tiny}",
            "--num-gpus",
            "3",
            "SCALING.KEEP_REFERENCE_BATCH",
            "True",
        ],
        "do not divide evenly among 3 GPUs",
    ),
    (
        ["train", "--config-file", "{tiny}", "--num-machines", "2", "--machine-rank", "2"],
        "--machine-rank must be in [0, 1]",
    ),
    (["train", "--config-file", "{tiny}", "--dist-timeout", "0"], "not a positive duration: '0'"),
    (
        ["train", "--config-file", "{tiny}", "OUTPUT_DIR", "{a_file}/out"],
        "OUTPUT_DIR {a_file}/out: {a_file} is a file",
    ),
    (["train", "--config-file", "{voc07}"], "cannot load the training data ['voc_2007_trainval']"),
    (
        ["train", "--config-file", "{tiny}", "DATASETS.TRAIN", "('nope',)"],
        "DATASETS.TRAIN: data set 'nope' is not registered",
    ),
    (
        ["train", "--config-file", "{digits}", "DATASETS.TRAIN", "('synthetic_voc_trainval',)"],
        "'synthetic_voc_trainval' is a detection data set but MODEL.META_ARCHITECTURE "
        "ImageClassifier is a classification model",
    ),
    (
        ["train", "--config-file", "{tiny}", "MODEL.ROI_HEADS.NUM_CLASSES", "3"],
        "MODEL.ROI_HEADS.NUM_CLASSES is 3 but data set 'synthetic_voc_trainval' has 5 classes",
    ),
    (
        ["train", "--config-file", "{tiny}", "MODEL.WEIGHTS", "{missing}"],
        "MODEL.WEIGHTS {missing}: no such file",
    ),
    (
        ["train", "--config-file", "{tiny}", "MODEL.WEIGHTS", "{cut}"],
        "MODEL.WEIGHTS {cut}: cannot be read as a checkpoint",
    ),
    (
        ["train", "--config-file", "{tiny}", "MODEL.WEIGHTS", "{other_model}"],
        "it is a checkpoint of another model",
    ),
    (["train", "--config-file", "{tiny}", "--eval-only"], "--eval-only evaluates MODEL.WEIGHTS"),
    (
        ["train", "--config-file", "{tiny}", "SOLVER.CHECKPOINT_MAX_TO_KEEP", "1"],
        "SOLVER.CHECKPOINT_MAX_TO_KEEP is 1",
    ),
    # ---- a LazyConfig: the same checks, named by its own keys ----
    (["plan", "{tiny_py}", "SOLVER.BASE_LR", "0.1"], "a LazyConfig takes key=value overrides"),
    (
        ["plan", "{tiny_py}", "train.max_itr=10"],
        "train.max_itr: no such config key; did you mean train.max_iter?",
    ),
    (
        ["train", "--config-file", "{tiny_py}", "train.checkpointer.max_to_keep=1"],
        "train.checkpointer.max_to_keep is 1",
    ),
    (
        ["train", "--config-file", "{tiny_py}", "train.init_checkpoint={other_model}"],
        "train.init_checkpoint {other_model}: none of its",
    ),
    (["lr-find", "{tiny_py}"], "lr-find takes YAML configs"),
    # ---- noise-scale ----
    (["noise-scale", "{tiny_py}"], "noise-scale takes YAML configs"),
    (
        ["noise-scale", "{tiny}", "--csv", "{nowhere}/n.csv"],
        "--csv {nowhere}/n.csv: no such directory",
    ),
]


def case_id(case: tuple[list[str], str]) -> str:
    argv, _ = case
    return "-".join(a.strip("{}-").replace("/", "_") for a in argv if a != "--config-file")[:60]


def run_command(argv: list[str], root: Path, monkeypatch, capsys) -> tuple[int, str]:
    """Runs ``argv`` (``train``: tools/train.py in a subprocess) in ``root``; exit status and
    stderr."""
    if argv[0] == "train":
        env = {**os.environ, "PYTHONPATH": str(REPO), "DETECTRON2_DATASETS": str(root / "data")}
        result = subprocess.run(
            [sys.executable, str(REPO / "tools" / "train.py"), *argv[1:]],
            cwd=root,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        return result.returncode, result.stderr
    monkeypatch.chdir(root)
    monkeypatch.setenv("DETECTRON2_DATASETS", str(root / "data"))
    try:
        code = main(argv)
    except SystemExit as error:  # argparse's usage errors
        code = error.code
    return code, capsys.readouterr().err


def snapshot(root: Path) -> dict[str, float]:
    return {str(p): p.stat().st_mtime for p in root.rglob("*")}


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        pytest.param(
            *case, id=case_id(case), marks=[pytest.mark.slow] if case[0][0] == "train" else []
        )
        for case in CASES
    ],
)
def test_a_bad_input_is_one_line_exit_2_and_nothing_written(
    tmp_path, monkeypatch, capsys, argv, expected
):
    inputs = write_inputs(tmp_path)
    argv = [a.format(**inputs) for a in argv]
    before = snapshot(tmp_path)
    code, stderr = run_command(argv, tmp_path, monkeypatch, capsys)
    lines = stderr.splitlines()
    assert code == 2, stderr[-3000:]
    assert len(lines) == 1, stderr[-3000:]
    assert lines[0].startswith(f"det-scaling {argv[0]}: error: ")
    assert expected.format(**inputs) in lines[0]
    assert "Traceback" not in stderr
    assert snapshot(tmp_path) == before  # nothing written, no data set generated


def test_the_table_covers_every_command_with_at_least_25_cases():
    assert len(CASES) >= 25
    commands = {argv[0] for argv, _ in CASES}
    assert commands == {"plan", "diff", "lr-plot", "lr-find", "noise-scale", "train"}
