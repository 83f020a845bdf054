FROM python:3.11-slim-bookworm
RUN apt-get update && apt-get install -y --no-install-recommends \
        swig libpcsclite-dev gcc && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY pyproject.toml README.md ./
COPY cardsvc cardsvc
COPY hsm_stub hsm_stub
COPY hsmlink hsmlink
COPY cardcrypto cardcrypto
COPY loadtest loadtest
COPY schema schema
RUN pip install --no-cache-dir -e .
# Mount points for hsm_stub's keystore and the HSM link's credentials, owned by the user the
# containers run as, so the named volumes created from them are writable by it.
RUN mkdir -p /keys /tls && chown nobody /keys /tls && chmod 0700 /keys /tls
USER nobody
EXPOSE 8080 9510
CMD ["python", "-m", "cardsvc", "serve"]
