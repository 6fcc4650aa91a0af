# The slim runner image: `payload-runner` and the reference payload `toysim`, no Airflow. A site runs any
# number of these; each joins a task over HTTP with the task's token (EVENT_SERVICE_TOKEN).
# Build context: the repository root, e.g. `docker build -f docker/runner.Dockerfile -t event-service-runner .`
FROM python:3.11-slim

# The package's base install is the core and the worker, without Airflow (that is the [airflow] extra).
COPY pyproject.toml README.md /src/
COPY event_service /src/event_service
COPY payload_runner /src/payload_runner
COPY plugins /src/plugins
RUN pip install --no-cache-dir /src && rm -rf /src

RUN useradd --create-home --uid 1000 runner && mkdir -p /scratch /data && chown runner /scratch /data
USER 1000
WORKDIR /scratch
ENV PYTHONUNBUFFERED=1

# The token comes from EVENT_SERVICE_TOKEN (never the command line); the compose file adds
# --server, --task, --workers and --workdir.
ENTRYPOINT ["payload-runner"]
CMD ["--help"]
