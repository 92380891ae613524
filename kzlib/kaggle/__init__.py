"""The Kaggle kit: the chain of ``kzlib.stages`` cut into Kaggle kernels.

- ``plan``: which stages each kernel runs and whose outputs it reads; renders one folder per
  kernel (script + ``kernel-metadata.json``) and the push order.
- ``session``: what a kernel script does on Kaggle around its stages (finds its inputs, resumes its
  own previous version, runs its stages under a time budget, writes its status).
- ``inputs``: finding the kit, the competition and the upstream outputs on either mount layout.
- ``push``: pushing the kernels in dependency order and seeing them through.
- ``api``: the kaggle package's client; ``download``: the competition data through it.
- ``build``: the Kaggle Dataset folder (kzlib source, presets, weights, wheels).
- ``emulate``: runs the rendered kernels in push order on this machine, with the Kaggle folder
  layout rebuilt under a local root.

CLI: ``python -m kzlib kaggle render|push|emulate|download ...``.
"""
