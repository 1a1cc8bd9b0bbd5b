{{/*
Chart name, overridable with nameOverride.
*/}}
{{- define "riffle.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Full name: the release name, or "<release>-<chart>" when the release name does not
contain the chart name. Truncated to leave room for the "-operator" suffix.
*/}}
{{- define "riffle.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 54 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 54 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 54 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/*
Name of the operator's own resources (Deployment, Service, RBAC). The "-operator" suffix
keeps them apart from the resources the operator creates for a Cluster named like the
release (StatefulSet, ServiceAccount and PodDisruptionBudget "<cluster>").
*/}}
{{- define "riffle.operatorName" -}}
{{- printf "%s-operator" (include "riffle.fullname" .) }}
{{- end }}

{{/*
Chart label value.
*/}}
{{- define "riffle.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Standard labels of every resource of this chart.
*/}}
{{- define "riffle.labels" -}}
helm.sh/chart: {{ include "riffle.chart" . }}
app.kubernetes.io/name: {{ include "riffle.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: riffle
{{- end }}

{{/*
Labels of the operator's resources.
*/}}
{{- define "riffle.operatorLabels" -}}
{{ include "riffle.labels" . }}
app.kubernetes.io/component: operator
{{- end }}

{{/*
Selector labels of the operator pods. The component label keeps broker pods (which may
carry the same name and instance labels) out of the operator's selectors.
*/}}
{{- define "riffle.selectorLabels" -}}
app.kubernetes.io/name: {{ include "riffle.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end }}

{{/*
ServiceAccount of the operator.
*/}}
{{- define "riffle.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "riffle.operatorName" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
Image reference; the tag defaults to the chart's appVersion.
*/}}
{{- define "riffle.image" -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion | toString) }}
{{- end }}

{{/*
Namespace the operator watches: watchNamespace, else the release namespace when
rbac.namespaced is true, else empty (all namespaces).
*/}}
{{- define "riffle.watchNamespace" -}}
{{- if .Values.watchNamespace }}
{{- .Values.watchNamespace }}
{{- else if .Values.rbac.namespaced }}
{{- .Release.Namespace }}
{{- end }}
{{- end }}

{{/*
Namespace of the Prometheus monitors.
*/}}
{{- define "riffle.monitorNamespace" -}}
{{- default .Release.Namespace .Values.serviceMonitor.namespace }}
{{- end }}

{{/*
RBAC rules for managing Clusters, Topics and the objects the operator makes for them;
used in a ClusterRole, or in a Role when the operator watches one namespace.
*/}}
{{- define "riffle.operatorRules" -}}
# Exactly what the operator uses (the real-API-server tests compare this with the API
# server's audit log): it watches its resources and children, changes them only by
# server-side apply (patch, which creates what is missing), and never deletes children
# itself: their owner references let the garbage collector do it.
- apiGroups: ["riffle.dev"]
  resources: ["clusters"]
  verbs: ["get", "list", "watch"]
- apiGroups: ["riffle.dev"]
  resources: ["topics"]
  verbs: ["list", "watch", "patch"]
- apiGroups: ["riffle.dev"]
  resources: ["clusters/status", "topics/status"]
  verbs: ["patch"]
# The built-in autoscaler sets a Cluster's size as an HPA would.
- apiGroups: ["riffle.dev"]
  resources: ["clusters/scale"]
  verbs: ["patch"]
# Owner references that block the owner's deletion need this where the
# OwnerReferencesPermissionEnforcement admission plugin runs.
- apiGroups: ["riffle.dev"]
  resources: ["clusters/finalizers"]
  verbs: ["update"]
- apiGroups: ["apps"]
  resources: ["statefulsets"]
  verbs: ["get", "list", "watch", "create", "patch"]
# Rolling restarts: the operator deletes one broker Pod at a time.
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["list", "delete"]
- apiGroups: [""]
  resources: ["services", "configmaps", "serviceaccounts"]
  verbs: ["list", "watch", "create", "patch"]
- apiGroups: ["policy"]
  resources: ["poddisruptionbudgets"]
  verbs: ["list", "watch", "create", "patch"]
- apiGroups: ["events.k8s.io"]
  resources: ["events"]
  verbs: ["create", "patch"]
{{- end }}
