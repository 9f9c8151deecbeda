"""Pure rules over typed records: no I/O, no Kafka, no HTTP."""
