FROM python:3.11-slim-bookworm
RUN apt-get update && apt-get install -y --no-install-recommends \
        swig libpcsclite-dev gcc && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY pyproject.toml README.md ./
COPY cardsvc cardsvc
COPY hsm_stub hsm_stub
COPY loadtest loadtest
COPY schema schema
RUN pip install --no-cache-dir -e .
USER nobody
EXPOSE 8080 9510
CMD ["python", "-m", "cardsvc", "serve"]
