"""What a model file carries beyond its weights: its run's config, inside the ``.keras`` archive.

A ``.keras`` file is a zip archive; Keras reads its ``config.json``, ``metadata.json`` and
``model.weights.h5`` and ignores other members. Every model the package writes carries one
more member, ``pancseg.json`` (the *model card*): the run's resolved config as ``config.yaml``
holds it (preprocessing with modality, spacing, plane size, HU window or MRI percentiles and
label values; threshold and post-processing; the training settings) with its ``provenance``
block, and the package version that wrote it. So a ``model.keras`` or ``stage1.keras`` copied
anywhere segments exactly like its run folder.

Where `describe_model` takes a model's config from, first found wins:

1. the config the user gives (``--config``; for a file made elsewhere);
2. the card inside the file;
3. a ``config.yaml`` beside the file or one folder up (runs written before cards);
4. nothing: refused in one line naming what is missing. There is no silent default.

No TensorFlow here: reading a card is reading a zip member.

Example:
    >>> description = describe_model(pathlib.Path("copied/model.keras"))
    >>> description.config.preprocess.size, description.source
    ((128, 128), 'card')
"""

from __future__ import annotations

import dataclasses
import json
import logging
import pathlib
import zipfile
from typing import Any

from pancseg_tf.config import Config, config_from_dict, load_config
from pancseg_tf.errors import PancsegError

log = logging.getLogger(__name__)

#: The archive member that holds the card.
CARD_MEMBER = "pancseg.json"
#: The card's ``format`` value; a card of another format is refused.
CARD_FORMAT = "pancseg-model-card/1"
#: The run folder's resolved config (written by the trainer), the card's source.
RUN_CONFIG = "config.yaml"


@dataclasses.dataclass(frozen=True)
class ModelDescription:
    """What segmentation needs of a model besides its weights.

    Attributes:
        config: the run's config (preprocessing and post-processing are what inference reads).
        provenance: the run's ``provenance`` block (package version, data index hash, seed,
            post-processing scores), scalars and mappings as YAML gave them.
        source: where it came from: ``"given"``, ``"card"`` or ``"config.yaml"``.
    """

    config: Config
    provenance: dict[str, Any]
    source: str


def card_from_run_config(data: dict[str, Any]) -> dict[str, Any]:
    """The card for a run whose ``config.yaml`` holds ``data`` (the mapping YAML gives)."""
    from pancseg_tf._version import __version__

    return {"format": CARD_FORMAT, "pancseg_version": __version__, "config": data}


def run_config_card(run_dir: pathlib.Path) -> dict[str, Any] | None:
    """The card of the run folder ``run_dir`` (from its ``config.yaml``), or None without one."""
    import yaml

    path = pathlib.Path(run_dir) / RUN_CONFIG
    if not path.is_file():
        return None
    data = yaml.safe_load(path.read_text())
    return card_from_run_config(data) if isinstance(data, dict) else None


def read_card(path: pathlib.Path) -> dict[str, Any] | None:
    """The card inside the ``.keras`` file at ``path``, or None when it has none.

    Raises:
        PancsegError: the file is no zip archive, or its card is unreadable or of another format.
    """
    path = pathlib.Path(path)
    try:
        with zipfile.ZipFile(path) as archive:
            if CARD_MEMBER not in archive.namelist():
                return None
            raw = archive.read(CARD_MEMBER)
    except (zipfile.BadZipFile, OSError) as err:
        raise PancsegError(f"cannot read {path.name} as a .keras archive: {err}") from None
    try:
        card = json.loads(raw)
    except ValueError:
        raise PancsegError(f"the model card in {path.name} is not valid JSON") from None
    if not isinstance(card, dict) or card.get("format") != CARD_FORMAT:
        found = card.get("format") if isinstance(card, dict) else type(card).__name__
        raise PancsegError(
            f"the model card in {path.name} has format {found!r}, expected {CARD_FORMAT!r} "
            "(written by a newer pancseg_tf?)"
        )
    if not isinstance(card.get("config"), dict):
        raise PancsegError(f"the model card in {path.name} holds no config")
    return card


def write_card(path: pathlib.Path, card: dict[str, Any]) -> None:
    """Puts ``card`` into the ``.keras`` file at ``path``, replacing any card it holds.

    A file without a card gets the member appended (the fresh temporary file of
    `save_model_atomic`); a file with one is rewritten under a temporary name and renamed,
    so a failure leaves the old file whole.
    """
    from pancseg_tf.atomic import replacing

    path = pathlib.Path(path)
    text = json.dumps(card, indent=2, sort_keys=True)
    with zipfile.ZipFile(path) as archive:
        has_card = CARD_MEMBER in archive.namelist()
    if not has_card:
        with zipfile.ZipFile(path, "a", compression=zipfile.ZIP_DEFLATED) as archive:
            archive.writestr(CARD_MEMBER, text)
        return
    with (
        zipfile.ZipFile(path) as source,
        replacing(path, keep_suffix=True) as tmp,
        zipfile.ZipFile(tmp, "w") as target,
    ):
        for info in source.infolist():
            if info.filename != CARD_MEMBER:
                target.writestr(info, source.read(info))
        target.writestr(CARD_MEMBER, text, compress_type=zipfile.ZIP_DEFLATED)


def _description(data: dict[str, Any], source: str, where: str) -> ModelDescription:
    provenance = data.get("provenance")
    try:
        config = config_from_dict(data)
    except PancsegError as err:
        raise PancsegError(f"the config in {where} is not valid: {err}") from None
    provenance = dict(provenance) if isinstance(provenance, dict) else {}
    return ModelDescription(config, provenance, source)


def describe_model(
    model_path: pathlib.Path, config: str | pathlib.Path | Config | None = None
) -> ModelDescription:
    """The config a ``.keras`` model segments with (see the module's order).

    Args:
        model_path: the ``.keras`` file (see `pancseg_tf.inference.resolve_model_path`).
        config: a config the user gives (a YAML path, a shipped name or a `Config`); it wins
            over the card, with one log line.

    Raises:
        PancsegError: no config is given, the file has no card and no ``config.yaml`` is
            beside it; or the card or the config is unreadable.
    """
    model_path = pathlib.Path(model_path)
    if config is not None:
        cfg = config if isinstance(config, Config) else load_config(config)
        log.info("%s: preprocessing and post-processing from the given config", model_path.name)
        return ModelDescription(cfg, {}, "given")
    card = read_card(model_path)
    if card is not None:
        return _description(card["config"], "card", f"{model_path.name}'s model card")
    for candidate in (model_path.parent / RUN_CONFIG, model_path.parent.parent / RUN_CONFIG):
        if candidate.is_file():
            import yaml

            log.info("%s carries no model card: using %s beside it", model_path.name, RUN_CONFIG)
            data = yaml.safe_load(candidate.read_text()) or {}
            if not isinstance(data, dict):
                raise PancsegError(f"{candidate.name} beside {model_path.name} is no mapping")
            return _description(data, RUN_CONFIG, f"{candidate.parent.name}/{candidate.name}")
    raise PancsegError(
        f"{model_path.name} carries no pancseg model card (modality, preprocessing, threshold, "
        f"post-processing) and no {RUN_CONFIG} is beside it: give the config it was trained "
        "with (--config FILE)"
    )
