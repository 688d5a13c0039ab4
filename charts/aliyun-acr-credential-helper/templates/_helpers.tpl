{{- define "acr-helper.name" -}}aliyun-acr-credential-helper{{- end -}}

{{- define "acr-helper.labels" -}}
app.kubernetes.io/name: {{ include "acr-helper.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
helm.sh/chart: {{ .Chart.Name }}-{{ .Chart.Version }}
{{- end -}}

{{- define "acr-helper.selectorLabels" -}}
app.kubernetes.io/name: {{ include "acr-helper.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "acr-helper.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}

{{/* Name of cluster-scoped objects: unique per release. */}}
{{- define "acr-helper.fullname" -}}
{{- if contains (include "acr-helper.name" .) .Release.Name -}}
{{ .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else -}}
{{ printf "%s-%s" .Release.Name (include "acr-helper.name" .) | trunc 63 | trimSuffix "-" }}
{{- end -}}
{{- end -}}

{{/* The names of everything the controller reads and writes, as flags: the RBAC rules grant
     exactly these names, so the controller and cleanup are given them explicitly. */}}
{{- define "acr-helper.nameArgs" -}}
- --secret-name={{ .Values.pullSecretName }}
- --webhook-configuration={{ include "acr-helper.fullname" . }}
- --webhook-tls-secret={{ include "acr-helper.name" . }}-webhook-tls
- --last-config-secret={{ include "acr-helper.name" . }}-last-config
- --state-secret={{ include "acr-helper.name" . }}-state
- --lease-name={{ include "acr-helper.name" . }}
{{- end -}}
