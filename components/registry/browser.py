"""Headless-Chromium check of the MLflow UI: the registered model page shows the ``champion`` alias, and the
champion version's page shows its description.

``python -m components.registry.browser --tracking-uri http://127.0.0.1:5000 --model latentflow``
writes ``reports/mlflow_ui_champion.png`` (a screenshot of the model's page) and
``reports/mlflow_ui_champion.html`` (the rendered DOM), and exits non-zero when the rendered page
does not show the model with its ``champion`` alias. Debian: ``apt-get install chromium``.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from components.io import atomic_write_bytes

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--hide-scrollbars", "--window-size=1400,1000"]
# the alias chip of a version row in MLflow 3's model page: <... modelversionaliastag ...><span>@&nbsp;champion</span>
ALIAS_CHIP = r"modelversionaliastag[^>]*>(?:<[^>]+>){{0,4}}@(?:&nbsp;|\s|\u00a0){alias}<"


@dataclass
class UiCheck:
    url: str
    title: str
    aliases: list[str]
    screenshot: Path
    dom: Path


def find_chromium() -> str:
    """The Chromium binary (``chromium`` on Debian); a clear error when none is installed."""
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if path := shutil.which(name):
            return path
    raise RuntimeError("no Chromium found: install it (Debian: `apt-get install -y chromium`)")


def _chromium(args: list[str], timeout: float) -> subprocess.CompletedProcess:
    with tempfile.TemporaryDirectory(prefix="lf-chromium-") as profile:
        cmd = [find_chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args]
        proc = subprocess.run(cmd, capture_output=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"chromium exited {proc.returncode}: {proc.stderr.decode(errors='replace')[-2000:]}")
    return proc


def model_page_url(tracking_uri: str, model_name: str) -> str:
    return f"{tracking_uri.rstrip('/')}/#/models/{model_name}"


def rendered_aliases(dom: str) -> list[str]:
    """Alias chips (``@ champion``) rendered on an MLflow model page."""
    return re.findall(ALIAS_CHIP.format(alias=r"([\w-]+)"), dom)


def version_page_url(tracking_uri: str, model_name: str, version: str | int) -> str:
    return f"{tracking_uri.rstrip('/')}/#/models/{model_name}/versions/{version}"


def check_version_page(tracking_uri: str, model_name: str, version: str | int, screenshot: Path, dom_path: Path | None = None, *,
                       wait_ms: int = 15000, timeout: float = 120) -> UiCheck:
    """Render one version's page (its description, tags, aliases and source run) like :func:`check_model_page`."""
    return _render(version_page_url(tracking_uri, model_name, version), screenshot, dom_path, wait_ms=wait_ms, timeout=timeout)


def check_model_page(tracking_uri: str, model_name: str, screenshot: Path, dom_path: Path | None = None, *,
                     wait_ms: int = 15000, timeout: float = 120) -> UiCheck:
    """Render the model's page twice in headless Chromium: DOM (for the checks) and a PNG screenshot."""
    return _render(model_page_url(tracking_uri, model_name), screenshot, dom_path, wait_ms=wait_ms, timeout=timeout)


def _render(url: str, screenshot: Path, dom_path: Path | None, *, wait_ms: int, timeout: float) -> UiCheck:
    budget = f"--virtual-time-budget={wait_ms}"
    dom = _chromium([budget, "--dump-dom", url], timeout).stdout.decode(errors="replace")
    dom_path = Path(dom_path or Path(screenshot).with_suffix(".html"))
    atomic_write_bytes(dom_path, dom.encode())
    with tempfile.TemporaryDirectory() as tmp:
        shot = Path(tmp, "shot.png")
        _chromium([budget, f"--screenshot={shot}", url], timeout)
        atomic_write_bytes(screenshot, shot.read_bytes())
    title = (re.search(r"<title>([^<]*)</title>", dom) or [None, ""])[1]
    return UiCheck(url, title, rendered_aliases(dom), Path(screenshot), dom_path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tracking-uri", required=True, help="MLflow server, e.g. http://127.0.0.1:5000")
    parser.add_argument("--model", default="latentflow", help="registered model name")
    parser.add_argument("--out", type=Path, default=Path("reports/mlflow_ui_champion.png"), help="screenshot path (.png)")
    parser.add_argument("--version-out", type=Path, default=Path("reports/mlflow_ui_champion_version.png"),
                        help="screenshot of the champion version's page (.png)")
    args = parser.parse_args(argv)
    check = check_model_page(args.tracking_uri, args.model, args.out)
    print(f"{check.url}: title {check.title!r}, aliases {check.aliases}; screenshot {check.screenshot}, DOM {check.dom}")
    if check.title != f"Model: {args.model} - MLflow" or "champion" not in check.aliases:
        print("the page does not show the model with its champion alias", file=sys.stderr)
        return 1
    from mlflow import MlflowClient

    version = MlflowClient(args.tracking_uri).get_model_version_by_alias(args.model, "champion").version
    page = check_version_page(args.tracking_uri, args.model, version, args.version_out)
    print(f"{page.url}: title {page.title!r}; screenshot {page.screenshot}, DOM {page.dom}")
    if "Class-conditional latent diffusion generator" not in page.dom.read_text():
        print("the version page does not show the version's description", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
