{{/* Names and labels shared by every template. */}}

{{/* Chart name, overridable with nameOverride. */}}
{{- define "tandem.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Full name: fullnameOverride, else <release>, or <release>-<chart> when the release does not contain the chart name. */}}
{{- define "tandem.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* chart-version, for the helm.sh/chart label. */}}
{{- define "tandem.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Labels that select the operator pods; never change them after a release (Deployment selectors are immutable). */}}
{{- define "tandem.selectorLabels" -}}
app.kubernetes.io/name: {{ include "tandem.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end -}}

{{/* Labels on every object of the release. */}}
{{- define "tandem.labels" -}}
helm.sh/chart: {{ include "tandem.chart" . }}
app.kubernetes.io/name: {{ include "tandem.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: tandem
{{- end -}}

{{/* ServiceAccount name. */}}
{{- define "tandem.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "tandem.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* Operator image reference: repository@digest, else repository:tag (default appVersion). */}}
{{- define "tandem.image" -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}
{{- end -}}

{{/* Workload image: the explicit value, else <operator repository with "-operator" replaced by "-<kind>">:<appVersion>. */}}
{{- define "tandem.workloadImage" -}}
{{- $root := index . 0 -}}
{{- $kind := index . 1 -}}
{{- $explicit := index . 2 -}}
{{- if $explicit -}}
{{- $explicit -}}
{{- else -}}
{{- printf "%s:%s" (regexReplaceAll "-operator$" $root.Values.image.repository (printf "-%s" $kind)) $root.Chart.AppVersion -}}
{{- end -}}
{{- end -}}

{{/* "true" when leader election is on: asked for, or needed because several replicas run. */}}
{{- define "tandem.leaderElection" -}}
{{- if or .Values.leaderElection.enabled (gt (int .Values.replicaCount) 1) -}}true{{- end -}}
{{- end -}}

{{/* Lease name. */}}
{{- define "tandem.leaseName" -}}
{{- default (include "tandem.fullname" .) .Values.leaderElection.leaseName -}}
{{- end -}}

{{/* Namespaced rules: the watched custom resources (only their status is written; finalizers update lets children
carry blockOwnerDeletion where OwnerReferencesPermissionEnforcement is on), their children, Kueue Workloads, the
ServiceAccounts runs name, and events. Pods are listed cluster-wide (clusterRules). */}}
{{- define "tandem.namespacedRules" -}}
- apiGroups: [tandem.dev]
  resources: [trainingjobs, inferenceservices]
  verbs: [get, list, watch]
- apiGroups: [tandem.dev]
  resources: [trainingjobs/status, inferenceservices/status]
  verbs: [patch]
- apiGroups: [tandem.dev]
  resources: [trainingjobs/finalizers, inferenceservices/finalizers]
  verbs: [update]
- apiGroups: [batch]
  resources: [jobs]
  verbs: [get, list, watch, create, patch, delete]
- apiGroups: [""]
  resources: [services]
  verbs: [get, list, watch, create, patch, delete]
- apiGroups: [apps]
  resources: [deployments]
  verbs: [get, list, watch, create, patch, delete]
- apiGroups: [autoscaling]
  resources: [horizontalpodautoscalers]
  verbs: [get, list, watch, create, patch, delete]
- apiGroups: [policy]
  resources: [poddisruptionbudgets]
  verbs: [get, list, watch, create, patch, delete]
- apiGroups: [kueue.x-k8s.io]
  resources: [workloads]
  verbs: [list, patch]
- apiGroups: [""]
  resources: [serviceaccounts]
  verbs: [get]
{{ include "tandem.eventRules" . }}
{{- end -}}

{{/* Events: kopf posts them in the object's namespace, and those of cluster-scoped ComputePools in the operator's own. */}}
{{- define "tandem.eventRules" -}}
- apiGroups: [""]
  resources: [events]
  verbs: [create, patch]
{{- end -}}

{{/* Cluster-scoped rules: ComputePools, nodes for pool capacity, CRDs and namespaces that kopf scans. */}}
{{- define "tandem.clusterRules" -}}
- apiGroups: [tandem.dev]
  resources: [computepools]
  verbs: [get, list, watch]
- apiGroups: [tandem.dev]
  resources: [computepools/status]
  verbs: [patch]
- apiGroups: [""]
  resources: [nodes]
  verbs: [list, watch]
- apiGroups: [""]
  resources: [pods]
  verbs: [list]
- apiGroups: [apiextensions.k8s.io]
  resources: [customresourcedefinitions]
  verbs: [list, watch]
- apiGroups: [""]
  resources: [namespaces]
  verbs: [list, watch]
{{- end -}}

{{/* operator.podLabels as k=v,k=v (TANDEM_POD_LABELS), sorted. */}}
{{- define "tandem.podLabelsEnv" -}}
{{- $pairs := list -}}
{{- range $key, $value := .Values.operator.podLabels -}}
{{- $pairs = append $pairs (printf "%s=%s" $key $value) -}}
{{- end -}}
{{- join "," $pairs -}}
{{- end -}}
