{{- define "acr-helper.name" -}}aliyun-acr-credential-helper{{- end -}}

{{- define "acr-helper.labels" -}}
app.kubernetes.io/name: {{ include "acr-helper.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
helm.sh/chart: {{ .Chart.Name }}-{{ .Chart.Version }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: aliyun-acr-credential-helper
{{- end -}}

{{- define "acr-helper.selectorLabels" -}}
app.kubernetes.io/name: {{ include "acr-helper.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "acr-helper.image" -}}
{{- $registry := .Values.image.registry | default ((.Values.global).imageRegistry) -}}
{{- with $registry }}{{ . }}/{{ end }}{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}

{{/* imagePullSecrets of the chart's Pods: image.pullSecrets, else global.imagePullSecrets. */}}
{{- define "acr-helper.imagePullSecrets" -}}
{{- $secrets := .Values.image.pullSecrets | default ((.Values.global).imagePullSecrets) -}}
{{- with $secrets }}
imagePullSecrets:
{{- range . }}
  - name: {{ if kindIs "map" . }}{{ .name }}{{ else }}{{ . }}{{ end }}
{{- end }}
{{- end }}
{{- end -}}

{{/* Two replicas on two nodes (and zones) where they can be: one node's loss never takes both. */}}
{{- define "acr-helper.spread" -}}
{{- if .Values.affinity }}
affinity:
  {{- toYaml .Values.affinity | nindent 2 }}
{{- else }}
affinity:
  podAntiAffinity:
    preferredDuringSchedulingIgnoredDuringExecution:
      - weight: 100
        podAffinityTerm:
          topologyKey: kubernetes.io/hostname
          labelSelector:
            matchLabels:
              {{- include "acr-helper.selectorLabels" . | nindent 14 }}
{{- end }}
{{- if .Values.topologySpreadConstraints }}
topologySpreadConstraints:
  {{- toYaml .Values.topologySpreadConstraints | nindent 2 }}
{{- else }}
topologySpreadConstraints:
  - maxSkew: 1
    topologyKey: topology.kubernetes.io/zone
    whenUnsatisfiable: ScheduleAnyway
    labelSelector:
      matchLabels:
        {{- include "acr-helper.selectorLabels" . | nindent 8 }}
{{- end }}
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
{{/* The same names as variables, in the controller's container: a command run there with
     `kubectl exec` (status, plan, cleanup) acts on this release's objects without flags. The
     controller itself takes the flags, which win over the variables. */}}
{{- define "acr-helper.nameEnv" -}}
- name: ACR_HELPER_CONFIG_NAMESPACE
  value: {{ .Release.Namespace | quote }}
- name: ACR_HELPER_SECRET_NAME
  value: {{ .Values.pullSecretName | quote }}
- name: ACR_HELPER_WEBHOOK_CONFIGURATION
  value: {{ include "acr-helper.fullname" . | quote }}
- name: ACR_HELPER_WEBHOOK_TLS_SECRET
  value: {{ printf "%s-webhook-tls" (include "acr-helper.name" .) | quote }}
- name: ACR_HELPER_LAST_CONFIG_SECRET
  value: {{ printf "%s-last-config" (include "acr-helper.name" .) | quote }}
- name: ACR_HELPER_STATE_SECRET
  value: {{ printf "%s-state" (include "acr-helper.name" .) | quote }}
- name: ACR_HELPER_LEASE_NAME
  value: {{ include "acr-helper.name" . | quote }}
- name: ACR_HELPER_LEASE_DURATION
  value: {{ .Values.leaderElection.leaseDuration | quote }}
- name: ACR_HELPER_LEASE_GRACE
  value: {{ .Values.leaderElection.leaseGrace | quote }}
{{- end -}}

{{- define "acr-helper.nameArgs" -}}
- --secret-name={{ .Values.pullSecretName }}
- --webhook-configuration={{ include "acr-helper.fullname" . }}
- --webhook-tls-secret={{ include "acr-helper.name" . }}-webhook-tls
- --last-config-secret={{ include "acr-helper.name" . }}-last-config
- --state-secret={{ include "acr-helper.name" . }}-state
- --lease-name={{ include "acr-helper.name" . }}
{{- end -}}
