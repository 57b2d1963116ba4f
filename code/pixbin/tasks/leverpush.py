"""The lever-push task (DESIGN.md §4), with its optional optogenetics channels.

Flag values are the lab's (``pixels.behaviours.leverpush``) so existing analyses keep working;
the lab's aggregate ``uncued_shutter_push``, which held the *cued* flags, is fixed in
:data:`GROUPS`. The rules are documented in docs/BEHAVIOUR.md.
"""

from __future__ import annotations

import enum
import math
from typing import Any

import numpy as np
import pandas as pd

from pixbin.tasks import ActionSpec, Channel, Task, check_flags, register_task

__all__ = ["LeverPush", "Events", "Actions", "GROUPS"]

_TTL_V = (0.8, 2.0)  # TTL input levels: low <= 0.8 V, high >= 2.0 V
_LASER_V = (0.1, 0.35)  # the laser command is analog: low-power pulses must still count


@check_flags
class Events(enum.IntFlag):
    """Lever-push events (column 1 of ``action_labels``)."""

    back_sensor_open = 1 << 0
    back_sensor_closed = 1 << 1
    front_sensor_open = 1 << 2
    front_sensor_closed = 1 << 3
    reward_signal = 1 << 4
    reset_signal = 1 << 5
    tone_onset = 1 << 6
    tone_offset = 1 << 7
    shutter_onset = 1 << 8
    shutter_offset = 1 << 9
    laser_onset = 1 << 10
    laser_offset = 1 << 11


@check_flags
class Actions(enum.IntFlag):
    """Lever-push trial types (column 0 of ``action_labels``)."""

    rewarded_push = 1 << 0
    uncued_push = 1 << 1
    missed_tone = 1 << 2
    cued_shutter_nopush = 1 << 3
    cued_laser_nopush = 1 << 4
    uncued_shutter_nopush = 1 << 5
    uncued_laser_nopush = 1 << 6
    cued_shutter_push_partial = 1 << 7
    cued_laser_push_partial = 1 << 8
    uncued_shutter_push_partial = 1 << 9
    uncued_laser_push_partial = 1 << 10
    cued_shutter_push_full = 1 << 11
    cued_laser_push_full = 1 << 12
    uncued_shutter_push_full = 1 << 13
    uncued_laser_push_full = 1 << 14


A = Actions
#: Aggregates of several actions (select trials with ``labels & GROUPS[name]``).
GROUPS: dict[str, Actions] = {
    "cued_shutter_push": A.cued_shutter_push_partial | A.cued_shutter_push_full,
    "cued_laser_push": A.cued_laser_push_partial | A.cued_laser_push_full,
    "uncued_shutter_push": A.uncued_shutter_push_partial | A.uncued_shutter_push_full,
    "uncued_laser_push": A.uncued_laser_push_partial | A.uncued_laser_push_full,
    "shutter": A.cued_shutter_nopush | A.uncued_shutter_nopush | A.cued_shutter_push_partial
    | A.uncued_shutter_push_partial | A.cued_shutter_push_full | A.uncued_shutter_push_full,
    "laser": A.cued_laser_nopush | A.uncued_laser_nopush | A.cued_laser_push_partial
    | A.uncued_laser_push_partial | A.cued_laser_push_full | A.uncued_laser_push_full,
}
del A


def _opto_specs() -> dict[str, ActionSpec]:
    specs = {}
    for cue in ("cued", "uncued"):
        for kind in ("shutter", "laser"):
            for outcome in ("nopush", "push_partial", "push_full"):
                align: tuple[str, ...] = (f"{kind}_onset",)
                if cue == "cued":
                    align += ("tone_onset",)
                if outcome != "nopush":
                    align += ("back_sensor_open",)
                specs[f"{cue}_{kind}_{outcome}"] = ActionSpec(align, outcome)
    return specs


def _first_after(times: np.ndarray, t: float) -> float | None:
    """First of the sorted ``times`` strictly after ``t``."""
    i = int(np.searchsorted(times, t, side="right"))
    return float(times[i]) if i < times.size else None


@register_task
class LeverPush(Task):
    """Tone-cued lever push for a water reward; optional shutter/laser optogenetics.

    Rules (times on the probe clock, every event of the recording considered):

    - ``rewarded_push``: the last tone onset at or before each reward onset (once per tone).
    - ``missed_tone``: every other tone onset.
    - ``uncued_push``: a back-sensor opening with no tone onset at or before it, or whose last
      reset (at or before it) is at or after its last tone onset.
    - opto (per shutter train and per laser train; trains merge pulses whose onsets are
      ≤ 200 ms apart): ``cued`` when a tone onset lies within ±``cue_window_s`` of the train
      onset; the trial starts at the earliest of the train onset, those tone onsets and the
      other stimulus' onsets within the same window. ``nopush`` when the next back-sensor
      opening after the start comes after the train's offset (or never comes, while a reset
      does). Otherwise a push: cued trials are ``push_full`` when the next front-sensor closing
      comes before the next reset, uncued trials are ``push_partial`` when the next back-sensor
      closing comes before the next front-sensor closing.
    """

    name = "leverpush"
    channels = (
        Channel("Back_Sensor", "back_sensor_open", "back_sensor_closed", thresholds_v=_TTL_V),
        Channel("Front_Sensor", "front_sensor_open", "front_sensor_closed", thresholds_v=_TTL_V),
        Channel("Reward_Signal", "reward_signal", None, thresholds_v=_TTL_V),
        Channel("Reset_Signal", "reset_signal", None, thresholds_v=_TTL_V),
        Channel("Tone_Signal", "tone_onset", "tone_offset", thresholds_v=_TTL_V),
        Channel("NpxlSync_Signal"),  # read by the sync stage; resampled here, no events
        Channel("Shutter_Signal", "shutter_onset", "shutter_offset", required=False,
                thresholds_v=_TTL_V, merge_gap_s=0.2),
        Channel("Laser_Signal", "laser_onset", "laser_offset", required=False,
                thresholds_v=_LASER_V, merge_gap_s=0.2),
    )
    Events = Events
    Actions = Actions
    actions = {
        "rewarded_push": ActionSpec(
            ("back_sensor_open", "tone_onset", "front_sensor_open", "reward_signal"), "rewarded"),
        "uncued_push": ActionSpec(("back_sensor_open", "front_sensor_open"), "uncued"),
        "missed_tone": ActionSpec(("tone_onset", "tone_offset"), "missed"),
        **_opto_specs(),
    }
    labels_dtype = np.dtype(np.uint32)
    scan_window_s = 10.0

    #: A tone onset within ± this of a stimulus onset makes the stimulus cued (strict).
    cue_window_s: float = 0.5

    @classmethod
    def rule_parameters(cls) -> dict[str, Any]:
        return {"cue_window_s": cls.cue_window_s,
                "merge_gap_s": {c.group: c.merge_gap_s for c in cls.channels if c.merge_gap_s}}

    def trials(self, events: pd.DataFrame) -> pd.DataFrame:
        times = {
            name: np.sort(events.loc[events["event"] == name, "time_s"].to_numpy(np.float64))
            for name in self.Events.__members__
        }
        rows: list[tuple[str, float, str]] = []
        unlabelled: list[dict[str, Any]] = []

        tones, rewards = times["tone_onset"], times["reward_signal"]
        last_tone = np.searchsorted(tones, rewards, side="right") - 1
        for r in rewards[last_tone < 0]:
            unlabelled.append({"time_s": float(r), "event": "reward_signal",
                               "reason": "no tone_onset at or before this reward"})
        rewarded = np.unique(last_tone[last_tone >= 0])
        rows += [("rewarded_push", float(tones[i]), "rewarded") for i in rewarded]
        missed = np.setdiff1d(np.arange(tones.size), rewarded)
        rows += [("missed_tone", float(tones[i]), "missed") for i in missed]

        back, resets = times["back_sensor_open"], times["reset_signal"]
        it = np.searchsorted(tones, back, side="right") - 1
        ir = np.searchsorted(resets, back, side="right") - 1
        tone_before = np.where(it >= 0, tones[np.maximum(it, 0)] if tones.size else 0.0, -np.inf)
        reset_before = np.where(ir >= 0, resets[np.maximum(ir, 0)] if resets.size else 0.0, np.nan)
        uncued = (it < 0) | ((ir >= 0) & (reset_before >= tone_before))
        rows += [("uncued_push", float(b), "uncued") for b in back[uncued]]

        for kind, other in (("shutter", "laser"), ("laser", "shutter")):
            for onset in times[f"{kind}_onset"]:
                row = self._opto_trial(kind, other, float(onset), times)
                if isinstance(row, str):
                    unlabelled.append({"time_s": float(onset), "event": f"{kind}_onset",
                                       "reason": row})
                else:
                    rows.append(row)

        out = pd.DataFrame(rows, columns=["action", "start_s", "outcome"])
        out = out.sort_values(["start_s", "action"], kind="stable").reset_index(drop=True)
        out.attrs["unlabelled"] = unlabelled
        return out

    def _opto_trial(self, kind: str, other: str, onset: float,
                    times: dict[str, np.ndarray]) -> tuple[str, float, str] | str:
        """One stimulus train → (action, start_s, outcome), or the reason it has no label."""
        w = self.cue_window_s
        tones = times["tone_onset"]
        near_tones = tones[np.abs(tones - onset) < w]
        others = times[f"{other}_onset"]
        near_others = others[np.abs(others - onset) < w]
        cued = near_tones.size > 0
        start = float(min([onset, *near_tones.tolist(), *near_others.tolist()]))
        offset = _first_after(times[f"{kind}_offset"], onset)
        if offset is None:
            return f"no {kind}_offset after this onset (recording ended during the stimulus)"
        next_push = _first_after(times["back_sensor_open"], start)
        next_reset = _first_after(times["reset_signal"], start)
        if next_push is None:
            if next_reset is None:
                return "recording ended before the outcome was known (no later push or reset)"
            outcome = "nopush"
        elif next_push > offset:
            outcome = "nopush"
        else:
            front_closed = _first_after(times["front_sensor_closed"], start)
            front_closed = math.inf if front_closed is None else front_closed
            if cued:
                if next_reset is None:
                    return "recording ended before the trial's reset"
                outcome = "push_full" if front_closed < next_reset else "push_partial"
            else:
                back_closed = _first_after(times["back_sensor_closed"], start)
                if back_closed is None:
                    return "recording ended before the lever returned (no back_sensor_closed)"
                outcome = "push_partial" if back_closed < front_closed else "push_full"
        cue = "cued" if cued else "uncued"
        return (f"{cue}_{kind}_{outcome}", start, outcome)
