"""Training: data from the feature store and the shared trainer."""
