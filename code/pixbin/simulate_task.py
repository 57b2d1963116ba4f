"""The simulated lever-push task: its trials, opto stimuli and the rig signals' high intervals.

Everything here is on the probe clock; :mod:`pixbin.simulate_rig` turns the intervals into the
behaviour TDMS and :mod:`pixbin.simulate` stores the trials as ground truth.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from pixbin.simulate import SimulationParams

__all__ = ["EVENT_CHANNELS", "TaskTruth", "simulate_task", "events_from_intervals"]

#: TDMS group of each behaviour signal; rising edge → first event name, falling → second.
EVENT_CHANNELS: dict[str, tuple[str, str | None]] = {
    "Back_Sensor": ("back_sensor_open", "back_sensor_closed"),
    "Front_Sensor": ("front_sensor_open", "front_sensor_closed"),
    "Reward_Signal": ("reward_signal", None),
    "Reset_Signal": ("reset_signal", None),
    "Tone_Signal": ("tone_onset", "tone_offset"),
    "Shutter_Signal": ("shutter_onset", "shutter_offset"),
    "Laser_Signal": ("laser_onset", "laser_offset"),
}

_OPTO_OUTCOMES = ("nopush", "push_full", "push_partial")


@dataclass
class TaskTruth:
    """Ground truth accumulated while a session's task is generated.

    Attributes
    ----------
    intervals : dict
        ``(on_s, off_s)`` high intervals of each :data:`EVENT_CHANNELS` signal.
    trials : list of dict
        One dict a trial (``action``, ``start_s``, event times, ``outcome``, ``trial_id``).
    opto : list of dict
        One dict an opto stimulus (times, cue, outcome, the actions it labels).
    """

    intervals: dict[str, list[tuple[float, float]]] = field(default_factory=dict)
    trials: list[dict] = field(default_factory=list)
    opto: list[dict] = field(default_factory=list)


class _Task:
    """The random draws of one task, trial by trial, and the truth they build."""

    def __init__(self, p: SimulationParams, rng: np.random.Generator) -> None:
        self.p, self.rng = p, rng
        self.truth = TaskTruth(intervals={name: [] for name in EVENT_CHANNELS})
        self.iv = self.truth.intervals
        self.n_stim = {"cued": 0, "uncued": 0}

    def push(self, start: float) -> tuple[float, float]:
        rng, iv = self.rng, self.iv
        front_on = start + rng.uniform(0.10, 0.20)
        front_off = front_on + rng.uniform(0.20, 0.35)
        back_off = front_off + rng.uniform(0.10, 0.20)
        iv["Back_Sensor"].append((start, back_off))
        iv["Front_Sensor"].append((front_on, front_off))
        return front_on, back_off

    def partial_push(self, start: float) -> float:
        back_off = start + self.rng.uniform(0.15, 0.30)
        self.iv["Back_Sensor"].append((start, back_off))
        return back_off

    def stimulate(self, stim: float, cue: str, outcome: str, trial_start: float) -> None:
        iv = self.iv
        iv["Shutter_Signal"].append((stim, stim + 0.5))
        for k in range(10):  # a 20 Hz, 10-pulse laser train
            iv["Laser_Signal"].append((stim + 0.05 * k, stim + 0.05 * k + 0.010))
        self.truth.opto.append({
            "start_s": stim, "stop_s": stim + 0.5, "n_laser_pulses": 10,
            "cued": cue == "cued", "outcome": outcome, "trial_start_s": trial_start,
            "actions": [f"{cue}_shutter_{outcome}", f"{cue}_laser_{outcome}"],
        })

    def uncued_push(self, t: float) -> float:
        """An uncued push in the inter-trial interval starting at ``t``; returns the next ``t``."""
        rng = self.rng
        start = t + rng.uniform(0.3, 1.0)
        _, back_off = self.push(start)
        self.truth.trials.append(
            {"action": "uncued_push", "start_s": start, "back_sensor_open_s": start,
             "outcome": "uncued"}
        )
        return back_off + rng.uniform(1.0, 2.0)

    def tone_trial(self, tone_on: float) -> float:
        """A tone trial (with its stimuli); returns when its reset (or uncued stimulus) ends."""
        rng, p = self.rng, self.p
        cued = None  # the opto outcome of a cued stimulus on this trial
        stim = None
        if p.opto and rng.random() < 0.5:
            cued = _OPTO_OUTCOMES[self.n_stim["cued"] % 3]
            self.n_stim["cued"] += 1
            stim = tone_on + rng.uniform(-0.15, 0.15)
            rewarded = cued == "push_full"
        else:
            rewarded = rng.random() < 0.65
        if rewarded:
            reset = self._rewarded(tone_on, cued, stim)
        else:
            reset = self._missed(tone_on, cued, stim)
        if cued is not None:
            self.stimulate(stim, "cued", cued, min(tone_on, stim))
        self.iv["Reset_Signal"].append((reset, reset + 0.050))
        reset_end = reset
        if cued is None and p.opto and rng.random() < 0.5:
            reset_end = self._uncued_stimulus(reset)
        return reset_end

    def _rewarded(self, tone_on: float, cued: str | None, stim: float | None) -> float:
        rng, iv = self.rng, self.iv
        if cued is None:
            push_on = tone_on + rng.uniform(0.25, 0.9)
        else:
            push_on = max(tone_on, stim) + rng.uniform(0.05, 0.25)
        front_on, back_off = self.push(push_on)
        reward = front_on + 0.010
        iv["Reward_Signal"].append((reward, reward + 0.100))
        iv["Tone_Signal"].append((tone_on, reward))
        reset = max(back_off, reward) + rng.uniform(1.2, 1.8)
        self.truth.trials.append(
            {"action": "rewarded_push", "start_s": tone_on, "tone_onset_s": tone_on,
             "back_sensor_open_s": push_on, "reward_signal_s": reward,
             "outcome": "rewarded"}
        )
        return reset

    def _missed(self, tone_on: float, cued: str | None, stim: float | None) -> float:
        rng = self.rng
        tone_off = tone_on + 2.0
        self.iv["Tone_Signal"].append((tone_on, tone_off))
        reset = tone_off + rng.uniform(0.8, 1.2)
        trial = {"action": "missed_tone", "start_s": tone_on, "tone_onset_s": tone_on,
                 "outcome": "missed"}
        if cued == "push_partial":
            push_on = max(tone_on, stim) + rng.uniform(0.05, 0.25)
            self.partial_push(push_on)
            trial["back_sensor_open_s"] = push_on
        self.truth.trials.append(trial)
        return reset

    def _uncued_stimulus(self, reset: float) -> float:
        rng = self.rng
        outcome = _OPTO_OUTCOMES[self.n_stim["uncued"] % 3]
        self.n_stim["uncued"] += 1
        stim = reset + rng.uniform(0.3, 0.6)
        self.stimulate(stim, "uncued", outcome, stim)
        reset_end = stim + 0.8
        if outcome != "nopush":
            start = stim + rng.uniform(0.05, 0.25)
            if outcome == "push_full":
                _, back_off = self.push(start)
            else:
                back_off = self.partial_push(start)
            self.truth.trials.append(
                {"action": "uncued_push", "start_s": start, "back_sensor_open_s": start,
                 "outcome": "uncued"}
            )
            reset_end = max(reset_end, back_off)
        return reset_end


def simulate_task(
    p: SimulationParams, rng: np.random.Generator, t0: float, t1: float
) -> TaskTruth:
    """Lever-push task on the probe clock: tone → push → reward, misses, uncued pushes, resets.

    With ``p.opto``, half the tone trials get a stimulus (0.5 s shutter pulse + a 20 Hz, 10-pulse
    laser train) within ±150 ms of the tone (cued) and half the inter-trial intervals get one
    after the reset (uncued); the outcomes cycle through no push, full push and partial push
    (lever off the back sensor but never at the front), so every opto action of the lever-push
    task occurs. Non-opto sessions draw exactly the same random numbers as before.

    Parameters
    ----------
    p : SimulationParams
        The session's parameters (``opto`` is read).
    rng : numpy.random.Generator
        Where every random draw comes from, in a fixed order.
    t0, t1 : float
        Probe times (s) between which trials are placed.

    Returns
    -------
    TaskTruth
        The high intervals, trials (sorted by start, numbered ``trial_id``) and opto stimuli.
    """
    task = _Task(p, rng)
    t = t0 + rng.uniform(0.5, 1.5)
    while t < t1 - 7.0:
        if rng.random() < 0.3:  # an uncued push in the inter-trial interval
            t = task.uncued_push(t)
            continue
        reset_end = task.tone_trial(t)
        t = reset_end + rng.uniform(1.5, 3.0)
    truth = task.truth
    truth.trials.sort(key=lambda tr: tr["start_s"])
    for i, trial in enumerate(truth.trials):
        trial["trial_id"] = i
    return truth


def events_from_intervals(intervals: dict[str, list[tuple[float, float]]]) -> list[dict]:
    """The rig's events (one a rising and, where named, a falling edge), sorted by time.

    Parameters
    ----------
    intervals : dict
        ``(on_s, off_s)`` high intervals per :data:`EVENT_CHANNELS` signal.

    Returns
    -------
    list of dict
        ``{"time_s", "event", "channel"}``, sorted by time then event name.
    """
    events = []
    for channel, (rise_name, fall_name) in EVENT_CHANNELS.items():
        for on, off in intervals.get(channel, []):
            events.append({"time_s": on, "event": rise_name, "channel": channel})
            if fall_name:
                events.append({"time_s": off, "event": fall_name, "channel": channel})
    events.sort(key=lambda e: (e["time_s"], e["event"]))
    return events
