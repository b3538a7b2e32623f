"""`diffgrad reproduce`: every section from a tiny run, resume without recomputation, and a
verdict that follows from the numbers."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from diffgrad.lab import claims as cl
from diffgrad.lab import paper
from diffgrad.lab import reproduce as rp
from diffgrad.lab.report.stats import MeanCI

TINY = rp.Scale(
    name="tiny",
    regret_horizon=60,
    paper_seeds=1,
    paper_steps=4,
    standins=(("cifar10", "digits-cnn"),),
    fair_workloads=("digits-cnn",),
    fair_optimizers=("adam", "diffgrad"),
    fair_budget=1,
    fair_seeds=1,
    fair_steps=4,
    family_workloads=("digits-cnn",),
    scale_free_workloads=("digits-cnn",),
    notes=("tiny test scale",),
)


def _trial_count(out: Path) -> int:
    with sqlite3.connect(out / "results.db") as db:
        return db.execute("select count(*) from trials where state = 'COMPLETE'").fetchone()[0]


@pytest.mark.slow
def test_tiny_reproduce_has_every_section_and_resumes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(rp, "QUICK", TINY)
    report = rp.reproduce(quick=True, out_dir=tmp_path, progress=False)
    text = report.read_text()
    for heading in (
        "## Verdict",
        "## 1. The 1-D functions",
        "## 2. Regret",
        "## 3. Table I protocol",
        "## 4. Friction variants",
        "## 5. The friction ξ in training",
        "## 6. Fair comparison",
        "## 7. The diffGrad family",
        "## 8. Sensitivity to the loss scale",
        "## 9. A scale-free friction",
    ):
        assert heading in text, heading
    assert "offline stand-in" in text and "tiny test scale" in text
    images = [line.rsplit("](", 1)[1].rstrip(")") for line in text.splitlines() if line.startswith("![")]
    assert len(images) >= 10 and all((tmp_path / image).is_file() for image in images)
    assert (tmp_path / "report.html").read_text().count("<img") == len(images)
    assert (tmp_path / "plots" / "family" / "performance_profile.png").is_file()
    assert (tmp_path / "plots" / "friction-digits-cnn-bs128.png").is_file()
    assert (tmp_path / "plots" / "loss-scale-digits-cnn.png").is_file()
    assert (tmp_path / "plots" / "friction-scale-free-digits-cnn.png").is_file()
    assert "| Loss scale, digits-cnn: diffgrad-rms's test metric does not change when the loss is scaled |" in text
    summary = (tmp_path / "summary.md").read_text()
    assert "## Verdict" in summary and "## Headline numbers" in summary and "commit" in summary
    assert "![" not in summary  # short: no figures
    # With one seed there is no CI: no claim about the paper tables or the family can hold or fail.
    for member in rp.FAMILY_OPTIMIZERS:
        assert f"| Tuned, digits-cnn: {member} beats plain diffGrad | **inconclusive** |" in text, member
    for table in ("Table I on digits-cnn (stand-in for CIFAR-10)", "Table II on digits-cnn", "Table III on digits-cnn"):
        (row,) = [line for line in text.splitlines() if line.startswith(f"| {table}: ")]
        assert "| **inconclusive** |" in row, row
    # 14 Table I/II optimizers and 3 more activations, at 3 batch sizes; 2 optimizers x 2 runs tuned;
    # diffgrad, adam and 5 family members x 2 runs tuned; 6 optimizers of section 9 x 2 runs tuned;
    # adam, diffgrad and diffgrad-rms at 3 loss scales.
    runs = (14 + 3) * 3 + 2 * 2 + 7 * 2 + 6 * 2 + 3 * 3
    # Every diffGrad run of the paper protocol recorded its friction at each evaluation.
    records = [r for r in rp.load_records(f"sqlite:///{tmp_path / 'results.db'}") if r.optimizer == "diffgrad"]
    assert records and all(r.friction and r.friction[-1]["step"] == r.steps[-1] for r in records)
    assert _trial_count(tmp_path) == runs

    rp.reproduce(quick=True, out_dir=tmp_path, progress=False)
    assert _trial_count(tmp_path) == runs
    assert report.read_text() == text


def _cells(diffgrad: float, others: float, published: float, half_width: float = 0.5, n: int = 3) -> dict:
    cells = {}
    for bs in paper.BATCH_SIZES:
        for opt in rp.TABLE1_OPTIMIZERS:
            cells[(opt, bs)] = MeanCI(diffgrad if opt == "diffgrad" else others, half_width, n)
        cells[("diffgrad-published", bs)] = MeanCI(published, half_width, n)
        cells[("adam-half-lr", bs)] = MeanCI(published, half_width, n)
    return cells


def test_table1_verdict_follows_the_numbers() -> None:
    ds = rp.PaperDataset("cifar10", "digits-cnn", {}, True)
    held, fixed, twins = rp._table1_claims(ds, _cells(diffgrad=95.0, others=90.0, published=93.0), [])
    assert held.verdict == "held" and "batch 32: diffgrad 95 ± 0.5 (rank 1 of 7); runner-up" in held.evidence
    assert fixed.verdict == "held" and "diffgrad-published 93 ± 0.5" in fixed.evidence
    assert twins.verdict == "inconclusive"  # no runs to pair
    (lost, _, _) = rp._table1_claims(ds, _cells(diffgrad=89.0, others=90.0, published=93.0, half_width=0.1), [])
    assert lost.verdict == "did not hold"
    # Ahead by the mean alone settles nothing: overlapping CIs, or one seed (no CI).
    (close, _, _) = rp._table1_claims(ds, _cells(diffgrad=95.0, others=94.5, published=93.0), [])
    assert close.verdict == "inconclusive"
    (single, _, _) = rp._table1_claims(ds, _cells(diffgrad=95.0, others=90.0, published=93.0, n=1), [])
    assert single.verdict == "inconclusive" and "(n=1)" in single.evidence


def _table_cells(names: tuple[str, ...], per_batch: list[dict[str, tuple[float, float]]]) -> dict:
    """MeanCI cells (3 seeds) for ``names`` at each batch size, from (mean, half-width) per batch size."""
    return {(name, bs): MeanCI(*scores[name], 3) for bs, scores in zip(paper.BATCH_SIZES, per_batch) for name in names}


def test_table2_verdict_needs_a_variant_apart_at_every_batch_size() -> None:
    ds = rp.PaperDataset("cifar10", "digits-cnn", {}, True)
    names = ("diffgrad", *rp.FRICTION_OPTIMIZERS)

    def claim(dfc1_per_batch: list[float]) -> cl.Claim:
        per_batch = [{n: (90.0, 0.2) for n in names} | {"diffgrad-dfc1": (m, 0.2)} for m in dfc1_per_batch]
        return rp._table2_claim(ds, _table_cells(names, per_batch))

    assert claim([91.0, 91.0, 91.0]).verdict == "held"
    assert claim([91.0, 91.0, 90.1]).verdict == "inconclusive"  # one batch size within the CIs
    # Every variant below DFC at one batch size: DFC2–5 tie with DFC there, so only all-below refutes.
    per_batch = [{n: (90.0, 0.2) for n in names} | {"diffgrad-dfc1": (91.0, 0.2)} for _ in paper.BATCH_SIZES]
    per_batch[1] = {n: (89.0, 0.2) for n in names} | {"diffgrad": (90.0, 0.2)}
    lost = rp._table2_claim(ds, _table_cells(names, per_batch))
    assert lost.verdict == "did not hold" and "batch 64: best of the others" in lost.evidence


def test_table3_verdict_follows_the_numbers() -> None:
    ds = rp.PaperDataset("cifar10", "digits-cnn", {}, True)

    def claim(leaky: float, relu: float, half_width: float) -> cl.Claim:
        scores = {a: (85.0, half_width) for a in paper.ACTIVATIONS} | {
            "leaky_relu": (leaky, half_width),
            "relu": (relu, half_width),
        }
        return rp._table3_claim(ds, _table_cells(paper.ACTIVATIONS, [scores] * len(paper.BATCH_SIZES)))

    assert claim(94.0, 93.0, 0.1).verdict == "held"
    assert claim(93.0, 94.0, 0.1).verdict == "did not hold"
    close = claim(94.0, 93.9, 0.1)
    assert close.verdict == "inconclusive" and "CIs overlap" in close.evidence


def _ranking(scores: dict[str, tuple[float, float]], n: int = 3, higher_is_better: bool = True) -> cl.Ranking:
    return cl.Ranking("w", {o: MeanCI(mean, hw, n) for o, (mean, hw) in scores.items()}, higher_is_better)


def _family_verdicts(ranking: cl.Ranking) -> dict[str, cl.Claim]:
    """The family claims by member ("Tuned, w: MEMBER beats plain diffGrad")."""
    return {c.statement.removeprefix("Tuned, w: ").split()[0]: c for c in rp._family_claims(ranking)}


def test_family_verdicts_follow_the_numbers() -> None:
    scores = {
        "diffgrad": (0.80, 0.01),
        "diffgrad-rect": (0.85, 0.01),
        "diffgrad-norm": (0.70, 0.01),
        "diffgrad-inject": (0.81, 0.01),
        "adam": (0.90, 0.01),
    }
    claims = _family_verdicts(_ranking(scores))
    assert set(claims) == {"diffgrad-rect", "diffgrad-norm", "diffgrad-inject"}  # members only, not adam
    assert claims["diffgrad-rect"].verdict == "held" and "(rank 2 of 5)" in claims["diffgrad-rect"].evidence
    assert claims["diffgrad-norm"].verdict == "did not hold"
    assert claims["diffgrad-inject"].verdict == "inconclusive" and "CIs overlap" in claims["diffgrad-inject"].evidence
    # Lower is better: the same numbers swap better and worse.
    flipped = _family_verdicts(_ranking(scores, higher_is_better=False))
    assert flipped["diffgrad-rect"].verdict == "did not hold" and flipped["diffgrad-norm"].verdict == "held"
    (single,) = rp._family_claims(_ranking({"diffgrad": (0.5, float("nan")), "diffgrad-gc": (0.9, float("nan"))}, n=1))
    assert single.verdict == "inconclusive" and "too few seeds" in single.evidence


def test_fair_verdict_is_three_way() -> None:
    assert rp._fair_claim(_ranking({"diffgrad": (0.9, 0.04), "adam": (0.8, 0.05)})).verdict == "held"
    assert rp._fair_claim(_ranking({"diffgrad": (0.85, 0.05), "adam": (0.9, 0.05)})).verdict == "inconclusive"
    lost = rp._fair_claim(_ranking({"diffgrad": (0.5, 0.05), "sgdm": (0.6, 0.01), "adam": (0.9, 0.05)}))
    assert lost.verdict == "did not hold" and "(rank 3 of 3); best adam 0.9 ± 0.05" in lost.evidence
    # The best mean is not enough: it must be apart from every other optimizer's CI.
    ahead = rp._fair_claim(_ranking({"diffgrad": (0.985, 0.15), "sgdm": (0.97, 0.06), "adam": (0.5, 0.01)}))
    assert ahead.verdict == "inconclusive" and "(rank 1 of 3); runner-up sgdm 0.97 ± 0.06" in ahead.evidence


def test_regret_slope_reads_the_rate() -> None:
    ts = sorted({round(10 ** (k / 10)) for k in range(41)})  # log-spaced, as the report uses
    assert rp._slope(ts, [t**-0.5 for t in ts]) == pytest.approx(-0.5)
    assert rp._slope(ts, [1.0] * len(ts)) == pytest.approx(0.0)
    assert rp._slope(ts, [-1.0] * len(ts)) is None


def test_verdict_counts_claims() -> None:
    claims = [cl.Claim("a", "t", "held", "x"), cl.Claim("b", "t", "did not hold", "y"), cl.Claim("c", "t", "held", "z")]
    section = rp.verdict_section(claims)
    assert "2 claims held, 1 did not" in section.markdown
