# The production image: one image, one process per container (see docker-compose.yml).
# An exact Python release (bump it on purpose), and the exact dependency versions of
# constraints.txt, the ones CI tests: the same image from the same commit, whenever it is built.
FROM python:3.11.13-slim
ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /app
# The dependency layer: rebuilt when the pins or the declared dependencies change, not at every
# code change. The requirements of `.[all]` are read from pyproject.toml (no copy to drift).
COPY pyproject.toml constraints.txt ./
RUN python -c "import tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; \
deps = p['dependencies'] + [r for x in ('web', 'ops', 'otel') for r in p['optional-dependencies'][x]]; \
print('\n'.join(deps))" > /tmp/requirements.txt \
    && pip install -c constraints.txt -r /tmp/requirements.txt && rm /tmp/requirements.txt
COPY README.md LICENSE alembic.ini ./
COPY dispatcher ./dispatcher
# The package itself, its dependencies already there (--no-deps: nothing resolved again).
RUN pip install --no-deps -c constraints.txt . && useradd --system --uid 10001 dispatcher
USER dispatcher
