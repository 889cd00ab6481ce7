"""The pipeline's stages, one module each and named like the stage in dvc.yaml and the task in
flows/retrain.py: download -> prepare -> tune -> train -> evaluate -> register."""
