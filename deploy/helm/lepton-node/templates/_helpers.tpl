{{/* Chart name, truncated to the 63 characters Kubernetes allows. */}}
{{- define "lepton-node.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Release-scoped name: one release per node. */}}
{{- define "lepton-node.fullname" -}}
{{- if contains .Chart.Name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}

{{- define "lepton-node.selectorLabels" -}}
app.kubernetes.io/name: {{ include "lepton-node.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "lepton-node.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "lepton-node.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
lepton.fl/node: {{ .Values.node.name | quote }}
{{- end }}

{{- define "lepton-node.image" -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) }}
{{- end }}

{{- define "lepton-node.stateClaim" -}}
{{- .Values.persistence.existingClaim | default (printf "%s-state" (include "lepton-node.fullname" .)) }}
{{- end }}
