"""Recording of control runs in the demonstration layout, so a run can be replayed, inspected or trained on.

Per step (one action sent): data/point_cloud (N, 3), data/state (d,), data/action (d_act,) as sent after the
safety filter, data/obs_time (2,) float64 [camera stamp, state stamp], data/action_time (3,) float64
[observation time the chunk started from, time sent, time to execute]. Per run (attrs "control_runs"): the
report (stop reason, counts, timing percentiles, every safety event). A run is committed as one episode when
it ends, however it ends (a fault, an e-stop, Ctrl-C); a process killed outright loses only the run in progress.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

TIME_ALIGNMENT = ("obs_time = [camera stamp, state stamp] of the observation used; the observation time is the "
                  "older of the two. action_time = [t_chunk_obs, t_sent, t_exec]: the action came from the chunk "
                  "predicted on the observation history ending at t_chunk_obs; action j of a chunk is meant for "
                  "the control slot of t_chunk_obs + j / rate_hz; it was sent at t_sent to execute at t_exec. "
                  "Times are seconds since the epoch (time.time()).")


class RunRecorder:
    def __init__(self, path, description: dict | None = None):
        from mfp.demos.store import DemoStore

        self.path = Path(path)
        if self.path.exists():
            self.store = DemoStore.open(self.path, "a")
        else:
            self.store = DemoStore.create(self.path, attrs={"task": (description or {}).get("task"),
                                                            "source": "mfp control", "time_alignment": TIME_ALIGNMENT,
                                                            "control_runs": [], **(description or {})})
        self.description = description or {}
        self._steps: list[tuple] = []

    def step(self, obs, action: np.ndarray, t_chunk_obs: float | None, t_sent: float, t_exec: float) -> None:
        self._steps.append((np.asarray(obs.point_cloud, np.float32), np.asarray(obs.agent_pos, np.float32),
                            np.asarray(action, np.float32), (obs.t_cloud, obs.t_state),
                            (np.nan if t_chunk_obs is None else t_chunk_obs, t_sent, t_exec)))

    def finish(self, report) -> None:
        """Commit the run's steps as one episode (if any) and its report."""
        runs = list(self.store.attrs.get("control_runs", []))
        episode = None
        if self._steps:
            cloud, state, action, obs_t, act_t = zip(*self._steps)
            self.store.add_episode({"point_cloud": np.stack(cloud), "state": np.stack(state),
                                    "action": np.stack(action), "obs_time": np.asarray(obs_t, np.float64),
                                    "action_time": np.asarray(act_t, np.float64)})
            episode = self.store.n_episodes - 1
        runs.append({"episode": episode, "steps": len(self._steps), **report.summary()})
        self.store.update_attrs(control_runs=runs)
        self._steps = []
