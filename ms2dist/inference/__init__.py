"""Using a trained model: model directories (safetensors + JSON, ``pretrained:``), which
notes are played (calibration), and Table I (evaluation, tables)."""
