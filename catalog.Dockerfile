# The catalog image: opm serving the file-based catalog in catalog/ (`make catalog-build`).
#
# OPM_IMAGE is operator-framework's opm image of the version pinned in hack/versions.env;
# the Makefile passes it (set OPM_IMAGE to its full reference, with the registry host).
ARG OPM_IMAGE
FROM ${OPM_IMAGE}
ENTRYPOINT ["/bin/opm"]
CMD ["serve", "/configs", "--cache-dir=/tmp/cache"]
COPY catalog /configs
# Pre-builds the serving cache so the catalog pod starts without parsing the catalog.
RUN ["/bin/opm", "serve", "/configs", "--cache-dir=/tmp/cache", "--cache-only"]
LABEL operators.operatorframework.io.index.configs.v1=/configs
