"""Start the processes of a run: on one or several machines, or under ``torchrun``.

:func:`launch` has the signature and meaning of ``detectron2.engine.launch``. Its processes are
started by torch's elastic agent (``torch.distributed.launcher.api.elastic_launch``, what torchrun
runs), so every process, started here or by ``torchrun``, takes one path: the process group from
torchrun's environment variables (:func:`_worker`). Added to what torch and detectron2 v0.6 do:

* a CPU path: without a GPU for each process, the processes run on the CPU with gloo;
* a failure told once: a process that raises appends its traceback to its log, and
  :class:`~det_scaling.engine.failures.RankFailedError` names the rank that failed first and why
  (:mod:`det_scaling.engine.failures`; torch reports whichever process it saw exit first);
* preemption: SIGTERM, SIGINT and SIGUSR1 to the launcher are passed on to the workers (by the
  agent), which stop at a step with a checkpoint (:mod:`det_scaling.engine.preemption`), and the
  launcher raises :class:`~det_scaling.engine.preemption.Preempted` with their message;
* torchrun restarts: each attempt's process group in a store namespace of its own.

:func:`create_ddp_model` (:mod:`det_scaling.compat`) is detectron2's, for CPU models too.

The launcher knows nothing of scaling: ``main_func`` reads the world size from
``detectron2.utils.comm`` and scales its config itself.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from detectron2.utils import comm
from torch.distributed.elastic.multiprocessing import DefaultLogsSpecs, SignalException
from torch.distributed.elastic.multiprocessing.errors import ChildFailedError, record
from torch.distributed.launcher.api import LaunchConfig, elastic_launch

from det_scaling.compat import create_ddp_model, create_local_process_group
from det_scaling.engine.failures import (
    RankFailedError,
    RankFailure,
    rank_log_file,
    read_failures,
    record_failure,
    root_cause,
)
from det_scaling.engine.preemption import PREEMPTED_EXIT_STATUS, Preempted
from det_scaling.errors import ConfigError

__all__ = [
    "DEFAULT_TIMEOUT",
    "TORCHRUN_VARIABLES",
    "create_ddp_model",
    "default_device",
    "launch",
    "launch_for_result",
    "pick_backend",
    "planned_world_size",
    "torchrun_restart_count",
    "under_torchrun",
]

DEFAULT_TIMEOUT = timedelta(minutes=30)
# What torchrun (and torch.distributed.launch --use-env) sets in every worker's environment.
TORCHRUN_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
# The signals the launcher passes on to its workers.
FORWARDED_SIGNALS = ("SIGTERM", "SIGINT", "SIGUSR1")

logger = logging.getLogger(__name__)

# A process's preemption message, left in the launch's folder for its launcher, by local rank.
PREEMPTION_RECORD = "preempted.{rank}.txt"


def launch(
    main_func: Callable[..., Any],
    num_gpus_per_machine: int,
    num_machines: int = 1,
    machine_rank: int = 0,
    dist_url: str | None = None,
    args: Sequence[Any] = (),
    timeout: timedelta = DEFAULT_TIMEOUT,
    log_dir: str | None = None,
) -> None:
    """Runs ``main_func(*args)`` in every process of a (possibly) distributed job.

    As ``detectron2.engine.launch``: call it on every machine; it starts ``num_gpus_per_machine``
    processes here, whose global ranks are ``machine_rank * num_gpus_per_machine + local rank``,
    meeting at ``dist_url`` (``tcp://HOST:PORT``, served by machine 0; ``"auto"``: a free port on
    localhost, one machine only). A world of one process runs ``main_func`` here without a
    process group. The backend is NCCL, one GPU per process, when CUDA has
    ``num_gpus_per_machine`` GPUs, and otherwise gloo with the processes on the CPU.

    Under ``torchrun`` (all of :data:`TORCHRUN_VARIABLES` set), torchrun has already started one
    process per worker: ``main_func`` runs here in the process group of torchrun's environment;
    the GPU, machine and URL arguments are then ignored in favour of torchrun's.

    ``timeout`` bounds every collective (gloo; NCCL with its watchdog: docs/failures.md). When a
    process raises, its traceback is appended to its log file in ``log_dir`` (detectron2's
    ``log.txt.rank<N>``; without ``log_dir``, kept in the error), the other processes of this
    machine are stopped, and :class:`~det_scaling.engine.failures.RankFailedError` is raised
    here naming the rank that failed first and why. A world of one process does the same with
    ``log_dir``; without it, exceptions propagate as they are.
    """
    if under_torchrun():
        # torch's @record: torchrun's summary names the cause (its error file).
        record(_worker)(main_func, tuple(args), timeout, log_dir)
        return
    if num_machines * num_gpus_per_machine == 1:
        if log_dir is None:
            main_func(*args)
            return
        with _failure_recorded(0, 1, None, log_dir):
            main_func(*args)
        return
    _launch_workers(
        main_func,
        args,
        num_gpus_per_machine,
        num_machines,
        machine_rank,
        dist_url,
        timeout,
        log_dir,
    )


def launch_for_result(
    main_func: Callable[..., Any], num_processes: int, args: Sequence[Any] = ()
) -> Any:
    """``main_func(*args)`` in ``num_processes`` processes on this machine (:func:`launch`, a free
    local port); returns the main process's return value (picklable). One process runs here,
    without spawning. A ``ConfigError`` (a bad input: every process raises it alike) is raised
    here with its message; any other failure ends the processes as :func:`launch` does."""
    if num_processes == 1:
        return main_func(*args)
    try:
        results = _launch_workers(
            main_func, args, num_processes, 1, 0, "auto", DEFAULT_TIMEOUT, None, keep_results=True
        )
    except RankFailedError as error:
        if error.failure.config_error:
            raise ConfigError(error.failure.config_error) from None
        raise
    return results[0]


def pick_backend(processes_per_machine: int) -> str:
    """``"nccl"`` when CUDA has a GPU for each of ``processes_per_machine`` processes, else
    ``"gloo"`` (the processes then run on the CPU)."""
    if torch.cuda.is_available() and torch.cuda.device_count() >= processes_per_machine:
        return "nccl"
    return "gloo"


def planned_world_size(num_gpus_per_machine: int, num_machines: int = 1) -> int:
    """The world size :func:`launch` will make with these arguments (under ``torchrun``, its
    ``WORLD_SIZE``): what a launching process checks a config against before starting any."""
    if under_torchrun():
        return int(os.environ["WORLD_SIZE"])
    return num_gpus_per_machine * num_machines


def under_torchrun() -> bool:
    """Whether this process was started by ``torchrun`` or by :func:`launch` (torchrun's
    environment variables are set)."""
    return all(name in os.environ for name in TORCHRUN_VARIABLES)


def torchrun_restart_count() -> int:
    """How many times torchrun restarted this worker group after a failure
    (``TORCHELASTIC_RESTART_COUNT``; 0 outside torchrun). A restart for a change of membership
    (a node joining) is not counted by torchrun."""
    return int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")) if under_torchrun() else 0


def default_device() -> str:
    """The device this process trains on: ``"cuda"`` when CUDA is available and the process group
    (if any) is NCCL, else ``"cpu"``. Tools use it to move ``MODEL.DEVICE`` off CUDA when
    :func:`launch` fell back to gloo."""
    if not torch.cuda.is_available():
        return "cpu"
    if dist.is_available() and dist.is_initialized() and dist.get_backend() != "nccl":
        return "cpu"
    return "cuda"


def _launch_workers(
    main_func: Callable[..., Any],
    args: Sequence[Any],
    processes: int,
    num_machines: int,
    machine_rank: int,
    dist_url: str | None,
    timeout: timedelta,
    log_dir: str | None,
    keep_results: bool = False,
) -> dict[int, Any]:
    """``processes`` workers here, started by torch's elastic agent without restarts; the return
    values of this machine's, by global rank, with ``keep_results``."""
    backend = pick_backend(processes)
    if backend == "gloo":
        logger.info("Launching %d process(es) on the CPU with the gloo backend", processes)
    world_size = num_machines * processes
    with tempfile.TemporaryDirectory(prefix="det_scaling_launch_") as folder:
        config = LaunchConfig(
            min_nodes=num_machines,
            max_nodes=num_machines,
            nproc_per_node=processes,
            # torchrun's id for "no job id": no later launch reads this one's output as its own.
            run_id="none",
            max_restarts=0,
            logs_specs=DefaultLogsSpecs(log_dir=folder),
            signals_to_handle=",".join(FORWARDED_SIGNALS),
            # Preempted workers finish their step and checkpoint before they exit.
            shutdown_timeout=max(30, int(timeout.total_seconds())),
            **_rendezvous(dist_url, num_machines, machine_rank),
        )
        try:
            with _torch_launcher_logs_held(), _signal_handlers_restored():
                entry = (main_func, tuple(args), timeout, log_dir, folder, keep_results)
                return elastic_launch(config, _started_worker)(*entry)
        except SignalException as stopped:
            raise _preemption(folder) or Preempted(
                f"stopped by {stopped.sigval.name} before a step was done: no checkpoint to write"
            ) from None
        except ChildFailedError as error:
            rank, exited = error.get_first_failure()
            preempted = _preemption(folder)
            if exited.exitcode == PREEMPTED_EXIT_STATUS and preempted is not None:
                raise preempted from None
            failures = read_failures(folder)
            if failures:
                raise RankFailedError(root_cause(failures)) from None
            # Killed (the out-of-memory killer sends SIGKILL) or exited without an exception.
            dead = exited.exitcode < 0
            how = f"signal {exited.signal_name()}" if dead else f"status {exited.exitcode}"
            cause = f"the process ended with {how}"
            log_file = rank_log_file(log_dir, rank) if log_dir else None
            failure = RankFailure(rank, world_size, exited.timestamp, cause, log_file=log_file)
            raise RankFailedError(failure) from None


def _rendezvous(dist_url: str | None, num_machines: int, machine_rank: int) -> dict[str, Any]:
    """The elastic agent's rendezvous for ``dist_url``: ``"auto"``, a store on a free local port;
    ``tcp://HOST:PORT``, the store machine 0 serves there (torchrun's static rendezvous)."""
    if dist_url is None:
        raise ConfigError("dist_url is required for a multi-process launch (or pass 'auto')")
    if dist_url == "auto":
        if num_machines != 1:
            raise ConfigError("dist_url='auto' works on one machine only; pass tcp://HOST:PORT")
        return {"rdzv_backend": "c10d", "rdzv_endpoint": "127.0.0.1:0", "local_addr": "127.0.0.1"}
    if not dist_url.startswith("tcp://"):
        raise ConfigError(f"dist_url {dist_url}: pass tcp://HOST:PORT (or 'auto' on one machine)")
    endpoint = dist_url.removeprefix("tcp://")
    return {
        "rdzv_backend": "static",
        "rdzv_endpoint": endpoint,
        "rdzv_configs": {"rank": machine_rank},
    }


@contextlib.contextmanager
def _torch_launcher_logs_held() -> Iterator[None]:
    """torch's agent logs each step of a launch, and each failure with its traceback (to stderr
    when logging is not set up): the launcher tells a failure once itself."""
    held = [logging.getLogger(n) for n in ("torch.distributed.elastic", "torch.multiprocessing")]
    sink = logging.NullHandler()
    previous = [held_logger.propagate for held_logger in held]
    for held_logger in held:
        held_logger.addHandler(sink)
        held_logger.propagate = False
    try:
        yield
    finally:
        for held_logger, propagate in zip(held, previous, strict=True):
            held_logger.removeHandler(sink)
            held_logger.propagate = propagate


@contextlib.contextmanager
def _signal_handlers_restored() -> Iterator[None]:
    """The agent handles :data:`FORWARDED_SIGNALS` while it runs and leaves its handlers set;
    this process's own come back after it."""
    numbers = [signal.Signals[name] for name in FORWARDED_SIGNALS]
    previous = {number: signal.getsignal(number) for number in numbers}
    try:
        yield
    finally:
        for number, handler in previous.items():
            if handler is not None:
                signal.signal(number, handler)


def _preemption(folder: str) -> Preempted | None:
    """The workers' :class:`Preempted`, when one stopped after its checkpoint."""
    for name in sorted(os.listdir(folder)):
        if name.startswith("preempted."):
            with open(os.path.join(folder, name)) as f:
                return Preempted(f.read())
    return None


def _started_worker(
    main_func: Callable[..., Any],
    args: tuple[Any, ...],
    timeout: timedelta,
    log_dir: str | None,
    records_dir: str,
    keep_result: bool,
) -> Any:
    """A process :func:`launch` started: :func:`_worker`, its records in ``records_dir``."""
    # Out of the terminal's process group: a Ctrl-C reaches the launcher alone, which passes it
    # on once (a second one would end the process without its checkpoint).
    with contextlib.suppress(OSError):
        os.setpgid(0, 0)
    result = _worker(main_func, args, timeout, log_dir, records_dir)
    return result if keep_result else None


def _worker(
    main_func: Callable[..., Any],
    args: tuple[Any, ...],
    timeout: timedelta,
    log_dir: str | None,
    records_dir: str | None = None,
) -> Any:
    """``main_func(*args)`` in the process group of torchrun's environment variables; a failure
    or a preemption recorded (in ``records_dir``, when given, for the launcher)."""
    rank, world_size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ["LOCAL_RANK"])
    local_world_size = int(os.environ.get("LOCAL_WORLD_SIZE", world_size))
    with (
        _leaving_at_once_when_preempted(local_rank, records_dir),
        _failure_recorded(rank, world_size, records_dir, log_dir),
    ):
        backend = pick_backend(local_world_size)
        if backend == "nccl":
            # Before init_process_group, so NCCL binds this process to its own GPU.
            torch.cuda.set_device(local_rank)
        elif "OMP_NUM_THREADS" not in os.environ:
            # CPU processes share the cores; each taking all of them (torch's default)
            # oversubscribes the machine. torchrun sets OMP_NUM_THREADS=1 for the same reason.
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // local_world_size))
        _init_process_group(backend, rank, world_size, timeout)
        return _run_in_process_group(main_func, args, local_world_size)


@contextlib.contextmanager
def _leaving_at_once_when_preempted(local_rank: int, records_dir: str | None) -> Iterator[None]:
    """Once this worker is preempted: leaves its message for the launcher (in ``records_dir``)
    and ends the process with :data:`PREEMPTED_EXIT_STATUS`, skipping the interpreter's teardown.
    The checkpoint is whole and every rank has passed the barrier after it, so nothing is left
    to save; the teardown would destroy the process group's C++ objects while a peer leaves at
    the same moment, and gloo's threads then abort the process ("terminate called without an
    active exception": SIGABRT instead of 143). A teardown in order needs every peer still
    there, which a preemption does not promise: the scheduler may already have killed one."""
    try:
        yield
    except Preempted as preempted:
        if records_dir is not None:
            path = os.path.join(records_dir, PREEMPTION_RECORD.format(rank=local_rank))
            with open(path, "w") as f:
                f.write(preempted.message)
        logging.shutdown()  # flushes the log files
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        os._exit(PREEMPTED_EXIT_STATUS)


def _init_process_group(backend: str, rank: int, world_size: int, timeout: timedelta) -> None:
    """The process group from torchrun's environment, in a store namespace of this restart
    attempt: a restarted worker group reuses the agent's store, and the keys the previous
    attempt's processes left there (gloo's and NCCL's addresses) would otherwise be read as this
    attempt's, leaving its processes waiting for peers that no longer exist."""
    attempt = torchrun_restart_count()
    try:
        store, _, _ = next(dist.rendezvous("env://", rank, world_size, timeout=timeout))
        store = dist.PrefixStore(f"det_scaling/attempt{attempt}", store)
        dist.init_process_group(
            backend=backend, store=store, rank=rank, world_size=world_size, timeout=timeout
        )
    except Exception as error:
        where = f"{os.environ.get('MASTER_ADDR')}:{os.environ.get('MASTER_PORT')}"
        raise RuntimeError(
            f"the process group did not come up within {timeout} (torchrun restart attempt "
            f"{attempt}, store at {where}, waiting for the other {world_size - 1} rank(s)): "
            f"{' '.join(str(error).split())[:300]}"
        ) from error


@contextlib.contextmanager
def _failure_recorded(
    rank: int, world_size: int, records_dir: str | None, log_dir: str | None
) -> Iterator[None]:
    """Turns an exception of this process into :class:`RankFailedError`, after recording it
    (:func:`~det_scaling.engine.failures.record_failure`)."""
    try:
        yield
    except Exception as error:
        failure = record_failure(error, rank, world_size, records_dir, log_dir)
        raise RankFailedError(failure) from error


def _run_in_process_group(
    main_func: Callable[..., Any], args: tuple[Any, ...], processes_per_machine: int
) -> Any:
    create_local_process_group(processes_per_machine)
    # A barrier right after init: a rank that is slow to start otherwise times out in its first
    # collective (maskrcnn-benchmark#172, which detectron2's launch cites).
    comm.synchronize()
    result = main_func(*args)
    # Only after a clean return: after a failure the other ranks may be gone, and tearing down
    # (NCCL) could wait for them; the process exits anyway. The barrier first: a rank that tears
    # its connections down while a peer is still finishing can make that peer abort at exit
    # ("terminate called without an active exception", seen once with 2 gloo processes).
    comm.synchronize()
    dist.destroy_process_group()
    return result
