{{/*
Labels of every object. The names themselves are fixed (podbgp, podbgp-config): the speaker
owns the node's routes and port, so a cluster runs one release.
*/}}
{{- define "podbgp.labels" -}}
app.kubernetes.io/name: podbgp
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/* The DaemonSet's selector (immutable: keep it to the name). */}}
{{- define "podbgp.selectorLabels" -}}
app.kubernetes.io/name: podbgp
{{- end }}

{{/*
Not empty when the values have the speaker watch Services and EndpointSlices: a pool, an allowed
ExternalIP range, a cluster IP mode, or the allocator (the speaker's own test, services_enabled
in speaker/app.py). The ClusterRole grants those reads only then.
*/}}
{{- define "podbgp.watchesServices" -}}
{{- with .Values.services -}}
{{- if .loadBalancer.allocate }}allocate {{ end -}}
{{- if .loadBalancer.pools }}pools {{ end -}}
{{- if .externalIPs.allowedCIDRs }}externalIPs {{ end -}}
{{- if eq .clusterIP.mode "off" }}{{ else }}clusterIP{{ end -}}
{{- end -}}
{{- end }}

{{/*
The speaker's config file (speaker/config.py, camelCase keys). Numbers printed directly go
through int64: Helm reads values.yaml numbers as float64 and prints 4200000000 as 4.2e+09.
*/}}
{{- define "podbgp.config" -}}
# podbgp speaker configuration, rendered by the Helm chart from its values.
# The node's name comes from NODE_NAME; its AS from the Node annotation podbgp.io/asn, else asn.
# Passwords are never here: a peer's passwordKey names a key of the mounted Secret.
mode: {{ .Values.mode | quote }}
logFormat: {{ .Values.logFormat | quote }}
networkUnavailable: {{ .Values.networkUnavailable }}
peers:
  {{- toYaml .Values.peers | nindent 2 }}
asn: {{ .Values.asn | int64 }}
mesh: {{ .Values.mesh }}
meshExportServices: {{ .Values.meshExportServices }}
{{- with .Values.meshNodeSelector }}
meshNodeSelector: {{ . | quote }}
{{- end }}
{{- with .Values.routerId }}
routerId: {{ . | quote }}
{{- end }}
clusterCIDRs:
  {{- toYaml .Values.clusterCIDRs | nindent 2 }}
serviceCIDRs:
  {{- toYaml .Values.serviceCIDRs | nindent 2 }}
{{- with .Values.podCIDR.nodeLocal }}
podCIDR:
  nodeLocal:
    {{- toYaml . | nindent 4 }}
{{- end }}
statusAddress: "0.0.0.0:{{ .Values.metricsPort | int64 }}"
runtimeDir: /run/podbgp
gracefulRestart: {{ .Values.gracefulRestart | int64 }}
cni:
  {{- toYaml .Values.cni | nindent 2 }}
services:
  {{- toYaml .Values.services | nindent 2 }}
{{- end }}
