"""``pancseg predict``: segment each input in this process (or hand them to Apache Beam).

The steps around the network are `pancseg_tf.predict_io`'s, shared with the Beam pipeline; here
is the loop over the cases: one log line per case, a failed case logged and counted (exit
status 1), a full disk stopping the run.
"""

from __future__ import annotations

import argparse
import logging
import pathlib
import time

from pancseg_tf.cli.errors import storage_full_error
from pancseg_tf.cli.options import dicom_options
from pancseg_tf.errors import PancsegError
from pancseg_tf.quiet_tensorflow import import_tensorflow_quietly

log = logging.getLogger("pancseg_tf")


def cmd_predict(args: argparse.Namespace) -> int:
    """Segments every case of ``args.inputs`` into ``args.output``.

    Returns:
        0 when every case was written, 1 when some failed.

    Raises:
        PancsegError: flags that do not go together, no input, an input the output format
            cannot take, a model that cannot load, or a full disk before any mask was written.
    """
    from pancseg_tf.io.cohorts import check_case_id
    from pancseg_tf.predict_io import (
        check_dicom_seg_inputs,
        check_outputs_spare_inputs,
        check_series_inputs,
        hide_found_paths,
        load_case_volume,
        load_dicom_case,
        predict_inputs,
        segmenter_options_from_args,
        write_case,
        written_summary,
    )

    read_options = dicom_options(args)  # --series, --allow-uneven
    if args.runner is not None:
        # Inputs may be globs or gs:// there; a DICOM SEG is checked and written, and each case
        # read with these options, by the same predict_io functions as below.
        from pancseg_tf.beam import predict_with_beam

        return predict_with_beam(args, read_options=read_options)
    dicom_seg = args.output_format == "dicom-seg"
    if args.pipeline_option:
        raise PancsegError("--pipeline-option needs --runner (a Beam runner to pass it to)")
    items = predict_inputs(args.inputs)
    if not items:
        raise PancsegError("no input volumes found")
    check_series_inputs(items, read_options["series"])
    if dicom_seg:
        check_dicom_seg_inputs(items)
    check_outputs_spare_inputs(
        items, args.output, probabilities=args.probabilities, dicom_seg=dicom_seg
    )
    options = segmenter_options_from_args(args)
    import_tensorflow_quietly()
    from pancseg_tf.inference import Segmenter

    segmenter = Segmenter.from_path(args.model, unsafe=args.unsafe, **options)
    out = pathlib.Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    failed = 0
    for i, (name, source) in enumerate(items, start=1):
        start = time.monotonic()
        try:
            case = check_case_id(name)  # a file name inside the output folder
            headers = None
            if dicom_seg:
                volume, headers = load_dicom_case(source, **read_options)
            else:
                volume = load_case_volume(source, **read_options)
            result = segmenter.segment(volume)
            # A case is written whole or not at all: no mask without the probabilities asked for.
            write_case(result, volume, out, case, probabilities=args.probabilities, headers=headers)
            log.info(
                "[%d/%d] %s: %d voxels (%.1f s)",
                i,
                len(items),
                case,
                int(result.mask.sum()),
                time.monotonic() - start,
            )
        except PancsegError as err:
            failed += 1
            message = hide_found_paths(str(err), source)
            full = storage_full_error(err)
            if full is not None and failed == i:
                raise PancsegError(f"{message} (no mask written)") from None
            shown = name if name.isprintable() else repr(name)  # a newline would split the line
            log.error("[%d/%d] %s failed: %s", i, len(items), shown, message)
            if full is not None:
                # Every later case would fail the same way, after its whole computation.
                log.error(
                    "error: the output is full (%s): stopped with %d case(s) not attempted",
                    full.strerror,
                    len(items) - i,
                )
                break
    print(written_summary(i - failed, len(items), out, dicom_seg=dicom_seg))
    return 1 if failed else 0
