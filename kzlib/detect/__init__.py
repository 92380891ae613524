"""Stage 1: a class-agnostic character detector per fold (torchvision Faster R-CNN, ResNet FPN).

    python -m kzlib.detect train DATA_DIR --fold K --out RUN_DIR [--config FILE | flags] [--resume]
    python -m kzlib.detect predict RUN_DIR DATA_DIR --split valid|test [--out FILE]
    python -m kzlib.detect merge-oof RUN_DIR... --out FILE
    python -m kzlib.detect merge-test TEST_BOXES... --out FILE [--test-votes N] [--test-match iou|centre]

Outputs: ``oof_boxes.csv`` (image_id,x,y,w,h,score,true) for the fold's held-out train pages and
``test_boxes.csv`` (image_id,x,y,w,h,score) for the test pages, in original-page pixels; the
merges put the folds' files together (every train page once; the test boxes voted or fold 0's).
"""
