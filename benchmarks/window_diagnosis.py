"""Does a run's ConvLSTM hold over a whole volume, or only over windows like those it trained on?

For each stage-2 phase whose weights a run folder keeps (``backup/stage2_frozen`` and
``backup/stage2``: the last epoch of each phase) and for ``stage2.keras`` (the best), the model
segments the run's validation cases (never test cases: this is a development measurement, see
``benchmarks/PROTOCOL.md``) on the model grid, once in one pass over all slices and once in
overlapping chunks of each length asked for (``Segmenter(chunk=N)``, overlap ``N // 2``), and the
DSC against the prepared label is recorded per case, with the mask size and the highest
probability.

This is the measurement behind ``ContextualSegmenter.context_window``: prediction in chunks of
the training window (see the README's "Prediction" section).

Usage::

    python benchmarks/window_diagnosis.py RUN DATA --chunks 5 9 --json out.json
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

from bench_common import emit_json, provenance  # noqa: E402


def dice(mask, label) -> float:
    total = int(mask.sum()) + int(label.sum())
    return 2.0 * int((mask & label).sum()) / total if total else 1.0


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("run", type=pathlib.Path, help="a run folder of pancseg train")
    parser.add_argument("data", type=pathlib.Path, help="the run's prepared data")
    parser.add_argument("--chunks", type=int, nargs="+", default=[5, 9], help="chunk lengths")
    parser.add_argument("--cases", type=int, default=3, help="validation cases (default 3)")
    parser.add_argument("--json", default=None, help="write the result here too")
    args = parser.parse_args(argv)

    import numpy as np

    from pancseg_tf.config import load_config
    from pancseg_tf.data.pipeline import load_validation_volumes
    from pancseg_tf.inference import Segmenter, load_model
    from pancseg_tf.training.recipe import build_contextual

    cfg = load_config(args.run / "config.yaml")
    splits = json.loads((args.run / "splits.json").read_text())
    cases = splits["validation"][: args.cases]
    models = {}
    for phase in ("stage2_frozen", "stage2"):
        weights = args.run / "backup" / phase / "latest.weights.h5"
        if weights.is_file():
            model = build_contextual(cfg)
            model(np.zeros((1, cfg.data.window, *cfg.preprocess.size, 1), np.float32))
            model.load_weights(weights)
            models[f"last epoch of {phase}"] = model
    if (args.run / "stage2.keras").is_file():
        models["stage2.keras"] = load_model(args.run / "stage2.keras")
    volumes = list(load_validation_volumes(args.data, cases))
    rows = []
    for name, model in models.items():
        # chunk=None with context_window=None: one pass over the whole volume.
        model.context_window = None
        for chunk in [None, *args.chunks]:
            overlap = None if chunk is None else chunk // 2
            segmenter = Segmenter(model, cfg.preprocess, chunk=chunk, overlap=overlap)
            for volume in volumes:
                prob = segmenter.predict_model_grid(volume.normalized_image())
                mask, label = prob >= 0.5, volume.label > 0
                rows.append(
                    {
                        "model": name,
                        "chunk": chunk if chunk is not None else "one pass",
                        "case": volume.case_id,
                        "dsc_model_grid": round(dice(mask, label), 4),
                        "voxels": int(mask.sum()),
                        "label_voxels": int(label.sum()),
                        "max_probability": round(float(prob.max()), 4),
                    }
                )
                print(rows[-1], file=sys.stderr)
    result = {
        "what": "DSC on the model grid of the run's validation cases, one pass against chunks",
        "run": args.run.name,
        "window": cfg.data.window,
        "rows": rows,
        "provenance": provenance(args.run / "config.yaml", sys.argv if argv is None else argv),
    }
    emit_json(result, args.json)
    return result


if __name__ == "__main__":
    main()
