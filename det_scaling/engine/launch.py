"""Start the processes of a run: spawned on one or several machines, or under ``torchrun``.

:func:`launch` has the signature and meaning of ``detectron2.engine.launch`` and adds what
detectron2 v0.6 lacks (upstream main has some of it; see the notes on each function):

* a CPU path: without enough GPUs the ``num_gpus_per_machine`` processes run on the CPU with the
  gloo backend (v0.6 asserts CUDA; upstream main falls back to gloo when there is no GPU at all,
  but it is not used even there: its workers cannot leave the failure records below);
* ``torchrun``: when its environment variables are set, the process group is initialised from
  them and ``main_func`` runs in this process instead of spawning;
* :func:`create_ddp_model`, which passes ``device_ids`` only for CUDA models (detectron2's, in
  v0.6 and main, always passes them, which ``DistributedDataParallel`` rejects for CPU models);
* a failure told once: a process that raises appends its traceback to its log, the others here
  are stopped, and :class:`~det_scaling.engine.failures.RankFailedError` names the rank that failed
  first and why (:mod:`det_scaling.engine.failures`);
* no orphans: SIGTERM, SIGINT and SIGUSR1 to the launcher are passed on to its workers, which stop
  at a step with a checkpoint (:mod:`det_scaling.engine.preemption`), and the launcher waits for
  them;
* torchrun restarts that come up: each attempt's process group in a store namespace of its own.

The launcher knows nothing of scaling: ``main_func`` reads the world size from
``detectron2.utils.comm`` and scales its config itself.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import logging
import os
import pickle
import signal
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from detectron2.utils import comm
from torch.multiprocessing.spawn import ProcessException, ProcessExitedException
from torch.nn.parallel import DistributedDataParallel

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
from det_scaling.utils.logs import quiet_logger

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

logger = logging.getLogger(__name__)

# A process's preemption message, left in the failure records' folder for the launcher of its
# machine, by local rank.
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

    As ``detectron2.engine.launch``: call it on every machine; it spawns ``num_gpus_per_machine``
    processes here, whose global ranks are ``machine_rank * num_gpus_per_machine + local rank``,
    connected through ``dist_url`` (``"auto"``: a free port on localhost, one machine only). A
    world of one process runs ``main_func`` here without a process group. The backend is NCCL,
    one GPU per process, when CUDA has ``num_gpus_per_machine`` GPUs, and otherwise gloo with the
    processes on the CPU (see :func:`default_device`).

    Under ``torchrun`` (all of :data:`TORCHRUN_VARIABLES` set), torchrun has already started one
    process per worker: the process group is initialised from the environment and ``main_func``
    runs here; the GPU, machine and URL arguments are then ignored in favour of torchrun's.

    ``timeout`` bounds every collective (gloo; NCCL with its watchdog: docs/failures.md): a process
    whose peer is gone waits that long at most. When a process raises, its traceback is appended
    to its log file in ``log_dir`` (detectron2's ``log.txt.rank<N>``; without ``log_dir``, kept in
    the error), the other processes of this machine are stopped, and
    :class:`~det_scaling.engine.failures.RankFailedError` is raised here naming the rank that
    failed first and why. A world of one process does the same with ``log_dir``; without it,
    exceptions propagate as they are.
    """
    if under_torchrun():
        _run_under_torchrun(main_func, args, timeout, log_dir)
        return

    world_size = num_machines * num_gpus_per_machine
    if world_size == 1:
        if log_dir is None:
            main_func(*args)
            return
        with _failure_recorded(0, 1, None, log_dir):
            main_func(*args)
        return
    if dist_url is None:
        raise ConfigError("dist_url is required for a multi-process launch (or pass 'auto')")
    if dist_url == "auto":
        if num_machines != 1:
            raise ConfigError("dist_url='auto' works on one machine only; pass tcp://HOST:PORT")
        dist_url = f"tcp://127.0.0.1:{_find_free_port()}"
    if num_machines > 1 and dist_url.startswith("file://"):
        logger.warning("file:// is not a reliable init_method across machines; prefer tcp://")

    backend = pick_backend(num_gpus_per_machine)
    if backend == "gloo":
        logger.info(
            "Launching %d process(es) on the CPU with the gloo backend (%s)",
            num_gpus_per_machine,
            "no CUDA"
            if not torch.cuda.is_available()
            else f"only {torch.cuda.device_count()} GPU(s) for {num_gpus_per_machine} processes",
        )
    first_rank = machine_rank * num_gpus_per_machine
    worker_args = (main_func, world_size, num_gpus_per_machine, machine_rank, dist_url)
    worker_args += (tuple(args), timeout, backend)
    with tempfile.TemporaryDirectory(prefix="det_scaling_failures_") as records_dir:
        processes: list[Any] = []
        try:
            # torch warns as it stops the other processes after a failure; the error says more.
            with quiet_logger("torch.multiprocessing.spawn"), _forwarding_signals(processes) as got:
                context = mp.start_processes(
                    _distributed_worker,
                    args=(*worker_args, records_dir, log_dir),
                    nprocs=num_gpus_per_machine,
                    daemon=False,
                    join=False,
                    start_method="spawn",
                )
                processes += context.processes
                _forward_pending(got, processes)
                while not context.join():
                    pass
        except ProcessExitedException as error:
            stopped = _preempted(error, records_dir, got)
            if stopped is not None:
                raise stopped from None
            failure = _failure_of(error, records_dir, first_rank, world_size, log_dir)
            raise RankFailedError(failure) from None
        except ProcessException as error:
            failure = _failure_of(error, records_dir, first_rank, world_size, log_dir)
            raise RankFailedError(failure) from None


def launch_for_result(
    main_func: Callable[..., Any], num_processes: int, args: Sequence[Any] = ()
) -> Any:
    """``main_func(*args)`` in ``num_processes`` processes on this machine (:func:`launch`, a free
    local port); returns the main process's return value (picklable). One process runs here,
    without spawning. A ``ConfigError`` (a bad input: every process raises it alike) is raised
    here with its message; any other failure ends the processes as :func:`launch` does."""
    if num_processes == 1:
        return main_func(*args)
    with tempfile.TemporaryDirectory(prefix="det_scaling_result_") as directory:
        path = os.path.join(directory, "result.pkl")
        launch(_result_worker, num_processes, dist_url="auto", args=(main_func, args, path))
        with open(path, "rb") as f:
            outcome = pickle.load(f)
    if "error" in outcome:
        raise ConfigError(outcome["error"])
    return outcome["result"]


def _result_worker(main_func: Callable[..., Any], args: Sequence[Any], path: str) -> None:
    try:
        outcome: dict[str, Any] = {"result": main_func(*args)}
    except ConfigError as error:
        outcome = {"error": str(error)}
    if comm.is_main_process():
        with open(path, "wb") as f:
            pickle.dump(outcome, f)


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
    """Whether this process was started by ``torchrun`` (its environment variables are set)."""
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


def create_ddp_model(
    model: torch.nn.Module, *, fp16_compression: bool = False, **kwargs: Any
) -> torch.nn.Module:
    """``model`` wrapped in ``DistributedDataParallel`` when there is more than one process, else
    ``model`` itself; ``kwargs`` go to ``DistributedDataParallel``.

    Like ``detectron2.engine.create_ddp_model``, except that ``device_ids`` defaults to this
    process's local GPU only for a CUDA model: for a CPU model DDP requires ``device_ids=None``.
    ``fp16_compression`` registers PyTorch's fp16 gradient compression hook, as detectron2's does.
    """
    if comm.get_world_size() == 1:
        return model
    on_cuda = any(p.device.type == "cuda" for p in model.parameters())
    if "device_ids" not in kwargs:
        kwargs["device_ids"] = [comm.get_local_rank()] if on_cuda else None
    ddp = DistributedDataParallel(model, **_buffer_sync_options(kwargs))
    if fp16_compression:
        from torch.distributed.algorithms.ddp_comm_hooks import default as comm_hooks

        ddp.register_comm_hook(state=None, hook=comm_hooks.fp16_compress_hook)
    return ddp


def _buffer_sync_options(kwargs: dict[str, Any]) -> dict[str, Any]:
    """``kwargs`` with ``broadcast_buffers`` (detectron2's name, deprecated by torch) passed as
    ``forward_sync_buffers`` where DDP has it. That one also broadcasts the buffers once when DDP
    is built, which changes nothing here: every rank builds the same model (and loads the same
    weights, if any) before DDP wraps it, so their buffers are already equal."""
    # Recent torch deprecates broadcast_buffers for forward_sync_buffers, with a FutureWarning
    # at every use.
    renamed = "forward_sync_buffers" in inspect.signature(DistributedDataParallel).parameters
    if "broadcast_buffers" not in kwargs or not renamed:
        return kwargs
    options = dict(kwargs)
    broadcast = options.pop("broadcast_buffers")
    options.setdefault("forward_sync_buffers", broadcast)
    return options


def _distributed_worker(
    local_rank: int,
    main_func: Callable[..., Any],
    world_size: int,
    num_gpus_per_machine: int,
    machine_rank: int,
    dist_url: str,
    args: tuple[Any, ...],
    timeout: timedelta,
    backend: str,
    records_dir: str,
    log_dir: str | None,
) -> None:
    global_rank = machine_rank * num_gpus_per_machine + local_rank
    # Out of the terminal's process group: a Ctrl-C reaches the launcher alone, which passes it
    # on once (a second one would end the process without its checkpoint).
    with contextlib.suppress(OSError):
        os.setpgid(0, 0)
    with (
        _leaving_at_once_when_preempted(),
        _failure_recorded(global_rank, world_size, records_dir, log_dir),
        _preemption_recorded(local_rank, records_dir),
    ):
        if backend == "nccl":
            # Before init_process_group, so NCCL binds this process to its own GPU.
            torch.cuda.set_device(local_rank)
        elif "OMP_NUM_THREADS" not in os.environ:
            # CPU processes share the cores; each taking all of them (torch's default)
            # oversubscribes the machine. torchrun sets OMP_NUM_THREADS=1 for the same reason.
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // num_gpus_per_machine))
        try:
            dist.init_process_group(
                backend=backend,
                init_method=dist_url,
                world_size=world_size,
                rank=global_rank,
                timeout=timeout,
            )
        except Exception:
            logger.error("Process group URL: %s", dist_url)
            raise
        _run_in_process_group(main_func, args, num_gpus_per_machine)


@contextlib.contextmanager
def _forwarding_signals(processes: list[Any]) -> Iterator[list[int]]:
    """While the block runs, SIGTERM, SIGINT and SIGUSR1 to this process are passed on to
    ``processes`` (filled in by the block) instead of ending it: the workers stop at a step
    boundary with a checkpoint (:mod:`det_scaling.engine.preemption`) and this process waits for
    them, so none is left running. Yields the signals received."""
    received: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield received
        return

    def forward(signum: int, frame: Any) -> None:
        received.append(signum)
        _forward_pending([signum], processes)

    forwarded = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)
    previous = {number: signal.signal(number, forward) for number in forwarded}
    try:
        yield received
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)


def _forward_pending(signals: list[int], processes: list[Any]) -> None:
    for number in signals:
        for process in processes:
            if process.is_alive():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(process.pid, number)


@contextlib.contextmanager
def _preemption_recorded(local_rank: int, records_dir: str) -> Iterator[None]:
    """Leaves this process's preemption message for the launcher. Every process leaves it (the
    message is the same on all): the launcher reads the record of the one it sees exit first."""
    try:
        yield
    except Preempted as preempted:
        with open(os.path.join(records_dir, PREEMPTION_RECORD.format(rank=local_rank)), "w") as f:
            f.write(preempted.message)
        raise


@contextlib.contextmanager
def _leaving_at_once_when_preempted() -> Iterator[None]:
    """Ends this worker process with :data:`PREEMPTED_EXIT_STATUS` once it is preempted, skipping
    the interpreter's teardown. The checkpoint is whole and every rank has passed the barrier
    after it, so nothing is left to save; the teardown would destroy the process group's C++
    objects while a peer leaves at the same moment, and gloo's threads then abort the process
    ("terminate called without an active exception": SIGABRT instead of 143). A teardown in
    order (a barrier, then destroy_process_group) needs every peer still there, which a
    preemption does not promise: the scheduler may already have killed one."""
    try:
        yield
    except Preempted:
        logging.shutdown()  # flushes the log files
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        os._exit(PREEMPTED_EXIT_STATUS)


def _preempted(
    error: ProcessExitedException, records_dir: str, signals: list[int]
) -> Preempted | None:
    """The launcher's :class:`Preempted` when the processes stopped for a preemption: after their
    checkpoint (its message), or killed by the signal passed on before they could make one."""
    record = os.path.join(records_dir, PREEMPTION_RECORD.format(rank=error.error_index))
    if error.exit_code == PREEMPTED_EXIT_STATUS and os.path.exists(record):
        with open(record) as f:
            return Preempted(f.read())
    if signals and error.signal_name in {signal.Signals(s).name for s in signals}:
        name = signal.Signals(signals[0]).name
        return Preempted(f"stopped by {name} before a step was done: no checkpoint to write")
    return None


def _run_under_torchrun(
    main_func: Callable[..., Any],
    args: Sequence[Any],
    timeout: timedelta,
    log_dir: str | None,
) -> None:
    rank, world_size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_world_size = int(os.environ.get("LOCAL_WORLD_SIZE", world_size))
    with _leaving_at_once_when_preempted(), _failure_recorded(rank, world_size, None, log_dir):
        backend = pick_backend(local_world_size)
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
        _init_under_torchrun(backend, rank, world_size, timeout)
        _run_in_process_group(main_func, tuple(args), local_world_size)


def _init_under_torchrun(backend: str, rank: int, world_size: int, timeout: timedelta) -> None:
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
    (:func:`~det_scaling.engine.failures.record_failure`; for torchrun, also in its error file)."""
    try:
        yield
    except Exception as error:
        failure = record_failure(error, rank, world_size, records_dir, log_dir)
        _write_torchelastic_error_file(failure)
        raise RankFailedError(failure) from error


def _failure_of(
    error: ProcessException,
    records_dir: str,
    first_rank: int,
    world_size: int,
    log_dir: str | None,
) -> RankFailure:
    """The failure to report after ``mp.spawn`` raised ``error``: the root cause among the
    records the processes left, else what torch saw of the process that ended first."""
    failures = read_failures(records_dir)
    if failures:
        return root_cause(failures)
    rank = first_rank + error.error_index
    if isinstance(error, ProcessExitedException):
        # Killed (the out-of-memory killer sends SIGKILL) or exited without an exception.
        how = f"signal {error.signal_name}" if error.signal_name else f"status {error.exit_code}"
        cause = f"the process ended with {how}"
        stack = ""
    else:
        stack = error.msg
        cause = next((line for line in reversed(stack.splitlines()) if line.strip()), "")
    log_file = rank_log_file(log_dir, rank) if log_dir else None
    return RankFailure(rank, world_size, time.time(), cause, log_file=log_file, traceback=stack)


def _write_torchelastic_error_file(failure: RankFailure) -> None:
    """Under torchrun, the failure in the error file its agent reads (as torch's ``@record``
    writes it), so torchrun's own summary names the cause and the log rather than asking for a
    traceback."""
    path = os.environ.get("TORCHELASTIC_ERROR_FILE")
    if not path or not under_torchrun():
        return
    where = f"full traceback in {failure.log_file}" if failure.log_file else failure.traceback
    data = {
        "message": {
            "message": failure.cause,
            "extraInfo": {"py_callstack": where, "timestamp": str(int(failure.time))},
        }
    }
    with contextlib.suppress(OSError), open(path, "w") as f:
        json.dump(data, f)


def _run_in_process_group(
    main_func: Callable[..., Any], args: tuple[Any, ...], processes_per_machine: int
) -> None:
    _create_local_process_group(processes_per_machine)
    # A barrier right after init: a rank that is slow to start otherwise times out in its first
    # collective (maskrcnn-benchmark#172, which detectron2's launch cites).
    comm.synchronize()
    main_func(*args)
    # Only after a clean return: after a failure the other ranks may be gone, and tearing down
    # (NCCL) could wait for them; the process exits anyway. The barrier first: a rank that tears
    # its connections down while a peer is still finishing can make that peer abort at exit
    # ("terminate called without an active exception", seen once with 2 gloo processes).
    comm.synchronize()
    dist.destroy_process_group()


def _create_local_process_group(processes_per_machine: int) -> None:
    """Sets detectron2's group of the processes on this machine (``comm.get_local_rank`` needs
    it): upstream main's ``comm.create_local_process_group`` where it exists."""
    if hasattr(comm, "create_local_process_group"):  # detectron2 after v0.6
        # Its function is cached and keeps the group of an earlier launch in this process, which
        # destroy_process_group has ended: a second launch needs a new one.
        comm._LOCAL_PROCESS_GROUP = None
        getattr(comm.create_local_process_group, "cache_clear", lambda: None)()
        comm.create_local_process_group(processes_per_machine)
        return
    # v0.6 gap: no such function; its launch builds the groups inline and stores this machine's
    # in comm._LOCAL_PROCESS_GROUP, as done here.
    world_size, rank = dist.get_world_size(), dist.get_rank()
    if world_size % processes_per_machine:
        raise ConfigError(
            f"world size {world_size} is not a multiple of {processes_per_machine} processes "
            "per machine"
        )
    machine_rank = rank // processes_per_machine
    # Every process must create every group (new_group is collective), keeping only its own.
    for machine in range(world_size // processes_per_machine):
        first = machine * processes_per_machine
        group = dist.new_group(list(range(first, first + processes_per_machine)))
        if machine == machine_rank:
            comm._LOCAL_PROCESS_GROUP = group


def _find_free_port() -> int:
    # The OS picks a free port for port 0; another process may still take it before the job
    # binds it, which is why multi-machine jobs pass an explicit URL.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
