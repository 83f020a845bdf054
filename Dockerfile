# The service image: cardsvc and hsm_stub, without the terminal SDK's card reader library
# or the load harness (those are the [terminal] and [loadtest] extras).

# The console's chart library, exactly as package-lock.json pins it; only its one file is
# copied into the image (node_modules/echarts/dist/echarts.min.js, where the service looks).
FROM node:20-bookworm-slim AS console-assets
WORKDIR /build
COPY package.json package-lock.json .npmrc ./
RUN npm ci --ignore-scripts --no-audit --no-fund --loglevel=error

FROM python:3.11-slim-bookworm
# One user per service: cardsvc runs the HTTP service, hsm runs hsm_stub (its keystore and
# its TLS key are readable by no one else).
RUN groupadd --gid 10001 cardsvc \
    && useradd --uid 10001 --gid cardsvc --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin cardsvc \
    && groupadd --gid 10002 hsm \
    && useradd --uid 10002 --gid hsm --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin hsm
WORKDIR /app
COPY pyproject.toml README.md ./
COPY cardsvc cardsvc
COPY hsm_stub hsm_stub
COPY hsmlink hsmlink
COPY cardcrypto cardcrypto
COPY schema schema
COPY --from=console-assets /build/node_modules/echarts/dist/echarts.min.js \
    node_modules/echarts/dist/echarts.min.js
COPY scripts/docker-credentials.sh /usr/local/bin/cardsvc-docker-credentials
RUN pip install --no-cache-dir -e .
# Mount points, owned by the user that writes them, so the named volumes docker-compose.yml
# creates on them start with that owner and mode:
#   /keys                          hsm_stub's keystore
#   /tls/hsm, /tls/cardsvc         each service's half of the HSM link's credentials
#   /tls/ca                        the link's CA key (only the one-shot credentials service)
#   /var/lib/cardsvc/audit-anchors the exported audit anchors (CARDSVC_AUDIT_ANCHOR_DIR)
RUN install -d -o hsm -g hsm -m 0700 /keys /tls/hsm \
    && install -d -o cardsvc -g cardsvc -m 0700 /tls/cardsvc /var/lib/cardsvc/audit-anchors \
    && install -d -o root -g root -m 0700 /tls/ca
ENV CARDSVC_AUDIT_ANCHOR_DIR=/var/lib/cardsvc/audit-anchors
USER cardsvc
EXPOSE 8080
CMD ["python", "-m", "cardsvc", "serve"]
