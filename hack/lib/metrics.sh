# The metrics pipeline of the local cluster as host processes; sourced by hack/cluster.sh, never run.
# Needs what hack/lib/common.sh defines and cluster.sh sets (DIR, RUN_DIR, BIN, API_HOST, the local CA in
# $DIR/pki).
#
#   metrics-server       resource metrics (metrics.k8s.io) from the real kubelets: what a CPU HPA reads
#   prometheus           scrapes the Tandem servers' /metrics (pods labelled app.kubernetes.io/name=tandem-server,
#                        port `metrics`), labelling each series with its namespace and pod, and the operator's
#                        (as the chart's ServiceMonitor does); evaluates the chart's PrometheusRule groups
#   prometheus-adapter   serves those series as per-pod custom metrics (custom.metrics.k8s.io), with the rules
#                        of the chart's autoscaling.prometheusAdapter option: what a request-driven HPA reads
#
# They run beside the API server, as the other control-plane components and Kueue do, not in pods. An
# aggregated API is registered through an APIService, which names a Service, never a URL: each gets a Service
# without a selector in kube-system whose Endpoints name the API server's pod-reachable address (the real
# nodes' API_HOST; a loopback address is refused in Endpoints, so the pipeline needs the real nodes), and the
# API server dials that endpoint directly (--enable-aggregator-routing). Their serving certificates come from
# the local CA, whose bundle the APIServices carry.
#
# Local cluster only: metrics-server reads the kubelets with --kubelet-insecure-tls. The real nodes' kubelets
# serve certificates they signed themselves (no serving-certificate CSRs are approved here), so there is no CA
# to check them against. A production cluster gives kubelets CA-signed serving certificates instead.

METRICS_RESOLUTION=10s
PROMETHEUS_SCRAPE_INTERVAL=5s
# The adapter's rate window: four scrapes, short enough that a test sees load come and go within a minute.
ADAPTER_WINDOW=20s
METRICS_COMPONENTS=(prometheus-adapter prometheus metrics-server)

# --- hooks called by hack/cluster.sh for every cluster (the API server's flags are fixed at its start, and
# `cluster.sh metrics up` must work on a cluster started without TANDEM_METRICS) ---------------------------

# The front proxy's own CA and client certificate: the API server presents it when it forwards a request to
# an aggregated API, which trusts the user and groups in its headers because of it.
metrics_pki() {
  new_ca "$DIR/pki/front-proxy" tandem-front-proxy-ca
  (cd "$DIR/pki/front-proxy" && issue front-proxy-client "/CN=front-proxy-client" clientAuth "")
}

# The aggregation layer of kube-apiserver.
metrics_apiserver_flags() {
  local p="$DIR/pki/front-proxy"
  printf '%s\n' \
    --requestheader-client-ca-file "$p/ca.crt" --requestheader-allowed-names front-proxy-client \
    --requestheader-username-headers X-Remote-User --requestheader-group-headers X-Remote-Group \
    --requestheader-extra-headers-prefix X-Remote-Extra- \
    --proxy-client-cert-file "$p/front-proxy-client.crt" --proxy-client-key-file "$p/front-proxy-client.key" \
    --enable-aggregator-routing=true
}

# The HPA controller every 5 s instead of 15 s: tests see a scaling decision sooner (each decision still
# waits for its HPA's stabilisation window).
metrics_controller_manager_flags() {
  printf '%s\n' --horizontal-pod-autoscaler-sync-period 5s
}

# --- the pipeline --------------------------------------------------------------------------------------------

metrics_resolve() {
  resolve_built METRICS_DIR TANDEM_METRICS_DIR build-metrics.sh -x metrics-server prometheus prometheus-adapter
}

# metrics_endpoint NAME PORT: a Service without a selector in kube-system whose only endpoint is this host's
# pod-reachable address and PORT, for an APIService to name.
metrics_endpoint() {
  kc apply -f - > /dev/null <<EOF
apiVersion: v1
kind: Service
metadata: {name: $1, namespace: kube-system, labels: {app.kubernetes.io/part-of: tandem-local-metrics}}
spec:
  ports: [{name: https, port: 443, targetPort: $2}]
---
apiVersion: v1
kind: Endpoints
metadata: {name: $1, namespace: kube-system, labels: {app.kubernetes.io/part-of: tandem-local-metrics}}
subsets:
- addresses: [{ip: $API_HOST}]
  ports: [{name: https, port: $2}]
EOF
}

# metrics_apiservice GROUP VERSION SERVICE: register the aggregated API GROUP/VERSION served behind SERVICE.
metrics_apiservice() {
  kc apply -f - > /dev/null <<EOF
apiVersion: apiregistration.k8s.io/v1
kind: APIService
metadata: {name: $2.$1, labels: {app.kubernetes.io/part-of: tandem-local-metrics}}
spec:
  group: $1
  version: $2
  service: {name: $3, namespace: kube-system, port: 443}
  caBundle: $(b64 "$DIR/pki/ca.crt")
  groupPriorityMinimum: 100
  versionPriority: 100
EOF
}

# metrics_serving_cert NAME: a serving certificate for the Service NAME in kube-system (the name the API server
# checks when it dials the endpoint).
metrics_serving_cert() {
  (cd "$DIR/pki" && issue "$1" "/CN=$1" serverAuth \
    "subjectAltName=DNS:$1.kube-system.svc,DNS:$1.kube-system.svc.cluster.local,IP:$API_HOST")
}

metrics_prometheus_config() {
  cat <<EOF
global:
  scrape_interval: $PROMETHEUS_SCRAPE_INTERVAL
  scrape_timeout: 4s
  evaluation_interval: $PROMETHEUS_SCRAPE_INTERVAL
rule_files: [$DIR/metrics/tandem-rules.yaml]
scrape_configs:
  # The operator's pods, as the chart's ServiceMonitor scrapes them: honor_labels keeps the namespace of the
  # resource each series is about.
  - job_name: tandem-operator
    honor_labels: true
    kubernetes_sd_configs:
      - role: pod
        kubeconfig_file: $DIR/kubeconfig
    relabel_configs:
      - {source_labels: [__meta_kubernetes_pod_label_app_kubernetes_io_name], regex: tandem, action: keep}
      - {source_labels: [__meta_kubernetes_pod_label_app_kubernetes_io_component], regex: operator, action: keep}
      - {source_labels: [__meta_kubernetes_pod_container_port_name], regex: metrics, action: keep}
      - {source_labels: [__meta_kubernetes_pod_phase], regex: Running, action: keep}
  # Every running Tandem server pod, on its container port named metrics; the labels namespace and pod are
  # what the adapter's rules map to Kubernetes objects.
  - job_name: tandem-servers
    kubernetes_sd_configs:
      - role: pod
        kubeconfig_file: $DIR/kubeconfig
    relabel_configs:
      - {source_labels: [__meta_kubernetes_pod_label_app_kubernetes_io_name], regex: tandem-server, action: keep}
      - {source_labels: [__meta_kubernetes_pod_container_port_name], regex: metrics, action: keep}
      - {source_labels: [__meta_kubernetes_pod_phase], regex: Running, action: keep}
      - {source_labels: [__meta_kubernetes_namespace], target_label: namespace}
      - {source_labels: [__meta_kubernetes_pod_name], target_label: pod}
EOF
}

# The chart's alerting and recording rules (the PrometheusRule's groups), as Prometheus loads a rule file.
metrics_tandem_rules() {
  "$BIN/helm" template tandem "$ROOT/charts/tandem" --set metrics.prometheusRule.enabled=true \
    --set metrics.prometheusRule.operatorJob=tandem-operator --show-only templates/prometheusrule.yaml \
    | sed -n '/^spec:$/,$p' | tail -n +2 | sed 's/^  //'
}

# The adapter's rules, exactly as the chart renders them for users (charts/tandem, autoscaling.prometheusAdapter).
metrics_adapter_rules() {
  "$BIN/helm" template tandem "$ROOT/charts/tandem" --namespace kube-system \
    --set autoscaling.prometheusAdapter.enabled=true --set "autoscaling.prometheusAdapter.window=$ADAPTER_WINDOW" \
    --show-only templates/prometheus-adapter-rules.yaml \
    | kc create --dry-run=client -f - -o jsonpath='{.data.config\.yaml}'
}

metrics_node_metrics() { kc get --raw /apis/metrics.k8s.io/v1beta1/nodes | grep -q real-cpu-0; }
metrics_custom_metrics() { kc get --raw /apis/custom.metrics.k8s.io/v1beta2 | grep -q '"resources"'; }

metrics_up() {
  [ "$API_HOST" != 127.0.0.1 ] || die "the metrics pipeline needs the real nodes (TANDEM_REAL_NODES=1): only they have kubelets to read, and an APIService's endpoint must not be a loopback address"
  [ -f "$DIR/pki/front-proxy/front-proxy-client.crt" ] \
    || die "this cluster's API server was started without the aggregation layer (an older hack/cluster.sh): restart the cluster"
  metrics_resolve
  local m="$DIR/metrics" name
  local running=1
  for name in "${METRICS_COMPONENTS[@]}"; do alive "$(pid_of "$name")" || running=0; done
  if [ "$running" = 1 ]; then
    say "metrics pipeline already running"
    return 0
  fi
  stop "${METRICS_COMPONENTS[@]}"
  rm -rf "${m:?}"
  mkdir -p "$m/prometheus-data"
  read -r MS_PORT PROMETHEUS_PORT ADAPTER_PORT <<< "$(free_ports 3)"
  printf 'METRICS_DIR=%q\nMS_PORT=%s\nPROMETHEUS_PORT=%s\nADAPTER_PORT=%s\n' \
    "$METRICS_DIR" "$MS_PORT" "$PROMETHEUS_PORT" "$ADAPTER_PORT" > "$m/state.env"
  metrics_serving_cert metrics-server
  metrics_serving_cert prometheus-adapter
  local kcfg="$DIR/kubeconfig" p="$DIR/pki"

  say "metrics-server on https://$API_HOST:$MS_PORT ($(basename "$METRICS_DIR"); kubelets read with --kubelet-insecure-tls)"
  start metrics-server "$METRICS_DIR/metrics-server" \
    --bind-address "$API_HOST" --secure-port "$MS_PORT" \
    --tls-cert-file "$p/metrics-server.crt" --tls-private-key-file "$p/metrics-server.key" \
    --kubeconfig "$kcfg" --authentication-kubeconfig "$kcfg" --authorization-kubeconfig "$kcfg" \
    --kubelet-preferred-address-types InternalIP --kubelet-use-node-status-port --kubelet-insecure-tls \
    --metric-resolution "$METRICS_RESOLUTION" --kubelet-request-timeout 5s --profiling=false --v 1
  metrics_endpoint metrics-server "$MS_PORT"
  metrics_apiservice metrics.k8s.io v1beta1 metrics-server

  say "prometheus on http://127.0.0.1:$PROMETHEUS_PORT (scrapes the operator and the Tandem servers every $PROMETHEUS_SCRAPE_INTERVAL; the chart's rules)"
  metrics_prometheus_config > "$m/prometheus.yml"
  metrics_tandem_rules > "$m/tandem-rules.yaml"
  grep -q TandemOperatorDown "$m/tandem-rules.yaml" || die "no alerting rules rendered from the chart"
  start prometheus "$METRICS_DIR/prometheus" --config.file "$m/prometheus.yml" \
    --storage.tsdb.path "$m/prometheus-data" --storage.tsdb.retention.time 2h \
    --web.listen-address "127.0.0.1:$PROMETHEUS_PORT"
  wait_for prometheus 60 curl -fsS "http://127.0.0.1:$PROMETHEUS_PORT/-/ready"

  say "prometheus-adapter on https://$API_HOST:$ADAPTER_PORT (the chart's rules, window $ADAPTER_WINDOW)"
  metrics_adapter_rules > "$m/adapter-rules.yaml"
  grep -q tandem_inference_requests_per_second "$m/adapter-rules.yaml" || die "no adapter rules rendered from the chart"
  start prometheus-adapter "$METRICS_DIR/prometheus-adapter" \
    --bind-address "$API_HOST" --secure-port "$ADAPTER_PORT" \
    --tls-cert-file "$p/prometheus-adapter.crt" --tls-private-key-file "$p/prometheus-adapter.key" \
    --lister-kubeconfig "$kcfg" --authentication-kubeconfig "$kcfg" --authorization-kubeconfig "$kcfg" \
    --prometheus-url "http://127.0.0.1:$PROMETHEUS_PORT/" --metrics-relist-interval 5s --metrics-max-age 30s \
    --config "$m/adapter-rules.yaml"
  metrics_endpoint prometheus-adapter "$ADAPTER_PORT"
  metrics_apiservice custom.metrics.k8s.io v1beta1 prometheus-adapter
  metrics_apiservice custom.metrics.k8s.io v1beta2 prometheus-adapter

  # metrics-server answers once it has scraped the kubelets (its first scrape waits a resolution interval).
  wait_for metrics-server 120 metrics_node_metrics
  wait_for prometheus-adapter 60 metrics_custom_metrics
}

metrics_down() {
  # The APIServices go first: an aggregated API whose server is gone makes discovery report it unavailable.
  if [ -f "$DIR/kubeconfig" ] && [ -f "$DIR/metrics/state.env" ]; then
    kc --request-timeout 10s delete apiservice v1beta1.metrics.k8s.io v1beta1.custom.metrics.k8s.io v1beta2.custom.metrics.k8s.io \
      --ignore-not-found > /dev/null 2>&1 || true
    kc --request-timeout 10s -n kube-system delete service,endpoints -l app.kubernetes.io/part-of=tandem-local-metrics \
      --ignore-not-found > /dev/null 2>&1 || true
  fi
  stop "${METRICS_COMPONENTS[@]}"
}
