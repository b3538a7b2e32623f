"""Trajectories and other artifacts: computed once, kept in the database, drawn by the report."""

from __future__ import annotations

from pathlib import Path

import pytest

from diffgrad.lab import trajectories
from diffgrad.lab.report import trajectory_sections
from diffgrad.lab.storage import artifact, load_artifacts


def test_artifact_is_computed_once_and_read_back(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    calls = []
    for _ in range(2):
        value = artifact(url, "curve/a", lambda: calls.append(1) or [1.0, 0.5])
    assert value == [1.0, 0.5] and len(calls) == 1
    artifact(url, "other/b", lambda: 3)
    assert load_artifacts(url, "curve/") == {"curve/a": [1.0, 0.5]}


def test_recorded_trajectories_feed_the_report(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    monkeypatch.setattr(trajectories, "STANDARD", {"F1": {"steps": 30, "lr": 0.1}, "beale": {"steps": 20, "lr": 0.05}})
    trajectories.record_trajectories(url, ["adam", "diffgrad"])
    stored = load_artifacts(url, trajectories.PREFIX)
    assert len(stored) == 4
    f1 = stored[trajectories.trajectory_key("F1", "diffgrad", 30, {"lr": 0.1})]
    assert len(f1["xs"]) == 31 and f1["xs"][0] == [-1.0] and f1["optimizer"] == "diffgrad"

    sections = trajectory_sections(list(stored.values()), tmp_path / "plots")
    assert len(sections) == 1 and len(sections[0].images) == 2
    assert all(Path(image.path).is_file() for image in sections[0].images)
