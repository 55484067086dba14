"""Every code block of the README and docs/ runs as shown, or is marked as one that cannot run
here (docs/index.md, "About these pages", says how blocks are read).

The blocks run once, in one scratch folder (a copy of configs/, tools/ linked, data sets under
it): files first, then the training commands in page order, each in its own process and
shortened by :data:`SHORTER`, then the other commands and the Python and YAML blocks in page
order, all in one process (tests/helpers/markdown_runner.py). ``make`` targets run as
``make -n``. Each block's test then reads its results.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from helpers import REPO
from helpers.markdown import Block, Command, all_blocks, blocks, commands, output_block

pytestmark = pytest.mark.slow

RUNNER = REPO / "tests" / "helpers" / "markdown_runner.py"
TINY_YAML = "configs/VOC07-Detection/faster_rcnn_synthetic_tiny.yaml"
TINY_LAZY = "configs/VOC07-Detection/faster_rcnn_synthetic_tiny.py"

# The demo config's data set made small (16 training, 4 test images), for every command that
# trains on it.
SMALL_DATA = {
    TINY_YAML: [
        "DATASETS.SYNTHETIC_VOC.NUM_TRAINVAL", "16",
        "DATASETS.SYNTHETIC_VOC.NUM_TEST", "4",
        "SCALING.DATASET_SIZE", "16",
    ],
    TINY_LAZY: [
        "dataloader.synthetic_voc.num_trainval=16",
        "dataloader.synthetic_voc.num_test=4",
        "train.scaling.dataset_size=16",
    ],
}  # fmt: skip
# Appended to a training command on the config: 4 iterations as written (for 2 GPUs), a
# checkpoint every 2, evaluation at the end only.
SHORTER = {
    TINY_YAML: [
        "SOLVER.MAX_ITER", "4", "SOLVER.STEPS", "(2, 3)", "SOLVER.WARMUP_ITERS", "1",
        "SOLVER.CHECKPOINT_PERIOD", "2", "TEST.EVAL_PERIOD", "0", *SMALL_DATA[TINY_YAML],
    ],
    TINY_LAZY: [
        "train.max_iter=4", "lr_multiplier.scheduler.milestones=[2,3]",
        "lr_multiplier.scheduler.num_updates=4", "train.checkpointer.period=2",
        "train.eval_period=0", *SMALL_DATA[TINY_LAZY],
    ],
}  # fmt: skip
# Appended after SHORTER to a training command with --resume: a run extended to 8 iterations as
# written, so that the resumed run has steps left to train.
LONGER = {TINY_YAML: ["SOLVER.MAX_ITER", "8"]}
# Appended to the other commands that train: a few steps.
FEWER_STEPS = {
    "lr-find": ["--num-iter", "6"],
    "noise-scale": ["--num-iter", "4", "--windows", "2"],
    # 15 probe steps; given step times, no two-process timing.
    "advise": ["--probe-fraction", "0.01", "--step-time", "1=0.4", "2=0.45"],
}

BLOCKS = all_blocks()
RUN_KINDS = ("commands", "python", "yaml")


def kind(block: Block) -> str:
    """What the test does with a block: run it ("commands", "python", "yaml"), write it ("file"),
    compare with it ("output"), leave it to tests/docs/test_own_scripts.py ("recipe"), count it
    ("not run"), or nothing ("text": illustrations such as log lines); "unknown" for a marker or
    language of none of these."""
    if block.marker:
        known = block.marker in ("not run", "recipe", "file", "output")
        return block.marker if known else "unknown"
    kinds = {
        "sh": "commands",
        "bash": "commands",
        "console": "commands",
        "python": "python",
        "yaml": "yaml",
    }
    return kinds.get(block.lang, "text" if block.lang == "text" else "unknown")


def command_kind(command: Command) -> str:
    """ "train" (a process of its own), "cli" (the runner), "make" (``make -n``) or
    "unknown"."""
    words = command.words
    if words[:2] == ["python", "tools/train.py"]:
        return "train"
    if words[:3] == ["python", "-m", "det_scaling"] or words[:1] == ["det-scaling"]:
        arguments = words[3:] if words[0] == "python" else words[1:]
        return "train" if arguments[:1] == ["train"] else "cli"
    if words[0] == "make":
        return "make"
    return "unknown"


def cli_arguments(command: Command) -> list[str]:
    """The command's arguments, with FEWER_STEPS and SMALL_DATA for a command that trains."""
    words = command.words
    arguments = words[3:] if words[0] == "python" else words[1:]
    if arguments[0] not in FEWER_STEPS:
        return arguments
    return [*arguments, *FEWER_STEPS[arguments[0]], *SMALL_DATA[arguments[1]]]


def training_command(command: Command) -> list[str]:
    """The command line of a training command, shortened (SHORTER, and LONGER to resume)."""
    words = command.words
    config = words[words.index("--config-file") + 1]
    longer = LONGER[config] if "--resume" in words else []
    prefix = [sys.executable] if words[0] == "python" else [sys.executable, "-m", "det_scaling"]
    return [*prefix, *words[1:], *SHORTER[config], *longer]


def job_id(block: Block, index: int) -> str:
    return f"{block.where}#{index}"


def scratch_folder(root: Path) -> Path:
    """A copy of configs/, tools/ linked, the file blocks written."""
    shutil.copytree(REPO / "configs", root / "configs")
    (root / "tools").symlink_to(REPO / "tools")
    for block in BLOCKS:
        if kind(block) == "file":
            path = root / block.marker_value
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(block.text)
    return root


def environment(root: Path, extra: dict[str, str]) -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": str(REPO), "DETECTRON2_DATASETS": str(root / "datasets")}
    env.setdefault("OMP_NUM_THREADS", "1")
    for name in ("MAKEFLAGS", "MAKELEVEL", "MFLAGS"):  # when the suite runs under make test
        env.pop(name, None)
    return {**env, **extra}


def run_process(argv: list[str], cwd: Path, env: dict[str, str]) -> dict:
    done = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    return {"status": done.returncode, "stdout": done.stdout, "stderr": done.stderr}


def unknown(command: Command) -> dict:
    words = " ".join(command.words)
    return {
        "status": None,
        "stdout": "",
        "stderr": f"no way to run {words!r}: mark its block <!-- not run: REASON --> or teach "
        "tests/docs/test_markdown_blocks.py to run it",
    }


def yaml_check(text: str) -> str:
    """Python that merges the YAML ``text`` into det_scaling.get_cfg() (unknown keys raise)."""
    return (
        "import det_scaling\nfrom detectron2.config import CfgNode\n"
        f"det_scaling.get_cfg().merge_from_other_cfg(CfgNode.load_cfg({text!r}))\n"
    )


def run_blocks(root: Path) -> dict[str, dict]:
    """The result of every command and block, by :func:`job_id`: training commands first (each
    distinct one once, in a process of its own), then the others in one runner process."""
    results: dict[str, dict] = {}
    trained: dict[tuple, dict] = {}
    runner_jobs = []
    for block in BLOCKS:
        if kind(block) == "python":
            runner_jobs.append({"id": job_id(block, 0), "code": block.text})
        elif kind(block) == "yaml":
            runner_jobs.append({"id": job_id(block, 0), "code": yaml_check(block.text)})
        if kind(block) != "commands":
            continue
        for index, command in enumerate(commands(block)):
            what, env = command_kind(command), environment(root, command.env)
            if what == "train":
                argv = training_command(command)
                key = (tuple(argv), tuple(sorted(command.env.items())))
                if key not in trained:  # the same command on another page runs once
                    trained[key] = {**run_process(argv, root, env), "train": True}
                results[job_id(block, index)] = trained[key]
            elif what == "make":
                results[job_id(block, index)] = run_process(
                    ["make", "-n", *command.words[1:]], REPO, env
                )
            elif what == "cli":
                argv = cli_arguments(command)
                runner_jobs.append({"id": job_id(block, index), "argv": argv, "env": command.env})
            else:
                results[job_id(block, index)] = unknown(command)
    jobs, out = root / "jobs.json", root / "results.json"
    jobs.write_text(json.dumps(runner_jobs))
    runner = run_process(
        [sys.executable, str(RUNNER), str(jobs), str(out)], root, environment(root, {})
    )
    assert runner["status"] == 0, runner["stderr"][-4000:]
    results.update(json.loads(out.read_text()))
    return results


@pytest.fixture(scope="module")
def ran(tmp_path_factory) -> tuple[Path, dict[str, dict]]:
    root = scratch_folder(tmp_path_factory.mktemp("docs"))
    return root, run_blocks(root)


def assert_shows(expected: list[str], actual: str, where: str) -> None:
    """Each expected line appears in ``actual``, in order."""
    lines = [line.rstrip() for line in actual.splitlines()]
    position = 0
    for line in expected:
        try:
            position = lines.index(line, position) + 1
        except ValueError:
            pytest.fail(f"{where}: the output lacks (in this order) {line!r}; it was:\n{actual}")


@pytest.mark.parametrize(
    "block", [b for b in BLOCKS if kind(b) in RUN_KINDS], ids=lambda b: b.where
)
def test_block_runs_as_shown(block: Block, ran) -> None:
    _, results = ran
    if kind(block) == "commands":
        for index, command in enumerate(commands(block)):
            result = results[job_id(block, index)]
            output = result["stdout"] + result["stderr"]
            where = f"{block.where}: {' '.join(command.words)}"
            assert result["status"] == command.exit_status, f"{where}:\n{output[-4000:]}"
            assert_shows(command.expected, output, where)
        return
    result = results[job_id(block, 0)]
    assert result["status"] == 0, f"{block.where}:\n{result['stderr'][-4000:]}"
    shown = output_block(blocks(block.page), block)
    if shown is not None:
        assert_shows(shown.text.splitlines(), result["stdout"], block.where)


def test_training_commands_raise_no_python_warnings(ran) -> None:
    _, results = ran
    trained = {id(r): r for r in results.values() if r.get("train")}
    assert trained, "no training command ran"
    for result in trained.values():
        output = result["stdout"] + result["stderr"]
        warning = re.search(r"\b\w+Warning: ", output)
        assert warning is None, output[output.rfind("\n", 0, warning.start()) + 1 :][:500]


def test_log_files_have_no_terminal_colour_codes(ran) -> None:
    root, _ = ran
    logs = list(root.glob("output/**/log.txt*"))
    assert logs
    for log in logs:
        assert "\x1b[" not in log.read_text(), log


def test_a_run_resumed_on_1_gpu_continues_at_the_images_seen_on_2(ran) -> None:
    _, results = ran
    resumed = [
        results[job_id(block, index)]
        for block in BLOCKS
        if kind(block) == "commands"
        for index, command in enumerate(commands(block))
        if command_kind(command) == "train" and "--resume" in command.words
    ]
    assert resumed
    # 4 steps of 2 images on 2 GPUs: 8 images seen, step 8 of the 1-GPU schedule (16 steps).
    assert "iterations 8 -> 16 of 16, images seen 16" in resumed[0]["stdout"] + resumed[0]["stderr"]


def test_every_block_is_run_or_marked(capsys) -> None:
    unknown = [f"{b.where} ({b.lang or 'no language'})" for b in BLOCKS if kind(b) == "unknown"]
    assert unknown == [], "give each block a language (sh, console, python, yaml, text) or a marker"
    counts = Counter(kind(block) for block in BLOCKS)
    shown = [
        command for block in BLOCKS if kind(block) == "commands" for command in commands(block)
    ]
    commands_run = Counter(command_kind(command) for command in shown)
    trainings = {
        (tuple(training_command(c)), tuple(sorted(c.env.items())))
        for c in shown
        if command_kind(c) == "train"
    }
    outputs = [b for b in BLOCKS if kind(b) == "output"]
    for block in outputs:
        before = blocks(block.page)[blocks(block.page).index(block) - 1]
        assert kind(before) == "python", f"{block.where}: an output block follows a python block"
    not_run = [f"{b.where} ({b.marker_value})" for b in BLOCKS if kind(b) == "not run"]
    with capsys.disabled():
        print(
            f"\n{len(BLOCKS)} code blocks in {len({b.page for b in BLOCKS})} pages. Run: "
            f"{len(shown)} commands in {counts['commands']} blocks ({commands_run['cli']} "
            f"det-scaling commands in one process, {commands_run['train']} training commands in "
            f"{len(trainings)} processes, {commands_run['make']} make -n), {counts['python']} "
            f"Python and {counts['yaml']} YAML blocks; {len(outputs)} outputs compared; "
            f"{counts['file']} file written; {counts['recipe']} recipe blocks for "
            f"tests/docs/test_own_scripts.py; {counts['text']} text; not run: {not_run}"
        )
    assert all(b.marker_value for b in BLOCKS if kind(b) == "not run"), "a not-run block says why"
