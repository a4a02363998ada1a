#!/bin/sh
# The container's entrypoint (tests/e2e/test_deploy_stack.py runs it outside Docker on a tiny shop).
# First start on an empty data volume: generate the demo shop (the README quick start's shop) and
# build a bundle from it. Every start: serve BUNDLES/CURRENT, gRPC and /metrics on all interfaces.
# Data of your own: put items.* and events.* in $DATA_DIR/shop, or a bundle root in
# $DATA_DIR/bundles, before the first start. Arguments are passed on to `tandem serve`.
set -eu
# Its variables are not TANDEM_*: `tandem build` reads every TANDEM_* variable as a build setting
# (TANDEM_TWO_TOWER__DIM=64) and refuses unknown ones. TANDEM_TOKEN, if set, reaches `tandem serve`.

DATA=${DATA_DIR:-/data}
SHOP=${SHOP_DIR:-$DATA/shop}
BUNDLES=${BUNDLES_DIR:-$DATA/bundles}

if [ ! -s "$BUNDLES/CURRENT" ]; then
    if ! ls "$SHOP"/items.* >/dev/null 2>&1; then
        echo "entrypoint: no catalog in $SHOP: generating the demo shop" >&2
        tandem generate --out "$SHOP" --items "${DEMO_ITEMS:-5000}" --users "${DEMO_USERS:-3000}" \
            --seed "${DEMO_SEED:-7}" --queries "${DEMO_QUERIES:-300}"
    fi
    echo "entrypoint: no bundle in $BUNDLES: building one from $SHOP" >&2
    if [ -n "${BUILD_CONFIG:-}" ]; then
        tandem build --data "$SHOP" --out "$BUNDLES" --config "$BUILD_CONFIG"
    else
        tandem build --data "$SHOP" --out "$BUNDLES"
    fi
fi

# exec: `tandem serve` becomes PID 1 and gets the SIGTERM of `docker stop` (it drains, then exits 0)
exec tandem serve --bundles "$BUNDLES" --host "${LISTEN_HOST:-0.0.0.0}" --port "${PORT:-50051}" \
    --metrics-port "${METRICS_PORT:-9100}" "$@"
