"""Runs the Markdown's commands and Python blocks in one process (one import of torch and
detectron2 for all of them), in order: ``python markdown_runner.py JOBS.json RESULTS.json``.

A job is ``{"id", "argv"}`` (a ``det-scaling`` command line, run by ``det_scaling.cli.main``) or
``{"id", "code"}`` (a Python block, run as a script in a namespace of its own), with ``"env"``:
variables set while it runs. Each result is the job's exit status, stdout and stderr; a Python
block that raises has exit status 1 and its traceback in stderr.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import sys
import traceback

import det_scaling  # noqa: F401  (before detectron2: the compatibility layer)
from det_scaling.cli import main as cli_main


def run_job(job: dict) -> dict:
    out, err = io.StringIO(), io.StringIO()
    saved = {name: os.environ.get(name) for name in job.get("env", {})}
    os.environ.update(job.get("env", {}))
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                if "argv" in job:
                    status = cli_main(job["argv"])
                else:
                    code = compile(job["code"], job["id"], "exec")
                    exec(code, {"__name__": "__main__"})
                    status = 0
            except SystemExit as stop:
                status = stop.code if isinstance(stop.code, int) else 1
            except Exception:
                traceback.print_exc()
                status = 1
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
    return {"status": status or 0, "stdout": out.getvalue(), "stderr": err.getvalue()}


def main(jobs_path: str, results_path: str) -> None:
    with open(jobs_path) as f:
        jobs = json.load(f)
    results = {job["id"]: run_job(job) for job in jobs}
    with open(results_path, "w") as f:
        json.dump(results, f)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
