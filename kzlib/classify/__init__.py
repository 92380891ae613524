"""Stage 2, the classifier: names every detected box (or calls it seg_fp) from ROI-aligned
layer2/layer3 features of a ResNet/ResNeXt trunk.

  python -m kzlib.classify train DATA_DIR --boxes OOF_CSV --fold K --out RUN_DIR [--config FILE] [flags]
  python -m kzlib.classify predict RUN_DIR DATA_DIR --boxes CSV --split valid|test [--n-tta 4] [--out DIR]
"""
