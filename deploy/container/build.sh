#!/bin/sh
# What the container image runs to install uringserve, kept in one script so
# that `make test` can run the same steps on a machine with no container
# runtime: PREFIX is the virtualenv, SRC the checkout.
set -eu
SRC=${SRC:-/src}
PREFIX=${PREFIX:-/opt/uringserve}
PYTHON=${PYTHON:-python3}
"$PYTHON" -m venv "$PREFIX"
"$PREFIX/bin/pip" install --quiet --upgrade pip setuptools wheel cffi
# no build isolation: setuptools and cffi above build the native core
"$PREFIX/bin/pip" install --quiet --no-build-isolation "$SRC[metrics]"
# fails the build when the image's own Python cannot load the core
"$PREFIX/bin/python" -c "import uringserve.ring, uringserve.server, uringserve.resp, uringserve.cli, uringserve.metrics"
echo "uringserve installed in $PREFIX"
