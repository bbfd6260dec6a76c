{{/* ---------------------------------------------------------------- names --- */}}

{{/* Chart name (nameOverride wins). */}}
{{- define "ml-serving.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Prefix of every object name: <release>-<chart>, or <release> when it already holds the chart name. */}}
{{- define "ml-serving.fullname" -}}
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

{{/* name-version for the helm.sh/chart label. */}}
{{- define "ml-serving.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Object name of a component: (list $ "broker") -> <fullname>-broker, at most 63 characters. */}}
{{- define "ml-serving.componentName" -}}
{{- $root := index . 0 }}
{{- printf "%s-%s" (include "ml-serving.fullname" $root | trunc 40 | trimSuffix "-") (index . 1) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "ml-serving.broker.fullname" -}}
{{- include "ml-serving.componentName" (list . "broker") }}
{{- end }}

{{- define "ml-serving.authSecretName" -}}
{{- include "ml-serving.componentName" (list . "broker-auth") }}
{{- end }}

{{/* Serving objects of one tenant: (list $ "tenant-a") -> <fullname>-server-tenant-a */}}
{{- define "ml-serving.server.fullname" -}}
{{- include "ml-serving.componentName" (list (index . 0) (printf "server-%s" (index . 1))) }}
{{- end }}

{{- define "ml-serving.trainer.fullname" -}}
{{- include "ml-serving.componentName" (list (index . 0) (printf "retrain-%s" (index . 1))) }}
{{- end }}

{{- define "ml-serving.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "ml-serving.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name: give the name of an existing ServiceAccount when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* Label that admits a pod to the broker when the NetworkPolicy is on. */}}
{{- define "ml-serving.clientLabel" -}}
{{- printf "%s-client" (include "ml-serving.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* --------------------------------------------------------------- labels --- */}}

{{/* Selector labels: stable for the life of a release (never add a changing value here). */}}
{{- define "ml-serving.selectorLabels" -}}
app.kubernetes.io/name: {{ include "ml-serving.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* Standard labels of every object. */}}
{{- define "ml-serving.labels" -}}
helm.sh/chart: {{ include "ml-serving.chart" . }}
{{ include "ml-serving.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: ml-serving
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Labels of a component: (list $ "broker") */}}
{{- define "ml-serving.componentLabels" -}}
{{ include "ml-serving.labels" (index . 0) }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end }}

{{- define "ml-serving.componentSelectorLabels" -}}
{{ include "ml-serving.selectorLabels" (index . 0) }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end }}

{{/* Labels of one tenant's serving objects: (list $ "tenant-a") */}}
{{- define "ml-serving.server.labels" -}}
{{ include "ml-serving.componentLabels" (list (index . 0) "server") }}
ml-serving.io/tenant: {{ index . 1 }}
{{- end }}

{{- define "ml-serving.server.selectorLabels" -}}
{{ include "ml-serving.componentSelectorLabels" (list (index . 0) "server") }}
ml-serving.io/tenant: {{ index . 1 }}
{{- end }}

{{/* --------------------------------------------------------------- images --- */}}

{{/* (list $ .Values.server.image) -> repository:tag, the tag defaulting to appVersion. */}}
{{- define "ml-serving.image" -}}
{{- $image := index . 1 }}
{{- printf "%s:%s" $image.repository (default (index . 0).Chart.AppVersion $image.tag) }}
{{- end }}

{{- define "ml-serving.imagePullSecrets" -}}
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}

{{/* --------------------------------------------------------------- broker --- */}}

{{/* Host the in-cluster clients (servers, trainer, test) connect to. */}}
{{- define "ml-serving.broker.host" -}}
{{- if .Values.broker.external.enabled }}
{{- required "broker.external.host: required when broker.external.enabled" .Values.broker.external.host }}
{{- else }}
{{- printf "%s.%s.svc" (include "ml-serving.broker.fullname" .) .Release.Namespace }}
{{- end }}
{{- end }}

{{/* Whether in-cluster clients use TLS. */}}
{{- define "ml-serving.broker.tls" -}}
{{- if .Values.broker.external.enabled }}
{{- ternary "true" "" .Values.broker.external.tls.enabled }}
{{- else }}
{{- ternary "true" "" .Values.broker.tls.enabled }}
{{- end }}
{{- end }}

{{- define "ml-serving.broker.port" -}}
{{- if .Values.broker.external.enabled }}
{{- .Values.broker.external.port }}
{{- else if .Values.broker.tls.enabled }}
{{- .Values.broker.service.tlsPort }}
{{- else }}
{{- .Values.broker.service.port }}
{{- end }}
{{- end }}

{{/* Secret holding the CA certificate (ca.crt) clients verify the broker with. */}}
{{- define "ml-serving.broker.caSecret" -}}
{{- if .Values.broker.external.enabled }}
{{- required "broker.external.tls.caSecretName: required when broker.external.tls.enabled" .Values.broker.external.tls.caSecretName }}
{{- else }}
{{- required "broker.tls.secretName: required when broker.tls.enabled" .Values.broker.tls.secretName }}
{{- end }}
{{- end }}

{{/* Mount point of the CA certificate in client pods. */}}
{{- define "ml-serving.caDir" -}}/etc/ml-serving/broker-ca{{- end }}

{{/* ---------------------------------------------------------- credentials --- */}}

{{/*
Every broker password, as YAML {username: password}: from values, else from the existing
Secret (so a generated password survives upgrades), else generated. Computed once per render
and memoised on the root context, so the Secret and every checksum see the same values.
*/}}
{{- define "ml-serving.credentials" -}}
{{- if not (hasKey . "mlServingCredentials") }}
{{- $existing := dict }}
{{- $secret := lookup "v1" "Secret" .Release.Namespace (include "ml-serving.authSecretName" .) }}
{{- if and $secret $secret.data }}
{{- $existing = $secret.data }}
{{- end }}
{{- $wanted := dict }}
{{- $_ := set $wanted .Values.broker.users.server.username .Values.broker.users.server.password }}
{{- $_ := set $wanted .Values.broker.users.trainer.username .Values.broker.users.trainer.password }}
{{- range $name, $tenant := .Values.tenants }}
{{- $_ := set $wanted $name (default "" (and $tenant (get $tenant "password"))) }}
{{- end }}
{{- $creds := dict }}
{{- range $user, $given := $wanted }}
{{- $key := printf "password-%s" $user }}
{{- if $given }}
{{- $_ := set $creds $user (toString $given) }}
{{- else if hasKey $existing $key }}
{{- $_ := set $creds $user (index $existing $key | b64dec) }}
{{- else }}
{{- $_ := set $creds $user (randAlphaNum 32) }}
{{- end }}
{{- end }}
{{- $_ := set . "mlServingCredentials" $creds }}
{{- end }}
{{- toYaml (get . "mlServingCredentials") }}
{{- end }}

{{/* ------------------------------------------------------------- tenants --- */}}

{{/* Deep merge (list $dst $src): $src's keys win, including false and 0; maps merge key by key. */}}
{{- define "ml-serving.merge" -}}
{{- $dst := index . 0 }}
{{- range $key, $value := index . 1 }}
{{- if kindIs "invalid" $value }}
{{- else if and (kindIs "map" $value) (kindIs "map" (get $dst $key)) }}
{{- include "ml-serving.merge" (list (get $dst $key) $value) }}
{{- else }}
{{- $_ := set $dst $key $value }}
{{- end }}
{{- end }}
{{- end }}

{{/*
Every tenant resolved against tenantDefaults, as YAML {name: tenant}. Adds:
models (all models with versions resolved), defaultModel, effectiveRequestTopic,
effectiveResponseTopic (overrides or the protocol's defaults), minReplicas (the effective lowest replica count).
*/}}
{{- define "ml-serving.tenants" -}}
{{- $root := . }}
{{- $out := dict }}
{{- range $name, $raw := .Values.tenants }}
{{- $t := deepCopy $root.Values.tenantDefaults }}
{{- include "ml-serving.merge" (list $t (default dict $raw)) }}
{{- $model := default dict $t.model }}
{{- if not $model.name }}
{{- fail (printf "tenants.%s.model.name: required (the tenant's default model, e.g. lstm)" $name) }}
{{- end }}
{{- $globalVersion := $root.Values.model.version }}
{{- $models := dict }}
{{- range $m, $v := (default dict $t.models) }}
{{- $_ := set $models $m (default $globalVersion $v) }}
{{- end }}
{{- $_ := set $models $model.name (default $globalVersion $model.version) }}
{{- $_ := set $t "models" $models }}
{{- $_ := set $t "shadow" (default dict $t.shadow) }}
{{- $_ := set $t "record" (default false $t.record) }}
{{- $_ := set $t "defaultModel" $model.name }}
{{- $_ := set $t "requestTopic" (default "" $t.requestTopic) }}
{{- $_ := set $t "responseTopic" (default "" $t.responseTopic) }}
{{- $_ := set $t "effectiveRequestTopic" (default (printf "%s/%s/requests" $root.Values.topicPrefix $name) $t.requestTopic) }}
{{- $_ := set $t "effectiveResponseTopic" (default (printf "%s/%s/responses" $root.Values.topicPrefix $name) $t.responseTopic) }}
{{- $_ := set $t "minReplicas" (ternary $t.autoscaling.minReplicas $t.replicas $t.autoscaling.enabled) }}
{{- $_ := unset $t "password" }}
{{- $_ := set $out $name $t }}
{{- end }}
{{- toYaml $out }}
{{- end }}

{{/*
The server config of one tenant (list $ name tenant): server.config as given (its schema is
generated from mlserving_server.config), plus what the chart computes: broker address and
credential file, topics, registry, the tenant's entry. Never holds a secret: the password is a file.
*/}}
{{- define "ml-serving.serverConfig" -}}
{{- $root := index . 0 }}
{{- $name := index . 1 }}
{{- $t := index . 2 }}
{{- $v := $root.Values }}
{{- include "ml-serving.configRules" $root }}
{{- $tls := not (empty (include "ml-serving.broker.tls" $root)) }}
{{- $config := deepCopy $v.server.config }}
{{- $broker := dict "host" (include "ml-serving.broker.host" $root) "port" (include "ml-serving.broker.port" $root | int64)
      "username" $v.broker.users.server.username "passwordFile" "/etc/ml-serving/broker/password"
      "tls" (dict "enabled" $tls "caFile" (ternary (printf "%s/ca.crt" (include "ml-serving.caDir" $root)) nil $tls)) }}
{{- $_ := set $config "broker" (merge $broker (default dict $config.broker)) }}
{{- $_ := set $config "http" (merge (dict "host" "0.0.0.0") (default dict $config.http)) }}
{{- $registry := dict "path" "/models" "pollSeconds" $v.registry.pollSeconds }}
{{- if eq $v.registry.kind "broker" }}{{ $_ := set $registry "kind" "broker" }}{{ end }}
{{- $tenant := dict "models" $t.models "defaultModel" $t.defaultModel "rateLimit" $t.rateLimit "record" $t.record
      "requestTopic" (ternary $t.requestTopic nil (not (empty $t.requestTopic)))
      "responseTopic" (ternary $t.responseTopic nil (not (empty $t.responseTopic))) }}
{{- with $t.shadow }}{{ $_ := set $tenant "shadow" . }}{{ end }}
{{- with $t.legacy }}{{ $_ := set $tenant "legacy" . }}{{ end }}
{{- $computed := dict "topicPrefix" $v.topicPrefix "shareGroup" $v.shareGroup "qos" $v.qos "registry" $registry
      "tenants" (dict $name $tenant) }}
{{- toYaml (merge $config $computed) }}
{{- end }}

{{/* Pod-level scheduling keys shared by the workloads: (dict with nodeSelector tolerations affinity priorityClassName). */}}
{{- define "ml-serving.scheduling" -}}
{{- with .nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .priorityClassName }}
priorityClassName: {{ . }}
{{- end }}
{{- end }}

{{/* ------------------------------------------------------ broker auth files --- */}}

{{/* Plaintext Mosquitto password file (the broker's init container hashes it with mosquitto_passwd -U). */}}
{{- define "ml-serving.passwdFile" -}}
{{- range $user, $password := include "ml-serving.credentials" . | fromYaml }}
{{ $user }}:{{ $password }}
{{- end }}
{{- end }}

{{/* Mosquitto ACL file: one block per user; anything not granted is denied. */}}
{{- define "ml-serving.aclFile" -}}
{{- $v := .Values }}
{{- $tenants := include "ml-serving.tenants" . | fromYaml -}}
# Rendered by the ml-serving chart. Anything not granted here is denied.
# Serving pods: read every tenant's requests (also through the shared subscription), answer in
# the tenants' response namespaces, read the broker-backed model registry, publish live-traffic
# records and lifecycle events (docs/lifecycle.md).
user {{ $v.broker.users.server.username }}
{{- range $name, $t := $tenants }}
topic read {{ $t.effectiveRequestTopic }}
topic read $share/{{ $v.shareGroup }}/{{ $t.effectiveRequestTopic }}
topic write {{ $t.effectiveResponseTopic }}
topic write {{ $t.effectiveResponseTopic }}/#
{{- end }}
topic read {{ $v.topicPrefix }}/_registry/#
topic write {{ $v.topicPrefix }}/_records/#
topic write {{ $v.topicPrefix }}/_events/#

# Retraining jobs: publish packages and move `current` pointers in the broker-backed registry,
# drain the servers' live-traffic records and lifecycle events, keep their live history.
user {{ $v.broker.users.trainer.username }}
topic readwrite {{ $v.topicPrefix }}/_registry/#
topic read {{ $v.topicPrefix }}/_records/#
topic read {{ $v.topicPrefix }}/_events/#
topic readwrite {{ $v.topicPrefix }}/_trainer/#
{{- range $name, $t := $tenants }}

# Tenant {{ $name }}: publish its requests, read its answers (also per-client subtopics).
user {{ $name }}
topic write {{ $t.effectiveRequestTopic }}
topic read {{ $t.effectiveResponseTopic }}
topic read {{ $t.effectiveResponseTopic }}/#
{{- end }}
{{- end }}

{{/* mosquitto.conf, rendered from broker.config (no secrets: those are files from the Secret). */}}
{{- define "ml-serving.mosquittoConf" -}}
{{- $b := .Values.broker -}}
# Rendered by the ml-serving chart from broker.* values.
per_listener_settings false
allow_anonymous false
password_file /mosquitto/auth/passwd
# Our plugin owns the ACL (no acl_file): client ids must belong to their username, a SUBSCRIBE
# outside the user's read grants ($share/... included) is refused with SUBACK 0x87, and every
# refusal is logged with the username ("mlserving-auth: refused ..."). docs/security.md.
plugin /usr/lib/mosquitto/mlserving_auth.so
plugin_opt_acl_file /mosquitto/auth/acl
plugin_opt_log_per_second {{ $b.config.refusalLogPerSecond | int64 }}
plugin_opt_publish_rate {{ $b.config.tenantPublishRate | int64 }}
plugin_opt_publish_bytes_rate {{ $b.config.tenantPublishBytesRate | int64 }}
plugin_opt_max_properties_bytes {{ $b.config.tenantMaxPropertiesBytes | int64 }}
plugin_opt_max_connections {{ $b.config.tenantMaxConnections | int64 }}
plugin_opt_tenant_backlog {{ $b.config.tenantBacklog | int64 }}
plugin_opt_rate_exempt {{ .Values.broker.users.server.username }},{{ .Values.broker.users.trainer.username }}
# QoS 1 collapses to ~1,000 msg/s under Nagle's algorithm.
set_tcp_nodelay true

# MQTT (v5, v3.1.1) on all interfaces.
listener 1883
protocol mqtt
{{- if $b.tls.enabled }}

# MQTT over TLS; certificate from Secret {{ $b.tls.secretName }}.
listener {{ $b.tls.port | int64 }}
protocol mqtt
certfile /mosquitto/tls/tls.crt
keyfile /mosquitto/tls/tls.key
cafile /mosquitto/tls/ca.crt
tls_version tlsv1.2
{{- end }}

# Queues and limits: what one session can make the broker hold is bounded by these, not by the
# load offered (arithmetic: docs/security.md, "Broker memory").
max_packet_size {{ $b.config.maxPacketSize | int64 }}
message_size_limit {{ $b.config.messageSizeLimit | int64 }}
max_queued_messages {{ $b.config.maxQueuedMessages | int64 }}
max_queued_bytes {{ $b.config.maxQueuedBytes | int64 }}
max_inflight_messages {{ $b.config.maxInflightMessages | int64 }}
max_inflight_bytes {{ $b.config.maxInflightBytes | int64 }}
# QoS 0 requests reach the servers' QoS 1 subscriptions at QoS 1: flow-controlled, byte-bounded.
upgrade_outgoing_qos true
max_keepalive {{ $b.config.maxKeepalive | int64 }}
persistent_client_expiration {{ $b.config.persistentClientExpiration }}

{{- if $b.persistence.enabled }}

# Sessions, queued and retained messages survive restarts (PVC at /mosquitto/data).
persistence true
persistence_location /mosquitto/data/
autosave_interval {{ $b.config.autosaveInterval | int64 }}
{{- else }}

persistence false
{{- end }}

# stderr, not stdout: Mosquitto never flushes stdout, so through a pipe its lines (refusals
# included) would reach `kubectl logs` only every few kilobytes.
log_dest stderr
{{- range $b.config.logTypes }}
log_type {{ . }}
{{- end }}
log_timestamp_format %Y-%m-%dT%H:%M:%S
{{- with $b.config.extraConfig }}

# broker.config.extraConfig
{{ . }}
{{- end }}
{{- end }}

{{/* PVC of the filesystem registry. */}}
{{- define "ml-serving.registry.claimName" -}}
{{- default (include "ml-serving.componentName" (list . "registry")) .Values.registry.persistence.existingClaim }}
{{- end }}

{{/* "true" when a retraining entry needs the trainer's broker session (records or drift trigger). */}}
{{- define "ml-serving.trainerUsesBroker" -}}
{{- $records := default dict .records }}
{{- if or (default false $records.enabled) (eq (default "schedule" .trigger) "drift") }}true{{ end }}
{{- end }}

{{/*
Trainer config of one model (list $ name model): the entry's `settings` as given (their schema is
generated from mlserving_training.config.TrainConfig), plus what the chart computes from the entry:
data, registry, gate, records and the broker session (`mlserving-train pipeline --config`).
Never holds a secret.
*/}}
{{- define "ml-serving.trainerConfig" -}}
{{- $root := index . 0 }}
{{- $name := index . 1 }}
{{- $m := index . 2 }}
{{- $v := $root.Values }}
{{- $data := default dict $m.data }}
{{- $records := default dict $m.records }}
{{- $tls := include "ml-serving.broker.tls" $root }}
{{- $config := dict "model" (default $name $m.kind) "name" $name "series" (default "" $data.series)
      "registry" "/models" "promote" (default false $m.autoPromote) "out" (printf "/tmp/packages/%s" $name)
      "plot" "none" "trigger" (default "schedule" $m.trigger) "records" (default false $records.enabled) "data" "" }}
{{- if eq (default "generated" $data.source) "pvc" }}
{{- $_ := set $config "data" (printf "/data/%s" (required (printf "retraining.models.%s.data.path: required with data.source=pvc" $name) $data.path) | clean) }}
{{- end }}
{{- if eq $v.registry.kind "broker" }}
{{- /* Broker-backed registry (BrokerLocation in common/mlserving_common/broker_registry.py); the
       image's baked /models seeds it on the first publish. */}}
{{- $where := printf "%s@%s:%s/%s" $v.broker.users.trainer.username (include "ml-serving.broker.host" $root) (include "ml-serving.broker.port" $root) $v.topicPrefix }}
{{- $query := "password_file=/etc/ml-serving/broker/password&seed=/models&cache=/tmp/registry" }}
{{- if $tls }}{{ $query = printf "%s&ca_file=%s/ca.crt" $query (include "ml-serving.caDir" $root) }}{{ end }}
{{- $_ := set $config "registry" (printf "%s://%s?%s" (ternary "mqtts" "mqtt" (not (empty $tls))) $where $query) }}
{{- end }}
{{- if and $m.qualityGate (not (kindIs "invalid" $m.qualityGate.margin)) }}
{{- $_ := set $config "gateMargin" $m.qualityGate.margin }}
{{- end }}
{{- if and $m.qualityGate (eq (toString $m.qualityGate.enabled) "false") }}
{{- $_ := set $config "gate" false }}
{{- end }}
{{- if include "ml-serving.trainerUsesBroker" $m }}
{{- /* The tenants whose live records and drift events this trainer may use: records.tenants, or
       every tenant served this model. Never all tenants by default (docs/lifecycle.md). */}}
{{- $all := include "ml-serving.tenants" $root | fromYaml }}
{{- $served := list }}
{{- range $t, $tc := $all }}
{{- if hasKey $tc.models $name }}{{ $served = append $served $t }}{{ end }}
{{- end }}
{{- $tenants := default $served $records.tenants }}
{{- range $tenants }}
{{- if not (hasKey $all .) }}
{{- fail (printf "retraining.models.%s.records.tenants: %q is not a tenant of this release" $name .) }}
{{- end }}
{{- end }}
{{- if not $tenants }}
{{- fail (printf "retraining.models.%s: no tenant is served model %s; set records.tenants (its records and drift events are per tenant)" $name $name) }}
{{- end }}
{{- /* The trainer's persistent broker session, owned by its login: the broker plugin refuses
       this client id to anyone else (docs/lifecycle.md). */}}
{{- $_ := set $config "tenants" $tenants }}
{{- $_ := set $config "brokerHost" (include "ml-serving.broker.host" $root) }}
{{- $_ := set $config "brokerPort" (include "ml-serving.broker.port" $root | int64) }}
{{- $_ := set $config "brokerUsername" $v.broker.users.trainer.username }}
{{- $_ := set $config "brokerPasswordFile" "/etc/ml-serving/broker/password" }}
{{- if $tls }}{{ $_ := set $config "brokerTlsCaFile" (printf "%s/ca.crt" (include "ml-serving.caDir" $root)) }}{{ end }}
{{- $_ := set $config "topicPrefix" $v.topicPrefix }}
{{- $_ := set $config "clientId" (printf "%s:trainer-%s" $v.broker.users.trainer.username $name | trunc 64) }}
{{- end }}
{{- toYaml (merge $config (default dict $m.settings)) }}
{{- end }}
