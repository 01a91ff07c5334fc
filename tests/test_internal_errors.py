"""An error nobody foresaw is one short line wherever it is reported, never an array dump.

`pancseg_tf.messages.error_summary` / `short_message` hold the one cut (the first line of the
message, at most `INTERNAL_MESSAGE_CHARS`); the command line's internal-error line, ``pancseg
prepare``'s skipped cases, Beam's failures file and failed-pipeline line, and ``pancseg
query``'s server errors all show such an error through them. The errors here are real:
TensorFlow's own error for an array that does not bind to a tf.function, which prints every
value of the array over dozens of lines, and a long answer of the stand-in model server.
"""

import json
import os
import re
import socket
import subprocess
import sys

import numpy as np
import pytest

from pancseg_tf.errors import PancsegError
from pancseg_tf.messages import INTERNAL_MESSAGE_CHARS, error_summary, short_message
from tests.test_predict import (
    pancseg,
    tiny_run,  # noqa: F401 - the module-scoped fixture
)

# Keras saving a model under NumPy 2 (not our code).
pytestmark = pytest.mark.filterwarnings(
    "ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning"
)


@pytest.fixture(scope="module")
def binding_error() -> TypeError:
    """TensorFlow's error for a (30, 30) array given to a tf.function of (None, 4): 4 kB."""
    import tensorflow as tf

    fn = tf.function(lambda x: x, input_signature=[tf.TensorSpec((None, 4), tf.float32)])
    try:
        fn(np.full((30, 30), 0.125, np.float32))  # under NumPy's summarising threshold
    except TypeError as err:
        return err
    raise AssertionError("TensorFlow bound a (30, 30) array to a (None, 4) signature")


def assert_short(text: str, limit: int = INTERNAL_MESSAGE_CHARS) -> None:
    """One line, at most ``limit`` characters of message, and no run of the array's values."""
    assert "\n" not in text and "\r" not in text, text
    assert len(text) <= limit + len("TypeError: "), (len(text), text)
    assert text.count("0.125") <= 4, text  # the dump held 900 of them


# === The helper ===


def test_the_binding_error_is_the_dump_the_cut_guards_against(binding_error):
    message = str(binding_error)
    assert len(message) > 1000 and message.count("\n") > 20 and message.count("0.125") == 900


def test_error_summary_keeps_type_and_first_line_cut(binding_error):
    summary = error_summary(binding_error)
    assert summary.startswith("TypeError: Binding inputs to tf.function failed")
    assert summary.endswith("…")
    assert len(summary) == len("TypeError: ") + INTERNAL_MESSAGE_CHARS
    assert_short(summary)


@pytest.mark.parametrize(
    "text, limit, expected",
    [
        ("short", 20, "short"),
        ("a line\nand the array below it", 20, "a line …"),
        ("\n\n  first words  \nmore", 20, "first words …"),
        ("x" * 30, 10, "x" * 9 + "…"),
        ("x" * 9 + "\nmore", 10, "x" * 9 + "…"),  # no room for " …": the cut's own mark
        ("x" * 8 + "\nmore", 10, "x" * 8 + " …"),
        ("a\x00b\tc", 20, "a\\x00b\\tc"),  # control characters escaped (`one_line`)
        ("cannot open /data/DOE_JOHN/ct.nii.gz: gone", 60, "cannot open ct.nii.gz: gone"),
        ("", 10, ""),
    ],
)
def test_short_message(text, limit, expected):
    assert short_message(text, limit) == expected
    assert len(short_message(text, limit)) <= limit


def test_show_replaces_paths_before_the_cut():
    # A path past the limit would be cut in its middle and no longer found.
    err = OSError(f"{'x' * 180} /data/DOE_JOHN_19600101/scan.nii.gz")
    shown = error_summary(err, show=lambda text: text.replace("/data/DOE_JOHN_19600101", "<in>"))
    assert shown == f"OSError: {'x' * 180} <in>/scan.nii.gz"
    assert error_summary(KeyError("spacing")) == "KeyError: 'spacing'"
    assert error_summary(ValueError()) == "ValueError"


def test_the_command_line_says_the_same(binding_error):
    from pancseg_tf.cli import INTERNAL_MESSAGE_CHARS as cli_chars
    from pancseg_tf.cli import internal_error_line

    assert cli_chars == INTERNAL_MESSAGE_CHARS
    line = internal_error_line(binding_error)
    assert line == (
        f"pancseg: error: internal error: {error_summary(binding_error)} "
        "(rerun with --debug for the traceback)"
    )


# === pancseg prepare: a case that fails unexpectedly ===


def test_prepare_reports_an_unexpected_case_error_short_and_without_paths(tmp_path, binding_error):
    """No real input makes prepare fail other than with a PancsegError (its readers and checks
    turn bad data into one), so the function that formats a failed case's texts is given the
    real TensorFlow error, with a real case of a synthetic cohort."""
    from pancseg_tf.config import Config
    from pancseg_tf.data.prepare import _Task, case_error
    from pancseg_tf.io.cohorts import discover_cohort
    from pancseg_tf.synthetic import make_cohort

    cohort = make_cohort(tmp_path / "PAT_19600101", cases=1, shape=(32, 32, 12), seed=3)
    case = discover_cohort(cohort)[0]
    task = _Task(case, str(tmp_path / "out"), Config(), "hash", str(cohort))

    texts = case_error(binding_error, task)
    assert texts["error"] == texts["public_error"] == error_summary(binding_error)
    assert_short(texts["error"])

    # A path of the case's own files becomes <image> in the index, any other its file name.
    err = FileNotFoundError(f"[Errno 2] No such file: '{case.image}'\n{'0.125, ' * 300}")
    texts = case_error(err, task)
    assert texts["public_error"] == "FileNotFoundError: [Errno 2] No such file: '<image>' …"
    assert texts["error"] == f"FileNotFoundError: [Errno 2] No such file: '{case.image.name}' …"
    assert "19600101" not in json.dumps(texts)

    # Ours is shown whole, on one line.
    long = PancsegError(f"label map holds values {list(range(100))}\nsecond line")
    texts = case_error(long, task)
    assert texts["error"] == " ".join(str(long).split())


# === Beam: a failed case and a failed pipeline ===


def test_beam_failures_file_holds_a_short_reason(tmp_path, binding_error):
    """A segmentation that raised TensorFlow's error (the handler's `SegmentationFailure`, as
    RunInference yields it) goes through the pipeline's WriteCase and summary on the
    DirectRunner: failures.tsv holds one short line."""
    import apache_beam as beam
    from apache_beam.ml.inference.base import PredictionResult

    from pancseg_tf.beam.handler import LoadedCase, SegmentationFailure
    from pancseg_tf.beam.pipeline import FAILED, CaseTask, WriteCase, write_summary

    source = tmp_path / "PAT_19600101" / "ct.nii.gz"
    task = CaseTask("ct", source)
    failed = PredictionResult(LoadedCase(task, None), SegmentationFailure(binding_error))
    out = tmp_path / "out"
    out.mkdir()
    with beam.Pipeline(runner="DirectRunner") as pipeline:
        written = (
            pipeline
            | beam.Create([failed])
            | beam.ParDo(WriteCase(str(out), False)).with_outputs(FAILED, main="written")
        )
        _ = (
            (written.written, written[FAILED])
            | beam.Flatten()
            | beam.combiners.ToList()
            | beam.Map(write_summary, out=str(out), run_id="test")
        )
    rows = (out / "failures.tsv").read_text().splitlines()
    assert rows[0] == "case\treason" and len(rows) == 2, rows
    case, reason = rows[1].split("\t")
    assert case == "ct" and reason == error_summary(binding_error)
    assert_short(reason)
    assert json.loads((out / "summary.json").read_text())["failed_cases"] == ["ct"]


def test_beam_failure_reason_of_ours_and_of_a_path(tmp_path):
    from pancseg_tf.beam.pipeline import MAX_REASON, CaseTask, failure_reason

    source = tmp_path / "PAT_19600101" / "ct.nii.gz"
    task = CaseTask("ct", source)
    ours = PancsegError(f"cannot read {source}: {'x' * 600}")
    reason = failure_reason(ours, task)
    assert reason.startswith("cannot read ct.nii.gz: xxx") and len(reason) == MAX_REASON
    denied = PermissionError(13, "Permission denied", str(source.parent / "other.nii.gz"))
    assert failure_reason(denied, task) == "PermissionError: [Errno 13] Permission denied: " + (
        "'other.nii.gz'"
    )


def test_a_failed_beam_pipeline_is_one_short_line(binding_error):
    """A step that raises TensorFlow's error fails a real DirectRunner pipeline; Beam wraps it in
    its own text, and the line ``pancseg predict --runner`` shows is short."""
    import apache_beam as beam

    from pancseg_tf.beam import _pipeline_error

    def step(_):
        raise TypeError(str(binding_error))

    with pytest.raises(Exception) as caught:  # noqa: PT011 - Beam's wrapper type varies
        with beam.Pipeline(runner="DirectRunner") as pipeline:
            _ = pipeline | beam.Create([1]) | beam.Map(step)
    assert str(binding_error)[:100] in str(caught.value)  # the dump, inside Beam's text
    line = _pipeline_error(caught.value)
    assert line.startswith("TypeError: Binding inputs to tf.function failed"), line
    assert_short(line)


# === pancseg query: a server's long answer ===

#: The client's error for a refused predict (gRPC, REST): the server's detail last.
REFUSED = re.compile(r".* refused [Pp]redict .*?: (INVALID_ARGUMENT|HTTP 400): (.*)")


def test_a_long_server_error_detail_is_cut(tmp_path_factory):
    """The stand-in server echoes the names it was sent in its refusal (as TF Serving does):
    a 3000-character input name comes back as a 2000-character detail, and the client's
    PancsegError keeps the start of it."""
    from pancseg_tf.serving import constants as names
    from pancseg_tf.serving.client import GrpcClient, RestClient
    from tests.serving import CHUNK, SIZE, shared_export, standin_server

    LocalModelServer = standin_server().LocalModelServer

    _, _, export = shared_export(tmp_path_factory)
    slices = np.zeros((1, CHUNK, *SIZE), np.int16)
    counts = np.array([CHUNK], np.int32)
    extra = "v" * 3000
    inputs = {names.SLICES: slices, names.SLICE_COUNT: counts, extra: counts}
    with LocalModelServer(export.parent.parent) as server:
        for client in (GrpcClient(server.grpc_target), RestClient(server.rest_target)):
            with client, pytest.raises(PancsegError) as caught:
                client.predict(inputs)
            message = str(caught.value)
            said = REFUSED.fullmatch(message)
            assert said is not None and "vvvvvvvvvv" in said[2], message
            assert "\n" not in message and message.endswith("…"), message
            assert len(said[2]) == INTERNAL_MESSAGE_CHARS, message  # 2000 characters, cut


# === pancseg predict: an input that is neither a file nor a folder ===


@pytest.mark.parametrize("kind", ["fifo", "socket"])
def test_predict_refuses_a_pipe_or_socket_in_one_line(tiny_run, tmp_path, kind):  # noqa: F811
    folder = tmp_path / "PAT_19600101"
    folder.mkdir()
    path = folder / f"some.{kind}"
    if kind == "fifo":
        os.mkfifo(path)
        said = "a named pipe"
        proc = pancseg("predict", tiny_run, path, "-o", tmp_path / "out")
    else:
        with socket.socket(socket.AF_UNIX) as listening:
            listening.bind(str(path))
            said = "a socket"
            proc = pancseg("predict", tiny_run, path, "-o", tmp_path / "out")
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert lines == [
        f"pancseg: error: input some.{kind} is neither a file nor a folder ({said}): expected "
        "a NIfTI file, a DICOM series folder, a folder of NIfTI files, a cohort folder or a CSV "
        "manifest"
    ], proc.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("command", ["info", "convert"])
@pytest.mark.parametrize("name", ["scan.nii.gz", "series"])
def test_info_and_convert_refuse_a_named_pipe_in_one_line(tmp_path, command, name):
    # Opened, a named pipe waits for a writer forever: it is refused before it is opened.
    path = tmp_path / name
    os.mkfifo(path)
    extra = [str(tmp_path / "out.nii.gz")] if command == "convert" else []
    # A short limit of its own: the failure this guards against is a wait without end.
    proc = subprocess.run(
        [sys.executable, "-m", "pancseg_tf.cli", command, str(path), *extra],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines() == [
        f"pancseg: error: {name} is neither a file nor a folder (a named pipe): expected a .nii "
        "or .nii.gz file or a folder of DICOM files"
    ]
    assert proc.stdout == "" and sorted(p.name for p in tmp_path.iterdir()) == [name]


def test_predict_inputs_names_a_device():
    from pancseg_tf.predict_io import predict_inputs

    with pytest.raises(PancsegError, match=r"input /dev/null is neither .* \(a character device\)"):
        predict_inputs(["/dev/null"])
