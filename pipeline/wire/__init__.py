"""What is on Kafka: message types per topic and their JSON Schemas."""
