"""MLflow: where it is (connect), one run per training stage (runs), the model registry
(registry). Knows nothing of the training loop; only the main process calls it."""
