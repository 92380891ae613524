"""The Kaggle kit: the chain of ``kzlib.pipeline`` stages cut into Kaggle kernels.

- ``plan``: which stages each kernel runs and whose outputs it reads; renders one folder per
  kernel (script + ``kernel-metadata.json``) and the push order.
- ``runtime``: what a kernel script calls on Kaggle (mounts upstream outputs, resumes its own
  previous version, runs its stages under a time budget).
- ``build``: the Kaggle Dataset folder (kzlib source, presets, weights, wheels) behind
  ``build_dataset.py``.
- ``emulate``: runs the rendered kernels in push order on this machine, with the Kaggle folder
  layout rebuilt under a local root.

CLI: ``python -m kzlib.kaggle render|emulate ...``.
"""
