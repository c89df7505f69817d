# The relay in a container: docker build -t relay . && docker run --env-file .env -p 10000:10000 relay
# Stop it with `docker stop --time 30` so the drain (DRAIN_TIMEOUT_S, default 25 s) can finish.
FROM python:3.12-slim

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PORT=10000

WORKDIR /app
COPY requirements.txt ./
RUN pip install -r requirements.txt
# The product only: no simulator, stand-ins, scenarios or tests (tests/test_layout.py holds this list).
COPY relay.py config.py envreader.py callers.py tools.py mailserver.py audio.py redact.py ./
COPY routes/ routes/
COPY bridge/ bridge/
COPY phones/ phones/
COPY model/ model/
COPY ops/ ops/
COPY store/ store/
COPY assets/apology.ulaw assets/wait_music.wav assets/console.html assets/prices.json assets/

RUN useradd --system --uid 10001 --no-create-home relay && mkdir /data && chown relay /data
# The call records' SQLite file, on a volume so it outlives the container (or set a postgresql:// DATABASE_URL).
ENV DATABASE_URL=sqlite:////data/relay.db
VOLUME /data
USER relay

EXPOSE 10000
STOPSIGNAL SIGTERM
# http or https, whichever the relay serves (TLS_CERT_FILE), on its own PORT.
HEALTHCHECK --interval=15s --timeout=3s --start-period=10s --retries=3 \
    CMD ["python", "relay.py", "healthcheck"]
CMD ["python", "relay.py"]
