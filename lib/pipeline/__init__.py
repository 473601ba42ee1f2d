"""The training pipeline: data, features, training, comparison, decision, stage contracts."""
