"""pixbin.tasks: declared tasks, flag checks, the registry and the lever-push rules."""

from __future__ import annotations

import enum
import json
import sys
import textwrap
from importlib.metadata import EntryPoint

import numpy as np
import pandas as pd
import pytest

import pixbin.tasks as tasks
from pixbin.errors import BehaviourError
from pixbin.tasks import ActionSpec, Channel, Task, available_tasks, check_flags, get_task
from pixbin.tasks.leverpush import GROUPS, Actions, Events, LeverPush


# ------------------------------------------------------------------------------- registry
def test_get_task_builtin_and_unknown():
    assert get_task("leverpush") is LeverPush
    assert get_task(LeverPush) is LeverPush
    assert "leverpush" in available_tasks()
    with pytest.raises(BehaviourError, match=r"unknown task 'nope'.*leverpush"):
        get_task("nope")


def test_leverpush_declaration():
    assert LeverPush.required_channels() == (
        "Back_Sensor", "Front_Sensor", "Reward_Signal", "Reset_Signal", "Tone_Signal",
        "NpxlSync_Signal")
    assert LeverPush.optional_channels() == ("Shutter_Signal", "Laser_Signal")
    assert LeverPush.labels_dtype == np.uint32 and LeverPush.scan_window_s == 10.0
    # the lab's flag values are kept
    assert int(Events.back_sensor_open) == 1 and int(Events.laser_offset) == 1 << 11
    assert int(Actions.missed_tone) == 1 << 2 and int(Actions.uncued_laser_push_full) == 1 << 14
    assert len(Actions.__members__) == 15 and len(Events.__members__) == 12
    assert LeverPush.default_align("rewarded_push") == "back_sensor_open"
    assert LeverPush.default_align("missed_tone") == "tone_onset"
    assert LeverPush.default_align("cued_laser_nopush") == "laser_onset"
    assert set(LeverPush.alignment_events()) >= {"tone_onset", "back_sensor_open", "reward_signal",
                                                  "shutter_onset", "laser_onset"}
    json.dumps(LeverPush.describe())  # plain data


def test_uncued_shutter_push_group_is_not_the_cued_flags():
    """The lab defined uncued_shutter_push with the cued flags; fixed here."""
    assert GROUPS["uncued_shutter_push"] == (
        Actions.uncued_shutter_push_partial | Actions.uncued_shutter_push_full)
    assert not GROUPS["uncued_shutter_push"] & GROUPS["cued_shutter_push"]
    assert bin(int(GROUPS["shutter"])).count("1") == 6


# ------------------------------------------------------------------------------- flag checks
def test_check_flags_refuses_duplicates_and_multibit():
    class Dup(enum.IntFlag):
        a = 1
        b = 1

    class Multi(enum.IntFlag):
        a = 1
        b = 2
        ab = 3

    class Zero(enum.IntFlag):
        a = 0

    with pytest.raises(BehaviourError, match="share the value"):
        check_flags(Dup)
    with pytest.raises(BehaviourError, match=r"Multi\.ab = 0x3.*single bit"):
        check_flags(Multi)
    with pytest.raises(BehaviourError, match="single bit"):
        check_flags(Zero)
    with pytest.raises(BehaviourError, match="IntFlag"):
        check_flags(int)  # type: ignore[arg-type]


def _declare(**overrides):
    """A small valid task class body, with overrides."""

    class Ev(enum.IntFlag):
        on = 1 << 0
        off = 1 << 1

    class Ac(enum.IntFlag):
        go = 1 << 0

    body = dict(
        name="tiny", channels=(Channel("Sig", "on", "off"),), Events=Ev, Actions=Ac,
        actions={"go": ActionSpec(("on",), "done")},
        trials=lambda self, events: pd.DataFrame({"action": [], "start_s": [], "outcome": []}),
    )
    body.update(overrides)
    return type("Tiny", (Task,), body)


def test_task_declaration_checked_at_class_creation():
    assert _declare().required_channels() == ("Sig",)

    class Dup(enum.IntFlag):
        on = 1
        off = 1

    with pytest.raises(BehaviourError, match="share the value"):
        _declare(Events=Dup)
    with pytest.raises(BehaviourError, match="not a member of Events"):
        _declare(channels=(Channel("Sig", "onn", "off"),))
    with pytest.raises(BehaviourError, match="expected exactly the members of Actions"):
        _declare(actions={})
    with pytest.raises(BehaviourError, match="aligns to"):
        _declare(actions={"go": ActionSpec(("nothing",), "done")})
    with pytest.raises(BehaviourError, match="low < high"):
        _declare(channels=(Channel("Sig", "on", "off", thresholds_v=(2.0, 1.0)),))

    class Wide(enum.IntFlag):
        on = 1 << 0
        off = 1 << 9

    with pytest.raises(BehaviourError, match="needs 10 bits"):
        _declare(Events=Wide, labels_dtype=np.dtype(np.uint8))
    with pytest.raises(BehaviourError, match="unsigned"):
        _declare(labels_dtype=np.dtype(np.int32))


def test_register_task_name_collision():
    cls = _declare(name="leverpush")
    with pytest.raises(BehaviourError, match="taken"):
        tasks.register_task(cls)
    with pytest.raises(BehaviourError, match="subclass"):
        tasks.register_task(int)  # type: ignore[arg-type]


def test_entry_point_discovery(tmp_path, monkeypatch):
    """A lab's task in its own package is found through the pixbin.tasks entry-point group."""
    (tmp_path / "mylab_tasks.py").write_text(textwrap.dedent("""
        import enum
        import pandas as pd
        from pixbin.tasks import ActionSpec, Channel, Task

        class Ev(enum.IntFlag):
            led_on = 1 << 0
            led_off = 1 << 1

        class Ac(enum.IntFlag):
            reach = 1 << 0

        class Reach(Task):
            name = "labreach"
            channels = (Channel("ReachLEDs", "led_on", "led_off"),)
            Events = Ev
            Actions = Ac
            actions = {"reach": ActionSpec(("led_on",), "reached")}

            def trials(self, events):
                on = events[events["event"] == "led_on"]
                return pd.DataFrame({"action": "reach", "start_s": on["time_s"], "outcome": "reached"})
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    ep = EntryPoint(name="labreach", value="mylab_tasks:Reach", group=tasks.ENTRY_POINT_GROUP)
    monkeypatch.setattr(tasks, "entry_points", lambda group: [ep] if group == ep.group else [])
    monkeypatch.setitem(tasks._LOADED, "entry_points", False)
    try:
        cls = get_task("labreach")
        assert cls.__name__ == "Reach" and "labreach" in available_tasks()
        events = pd.DataFrame({"time_s": [1.0, 2.0], "event": ["led_on", "led_off"],
                               "channel": "ReachLEDs"})
        assert cls().trials(events)["start_s"].tolist() == [1.0]
    finally:
        tasks._REGISTRY.pop("labreach", None)
        sys.modules.pop("mylab_tasks", None)


# ------------------------------------------------------------------------------- rules
def ev(*pairs: tuple[float, str]) -> pd.DataFrame:
    channel = {"back_sensor_open": "Back_Sensor", "back_sensor_closed": "Back_Sensor",
               "front_sensor_open": "Front_Sensor", "front_sensor_closed": "Front_Sensor",
               "reward_signal": "Reward_Signal", "reset_signal": "Reset_Signal",
               "tone_onset": "Tone_Signal", "tone_offset": "Tone_Signal",
               "shutter_onset": "Shutter_Signal", "shutter_offset": "Shutter_Signal",
               "laser_onset": "Laser_Signal", "laser_offset": "Laser_Signal"}
    df = pd.DataFrame(pairs, columns=["time_s", "event"])
    df["channel"] = df["event"].map(channel)
    return df.sort_values("time_s").reset_index(drop=True)


def rows(df: pd.DataFrame) -> list[tuple[str, float, str]]:
    return [(a, round(s, 6), o) for a, s, o in df[["action", "start_s", "outcome"]].itertuples(index=False)]


def push(t: float, *, full: bool = True) -> list[tuple[float, str]]:
    out = [(t, "back_sensor_open")]
    if full:
        out += [(t + 0.1, "front_sensor_open"), (t + 0.3, "front_sensor_closed")]
    out += [(t + 0.5, "back_sensor_closed")]
    return out


def test_leverpush_base_rules():
    events = ev(
        *push(0.5),                                # before any tone: uncued
        (2.0, "tone_onset"), *push(2.4), (2.51, "reward_signal"), (2.6, "reward_signal"),
        (2.51, "tone_offset"), (4.0, "reset_signal"),  # one rewarded trial (two reward pulses)
        *push(5.0),                                # after the reset: uncued
        (7.0, "tone_onset"), (9.0, "tone_offset"), *push(8.0, full=False),  # missed; push inside
        (10.0, "reset_signal"),
        (12.0, "tone_onset"), (14.0, "tone_offset"), (15.0, "reset_signal"),  # missed
    )
    out = LeverPush().trials(events)
    assert rows(out) == [
        ("uncued_push", 0.5, "uncued"), ("rewarded_push", 2.0, "rewarded"),
        ("uncued_push", 5.0, "uncued"), ("missed_tone", 7.0, "missed"),
        ("missed_tone", 12.0, "missed"),
    ]
    assert out.attrs["unlabelled"] == []


def test_leverpush_reward_without_tone_is_reported():
    out = LeverPush().trials(ev((1.0, "reward_signal"), (2.0, "tone_onset"), (4.0, "tone_offset")))
    assert rows(out) == [("missed_tone", 2.0, "missed")]
    assert out.attrs["unlabelled"][0]["event"] == "reward_signal"


def stim(t: float, kind: str, dur: float = 0.5) -> list[tuple[float, str]]:
    return [(t, f"{kind}_onset"), (t + dur, f"{kind}_offset")]


@pytest.mark.parametrize("kind", ["shutter", "laser"])
def test_leverpush_opto_rules_every_case(kind):
    base = 10.0
    cases = {
        # cued: a tone 0.1 s after the stimulus; full push = front closes before the reset
        "cued_{k}_nopush": [(base + 0.1, "tone_onset"), (base + 2.1, "tone_offset"),
                            (base + 3.0, "reset_signal")],
        "cued_{k}_push_full": [(base + 0.1, "tone_onset"), *push(base + 0.3),
                               (base + 0.45, "reward_signal"), (base + 3.0, "reset_signal")],
        "cued_{k}_push_partial": [(base + 0.1, "tone_onset"), *push(base + 0.3, full=False),
                                  (base + 2.1, "tone_offset"), (base + 3.0, "reset_signal")],
        # uncued: no tone within ±0.5 s; partial = back closes before the front closes
        "uncued_{k}_nopush": [(base - 5.0, "reset_signal"), *push(base + 2.0)],
        "uncued_{k}_push_full": [(base - 5.0, "reset_signal"), *push(base + 0.2)],
        "uncued_{k}_push_partial": [(base - 5.0, "reset_signal"), *push(base + 0.2, full=False),
                                    *push(base + 3.0)],
    }
    for name, extra in cases.items():
        action = name.format(k=kind)
        out = LeverPush().trials(ev(*stim(base, kind), *extra))
        opto = out[out["action"].str.contains(kind)]
        assert rows(opto) == [(action, base, action.split(f"{kind}_", 1)[1])], action


def test_leverpush_opto_start_is_earliest_and_unresolved_reported():
    # the tone 0.2 s before the laser train: the trial starts at the tone
    out = LeverPush().trials(ev((5.0, "tone_onset"), (7.0, "tone_offset"), *stim(5.2, "laser"),
                                (8.0, "reset_signal")))
    assert rows(out[out["action"] == "cued_laser_nopush"]) == [("cued_laser_nopush", 5.0, "nopush")]
    # shutter and laser together: two trials on the same start
    out = LeverPush().trials(ev(*stim(5.0, "shutter"), *stim(5.05, "laser"), (9.0, "reset_signal")))
    assert rows(out) == [("uncued_laser_nopush", 5.0, "nopush"),
                         ("uncued_shutter_nopush", 5.0, "nopush")]
    # nothing after the stimulus: the outcome is unknown → reported, not labelled
    out = LeverPush().trials(ev(*stim(5.0, "shutter")))
    assert len(out) == 0
    assert "recording ended" in out.attrs["unlabelled"][0]["reason"]
    out = LeverPush().trials(ev((5.0, "shutter_onset")))
    assert "no shutter_offset" in out.attrs["unlabelled"][0]["reason"]
