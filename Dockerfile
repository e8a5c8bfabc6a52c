# coterie in a container: slim, non-root, the data directory a volume, and a health
# check through `coterie doctor`. Build and run (docs/operations.md, "Docker"):
#   docker build -t coterie .
#   docker run -d --name coterie --env-file .env -v coterie-data:/data \
#     --stop-timeout 45 --restart unless-stopped coterie
# --stop-timeout must exceed COTERIE_SHUTDOWN_GRACE_S (20 s): SIGTERM drains the runs.

FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md requirements.lock ./
COPY bot ./bot
COPY commands ./commands
COPY adapters ./adapters
COPY personas ./personas
COPY skills ./skills
COPY memory ./memory
COPY executor ./executor
COPY migrations ./migrations
RUN python -m venv /opt/coterie \
    && /opt/coterie/bin/pip install --no-deps -r requirements.lock \
    && /opt/coterie/bin/pip install --no-deps . \
    && /opt/coterie/bin/coterie --version

FROM python:3.11-slim
RUN useradd --system --uid 10001 --user-group --home-dir /data --shell /usr/sbin/nologin coterie \
    && mkdir -p /data \
    && chown coterie:coterie /data
COPY --from=build /opt/coterie /opt/coterie
ENV PATH=/opt/coterie/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    DATABASE_URL=sqlite:////data/coterie.db
WORKDIR /data
USER coterie
VOLUME ["/data"]
STOPSIGNAL SIGTERM
# Healthy while this container's `coterie run` holds its database and the settings,
# tools and database check out (--running: warnings do not make it unhealthy).
HEALTHCHECK --interval=60s --timeout=30s --start-period=60s --retries=3 \
    CMD ["coterie", "doctor", "--offline", "--running"]
ENTRYPOINT ["coterie"]
CMD ["run"]
