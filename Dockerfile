# One image for the streaming job, the scorer and the replayer of docker-compose.yml.
# Java is there for Spark; every Python dependency is pinned by constraints.txt.
#checkov:skip=CKV_DOCKER_2:one image for the streaming job, the replayer and the scorer (no HTTP in two of them); compose and Dockerfile.scorer give the scorer its health check
FROM python:3.11.7-slim-bookworm

RUN apt-get update \
 && apt-get install -y --no-install-recommends openjdk-17-jre-headless \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /app
COPY pyproject.toml constraints.txt README.md ./
COPY propensity ./propensity
COPY streaming ./streaming
COPY batch ./batch
COPY serving ./serving
COPY feature_repo ./feature_repo
COPY training ./training
COPY monitoring ./monitoring
COPY privacy ./privacy
COPY ops ./ops
RUN pip install --no-cache-dir -c constraints.txt '.[jobs]' \
 && useradd --create-home --uid 10001 propensity \
 && mkdir -p /var/lib/propensity && chown propensity /var/lib/propensity

USER propensity
ENV PYSPARK_PYTHON=/usr/local/bin/python PROPENSITY_HOME=/var/lib/propensity
CMD ["propensity", "--help"]
