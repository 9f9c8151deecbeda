"""Kafka plumbing: topics, the transactional writer, a local broker."""
