"""Ray layer: Ray Data dataflows, Ray Train loop, storage and bookkeeping. Uses `model` only through its exports."""
