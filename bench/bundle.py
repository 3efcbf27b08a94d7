"""Model bundles: export, verify and import of a 1,000-tree model against a floor of bare
``tarfile`` plus SHA-256 hashing of the same files.

One LightGBM model of 1,000 trees (31 leaves, 20 features, 2 of them categorical) is
registered in a state directory (box A). Then, each K times, median reported:

  export   (a) floor: write the same five files into a gzip tar in memory and hash each;
           (b) ``export_bundle``: read the registered files checking their recorded hashes,
               the manifest of digests, the Ed25519 signature, the gzip tar.
  verify   (a) floor: read the gzip tar back, hash each member;
           (b) the import's checks without registering: bounded unpack refusing unsafe
               members, the signature against the trusted keys, the digests.
  import   (a) floor: the verify floor, then write model.txt and model.json to a folder
               (no fsync);
           (b) ``ModelImporter.import_bytes`` on box B: the checks above, LightGBM parsing
               the model, the schema check, a warm load as it would serve, registering the
               version (fsynced files, SQLite), and the policy (``manual``: it stays a
               candidate, so the gate's scoring is not timed).

The import's part beyond the floor is mostly LightGBM parsing and warming the 1,000
trees (printed on its own: ``lgb.Booster(model_str=...)``), which the floor never does
and an import can't skip: a model the installed LightGBM can't read or serve must be
refused before it is registered.

Run: ``.venv/bin/python bench/bundle.py [--runs K] [--trees N]``.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import shutil
import statistics
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import lightgbm as lgb
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from appliance.core import StateDir, parse  # noqa: E402
from appliance.features import Feature, FeatureSpec, booster_feature_names  # noqa: E402
from appliance.models import (  # noqa: E402
    LiveModels,
    ModelImporter,
    PolicyParts,
    Production,
    Registry,
    export_bundle,
    generate_keys,
    load_private_key,
    signing,
)
from appliance.models import bundle as b  # noqa: E402
from appliance.store import Events, Store  # noqa: E402

PIPELINE = "bench"


def make_model(trees: int) -> tuple[bytes, dict]:
    rng = np.random.default_rng(3)
    n, k = 20_000, 20
    x = rng.normal(size=(n, k))
    x[:, 18] = rng.integers(0, 12, n)
    x[:, 19] = rng.integers(0, 40, n)
    y = (x[:, 0] + x[:, 1] * x[:, 2] + 0.3 * (x[:, 18] > 5) + rng.normal(size=n) > 0.5)
    names = [f"f{i:02d}" for i in range(18)] + ["site", "kind"]
    booster = lgb.train({"objective": "binary", "num_leaves": 31, "learning_rate": 0.05,
                         "verbose": -1, "num_threads": 2, "min_data_in_leaf": 20},
                        lgb.Dataset(x, y.astype(int), feature_name=booster_feature_names(names),
                                    categorical_feature=[18, 19]), num_boost_round=trees)
    features = [Feature(name=nm, kind="numeric", dtype="Float64") for nm in names[:18]]
    features += [Feature(name="site", kind="categorical", dtype="String",
                         categories=[f"s{i}" for i in range(12)]),
                 Feature(name="kind", kind="categorical", dtype="String",
                         categories=[f"k{i}" for i in range(40)])]
    spec = FeatureSpec(task="binary", target="target", classes=[0, 1], features=features)
    import msgspec

    meta = {"task": "binary", "spec": msgspec.to_builtins(spec), "metrics": {"auc": 0.9},
            "baseline_metrics": {}, "params": {}, "feature_importance": {},
            "lightgbm_feature_names": booster.feature_name(), "reference": None,
            "holdout": None}
    return booster.model_to_string().encode(), meta


def box(root: Path, policy: str = "manual"):
    state = StateDir(root)
    state.create()
    store = Store.open(state.db)
    settings = parse({"pipelines": {PIPELINE: {"promotion": {"policy": policy}}}})
    events = Events(store)
    registry = Registry(state, store)
    production = Production(store, registry, events, LiveModels())
    return state, store, settings, registry, ModelImporter(
        PolicyParts(state, store, events, settings, production), registry)


def floor_pack(files: dict[str, bytes]) -> bytes:
    digests = {n: hashlib.sha256(d).hexdigest() for n, d in files.items()}
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz", compresslevel=6) as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    assert digests
    return out.getvalue()


def floor_read(data: bytes) -> dict[str, bytes]:
    files = {}
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        for m in tar:
            files[m.name] = tar.extractfile(m).read()  # type: ignore[union-attr]
            hashlib.sha256(files[m.name]).hexdigest()
    return files


def timed(fn, runs: int) -> tuple[float, object]:
    times, value = [], None
    for _ in range(runs):
        t = time.perf_counter()
        value = fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), value


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--trees", type=int, default=1000)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-bundle-"))
    try:
        model_text, meta = make_model(args.trees)
        _, a_store, a_settings, a_registry, _ = box(tmp / "a")
        a_store.ensure_pipeline(PIPELINE)
        record = a_registry.register_files(PIPELINE, model_text, meta, {"trained_at": "now"})
        keys = generate_keys(tmp / "keys")
        private = load_private_key(keys.private_path)
        trees = model_text.count(b"\nTree=")
        print(f"model: {trees} trees, model.txt {len(model_text) / 1e6:.2f} MB")

        t_export, bundle = timed(lambda: export_bundle(
            a_store, a_registry, a_settings, PIPELINE, record.version, private)[0], args.runs)
        files = {n: d for n, d in floor_read(bundle).items() if n in b.CONTENT}
        f_export, floor_bundle = timed(lambda: floor_pack(files), args.runs)
        print(f"bundle: {len(bundle) / 1e6:.2f} MB (floor's tar.gz {len(floor_bundle) / 1e6:.2f}"
              " MB)")

        trusted = tmp / "trusted"
        trusted.mkdir()
        shutil.copy(keys.public_path, trusted / "a.pub")

        def verify() -> None:
            u = b.unpack(bundle, 512 << 20)
            signing.verify(u.signature or {}, u.manifest_bytes, trusted)
            b.check_digests(u)

        t_verify, _ = timed(verify, args.runs)
        f_verify, _ = timed(lambda: floor_read(floor_bundle), args.runs)

        b_state, b_store, _, _, importer = box(tmp / "b")
        b_store.ensure_pipeline(PIPELINE)
        shutil.copytree(trusted, b_state.root / "trusted_keys")
        t_import, result = timed(lambda: importer.import_bytes(bundle, PIPELINE, via="bench"),
                                 args.runs)
        assert result.stage == "candidate", result  # type: ignore[union-attr]

        out_dir = tmp / "floor_out"

        def floor_import() -> None:
            got = floor_read(floor_bundle)
            out_dir.mkdir(exist_ok=True)
            (out_dir / "model.txt").write_bytes(got["model.txt"])
            (out_dir / "model.json").write_bytes(got["model.json"])

        f_import, _ = timed(floor_import, args.runs)
        t_parse, _ = timed(lambda: lgb.Booster(model_str=model_text.decode()), args.runs)

        print(f"{'':8} {'floor ms':>10} {'appliance ms':>13} {'ratio':>7}")
        for name, f, t in (("export", f_export, t_export), ("verify", f_verify, t_verify),
                           ("import", f_import, t_import)):
            print(f"{name:8} {f * 1e3:10.1f} {t * 1e3:13.1f} {t / f:7.2f}x")
        print(f"of the import: LightGBM parsing the model alone {t_parse * 1e3:.1f} ms "
              f"(import minus parsing: {(t_import - t_parse) / f_import:.2f}x the floor)")
        a_store.close()
        b_store.close()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
