"""One process per device under the standard launchers (``torchrun``, ``accelerate launch``): which process this is,
which device it takes, its share of a list of runs, waiting for the others, gathering their results.

Outside a launcher (or under one with a single process) everything here is a no-op: one process, every run its own.
Under a launcher with N > 1 processes the process group comes from accelerate's ``PartialState``: gloo on CPUs, NCCL
on GPUs (one GPU per process, ``cuda:LOCAL_RANK``). ``PartialState`` sees a multi-CPU torchrun launch only when made
with ``cpu=True``, hence the explicit choice below.

:func:`launch_command` builds the ``torchrun`` line behind the CLI's ``--processes N`` shortcut.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from datetime import timedelta

import torch

# A process that finishes its share early waits at a barrier for the slowest one, which may take hours in a long
# sweep; the default collective timeout (10-30 min) would kill it there.
WAIT_TIMEOUT = timedelta(hours=48)


class LaunchError(ValueError):
    """A launcher setup this code cannot use (more processes than GPUs, a device choice that fights the launcher)."""


@dataclass(frozen=True)
class Launch:
    """This process's place in a launch: ``rank`` of ``world`` processes, and the device it runs models on
    (None: the default choice of :func:`swaa_core.load_model`)."""

    rank: int = 0
    world: int = 1
    device: str | None = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1

    def share(self, items: list) -> list:
        """This process's items: every ``world``-th one from ``rank``. Interleaving (rather than the contiguous
        chunks of ``split_between_processes``) balances a grid ordered by prompt length, and for an even number of
        configs per sample it gives each process only half of the configs, so half of the warm-ups."""
        return list(items)[self.rank :: self.world]

    def wait(self) -> None:
        """Barrier: return once every process got here."""
        if self.distributed:
            torch.distributed.barrier()

    def gather(self, obj) -> list:
        """Every process's ``obj`` (picklable), in rank order, on every process."""
        if not self.distributed:
            return [obj]
        out: list = [None] * self.world
        torch.distributed.all_gather_object(out, obj)
        return out


_current: Launch | None = None


def launched_processes() -> int:
    """How many processes the launcher started (1 outside a launcher)."""
    try:
        return max(1, int(os.environ.get("WORLD_SIZE", "1")))
    except ValueError:
        return 1


def current(device: str | None = None) -> Launch:
    """This process's :class:`Launch`. Under a multi-process launch the first call joins the process group and
    later calls return the same answer.

    ``device``: what the user asked for (``--device``). Under a multi-process launch ``None``/"cuda" mean this
    process's own GPU and "cpu" means CPU processes; "auto" (one model spread over every GPU) and explicit GPU
    indices fight the one-GPU-per-process rule and are refused with a :class:`LaunchError`."""
    global _current
    world = launched_processes()
    if world == 1:
        return Launch(device=device)
    if _current is not None:
        return _current
    wanted = None if device is None else str(device).strip().lower()
    if wanted == "auto":
        raise LaunchError(
            "--device auto spreads one model over every GPU, but this launch runs one process per device. Start a "
            "single process for a model larger than one GPU, or leave --device out for data-parallel runs."
        )
    if wanted not in (None, "cpu", "cuda"):
        raise LaunchError(
            f"--device {device} names one device, but this launch runs {world} processes, one per device. Leave "
            "--device out (each process takes the GPU of its local rank) or use --device cpu."
        )
    cpu = wanted == "cpu" or not torch.cuda.is_available()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if not cpu and local_rank >= torch.cuda.device_count():
        raise LaunchError(
            f"Process {local_rank} of this machine has no GPU of its own: {torch.cuda.device_count()} GPU(s) are "
            "visible. Start at most one process per GPU (--nproc_per_node), or use --device cpu."
        )
    from accelerate import PartialState

    state = PartialState(cpu=cpu, timeout=WAIT_TIMEOUT)
    if state.num_processes != world:
        raise LaunchError(f"The launcher started {world} processes but the process group holds {state.num_processes}.")
    _current = Launch(rank=state.process_index, world=world, device="cpu" if cpu else str(state.device))
    return _current


def launch_command(processes: int, argv: list[str]) -> list[str]:
    """The ``torchrun`` command line that starts ``processes`` copies of ``python -m swaa_core ARGV`` on this
    machine (``--standalone`` picks a free port, so two launches do not collide)."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}",
            "-m", "swaa_core", *argv]  # fmt: skip


def launch_env(processes: int) -> dict[str, str]:
    """The environment for :func:`launch_command`: torchrun would give each process one thread; the CPU cores are
    shared out instead, unless the user set ``OMP_NUM_THREADS``."""
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // processes)))
    return env


def map_shared(launch: Launch, fn, items: list) -> list:
    """``fn(list) -> list`` (one result per item, in order; fewer when cancelled) applied to this process's share
    of ``items``; every process gets all results in the order of ``items``."""
    items = list(items)
    mine = launch.share(list(range(len(items))))
    done = list(zip(mine, fn([items[i] for i in mine]) if mine else [], strict=False))
    merged = [pair for part in launch.gather(done) for pair in part]
    return [result for _, result in sorted(merged, key=lambda pair: pair[0])]


def finish() -> None:
    """Leave the process group once every process is done: a gloo group left to interpreter exit while another
    process still uses it can abort the process ("terminate called without an active exception")."""
    global _current
    if _current is not None and _current.distributed and torch.distributed.is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
    _current = None
