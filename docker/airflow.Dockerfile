# The Airflow image of the event service: api-server (with the dispatch API mounted under /event-service),
# scheduler, dag-processor, triggerer and Celery workers all run from it (docker/compose.yaml).
# Build context: the repository root, e.g. `docker build -f docker/airflow.Dockerfile -t event-service-airflow .`
FROM apache/airflow:3.3.2-python3.11

# The official image has Airflow 3.3.2 with the celery, redis, postgres and amazon providers; installing
# this package next to it keeps that Airflow (pinned in the same pip command) and adds what the package needs;
# the Celery provider is pinned to the version tested with it (tests/integration/test_celery.py).
COPY --chown=airflow:0 pyproject.toml README.md /opt/airflow-event-service/
COPY --chown=airflow:0 event_service /opt/airflow-event-service/event_service
COPY --chown=airflow:0 payload_runner /opt/airflow-event-service/payload_runner
COPY --chown=airflow:0 plugins /opt/airflow-event-service/plugins
# EVENT_SERVICE_EXTRAS names the package's extras: [airflow] (the Airflow layer) always, more with e.g.
# --build-arg EVENT_SERVICE_EXTRAS='airflow,root' for ROOT's hadd behind `merge: {command: event-service-hadd}`
# (250 MB more).
ARG EVENT_SERVICE_EXTRAS="airflow"
RUN pip install --no-cache-dir "apache-airflow==3.3.2" "apache-airflow-providers-celery==3.26.0" \
        "/opt/airflow-event-service[${EVENT_SERVICE_EXTRAS}]"

COPY --chown=airflow:0 dags /opt/airflow/dags
COPY --chown=airflow:0 tasks /opt/airflow/tasks

# root (uid 0), then the image's airflow user (uid 50000) again.
USER 0
# /data and /opt/airflow/auth are named volumes' mount points (a new volume takes the folder's owner, the
# airflow user); /scratch holds the pilots' work directories, in each container's own filesystem.
RUN mkdir -p /data /scratch /opt/airflow/auth && chown airflow:0 /data /scratch /opt/airflow/auth
USER 50000

ENV AIRFLOW__CORE__DAGS_FOLDER=/opt/airflow/dags \
    AIRFLOW__CORE__LOAD_EXAMPLES=false \
    AIRFLOW__EVENT_SERVICE__TASKS_FOLDER=/opt/airflow/tasks \
    EVENT_SERVICE_WORKDIR=/scratch

# The official entrypoint runs `airflow <command>`: the compose file gives the command of each component.
CMD ["api-server", "--port", "8080"]
