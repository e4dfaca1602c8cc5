"""Training backend: configuration, data (readers, samplers, feature store, ShapesWorld),
evaluation, and (later) the trainer."""
