"""The suspect-labels check (``appliance.models.check_frame``) on three data sets and
LightGBM models trained by the appliance's own ``train``: how often a batch with true
labels is held (false holds) and how often a batch with wrong labels is caught, per batch
size; and what one check costs beside its floor, the bare ``Booster.predict`` of the
batch's rows (one thread, as the check predicts; a batch over 20,000 rows is checked on a
seeded sample of that many).

Data sets:
- machines: the sample data (a skewed binary target, 6% failures; categorical machine,
  type and site; timestamps), v1 trained on machines_01.csv; true batches are drawn from
  machines_02.csv (resampled with replacement beyond its 1,500 rows);
- grades: multiclass (4 skewed classes), categorical features with rare values, nulls and
  a timestamp, from a seeded law;
- spend: regression with a skewed (log-normal) target and categorical features, from a
  seeded law.

Wrong labels: inverted (binary: 0 and 1 swapped; multiclass: each class renamed to the
next; regression: the target reflected around its mean) and shuffled (the labels of other
rows). Target: no false hold at any size. Wrong labels are caught as the evidence grows:
an inverted batch is worse than the trivial baseline, so it shows in a few dozen rows; a
shuffled one only makes the model useless, which takes hundreds to thousands of rows to
tell from noise (the rows of a skewed binary target carry little evidence each).

    .venv/bin/python bench/suspect_labels.py
"""

from __future__ import annotations

import statistics
import time
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import polars as pl

from appliance.core import parse
from appliance.features import to_matrix
from appliance.models import LoadedModel, check_frame, label_profile, train
from appliance.models.suspect import MAX_ROWS

ROOT = Path(__file__).resolve().parent.parent
SIZES = [30, 100, 300, 1_000, 10_000, 100_000]
TOLERANCE, Z = 0.5, 3.0


def seeds(n: int) -> int:
    return 200 if n <= 300 else 60 if n <= 1_000 else 12 if n <= 10_000 else 4


def grades(n: int, seed: int) -> pl.DataFrame:
    rng = np.random.default_rng(seed)
    school = rng.choice([f"s{i:02d}" for i in range(40)], n,
                        p=np.r_[np.full(10, 0.06), np.full(30, 0.4 / 30)])
    hours = rng.gamma(2.0, 3.0, n)
    absences = rng.poisson(3, n).astype(np.float64)
    absences[rng.uniform(size=n) < 0.08] = np.nan
    logits = np.stack([np.zeros(n), 0.25 * hours - 1.0,
                       0.45 * hours - 0.3 * np.nan_to_num(absences, nan=3) - 1.5,
                       0.6 * hours - 0.5 * np.nan_to_num(absences, nan=3) - 3.0
                       + 0.8 * (np.char.count(school.astype(str), "0") > 0)], axis=1)
    p = np.exp(logits - logits.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    y = (rng.uniform(size=(n, 1)) > np.cumsum(p, axis=1)).sum(axis=1)
    start = datetime(2025, 9, 1)
    return pl.DataFrame({
        "at": [start + timedelta(minutes=int(m)) for m in np.sort(rng.integers(0, 525_600, n))],
        "school": school, "hours": hours.round(2), "absences": absences,
        "grade": np.array(["fail", "pass", "merit", "distinction"])[y],
    }).with_columns(pl.col("absences").fill_nan(None))


def spend(n: int, seed: int) -> pl.DataFrame:
    rng = np.random.default_rng(seed)
    region = rng.choice(["north", "south", "east", "west", "islands"], n,
                        p=[0.3, 0.3, 0.2, 0.18, 0.02])
    age = rng.integers(18, 80, n)
    visits = rng.poisson(4, n)
    mu = 2.5 + 0.15 * visits + 0.01 * (age - 40) + 0.6 * (region == "islands")
    return pl.DataFrame({"region": region, "age": age, "visits": visits,
                         "spend": np.exp(mu + rng.normal(0, 0.5, n)).round(2)})


def machines(n: int, seed: int) -> pl.DataFrame:
    rows = pl.read_csv(ROOT / "sample_data/machines_02.csv", try_parse_dates=True)
    if n <= rows.height:
        return rows.sample(n, seed=seed)
    return rows.sample(n, with_replacement=True, seed=seed)


CASES = {
    "machines": ({"target": "failed_within_24h", "timestamp": "timestamp", "id": "reading_id"},
                 lambda: pl.read_csv(ROOT / "sample_data/machines_01.csv",
                                     try_parse_dates=True), machines),
    "grades": ({"target": "grade", "timestamp": "at"}, lambda: grades(6_000, 1),
               lambda n, s: grades(n, 1_000 + s)),
    "spend": ({"target": "spend"}, lambda: spend(6_000, 1), lambda n, s: spend(n, 1_000 + s)),
}


def wrong(frame: pl.DataFrame, target: str, kind: str, classes: list[str] | None,
          seed: int) -> pl.DataFrame:
    y = frame.get_column(target)
    if kind == "shuffled":
        return frame.with_columns(y.shuffle(seed=seed).alias(target))
    if y.dtype == pl.String:  # multiclass: each class renamed to the next
        nxt = dict(zip(classes or [], (classes or [])[1:] + (classes or [])[:1], strict=True))
        return frame.with_columns(y.replace_strict(nxt).alias(target))
    if y.n_unique() <= 2:
        return frame.with_columns((1 - y).alias(target))
    return frame.with_columns((2 * y.mean() - y).alias(target))


def model_for(config: dict, first: pl.DataFrame) -> LoadedModel:
    settings = parse({"pipelines": {"p": config}})
    candidate = train(first, settings.pipeline("p"), settings.train)
    meta = {"metrics": candidate.metrics, "baseline_metrics": candidate.baseline,
            "valid_rows": candidate.valid_rows, "label_check": label_profile(candidate)}
    return LoadedModel(pipeline="p", version=1, booster=candidate.booster,
                       spec=candidate.spec, meta=meta)


def median_seconds(fn, repeats: int = 7) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    print(f"one-sided tests at z = {Z:g} (Student's t under 1,000 rows), tolerance "
          f"{TOLERANCE:g} of the model's edge; share of batches held")
    header = f"{'data set':<9} {'labels':<9}" + "".join(f"{n:>9,}" for n in SIZES)
    for name, (config, first, draw) in CASES.items():
        model = model_for(config, first())
        target = config["target"]
        metric = model.meta["metrics"]
        print(f"\n{name}: {model.spec.task}, validation "
              + ", ".join(f"{k} {v:.3f}" for k, v in metric.items()
                          if k in ("auc", "log_loss", "rmse")))
        print(header)
        for kind in ("true", "inverted", "shuffled"):
            cells = []
            for n in SIZES:
                held = 0
                for s in range(seeds(n)):
                    batch = draw(n, s)
                    if kind != "true":
                        batch = wrong(batch, target, kind, model.spec.classes, s)
                    verdict = check_frame(model, batch, tolerance=TOLERANCE, z=Z)
                    held += verdict.suspect
                cells.append(f"{held / seeds(n):>9.1%}")
            print(f"{name:<9} {kind:<9}" + "".join(cells))
        for n in (100, 100_000):
            batch = draw(n, 99)
            x = to_matrix(batch, model.spec)
            ours = median_seconds(lambda b=batch, m=model: check_frame(
                m, b, tolerance=TOLERANCE, z=Z))
            floor = median_seconds(lambda x=x, m=model: m.booster.predict(x, num_threads=1))
            sampled = (f" (it scores a seeded sample of {MAX_ROWS:,})" if n > MAX_ROWS
                       else "")
            print(f"{name}: one check of {n:,} rows{sampled} {ours * 1000:.2f} ms, "
                  f"Booster.predict of all of them {floor * 1000:.2f} ms: {ours / floor:.2f}x")


if __name__ == "__main__":
    main()
