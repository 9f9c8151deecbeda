"""The stream: the exactly-once stage runtime, the stages and the worker."""
