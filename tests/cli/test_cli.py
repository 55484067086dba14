"""The command line: plan and diff output (golden files), overrides, exit codes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import REPO, VOC07_CONFIG
from helpers.cli import assert_matches_golden, run_cli

import det_scaling
from det_scaling.cli import main, parse_args
from det_scaling.commands.train import training_args

VOC07 = str(VOC07_CONFIG.relative_to(REPO))


@pytest.fixture(autouse=True)
def run_from_repo_root(monkeypatch):
    monkeypatch.chdir(REPO)  # golden files name the config by its path in the repo


@pytest.mark.parametrize("num_gpus", [1, 2, 4, 8])
def test_diff_of_scaled_voc07_config_matches_golden_file(capsys, num_gpus):
    code, out, _ = run_cli(capsys, "diff", VOC07, "--num-gpus", str(num_gpus))
    assert code == 0
    assert_matches_golden(out, f"voc07_faster_rcnn_R_50_FPN_{num_gpus}gpu.diff")


def test_plan_of_voc07_config_matches_golden_file(capsys):
    code, out, _ = run_cli(capsys, "plan", VOC07, "--num-gpus", "1", "2", "4", "8")
    assert code == 0
    assert_matches_golden(out, "voc07_faster_rcnn_R_50_FPN_plan.txt")


def test_overrides_apply_wherever_they_stand_on_the_line(capsys):
    _, before, _ = run_cli(capsys, "plan", VOC07, "SOLVER.BASE_LR", "0.01", "--num-gpus", "2")
    _, after, _ = run_cli(capsys, "plan", VOC07, "--num-gpus", "2", "SOLVER.BASE_LR", "0.01")
    assert before == after
    assert " 0.02 " in after  # 0.01 written for 1 GPU, doubled for 2


def test_top_level_keys_are_overrides_too(capsys):
    _, out, _ = run_cli(capsys, "diff", VOC07, "OUTPUT_DIR", "out/x", "SEED", "7")
    assert out.splitlines() == [
        "OUTPUT_DIR: ./output -> out/x  (override)",
        "SEED: -1 -> 7  (override)",
    ]


def test_diff_explains_an_override_then_scaling(capsys):
    _, out, _ = run_cli(capsys, "diff", VOC07, "--num-gpus", "2", "SOLVER.WARMUP_ITERS", "1000")
    line = next(line for line in out.splitlines() if line.startswith("SOLVER.WARMUP_ITERS"))
    assert line.startswith("SOLVER.WARMUP_ITERS: 800 -> 500  (override, then same images seen")


def test_diff_between_two_configs_names_the_second(capsys, tmp_path):
    other = tmp_path / "other.yaml"
    other.write_text(f'_BASE_: "{VOC07_CONFIG}"\nSOLVER:\n  BASE_LR: 0.005\n')
    code, out, _ = run_cli(capsys, "diff", VOC07, str(other))
    assert code == 0
    assert out == f"SOLVER.BASE_LR: 0.0025 -> 0.005  (from {other})\n"


def test_diff_of_identical_configs_says_so(capsys):
    assert run_cli(capsys, "diff", VOC07, VOC07)[1] == "no differences\n"


def test_config_that_cannot_be_scaled_exits_2_with_the_key(capsys):
    code, out, err = run_cli(
        capsys, "plan", VOC07, "SOLVER.REFERENCE_WORLD_SIZE", "2", "SOLVER.IMS_PER_BATCH", "3"
    )
    assert code == 2
    assert out == ""
    assert "error: SOLVER.IMS_PER_BATCH (3) must be divisible" in err
    code, _, err = run_cli(capsys, "plan", VOC07, "SCALING.RULE", "cubic")
    assert code == 2
    assert "SCALING.RULE: unknown scaling rule 'cubic'" in err


def test_gpu_count_must_be_positive(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["plan", VOC07, "--num-gpus", "0"])
    assert exit_info.value.code == 2
    assert "must be >= 1" in capsys.readouterr().err


def test_override_without_value_is_a_usage_error(capsys):
    with pytest.raises(SystemExit):
        main(["plan", VOC07, "SOLVER.BASE_LR"])
    assert "has no value" in capsys.readouterr().err


def test_module_and_console_script_run_as_commands():
    module = subprocess.run(
        [sys.executable, "-m", "det_scaling", "plan", VOC07, "--num-gpus", "8"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    )
    assert "|      8 | 16 (2/GPU)" in module.stdout
    script = os.path.join(os.path.dirname(sys.executable), "det-scaling")
    if not os.path.exists(script):
        pytest.skip("det-scaling console script not installed in this environment")
    console = subprocess.run(
        [script, "diff", VOC07, "--num-gpus", "8"], cwd=REPO, capture_output=True, text=True
    )
    assert console.returncode == 0
    assert "SOLVER.BASE_LR: 0.0025 -> 0.02" in console.stdout


def test_version_is_answered_without_importing_torch():
    code = (
        "import sys\nfrom det_scaling.cli import main\n"
        "try:\n    main(['--version'])\nexcept SystemExit:\n    print('torch' in sys.modules)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [f"det-scaling {det_scaling.__version__}", "False"]


@pytest.mark.parametrize(
    ("error", "status"), [("ValueError('a bug')", 1), ("ConfigError('a bad value')", 2)]
)
def test_only_a_config_error_is_one_line_any_other_error_keeps_its_traceback(error, status):
    """A ValueError raised by the code (or torch, or numpy) is a bug: Python's traceback, exit
    status 1; a ConfigError is the user's to fix: one line, exit status 2."""
    code = "\n".join(
        [
            "import sys",
            "import det_scaling.cli.plan",
            "from det_scaling.cli import main",
            "from det_scaling.errors import ConfigError",
            "def fail(*args):",
            f"    raise {error}",
            "det_scaling.cli.plan.format_plan_table = fail",
            f"sys.exit(main(['plan', {str(VOC07_CONFIG)!r}]))",
        ]
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == status, result.stderr[-2000:]
    lines = result.stderr.strip().splitlines()
    if status == 1:
        assert "Traceback (most recent call last):" in result.stderr
        assert lines[-1] == "ValueError: a bug"
    else:
        assert lines == ["det-scaling plan: error: a bad value"]


def test_training_args_are_what_the_train_command_parses():
    parsed = vars(parse_args(["train", "--config-file", "x.yaml", "SOLVER.BASE_LR", "0.1"]))
    del parsed["func"], parsed["command"]
    assert parsed == vars(training_args("x.yaml", ["SOLVER.BASE_LR", "0.1"]))
    two = training_args("x.yaml", num_gpus=2, resume=True)
    assert (two.num_gpus, two.resume, two.eval_only) == (2, True, False)
    with pytest.raises(TypeError, match="num_gpu"):
        training_args("x.yaml", num_gpu=2)


def test_data_makes_each_generated_set_by_hand_and_prints_its_folder(capsys, tmp_path):
    code, out, err = run_cli(
        capsys, "data", "synthetic-voc", str(tmp_path / "voc"), "--num-trainval", "3",
        "--num-test", "2", "--image-size", "64",
    )  # fmt: skip
    assert (code, err) == (0, "")
    voc = Path(out.strip())
    assert voc.parent == tmp_path / "voc"
    assert len(list((voc / "JPEGImages").glob("*.jpg"))) == 5
    code, out, err = run_cli(capsys, "data", "digits", str(tmp_path / "digits"), "--upscale", "8")
    assert (code, err) == (0, "")
    assert len(list(Path(out.strip()).glob("*/*/*.png"))) == 1797  # scikit-learn's digits
    code, _, err = run_cli(capsys, "data", "digits", str(tmp_path), "--resample", "lanczos")
    assert code == 2 and err.startswith("det-scaling data: error: resample must be one of")
