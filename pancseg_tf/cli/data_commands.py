"""``pancseg info``, ``convert``, ``synth`` and ``prepare``: volumes and cohorts, no TensorFlow."""

from __future__ import annotations

import argparse
import json
import pathlib

from pancseg_tf.cli.options import config_from_args, volume_options
from pancseg_tf.errors import PancsegError


def cmd_info(args: argparse.Namespace) -> int:
    """Prints a volume's geometry and intensity range (`volume_summary`), as text or JSON."""
    from pancseg_tf.io import read_volume

    info = volume_summary(read_volume(args.path, **volume_options(args)))
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        # The last path component only: TCIA folder names above a series carry the study date.
        print(f"name         {pathlib.Path(args.path).name}")
        print(f"modality     {info['modality']}")
        print(f"shape        {' x '.join(str(s) for s in info['shape'])}")
        print(f"spacing_mm   {' x '.join(f'{s:.4g}' for s in info['spacing_mm'])}")
        print(f"orientation  {''.join(info['orientation'])}")
        print(f"dtype        {info['dtype']}")
        print(f"range        {info['min']:.6g} .. {info['max']:.6g}")
        print(f"sheared      {info['sheared']}")
        print("affine")
        for row in info["affine"]:
            print("  " + " ".join(f"{v:12.6f}" for v in row))
    return 0


def volume_summary(volume) -> dict:
    """Geometry and intensity facts of a volume, never a patient field."""
    import numpy as np

    return {
        "modality": volume.modality,
        "shape": list(volume.shape),
        "spacing_mm": [round(s, 6) for s in volume.spacing],
        "orientation": list(volume.orientation),
        "affine": np.round(volume.affine, 6).tolist(),
        "dtype": str(volume.array.dtype),
        "min": float(np.min(volume.array)),
        "max": float(np.max(volume.array)),
        "sheared": volume.is_sheared,
    }


def cmd_convert(args: argparse.Namespace) -> int:
    """Writes the input volume as NIfTI on its own grid; never over the input."""
    from pancseg_tf.io import read_volume, write_volume

    out = pathlib.Path(args.output)
    if not (out.name.endswith(".nii.gz") or out.name.endswith(".nii")):
        raise PancsegError(f"output must end in .nii.gz or .nii, got {out.name!r}")
    src = pathlib.Path(args.input)
    if src.exists() and out.resolve() == src.resolve():
        raise PancsegError(f"output {out} is the input: refusing to overwrite it")
    volume = read_volume(args.input, **volume_options(args))
    write_volume(volume, out)
    print(f"wrote {out} ({' x '.join(str(s) for s in volume.shape)}, {volume.array.dtype})")
    return 0


def cmd_synth(args: argparse.Namespace) -> int:
    """Writes a seeded synthetic cohort (`pancseg_tf.synthetic.make_cohort`)."""
    from pancseg_tf.synthetic import make_cohort

    if args.cases < 1:
        raise PancsegError(f"--cases must be >= 1, got {args.cases}")
    out = make_cohort(args.out, cases=args.cases, modality=args.modality, seed=args.seed)
    print(f"wrote a synthetic {args.modality.upper()} cohort of {args.cases} cases to {out}")
    return 0


def cmd_prepare(args: argparse.Namespace) -> int:
    """Prepares a cohort (`pancseg_tf.data.prepare.prepare_cohort`); says what it skipped."""
    from pancseg_tf.data.prepare import prepare_cohort

    if (args.num_shards is None) != (args.shard_index is None):
        raise PancsegError("--num-shards and --shard-index go together")
    index = prepare_cohort(
        args.cohort,
        args.out,
        config=config_from_args(args),
        format=args.format,
        workers=args.workers,
        skip_bad=args.skip_bad,
        num_shards=args.num_shards,
        shard_index=args.shard_index,
    )
    skipped = index.get("skipped", [])
    print(
        f"prepared {len(index.get('cases', []))} case(s) into {args.out}"
        + (f"; skipped {len(skipped)} (see index.json)" if skipped else "")
    )
    return 0
