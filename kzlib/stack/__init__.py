"""Stage 4, level 2: stack the model kinds' detailed files with LightGBM, XGBoost and CatBoost.

  python -m kzlib.stack features GROUPS_JSON --out FEATURES.csv.gz
  python -m kzlib.stack train FOLD0_FEATURES FOLD1_FEATURES ... --data DATA_DIR --out MODEL_DIR
  python -m kzlib.stack predict MODEL_DIR TEST_FEATURES --data DATA_DIR --out submission.csv

GROUPS_JSON maps a model kind to its detailed files, e.g. {"resnet152": ["r152/fold0/detailed.csv.gz"],
"resnext": ["rx/fold0/detailed.csv.gz"]} for fold 0, or every fold's test_detailed.csv.gz per kind for
the test features (a kind's files are blended first).
"""
