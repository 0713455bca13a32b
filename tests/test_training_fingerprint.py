"""The fingerprint a training checkpoint must match to be resumed covers the project's code, so ``dvc repro`` after a
code change retrains instead of "resuming" the finished checkpoint the old code wrote."""

from __future__ import annotations

from pathlib import Path

from components.config import Params
from pipelines.stages import runtime


def _tree(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


def test_code_digest_changes_with_any_python_file_and_only_with_python_files(tmp_path: Path):
    comp = _tree(tmp_path / "components", {"models/unet.py": "A = 1\n", "__init__.py": ""})
    pipe = _tree(tmp_path / "pipelines", {"stages/train.py": "B = 2\n"})
    roots = (comp, pipe)
    before = runtime.code_digest(roots)
    assert runtime.code_digest(roots) == before  # deterministic
    (comp / "README.md").write_text("docs")
    (comp / "models" / "unet.cpython-312.pyc").write_bytes(b"\x00")
    assert runtime.code_digest(roots) == before  # not code
    (comp / "models" / "unet.py").write_text("A = 2\n")
    edited = runtime.code_digest(roots)
    assert edited != before
    (comp / "models" / "unet.py").write_text("A = 1\n")
    assert runtime.code_digest(roots) == before
    (pipe / "stages" / "new.py").write_text("")
    assert runtime.code_digest(roots) != before  # a new module, even empty
    (pipe / "stages" / "new.py").unlink()
    (pipe / "stages" / "train.py").rename(pipe / "stages" / "train2.py")
    assert runtime.code_digest(roots) != before  # the same bytes under another name


def test_training_fingerprint_covers_the_code_params_seed_and_inputs(tmp_path: Path, monkeypatch):
    data = tmp_path / "manifest.json"
    data.write_text("{}")
    params = Params()
    fp = runtime.training_fingerprint(params, "train_autoencoder", data)
    assert fp == runtime.training_fingerprint(params, "train_autoencoder", data)
    monkeypatch.setattr(runtime, "code_digest", lambda roots=runtime.CODE_ROOTS: "other code")
    assert runtime.training_fingerprint(params, "train_autoencoder", data) != fp
    monkeypatch.undo()
    assert runtime.training_fingerprint(params.model_copy(update={"base": params.base.model_copy(update={"seed": 1})}),
                                        "train_autoencoder", data) != fp
    data.write_text('{"x": 1}')
    assert runtime.training_fingerprint(params, "train_autoencoder", data) != fp
    # the real roots are the project's two packages, and this very file's package is not among them
    assert [r.name for r in runtime.CODE_ROOTS] == ["components", "pipelines"] and all(r.is_dir() for r in runtime.CODE_ROOTS)
