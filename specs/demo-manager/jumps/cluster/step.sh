#!/bin/sh
# The demo's cluster hooks (one script, three hook names): a real manager would update its
# cluster state once on the leader (cluster-pre, Rok's upgrade-cluster), upgrade each node's
# membership (node) and enable a feature once every member runs the new version
# (cluster-post, Rok's enable-etcd-auth). The demo records when each ran, on which host,
# and which host was pinned as the only leader candidate at the time.
set -eu
mkdir -p var/log
pinned=$(cat var/lib/demo-manager/leader-candidates 2>/dev/null || echo none)
echo "$(date +%s.%N) $JUMPKIT_CLUSTER_ACTION ${JUMPKIT_HOST:-?} $JUMPKIT_FROM $JUMPKIT_TO pinned=$pinned" \
  >> var/log/demo-manager-cluster.log
