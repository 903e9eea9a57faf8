"""The ``medad-monai`` command (python-fire): demo data, the D²4FAD grid, the anomalib comparison and benchmark, the
HTML report of an evaluation, versions."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import fire

from medad_monai.data.demo import DEMO_DOMAINS, generate_demo_data
from medad_monai.provenance import provenance

__all__ = ["main"]

_DEMO_DOMAIN_LIST = ",".join(DEMO_DOMAINS)


class Commands:
    """medad-monai: medical image anomaly detection with MONAI bundles."""

    def demo_data(self, out: str, domains: str | list[str] | None = None, seed: int = 0) -> None:
        """Write the embedded demo dataset (every domain, or ``--domains brain_mr,chest_xray``) under ``out``."""
        if isinstance(domains, str):
            domains = [d.strip() for d in domains.split(",") if d.strip()]
        unknown = sorted(set(domains or []) - set(DEMO_DOMAINS))
        if unknown:
            raise SystemExit(f"unknown demo domain(s) {unknown}; available: {sorted(DEMO_DOMAINS)}")
        paths = generate_demo_data(out, domains, seed=seed)
        for p in paths:
            print(p)

    def d24fad_grid(
        self,
        out: str = "runs/d24fad-grid",
        datasets: str | list[str] | None = None,
        targets: str | list[str] | None = None,
        shots: str | int | list[int] = "2,4,8",
        epochs: int | None = None,
        epoch_length: int | None = None,
        batch_size: int | None = None,
        image_size: int | None = None,
        teacher_weights: str | None = None,
        seed: int = 0,
        keep_models: bool = False,
    ) -> None:
        """D²4FAD leave-one-dataset-out over every target and K (default 2,4,8): writes results.md/.csv in ``out``.

        Lists are comma separated: ``--datasets`` (default: the five demo domains), ``--targets brain_mr,fundus``
        (a bare demo domain name means ``demo:<name>``), ``--shots 2,4``. Unset training options keep the bundle's
        defaults; ``--epoch_length 0`` means full epochs. Paper settings: ``--epochs 70 --image_size 128
        --batch_size 16 --epoch_length 0 --teacher_weights imagenet``.
        """
        import logging

        from medad_monai.comparison.d24fad_grid import parse_list, run_grid

        logging.basicConfig(level=logging.INFO, format="%(asctime)s - %(name)s - %(levelname)s - %(message)s")

        overrides: dict[str, object] = {}
        for key, value in (
            ("epochs", epochs),
            ("batch_size", batch_size),
            ("image_size", image_size),
            ("teacher_weights", teacher_weights),
        ):
            if value is not None:
                overrides[key] = value
        if epoch_length is not None:
            overrides["epoch_length"] = int(epoch_length) or None

        def demo(names: list[str] | None) -> list[str] | None:
            return None if names is None else [f"demo:{t}" if t in DEMO_DOMAINS else t for t in names]

        all_sets = demo(parse_list(datasets))
        picked = demo(parse_list(targets))
        run_grid(
            out,
            datasets=all_sets,
            targets=picked,
            shots=[int(k) for k in parse_list(shots) or []] or None,
            seed=seed,
            keep_models=keep_models,
            **overrides,
        )
        print(Path(out, "results.md").read_text())

    def compare_anomalib(
        self,
        bundle: str = "pdd",
        out: str = "runs/compare-anomalib",
        dataset: str | None = None,
        methods: str | list[str] = "bundle,reverse_distillation,patchcore",
        image_size: int | None = None,
        epochs: int | None = None,
        rd_epochs: int = 20,
        teacher_weights: str = "random",
        batch_size: int = 8,
        seed: int = 0,
        device: str = "cpu",
        threads: int = 0,
        feature_cache: bool = True,
    ) -> None:
        """Compare a bundle with anomalib's reverse distillation and PatchCore on the same data and machine.

        Each method is fitted on the bundle's training normals (a few-shot bundle: the same K target normals),
        thresholded on normals outside the test split and tested on the same test split, in its own process;
        ``out`` gets results.md/.csv/.json (AUROC, AP, F1-max, sensitivity/specificity at the threshold, fit time,
        ms/image, peak memory, ratios to the bundle), roc.png and score_histograms.png. ``--dataset`` is a folder
        or ``demo:<domain>`` (a bare demo domain name works too); ``--teacher_weights imagenet`` gives every
        method torchvision's ImageNet WideResNet50-2. ``--feature_cache false`` recomputes the frozen networks'
        features every epoch (default: kept after the first; the same results). Needs ``pip install -e '.[anomalib]'``.
        """
        import logging

        from medad_monai.comparison import compare_with_anomalib
        from medad_monai.comparison.d24fad_grid import parse_list

        logging.basicConfig(level=logging.INFO, format="%(asctime)s - %(name)s - %(levelname)s - %(message)s")
        if dataset in DEMO_DOMAINS:
            dataset = f"demo:{dataset}"
        compare_with_anomalib(
            bundle,
            out,
            dataset=dataset,
            methods=parse_list(methods) or [],
            image_size=image_size,
            epochs=epochs,
            rd_epochs=rd_epochs,
            teacher_weights=teacher_weights,
            batch_size=batch_size,
            seed=seed,
            device=device,
            threads=threads,
            feature_cache=feature_cache,
        )
        print(Path(out, "results.md").read_text())

    def benchmark(
        self,
        out: str = "runs/benchmark",
        bundles: str | list[str] = "ddad,d24fad,pdd",
        domains: str | list[str] = _DEMO_DOMAIN_LIST,
        seeds: str | int | list[int] = 0,
        rd_epochs: int = 20,
        teacher_weights: str = "random",
        batch_size: int = 8,
        threads: int = 0,
        device: str = "cpu",
        resume: bool = False,
        feature_cache: bool = True,
        jobs: int = 2,
    ) -> None:
        """The accuracy table: every bundle (at its defaults), anomalib's RD and PatchCore on every demo domain.

        One compare-anomalib cell per bundle, domain and seed in ``out/<bundle>/<domain>/seed<k>/`` (D²4FAD
        leave-one-domain-out: trained on the other domains, K normals of the target); each baseline is fitted once
        and shared by the cells with the same data (``out/baselines/``). ``out`` gets results.md (one table per
        bundle: image AUROC, AP, pixel AUROC, fit s, ms/image per method and domain, a mean row; mean ± std over
        ``--seeds 0,1,2``), results.csv, results.json and benchmark.png. ``--resume`` keeps the cells and baselines
        an earlier run in ``out`` finished with the same settings. ``--feature_cache false`` recomputes the frozen
        networks' features every epoch (default: kept after the first, the same results). ``--jobs 2`` (default)
        runs two cells at a time with ``cpu_count // 2`` threads each; ``--jobs 1`` measures each method's costs
        alone. Exits non-zero if a run
        failed (named in the report). Needs ``pip install -e '.[anomalib]'``.
        """
        import logging

        from medad_monai.comparison.benchmark import run_benchmark

        logging.basicConfig(level=logging.INFO, format="%(asctime)s - %(name)s - %(levelname)s - %(message)s")
        try:
            run_benchmark(
                out,
                bundles=bundles,
                domains=domains,
                seeds=seeds,
                rd_epochs=rd_epochs,
                teacher_weights=teacher_weights,
                batch_size=batch_size,
                device=device,
                threads=threads,
                resume=resume,
                feature_cache=feature_cache,
                jobs=jobs,
            )
        finally:  # the table also when a run failed (marked there), before the error
            report = Path(out, "results.md")
            if report.is_file():
                print(report.read_text())

    def report(self, run_dir: str, out: str | None = None, resamples: int = 1000) -> None:
        """Write the HTML report of an evaluation folder (the bundle's ``eval/``) and print its path.

        One self-contained page (default ``RUN_DIR/report.html``; ``--out FILE`` elsewhere): metrics with 95%
        intervals, operating points, score comparisons, pixel metrics, ROC and precision-recall curves with bootstrap
        bands (``--resamples``), score histograms with the threshold, the threshold's calibration, the galleries of
        the most confident errors (when the evaluation wrote ``gallery/``) and the provenance. Plots are embedded;
        the page loads nothing from a network.
        """
        from medad_monai.html_report import write_html_report

        try:
            path = write_html_report(run_dir, out, resamples=resamples)
        except (FileNotFoundError, ValueError) as err:  # a wrong folder is the user's to fix: the message, no trace
            raise SystemExit(f"medad-monai report: {err}") from err
        print(path)

    def demo_volumes(
        self,
        out: str,
        domain: str = "head_ct",
        subjects: str | int = "0-7",
        lesion: bool = False,
        size: int = 128,
        slices: int = 32,
    ) -> None:
        """Write 3D demo volumes of ``--subjects`` (``0-7``, ``100,101``) of ``--domain`` under ``out``: the normal
        volume of each subject (``--lesion``: the lesion volume and its mask too) as NIfTI, ``--size`` pixels square
        and ``--slices`` deep. Fixtures to try the volume serving and ``calibrate_volumes`` with, not a benchmark."""
        from medad_monai.data.demo_volumes import VOLUME_DOMAINS, write_demo_subjects

        if domain not in VOLUME_DOMAINS:
            raise SystemExit(f"no 3D demo for domain {domain!r}; available: {sorted(VOLUME_DOMAINS)}")
        for p in write_demo_subjects(out, domain, _int_list(subjects), lesion, size, slices):
            print(p)

    def calibrate_volumes(
        self,
        bundle: str,
        *normals: str,
        quantile: float = 0.95,
        axis: int = 2,
        volume_reduction: str = "max",
        top_k: int = 3,
        min_relative_body: float = 0.9,
        batch_size: int = 16,
        **overrides: object,
    ) -> None:
        """Calibrate ``bundle``'s threshold for 3D volumes on normal volumes and store it in its weights.

        ``normals``: volume files or folders (their NIfTI/NRRD/MetaImage files and DICOM series folders), none of
        them a volume the threshold is then judged on. Each is scored as serving scores it with the given options
        (those of ``score_volume``, MONAI Label and the Deploy app); the ``--quantile`` of their scores is stored
        in ``models/model.pt`` (and ``model.ts``) with the options, and served for volumes scored with the same
        options (others keep the 2D threshold). Prints each volume's score and the threshold. Any other
        ``--key value`` overrides the bundle's inference config, as the model was trained (``--num_members 2``).
        """
        from medad_monai.inference import BundleLoadError, ScoringOptions, load_bundle_model
        from medad_monai.inference.volume_calibration import (
            calibrate_volume_threshold,
            find_volumes,
            store_volume_calibration,
        )
        from medad_monai.transforms import ImageReadError

        try:
            options = ScoringOptions(axis, volume_reduction, top_k, batch_size, min_relative_body=min_relative_body)
            volumes = find_volumes(normals)
            model = load_bundle_model(bundle, device="cpu", overrides=overrides)
            calibration, scores = calibrate_volume_threshold(model, volumes, options, quantile)
            written = store_volume_calibration(bundle, calibration)
        except (BundleLoadError, FileNotFoundError, ImageReadError, ValueError) as err:
            raise SystemExit(f"medad-monai calibrate_volumes: {err}") from err
        for source, score in scores:
            print(f"{score:.6g}\t{source}")
        print(json.dumps({"volume_calibration": asdict(calibration), "written": [str(p) for p in written]}, indent=2))

    def versions(self) -> None:
        """Print the package versions and platform that results are recorded with."""
        print(json.dumps(provenance(), indent=2))


def _int_list(text: str | int | list[int] | tuple[int, ...]) -> list[int]:
    """``"0-7"``, ``"1,3,5"``, ``4`` or a list (python-fire may parse ``1,3`` as a tuple) to a list of ints."""
    # not d24fad_grid.parse_list: importing the comparison package takes seconds (anomalib)
    if isinstance(text, (int, list, tuple)):
        return [int(text)] if isinstance(text, int) else [int(v) for v in text]
    values: list[int] = []
    for part in str(text).split(","):
        first, _, last = part.strip().partition("-")
        values.extend(range(int(first), int(last) + 1) if last else [int(first)])
    return values


def main() -> None:
    fire.Fire(Commands, name="medad-monai")


if __name__ == "__main__":
    main()
