# The pgherd operator image: the pgherd package and its runtime dependencies, hash-checked from
# requirements-operator.lock, in a virtualenv copied onto a clean base, run as a non-root user.
#
# BASE_IMAGE is a Debian-based Python 3.11 image without a registry host: pass the full
# reference (ideally by digest) with `make docker-build BASE_IMAGE=...`. Either the python slim
# image (python3 in /usr/local/bin) or a Debian bookworm with python3 and python3-venv (in
# /usr/bin; `make base-image` makes one locally): the virtualenv links to the base's python3,
# and both stages use the same base, so the link resolves in the final image.
ARG BASE_IMAGE=python:3.11.14-slim-bookworm

FROM ${BASE_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_INPUT=1
WORKDIR /src
COPY requirements-operator.lock ./
# An optional build secret `ca-bundle` (a PEM file, e.g. the host's CA bundle) is what pip trusts
# where the network intercepts TLS; it is mounted for this step only, never part of an image.
RUN --mount=type=secret,id=ca-bundle \
    python3 -m venv /opt/pgherd \
 && if [ -s /run/secrets/ca-bundle ]; then export PIP_CERT=/run/secrets/ca-bundle; fi \
 && /opt/pgherd/bin/pip install --require-hashes --no-deps -r requirements-operator.lock
COPY pyproject.toml README.md ./
COPY operator ./operator
# The locked setuptools builds the package; it is removed again, the image does not need it.
RUN /opt/pgherd/bin/pip install --no-deps --no-build-isolation . \
 && /opt/pgherd/bin/pip uninstall --yes setuptools wheel

FROM ${BASE_IMAGE}
# An account for the uid too: kopf names its identity after getpass.getuser(), which fails for a
# uid without an /etc/passwd entry (Kubernetes sets no USER or LOGNAME).
RUN groupadd --system --gid 65532 pgherd \
 && useradd --system --uid 65532 --gid 65532 --home-dir /nonexistent --no-create-home \
      --shell /usr/sbin/nologin pgherd
COPY --from=build /opt/pgherd /opt/pgherd
ENV PATH=/opt/pgherd/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PGHERD_LOG_FORMAT=json
# Numeric, so that runAsNonRoot can verify it.
USER 65532:65532
EXPOSE 8081
ENTRYPOINT ["pgherd", "operator"]
CMD ["--health-port=8081"]
