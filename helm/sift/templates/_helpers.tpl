{{/*
Chart name, truncated to the 63 characters DNS names allow.
*/}}
{{- define "sift.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Fully qualified app name. If the release name already contains the chart
name it is used as is.
*/}}
{{- define "sift.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/*
Name of the admin Service (fullname + "-admin", within 63 characters).
*/}}
{{- define "sift.adminServiceName" -}}
{{- printf "%s-admin" (include "sift.fullname" . | trunc 57 | trimSuffix "-") }}
{{- end }}

{{/*
Chart name and version, for the helm.sh/chart label.
*/}}
{{- define "sift.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Common labels.
*/}}
{{- define "sift.labels" -}}
helm.sh/chart: {{ include "sift.chart" . }}
{{ include "sift.selectorLabels" . }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | toString | trunc 63 | trimSuffix "-" | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/*
Selector labels (must stay stable across upgrades).
*/}}
{{- define "sift.selectorLabels" -}}
app.kubernetes.io/name: {{ include "sift.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/*
ServiceAccount name.
*/}}
{{- define "sift.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "sift.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
Container image reference: repository:tag, or repository@digest when a digest
is set. The tag defaults to the chart's appVersion.
*/}}
{{- define "sift.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion | toString) }}
{{- end }}
{{- end }}

{{/*
Port number of a "host:port" address ("0.0.0.0:8080", "[::]:8080", ":8080").
Usage: include "sift.addressPort" "0.0.0.0:8080"  =>  8080
*/}}
{{- define "sift.addressPort" -}}
{{- $port := regexFind ":[0-9]+$" (toString .) | trimPrefix ":" }}
{{- if not $port }}
{{- fail (printf "sift: cannot find a port in address %q (expected host:port)" (toString .)) }}
{{- end }}
{{- $port }}
{{- end }}

{{/*
Host part of a "host:port" address.
*/}}
{{- define "sift.addressHost" -}}
{{- regexReplaceAll ":[0-9]+$" (toString .) "" }}
{{- end }}

{{/*
Container/Service port name for a listener: the listener name made into a
valid IANA service name (lowercase alphanumerics and "-", at most 15
characters, at least one letter). Falls back to "port-<port>".
Usage: include "sift.portName" (dict "name" "main" "port" "8080")
*/}}
{{- define "sift.portName" -}}
{{- $n := regexReplaceAll "[^a-z0-9]+" (lower (toString .name)) "-" | trunc 15 | trimAll "-" }}
{{- if regexMatch "[a-z]" $n }}
{{- $n }}
{{- else }}
{{- printf "port-%s" (toString .port) }}
{{- end }}
{{- end }}

{{/*
Admin listener port, from config.admin.address.
*/}}
{{- define "sift.adminPort" -}}
{{- $addr := dig "admin" "address" "" .Values.config }}
{{- if not $addr }}
{{- fail "sift: config.admin.address must be set (e.g. \"0.0.0.0:9901\"); the probes and metrics use it" }}
{{- end }}
{{- include "sift.addressPort" $addr }}
{{- end }}

{{/*
Whole seconds (rounded up) in a sift duration, with sift's own syntax:
digits, an optional ".digits" fraction, one unit (ms, s, m, h):
"30s", "500ms", "1.5s", "2m", "1h". Anything else fails the install, as
sift itself would refuse it; set terminationGracePeriodSeconds explicitly
to bypass.
Usage: include "sift.durationSeconds" "1.5s"  =>  2
*/}}
{{- define "sift.durationSeconds" -}}
{{- $d := toString . | trim }}
{{- if not (regexMatch "^[0-9]+(\\.[0-9]+)?(ms|s|m|h)$" $d) }}
{{- fail (printf "sift: cannot parse duration %q (sift wants e.g. 5s, 500ms, 1.5s, 2m); or set terminationGracePeriodSeconds explicitly" $d) }}
{{- end }}
{{- $n := regexFind "^[0-9]+(\\.[0-9]+)?" $d | float64 }}
{{- $unit := regexReplaceAll "^[0-9]+(\\.[0-9]+)?" $d "" }}
{{- $scale := 1.0 }}
{{- if eq $unit "ms" }}{{- $scale = 0.001 }}
{{- else if eq $unit "m" }}{{- $scale = 60.0 }}
{{- else if eq $unit "h" }}{{- $scale = 3600.0 }}
{{- end }}
{{- mulf $n $scale | ceil | int }}
{{- end }}

{{/*
terminationGracePeriodSeconds: explicit value, or
shutdown.delay (default 0s) + shutdown.drain_timeout (default 30s) + extra.
*/}}
{{- define "sift.terminationGracePeriodSeconds" -}}
{{- if not (kindIs "invalid" .Values.terminationGracePeriodSeconds) }}
{{- .Values.terminationGracePeriodSeconds }}
{{- else }}
{{- $delay := include "sift.durationSeconds" (dig "shutdown" "delay" "0s" .Values.config) | atoi }}
{{- $drain := include "sift.durationSeconds" (dig "shutdown" "drain_timeout" "30s" .Values.config) | atoi }}
{{- $extra := .Values.terminationGracePeriodExtraSeconds | default 0 | int }}
{{- if lt $extra 1 }}
{{- fail "sift: terminationGracePeriodExtraSeconds must be at least 1 so the grace period exceeds shutdown.delay + shutdown.drain_timeout" }}
{{- end }}
{{- add $delay $drain $extra }}
{{- end }}
{{- end }}

{{/*
Checks on the values; renders nothing, fails the install on a problem.
*/}}
{{- define "sift.validate" -}}
{{- if ne (toString .Values.mode) "edge" }}
{{- fail (printf "sift: mode %q is not rendered by this chart; only \"edge\" is. See the chart README for running sift as a sidecar." (toString .Values.mode)) }}
{{- end }}
{{- if not .Values.config }}
{{- fail "sift: .Values.config must hold the sift configuration" }}
{{- end }}
{{- $listeners := .Values.config.listeners | default list }}
{{- if not $listeners }}
{{- fail "sift: config.listeners must list at least one listener" }}
{{- end }}
{{- $adminAddr := dig "admin" "address" "" .Values.config | toString }}
{{- $adminHost := include "sift.addressHost" $adminAddr }}
{{- if or (hasPrefix "127." $adminHost) (eq $adminHost "localhost") (eq $adminHost "[::1]") (eq $adminHost "::1") }}
{{- fail (printf "sift: config.admin.address %q is a loopback address; kubelet probes and Prometheus cannot reach it. Use \"0.0.0.0:%s\"." $adminAddr (include "sift.adminPort" .)) }}
{{- end }}
{{- $names := dict "admin" (include "sift.adminPort" .) }}
{{- $ports := dict (include "sift.adminPort" .) "admin" }}
{{- range $listeners }}
{{- $lname := required "sift: every entry of config.listeners needs a name" .name | toString }}
{{- $addr := required (printf "sift: listener %q needs an address" $lname) .address }}
{{- $port := include "sift.addressPort" $addr }}
{{- $pname := include "sift.portName" (dict "name" $lname "port" $port) }}
{{- if hasKey $names $pname }}
{{- fail (printf "sift: listener %q maps to port name %q, which is already used (\"admin\" is reserved for the admin listener); rename the listener" $lname $pname) }}
{{- end }}
{{- if hasKey $ports $port }}
{{- fail (printf "sift: listener %q uses port %s, which is already used by %q" $lname $port (get $ports $port)) }}
{{- end }}
{{- $_ := set $names $pname $port }}
{{- $_ := set $ports $port $lname }}
{{- end }}
{{- end }}

{{/*
Pod annotations: user annotations, scrape annotations, config checksum.
*/}}
{{- define "sift.podAnnotations" -}}
{{- $ann := dict }}
{{- if .Values.metrics.scrapeAnnotations }}
{{- $_ := set $ann "prometheus.io/scrape" "true" }}
{{- $_ := set $ann "prometheus.io/port" (include "sift.adminPort" .) }}
{{- $_ := set $ann "prometheus.io/path" (.Values.metrics.path | default "/metrics") }}
{{- end }}
{{- if .Values.rollOnConfigChange }}
{{- $_ := set $ann "checksum/config" (toYaml .Values.config | sha256sum) }}
{{- end }}
{{- $ann = merge (deepCopy (.Values.podAnnotations | default dict)) $ann }}
{{- if $ann }}
{{- toYaml $ann }}
{{- end }}
{{- end }}
