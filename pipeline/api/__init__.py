"""HTTP ingest and publisher: requests in, raw events out."""
