"""The ``medad-monai`` command (python-fire): demo data and environment checks."""

from __future__ import annotations

import json

import fire

from medad_monai.data.demo import DEMO_DOMAINS, generate_demo_data
from medad_monai.provenance import provenance

__all__ = ["main"]


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

    def versions(self) -> None:
        """Print the package versions and platform that results are recorded with."""
        print(json.dumps(provenance(), indent=2))


def main() -> None:
    fire.Fire(Commands, name="medad-monai")


if __name__ == "__main__":
    main()
