# The Nurture image: one image for the worker, the API and one-off commands (migrate,
# setup-temporal, api-key create). Configured only by the environment; see docker-compose.yml.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app

# What `pip install .` needs, and nothing else (see .dockerignore).
COPY pyproject.toml README.md worker.py ./
COPY nurture ./nurture
COPY api ./api
COPY workflows ./workflows
COPY activities ./activities
RUN pip install . && rm -rf /app/build

RUN useradd --create-home --uid 10001 nurture
USER nurture
WORKDIR /home/nurture

EXPOSE 8000
CMD ["nurture", "api", "--host", "0.0.0.0", "--port", "8000"]
