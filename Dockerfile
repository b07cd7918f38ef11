# The pgherd operator image: the pgherd package and its runtime dependencies, hash-checked from
# requirements-operator.lock, in a virtualenv copied onto a clean base, run as a non-root user.
#
# BASE_IMAGE is a Debian-based Python 3.11 image without a registry host: pass the full
# reference (ideally by digest) with `make docker-build BASE_IMAGE=...`.
ARG BASE_IMAGE=python:3.11.14-slim-bookworm

FROM ${BASE_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_INPUT=1
WORKDIR /src
COPY requirements-operator.lock ./
RUN python3 -m venv /opt/pgherd \
 && /opt/pgherd/bin/pip install --require-hashes --no-deps -r requirements-operator.lock
COPY pyproject.toml README.md ./
COPY operator ./operator
# The locked setuptools builds the package; it is removed again, the image does not need it.
RUN /opt/pgherd/bin/pip install --no-deps --no-build-isolation . \
 && /opt/pgherd/bin/pip uninstall --yes setuptools wheel

FROM ${BASE_IMAGE}
COPY --from=build /opt/pgherd /opt/pgherd
ENV PATH=/opt/pgherd/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PGHERD_LOG_FORMAT=json
# A numeric user, so runAsNonRoot can verify it without an /etc/passwd entry.
USER 65532:65532
EXPOSE 8081
ENTRYPOINT ["pgherd", "operator"]
CMD ["--health-port=8081"]
