#!/bin/sh
# The container's entrypoint (tests/e2e/test_deploy_stack.py runs it outside Docker on a tiny shop).
# First start on an empty data volume: generate the demo shop (the README quick start's shop) and
# build a bundle from it. Every start: serve BUNDLES/CURRENT, gRPC and /metrics on all interfaces.
# Data of your own: put items.* and events.* in $TANDEM_DATA/shop, or a bundle root in
# $TANDEM_DATA/bundles, before the first start. Arguments are passed on to `tandem serve`.
set -eu

DATA=${TANDEM_DATA:-/data}
SHOP=${TANDEM_SHOP:-$DATA/shop}
BUNDLES=${TANDEM_BUNDLES:-$DATA/bundles}

if [ ! -s "$BUNDLES/CURRENT" ]; then
    if ! ls "$SHOP"/items.* >/dev/null 2>&1; then
        echo "entrypoint: no catalog in $SHOP: generating the demo shop" >&2
        tandem generate --out "$SHOP" --items "${TANDEM_DEMO_ITEMS:-5000}" --users "${TANDEM_DEMO_USERS:-3000}" \
            --seed "${TANDEM_DEMO_SEED:-7}"
    fi
    echo "entrypoint: no bundle in $BUNDLES: building one from $SHOP" >&2
    if [ -n "${TANDEM_BUILD_CONFIG:-}" ]; then
        tandem build --data "$SHOP" --out "$BUNDLES" --config "$TANDEM_BUILD_CONFIG"
    else
        tandem build --data "$SHOP" --out "$BUNDLES"
    fi
fi

# exec: `tandem serve` becomes PID 1 and gets the SIGTERM of `docker stop` (it drains, then exits 0)
exec tandem serve --bundles "$BUNDLES" --host "${TANDEM_HOST:-0.0.0.0}" --port "${TANDEM_PORT:-50051}" \
    --metrics-port "${TANDEM_METRICS_PORT:-9100}" "$@"
