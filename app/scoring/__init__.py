"""Scoring: the model registry and micro-batcher of an API process (`registry`, `batcher`),
the scoring child process (`process`), the score log (`log`), and one request end to end
(`service`)."""
