"""The operators' side: the ``feedstream`` command and what it reads from Kafka (status, dead letters)."""
