"""One module per ``dvc.yaml`` stage, named after it: the stage ``evaluate`` is ``pipelines/stages/evaluate.py``.

Each module's ``run(params, ...)`` reads its params section, calls ``components/`` and writes the stage's
outputs (atomically: a stage that fails leaves the previous outputs intact). Paths are arguments whose
defaults match ``dvc.yaml`` (:mod:`pipelines.stages.paths`). ``dvc.yaml`` lists each module, and the
``components/`` files it imports, as the stage's code ``deps:`` (``latentflow deps --check``).
"""
