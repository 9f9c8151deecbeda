# One image for the ingest and the workers (docker-compose.yml picks the command).
FROM python:3.11-slim
WORKDIR /app
ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
COPY pyproject.toml README.md ./
COPY pipeline ./pipeline
COPY schemas ./schemas
COPY deploy/tenants.dev.yaml ./deploy/tenants.dev.yaml
COPY examples ./examples
RUN pip install .
EXPOSE 8080 6066
CMD ["python", "-m", "pipeline.api.ingest"]
