"""``latentflow add-data``: put a folder of images (or a ``.tar`` of one) under DVC and point ``ingest`` at it.

The images are copied to ``data/raw/<name>`` inside the project and tracked with ``dvc add`` (a
``data/raw/<name>.dvc`` file for git, the content in DVC's cache, pushed with ``dvc push``). ``dvc.yaml``'s
``ingest`` stage depends on ``${ingest.root}``, so once ``params.yaml`` points there, adding, removing or
changing an image re-runs ``ingest`` and everything downstream. For data that lives elsewhere (a bucket),
``dvc import-url`` is DVC's tool; this command covers the local case.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from components.data.sources import IMAGE_SUFFIXES  # what ingest reads

RAW_DIR = Path("data/raw")


class AddDataError(RuntimeError):
    """The folder cannot be added (missing, not an image folder, a name clash, DVC failed)."""


def check_image_source(src: Path) -> None:
    """A ``.tar`` file, or a folder with at least one ``<class>/`` subfolder holding images."""
    if not src.exists():
        raise AddDataError(f"{src} does not exist")
    if src.is_file():
        if src.suffix != ".tar":
            raise AddDataError(f"{src} is a file but not a .tar: give a folder of <class>/*.png|jpg or a .tar of one")
        return
    classes = [d for d in src.iterdir() if d.is_dir() and not d.name.startswith(".")]
    if not any(p.suffix.lower() in IMAGE_SUFFIXES for d in classes for p in d.iterdir()):
        raise AddDataError(f"{src} has no <class>/ subfolders with images ({', '.join(sorted(IMAGE_SUFFIXES))})")


def _copy_atomic(src: Path, dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.tmp-", dir=dest.parent))
    try:
        if src.is_file():
            shutil.copy2(src, tmp / src.name)
            os.replace(tmp / src.name, dest)
            tmp.rmdir()
        else:
            shutil.copytree(src, tmp, dirs_exist_ok=True, ignore=shutil.ignore_patterns(".*"))
            os.replace(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def set_ingest_root(params_path: Path, root: str, *, channels: int | None = None, image_size: int | None = None) -> None:
    """Set ``ingest.source: image_folder`` and ``ingest.root`` (and optionally channels / image size) in
    ``params_path``, keeping its comments; the result is validated before it replaces the file."""
    import io

    from ruamel.yaml import YAML

    from components.config import load_params
    from components.io import atomic_write_bytes

    yml = YAML()
    yml.preserve_quotes = True
    yml.width = 4096
    doc = yml.load(params_path.read_text())
    ingest = doc["ingest"]
    ingest["source"] = "image_folder"
    ingest["root"] = root
    if channels is not None:
        ingest["channels"] = channels
    if image_size is not None:
        ingest["image_size"] = image_size
    buf = io.StringIO()
    yml.dump(doc, buf)
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", dir=params_path.parent, delete=False) as tmp:
        tmp.write(buf.getvalue())
    try:
        load_params(Path(tmp.name))  # a bad value fails here, before params.yaml changes
    finally:
        os.unlink(tmp.name)
    atomic_write_bytes(params_path, buf.getvalue().encode())


def add_data(src: Path, *, name: str | None = None, project: Path = Path("."), params_path: Path | None = None,
             channels: int | None = None, image_size: int | None = None) -> Path:
    """Copy ``src`` to ``data/raw/<name>`` (unless it is already there), ``dvc add`` it and point ``params.yaml``'s
    ``ingest`` at it. Returns the path relative to the project. Re-running it on ``data/raw/<name>`` records a
    new version of the folder in its ``.dvc`` file."""
    project = project.resolve()
    src = src.expanduser().resolve()
    params_path = params_path or project / "params.yaml"
    check_image_source(src)
    raw = project / RAW_DIR
    if src.parent == raw:
        dest = src
    else:
        dest = raw / (name or src.name)
        if dest.exists():
            raise AddDataError(f"{dest.relative_to(project)} already exists: add or change images in it and run "
                               f"`latentflow add-data {dest.relative_to(project)}` to record the new version")
        _copy_atomic(src, dest)
    rel = dest.relative_to(project).as_posix()
    proc = subprocess.run(["dvc", "add", rel], cwd=project, capture_output=True, text=True)
    if proc.returncode != 0:
        raise AddDataError(f"`dvc add {rel}` failed: {(proc.stderr or proc.stdout).strip()[-800:]}")
    set_ingest_root(params_path, rel, channels=channels, image_size=image_size)
    return Path(rel)
