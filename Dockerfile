# One image for the chief, the workers and TensorBoard.
#   BASE_IMAGE  any Debian/Ubuntu image with python3 (>= 3.10), venv and ca-certificates. The
#               public default works with GPUs too: the TensorFlow GPU wheel brings its own CUDA
#               libraries. CI uses a local debootstrap image (.ci/base-image.sh): no registry there.
#   TENSORFLOW  the TensorFlow package: the GPU build by default, tensorflow-cpu==2.21.0 for a
#               small CPU-only image (CI).
#   certs/      extra CA certificates (*.crt) trusted during the build and at run time.
ARG BASE_IMAGE=python:3.11-slim-bookworm
FROM ${BASE_IMAGE}
ARG TENSORFLOW=tensorflow[and-cuda]==2.21.0

ENV LANG=C.UTF-8 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_CERT=/etc/ssl/certs/ca-certificates.crt \
    REQUESTS_CA_BUNDLE=/etc/ssl/certs/ca-certificates.crt \
    SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt \
    PATH=/opt/venv/bin:$PATH

# certs/ may hold only its README: COPY of a folder works whatever it holds (README.md is inert,
# update-ca-certificates reads *.crt).
COPY certs/ /usr/local/share/ca-certificates/ktcluster/
RUN command -v update-ca-certificates >/dev/null \
      || { echo "BASE_IMAGE needs the ca-certificates package" >&2; exit 1; } \
 && update-ca-certificates >/dev/null \
 && python3 -m venv /opt/venv

# Dependencies first: a code change does not reinstall them.
COPY requirements.txt /tmp/requirements.txt
RUN pip install -r /tmp/requirements.txt "${TENSORFLOW}" && rm /tmp/requirements.txt

WORKDIR /app
COPY shared/ /app/shared/
COPY chief/ /app/chief/
COPY worker/ /app/worker/
COPY examples/ /app/examples/
ENV PYTHONPATH=/app \
    TF_CPP_MIN_LOG_LEVEL=1
# Runs as root on purpose: named volumes and the ./results bind mount stay writable with no chown step.
CMD ["python", "-m", "chief"]
