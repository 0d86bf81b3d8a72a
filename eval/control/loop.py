"""The policy loop at a fixed rate: observations in, timestamped actions out, safety outside the policy.

Time alignment (also written into every recorded run):
- The loop ticks at T_k = t0 + k / rate. At each tick it takes the robot's latest observation; its time t_obs is
  the older of the camera and state stamps. An observation older than `max_obs_age_s` is stale: the robot holds.
- A network call on the observation history ending at t_obs returns a chunk of n_action_steps actions; action j
  is meant for the time slot of t_obs + j / rate (the training data pairs the observation at step t with the
  action executed right after it, then t+1, ...). Slots are the loop's ticks.
- At each tick the action for the current slot is sent, to execute at the slot's time. Actions whose slot has
  already passed when the chunk arrives (the network was slow) are dropped and counted: latency compensation.
- With `blend="ensemble"` the network runs every tick and the action sent for a slot is the exponentially
  weighted mean of every chunk's prediction for it, oldest weighted most (temporal ensembling, as in ACT).

Safety: every action is clipped to the configured limits and its per-step change bounded; a stale observation
holds the robot; a non-finite observation or action, or a policy that raises, stops the loop and holds; an
emergency stop (call, topic, Ctrl-C) stops sending at once and holds; step and time limits end the episode.

Timing (eval/control/timing.py): during the ticks the loop thread runs under SCHED_FIFO when it may
(`rt_priority`), waits the last `fine_wait_ms` before each tick in short slices, the garbage collector does not
walk what existed before the loop (`gc_mode`), and Python's thread switch interval is short
(`switch_interval_ms`); UNTUNED turns all of this off (the loop before issue 15).
"""

from __future__ import annotations

import logging
import math
import time
from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np

from mfp.eval.control.safety import ActionFilter, EStop, SafetyConfig, SafetyEvent
from mfp.eval.control.timing import GC_MODES, quiet_gc, realtime_thread, switch_interval, wait_until
from mfp.eval.robots.base import Robot, TimedObservation
from mfp.eval.stats import percentile
from mfp.policies.config_checks import check_fields

log = logging.getLogger("mfp.control")
BLEND_MODES = ("none", "ensemble")


@dataclass
class ControlConfig:
    rate_hz: float = 10.0
    blend: str = "none"                 # "none": execute each chunk; "ensemble": temporal ensembling
    ensemble_decay: float = 0.1         # ensemble weight exp(-decay * i), i = 0 for the oldest prediction
    warmup_calls: int = 5               # network calls before the clock starts (first-call latency, allocator)
    first_obs_timeout_s: float = 5.0    # wait this long for the first observation
    gc_mode: str = "freeze"             # garbage collector during the ticks: normal, freeze, off (timing.quiet_gc)
    fine_wait_ms: float = 1.0           # the last part of each wait in 0.1 ms slices (0: one wait per tick)
    switch_interval_ms: float = 0.5     # Python's thread switch interval during the ticks (0: unchanged, 5 ms)
    rt_priority: int = 10               # SCHED_FIFO priority of the loop thread during the ticks (0: off); needs
                                        # root or CAP_SYS_NICE, else a warning and normal priority

    def __post_init__(self) -> None:
        check_fields(self)
        if not 1.0 <= self.rate_hz <= 1000.0:
            raise ValueError(f"ControlConfig.rate_hz must lie in [1, 1000], got {self.rate_hz}")
        if self.blend not in BLEND_MODES:
            raise ValueError(f"ControlConfig.blend must be one of {BLEND_MODES}, got {self.blend!r}")
        if self.warmup_calls < 0 or self.first_obs_timeout_s <= 0 or self.ensemble_decay < 0:
            raise ValueError(f"ControlConfig: bad warmup_calls / first_obs_timeout_s / ensemble_decay in {self}")
        if self.gc_mode not in GC_MODES:
            raise ValueError(f"ControlConfig.gc_mode must be one of {GC_MODES}, got {self.gc_mode!r}")
        if not 0 <= self.fine_wait_ms < 1000 * self.period:
            raise ValueError(f"ControlConfig.fine_wait_ms must lie in [0, the period {1000 * self.period:g} ms), "
                             f"got {self.fine_wait_ms}")
        if not 0 <= self.switch_interval_ms <= 100:
            raise ValueError(f"ControlConfig.switch_interval_ms must lie in [0, 100], got {self.switch_interval_ms}")
        if not 0 <= self.rt_priority <= 99:
            raise ValueError(f"ControlConfig.rt_priority must lie in [0, 99], got {self.rt_priority}")

    @property
    def period(self) -> float:
        return 1.0 / self.rate_hz


# the loop's timing as it was before issue 15: collector untouched, one wait per tick, Python's switch interval,
# normal priority (`ControlConfig(**UNTUNED)`; `mfp bench control` runs it beside the default for comparison)
UNTUNED = {"gc_mode": "normal", "fine_wait_ms": 0.0, "switch_interval_ms": 0.0, "rt_priority": 0}


class ChunkScheduler:
    """Action chunks -> one action per loop slot (see the module docstring)."""

    def __init__(self, t0: float, period: float, blend: str = "none", decay: float = 0.1):
        self.t0, self.period, self.blend, self.decay = t0, period, blend, decay
        self.plan: dict[int, list[np.ndarray]] = defaultdict(list)   # slot -> predictions, oldest first
        self.done_slot = -1                                          # last slot executed or dropped

    def tick(self, now: float) -> int:
        """The tick whose period `now` falls in."""
        return math.floor((now - self.t0) / self.period + 1e-9)

    def slot(self, t: float) -> int:
        """The first tick at or after `t`: where an action meant for time t is executed."""
        return math.ceil((t - self.t0) / self.period - 1e-9)

    def slot_time(self, slot: int) -> float:
        return self.t0 + slot * self.period

    def needs_chunk(self, now: float) -> bool:
        return self.blend == "ensemble" or not any(s >= self.tick(now) for s in self.plan)

    def add_chunk(self, chunk: np.ndarray, t_obs: float, now: float | None = None) -> int:
        """Action j of the chunk is meant for time t_obs + j * period. Actions whose tick has already been
        executed or has passed (`now`) are dropped; returns how many. A chunk that is late as a whole still
        gives its last action to the current tick: the freshest plan there is (single-action policies and
        experts depend on this)."""
        first = self.slot(t_obs)
        floor = self.done_slot + 1 if now is None else max(self.done_slot + 1, self.tick(now))
        if self.blend == "none":  # a new chunk replaces whatever was left of the old plan
            self.plan.clear()
        late = 0
        for j, action in enumerate(chunk):
            slot = first + j
            if slot < floor:
                if j < len(chunk) - 1 or any(s >= floor for s in self.plan):
                    late += 1
                    continue
                slot = floor  # the whole chunk is late: its last action now
            self.plan[slot].append(np.asarray(action, np.float64))
        return late

    def due(self, now: float) -> tuple[np.ndarray | None, int, int]:
        """(action for the current tick or None, the tick, how many planned actions were dropped as late)."""
        current = self.tick(now)
        late = [s for s in self.plan if s < current]
        for s in late:
            del self.plan[s]
        self.done_slot = max(self.done_slot, current - 1)
        predictions = self.plan.pop(current, None)
        if not predictions:
            return None, current, len(late)
        self.done_slot = current
        if len(predictions) == 1:
            return predictions[0], current, len(late)
        w = np.exp(-self.decay * np.arange(len(predictions)))
        return (w[:, None] * np.stack(predictions)).sum(0) / w.sum(), current, len(late)

    def clear(self) -> None:
        self.plan.clear()


@dataclass
class ControlReport:
    stop_reason: str = ""
    steps: int = 0                       # actions sent
    holds: int = 0                       # ticks on which the robot was told to hold
    dropped_actions: int = 0             # planned actions dropped because their slot had passed
    period_error_ms: list[float] = field(default_factory=list)    # tick start - its target time
    latency_ms: list[float] = field(default_factory=list)         # tick start (observation read) -> action sent
    obs_age_ms: list[float] = field(default_factory=list)         # tick start - observation time
    inference_ms: list[float] = field(default_factory=list)       # network calls (the head alone with a feature cache)
    encode_ms: list[float] = field(default_factory=list)          # frames encoded on arrival (PolicyRunner's cache)
    overruns: int = 0                    # ticks that began a whole period or more late (the previous tick overran)
    gc_pauses_ms: list[float] = field(default_factory=list)       # garbage collections during the ticks
    realtime: str = ""                   # the scheduling the loop thread had (timing.realtime_thread)
    events: list[SafetyEvent] = field(default_factory=list)
    success: bool | None = None

    def summary(self) -> dict:
        return {"stop_reason": self.stop_reason, "steps": self.steps, "holds": self.holds,
                "dropped_actions": self.dropped_actions, "success": self.success, "overruns": self.overruns,
                "gc_collections": len(self.gc_pauses_ms),
                "gc_pause_ms_max": max(self.gc_pauses_ms) if self.gc_pauses_ms else 0.0, "realtime": self.realtime,
                "period_error_ms_p50": percentile(np.abs(self.period_error_ms), 50),
                "period_error_ms_p99": percentile(np.abs(self.period_error_ms), 99),
                "latency_ms_p50": percentile(self.latency_ms, 50), "latency_ms_p99": percentile(self.latency_ms, 99),
                "obs_age_ms_p50": percentile(self.obs_age_ms, 50), "obs_age_ms_p99": percentile(self.obs_age_ms, 99),
                "inference_ms_p50": percentile(self.inference_ms, 50), "inference_ms_p99": percentile(self.inference_ms, 99),
                "encode_ms_p50": percentile(self.encode_ms, 50), "encode_ms_p99": percentile(self.encode_ms, 99),
                "events": [e.to_dict() for e in self.events]}


class ControlLoop:
    """Runs one episode of `actor` (PolicyRunner or ExpertActor: reset/observe/predict_chunk) on `robot`."""

    def __init__(self, actor, robot: Robot, cfg: ControlConfig | None = None, safety: SafetyConfig | None = None,
                 estop: EStop | None = None, recorder=None, clock=time.time):
        self.actor, self.robot = actor, robot
        self.cfg, self.safety = cfg or ControlConfig(), safety or SafetyConfig()
        self.estop = estop or EStop()
        self.recorder, self.clock = recorder, clock
        self.filter = ActionFilter(self.safety, robot.action_dim)

    def _event(self, report: ControlReport, kind: str, detail: str = "") -> None:
        """Record every event; log the first of each kind per run (a policy clipped every step is one line)."""
        if not any(e.kind == kind for e in report.events):
            log.warning("safety: %s: %s (further %s events are recorded, not logged)", kind, detail, kind)
        report.events.append(SafetyEvent(self.clock(), kind, detail))

    def _wait_first_observation(self) -> TimedObservation | None:
        deadline = self.clock() + self.cfg.first_obs_timeout_s
        while self.clock() < deadline and not self.estop.is_set():
            obs = self.robot.observe()
            if obs is not None:
                return obs
            self.estop.wait(0.005)
        return None

    def warm_up(self, obs: TimedObservation, seed: int | None) -> None:
        """`warmup_calls` network calls on the first observation; an e-stop ends it at the next call."""
        for _ in range(self.cfg.warmup_calls):
            if self.estop.is_set():
                break
            self.actor.reset()
            self.actor.observe(obs.policy_input())
            self.actor.predict_chunk()
        self.actor.reset(seed)
        self.actor.inference_ms.clear()
        getattr(self.actor, "encode_ms", []).clear()

    def run(self, seed: int | None = None) -> ControlReport:
        report = ControlReport()
        try:
            self._run(report, seed)
        except BaseException as e:  # anything unexpected: hold first, then let it propagate
            self._event(report, "loop_error", repr(e))
            report.stop_reason = report.stop_reason or "loop_error"
            self.robot.hold()
            raise
        finally:
            report.inference_ms = list(self.actor.inference_ms)
            report.encode_ms = list(getattr(self.actor, "encode_ms", []))
            report.success = getattr(self.robot, "success", None)
            if self.recorder is not None:
                self.recorder.finish(report)
        return report

    def _stop(self, report: ControlReport, reason: str, detail: str = "", estop: bool = False) -> None:
        report.stop_reason = reason
        if reason not in ("episode_end",):
            self._event(report, reason, detail)
        (self.robot.stop if estop else self.robot.hold)()

    def _run(self, report: ControlReport, seed: int | None) -> None:
        """First observation, warm-up, then the ticks under the loop's timing settings."""
        cfg = self.cfg
        obs = self._wait_first_observation()
        if obs is None:
            if self.estop.is_set():
                return self._stop(report, "e_stop", f"{self.estop.reason} (before the first observation)", estop=True)
            return self._stop(report, "no_observation", f"nothing within {cfg.first_obs_timeout_s} s", estop=True)
        # the collection before the freeze stops every Python thread (about 0.15 s): before the warm-up, so that
        # the robot's observation at the first tick is fresh
        with quiet_gc(cfg.gc_mode) as gc_pauses:
            self.warm_up(obs, seed)
            if self.estop.is_set():
                return self._stop(report, "e_stop", f"{self.estop.reason} (during the warm-up)", estop=True)
            self.filter.reset()
            with switch_interval(cfg.switch_interval_ms / 1000), realtime_thread(cfg.rt_priority) as realtime:
                gc_pauses.pauses_ms.clear()
                report.gc_pauses_ms, report.realtime = gc_pauses.pauses_ms, realtime
                self._ticks(report)

    def _ticks(self, report: ControlReport) -> None:
        """The ticks from now until a stop."""
        cfg, safety, period = self.cfg, self.safety, self.cfg.period
        t0 = self.clock()
        scheduler = ChunkScheduler(t0, period, cfg.blend, cfg.ensemble_decay)
        chunk_t_obs, last_fresh = None, t0
        for k in range(safety.max_steps + 1):
            target = t0 + k * period
            if wait_until(target, self.clock, self.estop, cfg.fine_wait_ms / 1000):
                return self._stop(report, "e_stop", self.estop.reason, estop=True)
            now = self.clock()
            report.period_error_ms.append(1000 * (now - target))
            report.overruns += int(now - target >= period)
            if getattr(self.robot, "done", False):
                return self._stop(report, "episode_end")
            if k == safety.max_steps:
                return self._stop(report, "step_limit", f"{safety.max_steps} steps")
            if now - t0 > safety.max_time_s:
                return self._stop(report, "time_limit", f"{safety.max_time_s} s")
            obs = self.robot.observe()
            if obs is None or now - obs.t > safety.max_obs_age_s:
                if now - last_fresh > safety.stale_stop_s:
                    return self._stop(report, "observations_lost", f"no fresh observation for {safety.stale_stop_s} s")
                age = "none" if obs is None else f"{1000 * (now - obs.t):.0f} ms old"
                self._event(report, "stale_observation", f"observation {age} > {1000 * safety.max_obs_age_s:.0f} ms")
                self.robot.hold()
                report.holds += 1
                scheduler.clear()
                continue
            last_fresh = now
            if not obs.is_finite():
                return self._stop(report, "non_finite_observation", "NaN/inf in the point cloud or state")
            self.actor.observe(obs.policy_input())
            if scheduler.needs_chunk(now):
                try:
                    chunk = np.asarray(self.actor.predict_chunk())
                except Exception as e:  # the policy failed: hold, record, stop
                    return self._stop(report, "policy_error", repr(e))
                if not np.isfinite(chunk).all():
                    return self._stop(report, "non_finite_action", "NaN/inf in the policy's actions")
                already_late = scheduler.add_chunk(chunk, obs.t, self.clock())
                chunk_t_obs = obs.t
            else:
                already_late = 0
            sent_at = self.clock()
            action, slot, dropped = scheduler.due(sent_at)
            # with ensembling, predictions for ticks already executed are the expected overlap of chunks made
            # every tick, not planned actions that came too late
            dropped += already_late if self.cfg.blend == "none" else 0
            if dropped:
                report.dropped_actions += dropped
                self._event(report, "late_actions_dropped", f"{dropped} action(s) past their slot (the observation "
                            f"{1000 * (now - obs.t):.0f} ms old at the tick, sent {1000 * (sent_at - now):.0f} ms "
                            "after the tick)")
            if action is None:
                self.robot.hold()
                report.holds += 1
                continue
            safe, notes = self.filter(action)
            for note in notes:
                self._event(report, "clipped" if note.startswith("clipped") else "rate_limited", note)
            self.robot.send(safe, max(sent_at, scheduler.slot_time(slot)))
            report.steps += 1
            report.latency_ms.append(1000 * (self.clock() - now))
            report.obs_age_ms.append(1000 * (now - obs.t))
            if self.recorder is not None:
                self.recorder.step(obs, safe, t_chunk_obs=chunk_t_obs, t_sent=sent_at,
                                   t_exec=max(sent_at, scheduler.slot_time(slot)))
