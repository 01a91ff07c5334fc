"""``pancseg export`` (a SavedModel for TF Serving) and ``pancseg query`` (its client)."""

from __future__ import annotations

import argparse

from pancseg_tf.cli.options import volume_options
from pancseg_tf.errors import PancsegError
from pancseg_tf.quiet_tensorflow import import_tensorflow_quietly


def cmd_export(args: argparse.Namespace) -> int:
    """Exports the model to the next free version folder (`pancseg_tf.serving.export`)."""
    if args.chunk is not None and args.chunk < 2:
        raise PancsegError(f"--chunk must be >= 2 slices, got {args.chunk}")
    config = None
    if args.config is not None:  # read before TensorFlow starts: config errors come at once
        from pancseg_tf.config import load_config

        config = load_config(args.config)
    import_tensorflow_quietly()
    from pancseg_tf.serving.export import export_model

    path = export_model(
        args.model,
        args.base,
        name=args.name,
        chunk=args.chunk,
        overlap=args.overlap,
        unsafe=args.unsafe,
        config=config,
    )
    print(f"exported to {path} (TF Serving model {args.name!r}, version {path.name})")
    return 0


def cmd_query(args: argparse.Namespace) -> int:
    """Segments one volume on a TF Serving server (`pancseg_tf.serving.client.query_file`)."""
    import_tensorflow_quietly()
    from pancseg_tf.serving.client import query_file

    result = query_file(
        args.input,
        args.output,
        server=args.server,
        rest=args.rest,
        model=args.model,
        version=args.version,
        timeout_s=args.timeout,
        max_request_bytes=int(args.max_request_mb * 1024 * 1024),
        **volume_options(args),
    )
    print(
        f"wrote {args.output} ({int(result.segmentation.mask.sum())} voxels; model "
        f"{result.served.name!r} version {result.served.version}; {result.chunks} chunks in "
        f"{result.requests} requests)"
    )
    return 0
