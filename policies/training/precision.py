"""What this machine runs well: bfloat16 natively or not, and how many torch threads to use. One module, used by
`mfp train`, `mfp eval`, `mfp bench suite`, `mfp bench train` and `mfp bench latency`.

Precision. bf16 autocast is fast only where the hardware computes in bfloat16: a CUDA GPU with bf16 (Ampere and
later), or a CPU with AVX-512 BF16 or AMX-BF16. Elsewhere (AVX2-only x86, most laptops and many cloud machines)
oneDNN emulates it and a training step is 5-10x slower than in float32. `--amp auto` (the command-line default)
therefore picks bf16 only where it is native, float32 otherwise; an explicit `--amp bf16` on a CPU without it
warns (PrecisionWarning).

    info = cpu_info()                                   # this CPU: capability string, bf16_native, reason
    cpu_info(capability="AVX2", flags={"avx2", "fma"})  # injected: no native bf16
    choice = resolve_amp("auto", "cpu")                 # AmpChoice(requested="auto", amp="bf16" | "none", reason)
    with autocast("cpu", choice.amp): ...

Threads. A torch thread that loses its core stalls every parallel region, so more threads than free cores is the
slowest choice on a shared machine. The rule (`thread_choice`, `default_threads`), with U the cores this process
may use (os.sched_getaffinity, lowered by a cgroup CPU quota), P the processes like it sharing them (DDP ranks),
W the worker processes computing beside it (DataLoader workers, evaluation workers) and L the 1-minute load
average read once per process, when the command starts (os.getloadavg: runnable processes system-wide, so the
load of OTHER processes; this one has only just started):

    free    = min(U, C - L)                  C = the machine's CPUs (os.cpu_count()), over which L is spread
    threads = max(1, min(U // P - W, floor(free / P + 0.5) - W))

so threads + workers + other load <= usable cores, with the free cores rounded to the nearest whole core (a load
below 0.5 per core is the noise of an idle machine and costs no thread). Idle: all usable cores less the workers;
busy: fewer, never below 1. `min(U, C - L)` keeps a container (whose load average is the host's) from counting
the load of cores it cannot run on. An explicit --threads always wins. Batch-1 inference (each evaluation
worker, `mfp eval` running episodes in its own process, the latency benchmark) is per-operation overhead bound
and takes INFERENCE_THREADS = 1.
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import warnings
from dataclasses import asdict, dataclass
from typing import Iterable

import torch

AMP_CHOICES = ("auto", "none", "bf16")
INFERENCE_THREADS = 1                     # threads per evaluation worker / batch-1 inference process
# /proc/cpuinfo flags of native bfloat16 arithmetic on x86 (AVX-512 BF16: Cooper Lake, Zen 4 and later;
# AMX-BF16: Sapphire Rapids and later)
BF16_CPU_FLAGS = {"avx512_bf16": "AVX-512 BF16", "amx_bf16": "AMX-BF16"}


class PrecisionWarning(UserWarning):
    """bf16 asked for where the device does not run it natively (it will be slow)."""


@dataclass(frozen=True)
class CpuInfo:
    cpu_capability: str       # torch.backends.cpu.get_cpu_capability(): "AVX512", "AVX2", "DEFAULT", ...
    bf16_native: bool         # the CPU computes in bfloat16 (AVX-512 BF16 or AMX-BF16)
    reason: str               # one line: what was found and where

    def to_dict(self) -> dict:
        return asdict(self)


def read_cpu_flags(path: str = "/proc/cpuinfo") -> set[str] | None:
    """The CPU's feature flags from /proc/cpuinfo (Linux), or None where there is no such file."""
    try:
        with open(path) as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() in ("flags", "Features"):
                    return set(value.split())
    except OSError:
        return None
    return set()


def _torch_bf16_query() -> set[str] | None:
    """The native-bf16 flags torch's own CPU probe (cpuinfo) reports, or None when this torch has no such query."""
    is_avx512_bf16 = getattr(torch.cpu, "_is_avx512_bf16_supported", None)
    is_amx = getattr(torch.cpu, "_is_amx_tile_supported", None)
    if is_avx512_bf16 is None:
        return None
    found = set()
    if is_avx512_bf16():
        found.add("avx512_bf16")
    if is_amx is not None and is_amx():
        found.add("amx_bf16")                 # AMX tiles come with AMX-BF16 on every CPU that has them
    return found


def cpu_info(capability: str | None = None, flags: Iterable[str] | None = None) -> CpuInfo:
    """This CPU's torch capability and whether it computes in bfloat16 natively.

    capability: torch's CPU capability string (default: torch.backends.cpu.get_cpu_capability()).
    flags: the CPU's feature flags, as /proc/cpuinfo lists them (default: torch's own probe,
    torch.cpu._is_avx512_bf16_supported / _is_amx_tile_supported, else /proc/cpuinfo). Pass them to decide for
    another machine (tests, reports)."""
    if capability is None and flags is None:
        return _this_cpu()
    if capability is None:
        capability = torch.backends.cpu.get_cpu_capability()
    if flags is None:
        return _decide(capability, *_detected_flags())
    return _decide(capability, set(flags), "the given CPU flags")


@functools.lru_cache(maxsize=1)
def _detected_flags() -> tuple[set[str] | None, str]:
    found = _torch_bf16_query()
    if found is not None:
        return found, "torch's CPU probe"
    return read_cpu_flags(), "/proc/cpuinfo"


@functools.lru_cache(maxsize=1)
def _this_cpu() -> CpuInfo:
    return _decide(torch.backends.cpu.get_cpu_capability(), *_detected_flags())


def _decide(capability: str, flags: set[str] | None, source: str) -> CpuInfo:
    if flags is None:
        return CpuInfo(capability, False, f"no CPU feature flags readable here (torch CPU capability {capability}): "
                                          f"bfloat16 is not known to be native")
    native = [name for flag, name in BF16_CPU_FLAGS.items() if flag in flags]
    if native:
        return CpuInfo(capability, True, f"native bfloat16 on this CPU: {' and '.join(native)} ({source}; torch CPU "
                                         f"capability {capability})")
    return CpuInfo(capability, False, f"no native bfloat16 on this CPU: neither AVX-512 BF16 nor AMX-BF16 ({source}; "
                                      f"torch CPU capability {capability}); bf16 autocast would be emulated, several "
                                      f"times slower than float32")


@dataclass(frozen=True)
class AmpChoice:
    requested: str            # "auto", "none" or "bf16"
    amp: str                  # what runs: "none" (float32) or "bf16" (bfloat16 autocast)
    reason: str
    bf16_native: bool         # the device computes in bfloat16 natively

    def to_dict(self) -> dict:
        return asdict(self)

    def describe(self, reason: str | None = None) -> str:
        return f"precision: {'bfloat16 autocast' if self.amp == 'bf16' else 'float32'} ({reason or self.reason})"


def cuda_bf16_native() -> bool:
    return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported(including_emulation=False))


def resolve_amp(requested: str, device_type: str = "cpu", cpu: CpuInfo | None = None,
                cuda_bf16: bool | None = None, warn: bool = True) -> AmpChoice:
    """The precision to train in. "auto": bf16 where the device computes it natively, float32 otherwise;
    "none" / "bf16": as asked, with a PrecisionWarning for bf16 on a device without native bf16.
    cpu, cuda_bf16: the device's capability (default: this machine's), injectable."""
    if requested not in AMP_CHOICES:
        raise ValueError(f"amp must be one of {AMP_CHOICES}, got {requested!r}")
    if device_type == "cuda":
        native = cuda_bf16_native() if cuda_bf16 is None else bool(cuda_bf16)
        where = ("this GPU computes in bfloat16 natively" if native
                 else "this GPU has no native bfloat16 (before Ampere)")
    else:
        info = cpu or cpu_info()
        native, where = info.bf16_native, info.reason
    if requested == "auto":
        return AmpChoice("auto", "bf16" if native else "none", f"auto: {where}", native)
    if requested == "bf16" and not native:
        if warn:
            warnings.warn(f"--amp bf16 on {device_type} without native bfloat16 will be slow (a CPU training step "
                          f"is 5-10x slower than in float32): {where}. Use --amp auto or --amp none.",
                          PrecisionWarning, stacklevel=2)
        return AmpChoice("bf16", "bf16", f"asked for; {where}", native)
    return AmpChoice(requested, requested, f"asked for; {where}", native)


def autocast(device_type: str, amp: str):
    """The autocast context of a resolved precision ("none": float32, autocast off; "bf16": bfloat16)."""
    if amp not in ("none", "bf16"):
        raise ValueError(f"autocast needs a resolved precision, 'none' or 'bf16', got {amp!r} (resolve_amp first)")
    return torch.autocast(device_type, dtype=torch.bfloat16, enabled=amp == "bf16")


# --- threads ------------------------------------------------------------------------------------------------
def _cgroup_cpu_limit(path: str = "/sys/fs/cgroup/cpu.max") -> int | None:
    """Whole CPUs a cgroup-v2 quota allows (docker --cpus), rounded up; None when unlimited or unknown."""
    try:
        with open(path) as f:
            quota, period = f.read().split()[:2]
    except (OSError, ValueError):
        return None
    if quota == "max":
        return None
    try:
        return max(1, math.ceil(int(quota) / int(period)))
    except (ValueError, ZeroDivisionError):
        return None


def available_cores(affinity: Iterable[int] | None = None, cpu_limit: int | None = None) -> int:
    """The cores this process may run on: its CPU affinity (os.sched_getaffinity, else os.cpu_count()), lowered
    by a cgroup CPU quota. Both injectable."""
    if affinity is None:
        try:
            n = len(os.sched_getaffinity(0))
        except (AttributeError, OSError):
            n = os.cpu_count() or 1
        cpu_limit = _cgroup_cpu_limit() if cpu_limit is None else cpu_limit
    else:
        n = len(set(affinity))
    if cpu_limit is not None:
        n = min(n, cpu_limit)
    return max(1, n)


@functools.lru_cache(maxsize=1)
def load_at_start() -> float | None:
    """The 1-minute load average (os.getloadavg()[0]) at this process's first call, then the same value for the
    rest of the process: once the process computes, the load counts its own threads too. None where the platform
    has no load average (Windows)."""
    try:
        return float(os.getloadavg()[0])
    except (AttributeError, OSError):
        return None


@dataclass(frozen=True)
class ThreadChoice:
    threads: int              # torch threads to run
    usable_cores: int         # cores this process may use (affinity, cgroup quota)
    workers_beside: int
    peers: int
    load: float | None        # 1-min load average of other processes at start (None: unknown, not used)
    free_cores: float | None  # min(usable, machine CPUs - load): cores that load leaves free
    lowered_by_load: bool     # the load gave fewer threads than cores and workers alone would
    reason: str

    def to_dict(self) -> dict:
        return asdict(self)


def thread_choice(workers_beside: int = 0, peers: int = 1, affinity: Iterable[int] | None = None,
                  cpu_limit: int | None = None, load: float | None = None, machine_cpus: int | None = None
                  ) -> ThreadChoice:
    """The default torch thread count and why (the rule in the module docstring). workers_beside: single-threaded
    worker processes computing beside this one; peers: processes like it sharing the cores (DDP ranks on this
    machine). affinity, cpu_limit: injectable (see available_cores). load: the 1-min load average of other
    processes (default: load_at_start(); a negative value means unknown). machine_cpus: the CPUs the load average
    is spread over (default: os.cpu_count(), at least the usable cores)."""
    if workers_beside < 0 or peers < 1:
        raise ValueError(f"default threads need workers_beside >= 0 and peers >= 1, got {workers_beside}, {peers}")
    usable = available_cores(affinity, cpu_limit)
    by_cores = max(1, usable // peers - workers_beside)
    if load is None:
        load = load_at_start()
    if load is not None and load < 0:
        load = None
    free, threads = None, by_cores
    if load is not None:
        cpus = max(usable, machine_cpus or os.cpu_count() or usable)
        free = min(float(usable), cpus - load)
        threads = max(1, min(by_cores, math.floor(free / peers + 0.5) - workers_beside))
    lowered = threads < by_cores
    n = f"{threads} torch thread{'s' * (threads != 1)}"
    shared = f" shared by {peers} processes" if peers > 1 else ""
    beside = f" less {workers_beside} worker process{'es' * (workers_beside != 1)} beside it" if workers_beside else ""
    if lowered:
        reason = (f"threads: {n} (default: {usable} cores usable{shared}{beside}, load {load:.1f} from other "
                  f"processes at start leaves {max(0.0, free):.1f} free; --threads N to override)")
    else:
        seen = "load unknown" if load is None else f"load {load:.1f} from other processes at start"
        reason = (f"threads: {n} (default: the {usable} cores this process may use{shared}{beside}; {seen}; "
                  f"--threads 1 when other jobs will share the machine)")
    return ThreadChoice(threads, usable, workers_beside, peers, None if load is None else round(load, 2),
                        None if free is None else round(free, 2), lowered, reason)


def default_threads(workers_beside: int = 0, peers: int = 1, affinity: Iterable[int] | None = None,
                    cpu_limit: int | None = None, load: float | None = None, machine_cpus: int | None = None) -> int:
    """torch threads for a process that computes while `workers_beside` single-threaded worker processes compute
    beside it: the cores it may use (shared evenly by `peers` processes like it, e.g. DDP ranks on this machine)
    less one per worker, lowered so that threads + workers + the load of other processes at start fit the cores,
    at least 1 (see thread_choice; every argument injectable)."""
    return thread_choice(workers_beside, peers, affinity, cpu_limit, load, machine_cpus).threads


def threads_reason(n: int, workers_beside: int = 0, peers: int = 1, given: bool = False) -> str:
    """One line on how many torch threads run and why (n: the count chosen; given: from --threads)."""
    if given:
        return f"threads: {n} torch thread{'s' * (n != 1)} (--threads)"
    return thread_choice(workers_beside, peers).reason


@contextlib.contextmanager
def torch_threads(n: int | None):
    """Run a block with `n` torch threads (None: unchanged), restoring the previous count afterwards."""
    before = torch.get_num_threads()
    if n is not None:
        if n < 1:
            raise ValueError(f"torch threads must be >= 1, got {n}")
        torch.set_num_threads(n)
    try:
        yield
    finally:
        if n is not None:
            torch.set_num_threads(before)
