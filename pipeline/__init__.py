"""Ray pipelines around the model: one package per job over what they share (docs/architecture.md).

- `pipeline.io`: storage (fsspec), the commit protocol, leases, run fingerprints, secrets masking.
- `pipeline.cluster`: connecting to Ray, the replica pool and fitting it to the cluster, metrics.
- `pipeline.batch`: batch summarization (the summarize job), also the engine of the nightly job.
- `pipeline.nightly`: the nightly job over dated partitions.
- `pipeline.train`: fine-tuning with Ray Train.
"""
