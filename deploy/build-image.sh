#!/bin/sh
# The recipe ships inside the package (provisioner/lab/recipes/build-image.sh), so
# an installed wheel builds it too; this is the checkout's entry point for humans.
exec "$(dirname "$0")/../provisioner/lab/recipes/build-image.sh" "$@"
