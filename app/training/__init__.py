"""Training: the queue (`jobs`), the background worker (`worker`), the pipeline from stored
points and labels to a model version (`pipeline`), and versions and activation (`versions`)."""
