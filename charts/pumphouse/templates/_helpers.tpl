{{/* The name of every object of the release. */}}
{{- define "pumphouse.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else if contains "pumphouse" .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-pumphouse" .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{/* Labels that select the orchestrator's pods. */}}
{{- define "pumphouse.selectorLabels" -}}
app.kubernetes.io/name: pumphouse
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* Labels on every object of the chart. */}}
{{- define "pumphouse.labels" -}}
{{ include "pumphouse.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "pumphouse.serviceAccountName" -}}
{{- default (include "pumphouse.fullname" .) .Values.serviceAccount.name -}}
{{- end -}}

{{- define "pumphouse.pumpsNamespace" -}}
{{- default .Release.Namespace .Values.pumps.namespace -}}
{{- end -}}

{{- define "pumphouse.secretName" -}}
{{- default (include "pumphouse.fullname" .) .Values.secrets.existingSecret -}}
{{- end -}}
