"""The outputs of one inference run, published together: never half-written, never mixed with an earlier run's.

Maps and ``scores.csv`` are written to a staging folder next to ``output_dir``; when the run completes the staging
folder replaces ``output_dir`` in two renames. A killed run leaves only the staging folder, which the next run
removes. The exit contract is the Deploy app's: the run fails only when nothing could be scored, or, with
``strict``, when anything failed; the outputs and the report are published first either way.
"""

from __future__ import annotations

import fnmatch
import json
import logging
import os
import shutil
from pathlib import Path

from ignite.engine import Engine, Events

from medad_monai.data.tolerant import FailureLog
from medad_monai.io import atomic_write_text

__all__ = ["InferenceRunError", "PartialInferenceError", "RunOutputs"]

logger = logging.getLogger("medad_monai")

MARKER = ".medad_outputs.json"
# what an inference run writes: a folder holding only these is an earlier run's and may be replaced
OUTPUT_PATTERNS = (MARKER, "scores.csv", "*_anomaly_map.nii.gz")


class InferenceRunError(RuntimeError):
    """No input could be scored; the report (``scores.csv`` with each file's reason) is published first."""


class PartialInferenceError(InferenceRunError):
    """``strict`` run with at least one failed input; every other input's outputs are published first."""


def _flag(value: bool | str) -> bool:
    """A boolean option as the command line may pass it (``True``, ``"true"``, ``"0"`` ...)."""
    if isinstance(value, str):
        text = value.strip().lower()
        if text not in ("1", "true", "yes", "on", "0", "false", "no", "off"):
            raise ValueError(f"--strict must be true or false, got {value!r}")
        return text in ("1", "true", "yes", "on")
    return bool(value)


def _is_earlier_output(folder: Path) -> bool:
    names = [p.name for p in folder.iterdir()]
    return all(p.is_file() for p in folder.iterdir()) and all(
        any(fnmatch.fnmatch(n, pat) for pat in OUTPUT_PATTERNS) for n in names
    )


class RunOutputs:
    """Stages an inference run's outputs and swaps them into ``output_dir`` when the run completes.

    Attach it after every handler that writes at ``COMPLETED`` (the score writer), so they write to the staging
    folder before it is published. The map saver and the score writer take :attr:`staging_dir` as their folder
    and the dataset reports into :attr:`failures`.

    Args:
        output_dir: where the run's outputs end up. It must not exist, be empty, or hold only an earlier run's
            outputs (``scores.csv``, ``*_anomaly_map.nii.gz``); anything else is refused before any work starts.
        strict: fail the run (after publishing) when any input failed.
    """

    def __init__(self, output_dir: str | os.PathLike, strict: bool | str = False) -> None:
        self.output_dir = Path(output_dir)
        self.strict = _flag(strict)
        self.staging = self.output_dir.parent / f".{self.output_dir.name}.partial"
        self.failures = FailureLog(self.staging / ".failures.jsonl")
        self.scored = 0

    @property
    def staging_dir(self) -> str:
        return str(self.staging)

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self.start)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._count)
        engine.add_event_handler(Events.COMPLETED, self.publish)

    def start(self, engine: Engine | None = None) -> None:
        """Refuse a foreign ``output_dir``; replace any staging folder a killed run left behind."""
        out = self.output_dir
        if out.exists() and not out.is_dir():
            raise NotADirectoryError(f"output_dir '{out}' is a file, not a folder")
        if out.is_dir() and any(out.iterdir()) and not _is_earlier_output(out):
            raise FileExistsError(
                f"output_dir '{out}' is not empty and holds more than an earlier inference run's outputs "
                f"(scores.csv, *_anomaly_map.nii.gz); choose a new or empty folder (nothing was written)"
            )
        if self.staging.exists():
            logger.warning(f"removing '{self.staging}', left by an interrupted run")
            shutil.rmtree(self.staging)
        self.staging.mkdir(parents=True)
        self.scored = 0

    def _count(self, engine: Engine) -> None:
        out = engine.state.output
        self.scored += len(out) if isinstance(out, list) else 1

    def publish(self, engine: Engine | None = None) -> None:
        """Swap the staged outputs in; then raise if nothing was scored, or (``strict``) anything failed."""
        failures = self.failures.entries()
        self.failures.clear()
        summary = {"scored": self.scored, "failed": len(failures), "failures": failures}
        atomic_write_text(json.dumps(summary, indent=2), self.staging / MARKER)
        out = self.output_dir
        old = out.parent / f".{out.name}.old-{os.getpid()}"
        if out.is_dir():
            os.replace(out, old)
        os.replace(self.staging, out)
        shutil.rmtree(old, ignore_errors=True)
        logger.info(f"{self.scored} image(s) scored, {len(failures)} failed: outputs in '{out}'")
        if self.scored == 0:
            first = f" (first: '{failures[0]['image']}': {failures[0]['error']})" if failures else ""
            raise InferenceRunError(f"no image could be scored{first}; every file's reason is in {out}/scores.csv")
        if failures and self.strict:
            names = ", ".join(f["image"] for f in failures[:5]) + (" ..." if len(failures) > 5 else "")
            raise PartialInferenceError(
                f"strict: {len(failures)} input(s) failed ({names}) while {self.scored} were scored; "
                f"reasons in {out}/scores.csv"
            )
