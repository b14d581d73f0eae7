{{/* The release's full name, a DNS label. */}}
{{- define "cellbus.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{/* Labels every object carries. */}}
{{- define "cellbus.labels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{/* Labels that select the operator's pods. */}}
{{- define "cellbus.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end -}}

{{- define "cellbus.serviceAccountName" -}}
{{- default (include "cellbus.fullname" .) .Values.serviceAccount.name -}}
{{- end -}}

{{/* repository:tag, the tag defaulting to the chart's appVersion. */}}
{{- define "cellbus.image" -}}
{{- printf "%s:%s" .image.repository (default .chart.AppVersion .image.tag) -}}
{{- end -}}

{{/* The operator's RBAC rules, generated from operator/src/rbac.rs. */}}
{{- define "cellbus.rules" -}}
{{- .Files.Get "files/operator-rules.yaml" -}}
{{- end -}}

{{/* The operator's ServiceAccount as a binding subject. */}}
{{- define "cellbus.subject" -}}
- kind: ServiceAccount
  name: {{ include "cellbus.serviceAccountName" . }}
  namespace: {{ .Release.Namespace }}
{{- end -}}
