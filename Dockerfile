# The production image: one image, one process per container (see docker-compose.yml).
FROM python:3.11-slim
ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /app
COPY pyproject.toml README.md LICENSE alembic.ini ./
COPY dispatcher ./dispatcher
RUN pip install '.[all]' && useradd --system --uid 10001 dispatcher
USER dispatcher
