{{/*
Return the chart name (nameOverride wins), truncated to 63 characters.
*/}}
{{- define "herd.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Return the fully qualified app name, truncated to 63 characters (the DNS label limit).
A release whose name already contains the chart name is not repeated.
*/}}
{{- define "herd.fullname" -}}
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
Return the name of one component's resources: <fullname>-<component>, within 63 characters.
Usage: include "herd.componentName" (dict "ctx" $ "component" "api")
*/}}
{{- define "herd.componentName" -}}
{{- printf "%s-%s" (include "herd.fullname" .ctx | trunc (int (sub 62 (len .component)))) .component | trimSuffix "-" }}
{{- end }}

{{/*
Return chart name and version, as used by the helm.sh/chart label.
*/}}
{{- define "herd.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Return the selector labels of one component. Selectors are immutable: nothing user-defined here.
Usage: include "herd.selectorLabels" (dict "ctx" $ "component" "api")
*/}}
{{- define "herd.selectorLabels" -}}
app.kubernetes.io/name: {{ include "herd.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/*
Return the labels of one component's resources: selector labels plus chart metadata.
Usage: include "herd.labels" (dict "ctx" $ "component" "api")
*/}}
{{- define "herd.labels" -}}
helm.sh/chart: {{ include "herd.chart" .ctx }}
{{ include "herd.selectorLabels" . }}
app.kubernetes.io/version: {{ .ctx.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .ctx.Release.Service }}
app.kubernetes.io/part-of: herd
{{- with .ctx.Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/*
Return the name of the ServiceAccount the pods run as.
*/}}
{{- define "herd.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "herd.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
Return an image reference. Usage: include "herd.image" (dict "image" .Values.api.image "tag" $defaultTag)
*/}}
{{- define "herd.image" -}}
{{- printf "%s:%s" .image.repository (default .tag .image.tag) }}
{{- end }}

{{/*
Return the worker image's default tag: the appVersion, with a -cpu suffix for the CPU-only build.
*/}}
{{- define "herd.worker.defaultTag" -}}
{{- if .Values.worker.gpu.enabled }}
{{- .Chart.AppVersion }}
{{- else }}
{{- printf "%s-cpu" .Chart.AppVersion }}
{{- end }}
{{- end }}

{{/*
Return the name of the Redis Service (bundled Redis).
*/}}
{{- define "herd.redis.fullname" -}}
{{- include "herd.componentName" (dict "ctx" . "component" "redis") }}
{{- end }}

{{/*
Return the Redis URL the API and the workers connect to (HERD_REDIS_URL). Never holds a password.
*/}}
{{- define "herd.redis.url" -}}
{{- if .Values.redis.enabled }}
{{- printf "redis://%s:%d/0" (include "herd.redis.fullname" .) (int .Values.redis.port) }}
{{- else }}
{{- .Values.externalRedis.url }}
{{- end }}
{{- end }}

{{/*
Return "true" when Herd reaches your own Redis through Sentinels (redis.enabled is false and
externalRedis.sentinel.addresses is set).
*/}}
{{- define "herd.redis.sentinel" -}}
{{- if and (not .Values.redis.enabled) .Values.externalRedis.sentinel.addresses }}true{{- end }}
{{- end }}

{{/*
Return the ports of your own Redis with Sentinels, each once: the Sentinels' (from their
host:port addresses) and the Redis nodes' data port (externalRedis.sentinel.dataPort).
*/}}
{{- define "herd.redis.sentinelPorts" -}}
{{- $ports := list }}
{{- range .Values.externalRedis.sentinel.addresses }}
{{- $ports = append $ports (regexFind "[0-9]+$" . | int) }}
{{- end }}
{{- $ports = append $ports (int .Values.externalRedis.sentinel.dataPort) }}
{{- toJson (uniq $ports) }}
{{- end }}

{{/*
Return the name of the Secret holding the Redis password, or "" when Redis has no password.
*/}}
{{- define "herd.redis.secretName" -}}
{{- if .Values.redis.enabled }}
{{- default (include "herd.redis.fullname" .) .Values.redis.auth.existingSecret }}
{{- else }}
{{- .Values.externalRedis.existingSecret }}
{{- end }}
{{- end }}

{{/*
Return the key of the Redis password in its Secret.
*/}}
{{- define "herd.redis.secretKey" -}}
{{- if .Values.redis.enabled }}
{{- .Values.redis.auth.existingSecretPasswordKey }}
{{- else }}
{{- .Values.externalRedis.existingSecretPasswordKey }}
{{- end }}
{{- end }}

{{/*
Return the Secret holding the Sentinels' own password, or "" when Herd uses no Sentinels or they
have no password.
*/}}
{{- define "herd.redis.sentinelSecretName" -}}
{{- if include "herd.redis.sentinel" . }}
{{- .Values.externalRedis.sentinel.existingSecret }}
{{- end }}
{{- end }}

{{/*
Return "true" when API and worker pods mount Redis passwords (herd.redis.authVolume).
*/}}
{{- define "herd.redis.auth" -}}
{{- if or (include "herd.redis.secretName" .) (include "herd.redis.sentinelSecretName" .) }}true{{- end }}
{{- end }}

{{/*
Return the directory of the Redis password files in API and worker pods.
*/}}
{{- define "herd.redis.authDir" -}}
/etc/herd/redis-auth
{{- end }}

{{/*
Return the API's and workers' volume of Redis passwords: `password` (the data password) and
`sentinel-password`, each from its Secret. Files, never env vars (checkov's CKV_K8S_35): 0440,
owned by root and readable through the pods' fsGroup (the container user owns no Secret file).
*/}}
{{- define "herd.redis.authVolume" -}}
- name: redis-auth
  projected:
    defaultMode: 0440
    sources:
      {{- if include "herd.redis.secretName" . }}
      - secret:
          name: {{ include "herd.redis.secretName" . }}
          items:
            - key: {{ include "herd.redis.secretKey" . }}
              path: password
      {{- end }}
      {{- if include "herd.redis.sentinelSecretName" . }}
      - secret:
          name: {{ include "herd.redis.sentinelSecretName" . }}
          items:
            - key: {{ .Values.externalRedis.sentinel.existingSecretPasswordKey }}
              path: sentinel-password
      {{- end }}
{{- end }}

{{/*
Return the mount of herd.redis.authVolume (no subPath: a rotated Secret reaches the files).
*/}}
{{- define "herd.redis.authMount" -}}
- name: redis-auth
  mountPath: {{ include "herd.redis.authDir" . }}
  readOnly: true
{{- end }}

{{/*
Return the env entries every Herd process gets: Redis (passwords as files of
herd.redis.authVolume, never values) and the shared settings.
*/}}
{{- define "herd.commonEnv" -}}
{{- if include "herd.redis.sentinel" . }}
{{- with .Values.externalRedis.sentinel }}
# Sentinels name the master (HERD_REDIS_URL is not used) and Herd follows it across a failover
- name: HERD_REDIS_SENTINELS
  value: {{ join "," .addresses | quote }}
- name: HERD_REDIS_SENTINEL_MASTER
  value: {{ .masterName | quote }}
{{- end }}
{{- if include "herd.redis.sentinelSecretName" . }}
- name: HERD_REDIS_SENTINEL_PASSWORD_FILE
  value: {{ printf "%s/sentinel-password" (include "herd.redis.authDir" .) | quote }}
{{- end }}
{{- else }}
- name: HERD_REDIS_URL
  value: {{ include "herd.redis.url" . | quote }}
{{- end }}
{{- if include "herd.redis.secretName" . }}
- name: HERD_REDIS_PASSWORD_FILE
  value: {{ printf "%s/password" (include "herd.redis.authDir" .) | quote }}
{{- end }}
- name: HERD_LOG_FORMAT
  value: {{ .Values.config.logFormat | quote }}
- name: HERD_LOG_LEVEL
  value: {{ .Values.config.logLevel | quote }}
- name: HERD_KEEP_ALIVE
  value: {{ .Values.config.keepAlive | quote }}
- name: HERD_HEARTBEAT_INTERVAL_S
  value: {{ .Values.config.heartbeatIntervalSeconds | quote }}
- name: HERD_HEARTBEAT_TTL_S
  value: {{ .Values.config.heartbeatTtlSeconds | quote }}
{{- end }}

{{/*
Return the Redis stream of a model's jobs and the workers' consumer group. They must match
shared/keys.py, and model names are normalised as shared/names.py does (lower case, the
default host and `library` namespace left out, tag `latest` by default); tests/helm checks
the KEDA triggers against both.
*/}}
{{- define "herd.jobStream" -}}
{{- $model := lower (trim .) | trimPrefix "registry.ollama.ai/" | trimPrefix "library/" }}
{{- if not (regexMatch ":[^/]*$" $model) }}
{{- $model = printf "%s:latest" $model }}
{{- end }}
{{- printf "herd:jobs:%s" $model }}
{{- end }}
{{- define "herd.consumerGroup" -}}
herd-workers
{{- end }}

{{/*
Return the name of the Secret the chart creates for api.auth.keys.
*/}}
{{- define "herd.api.keysSecret" -}}
{{- include "herd.componentName" (dict "ctx" . "component" "api-keys") }}
{{- end }}

{{/*
Return "true" when the API checks API keys (api.auth.existingSecret or api.auth.keys is set).
*/}}
{{- define "herd.api.auth" -}}
{{- if or .Values.api.auth.existingSecret .Values.api.auth.keys }}true{{- end }}
{{- end }}

{{/*
Return "true" when the API is reachable from outside the cluster.
*/}}
{{- define "herd.api.exposed" -}}
{{- if or .Values.api.ingress.enabled (has .Values.api.service.type (list "LoadBalancer" "NodePort")) }}true{{- end }}
{{- end }}

{{/*
Compile all warnings and errors about the values into one message and fail once.
*/}}
{{- define "herd.validateValues" -}}
{{- $messages := list -}}
{{- $messages = append $messages (include "herd.validateValues.redis" .) -}}
{{- $messages = append $messages (include "herd.validateValues.models" .) -}}
{{- $messages = append $messages (include "herd.validateValues.keda" .) -}}
{{- $messages = append $messages (include "herd.validateValues.autoscaling" .) -}}
{{- $messages = append $messages (include "herd.validateValues.pdb" (dict "name" "api.pdb" "pdb" .Values.api.pdb)) -}}
{{- $messages = append $messages (include "herd.validateValues.pdb" (dict "name" "worker.pdb" "pdb" .Values.worker.pdb)) -}}
{{- $messages = append $messages (include "herd.validateValues.heartbeat" .) -}}
{{- $messages = append $messages (include "herd.validateValues.ingressAuth" .) -}}
{{- $messages = without $messages "" -}}
{{- $message := join "\n" $messages -}}
{{- if $message -}}
{{- printf "\nVALUES VALIDATION:\n%s" $message | fail -}}
{{- end -}}
{{- end -}}

{{- define "herd.validateValues.redis" -}}
{{- /* The schema checks the URL's scheme and that it holds no credentials. */ -}}
{{- if not .Values.redis.enabled -}}
{{- if and (not .Values.externalRedis.url) (not .Values.externalRedis.sentinel.addresses) -}}
redis: set externalRedis.url (redis://host:port/db or rediss://…) or externalRedis.sentinel.addresses (host:port of each Sentinel) when redis.enabled is false
{{- else if and .Values.externalRedis.url .Values.externalRedis.sentinel.addresses -}}
externalRedis: set externalRedis.url or externalRedis.sentinel.addresses, not both (with Sentinels, Herd does not use the URL)
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "herd.validateValues.models" -}}
{{- if and (eq .Values.models.storage.type "existingClaim") (not .Values.models.storage.existingClaim) -}}
models: set models.storage.existingClaim when models.storage.type is existingClaim
{{- end -}}
{{- end -}}

{{- define "herd.validateValues.keda" -}}
{{- if and .Values.worker.keda.enabled (not .Values.worker.keda.models) -}}
worker.keda: list at least one model in worker.keda.models
{{- else if and .Values.worker.keda.enabled (gt (int .Values.worker.keda.minReplicaCount) (int .Values.worker.keda.maxReplicaCount)) -}}
worker.keda: minReplicaCount must not exceed maxReplicaCount
{{- end -}}
{{- end -}}

{{- define "herd.validateValues.autoscaling" -}}
{{- if and .Values.api.autoscaling.enabled (gt (int .Values.api.autoscaling.minReplicas) (int .Values.api.autoscaling.maxReplicas)) -}}
api.autoscaling: minReplicas must not exceed maxReplicas
{{- end -}}
{{- end -}}

{{- define "herd.validateValues.pdb" -}}
{{- if .pdb.enabled -}}
{{- $min := toString .pdb.minAvailable -}}
{{- $max := toString .pdb.maxUnavailable -}}
{{- if and (ne $min "") (ne $max "") -}}
{{ .name }}: set either minAvailable or maxUnavailable, not both
{{- else if and (eq $min "") (eq $max "") -}}
{{ .name }}: set minAvailable or maxUnavailable
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "herd.validateValues.heartbeat" -}}
{{- if le (float64 .Values.config.heartbeatTtlSeconds) (float64 .Values.config.heartbeatIntervalSeconds) -}}
config: heartbeatTtlSeconds must be longer than heartbeatIntervalSeconds, or adverts expire between beats
{{- end -}}
{{- end -}}

{{- define "herd.validateValues.ingressAuth" -}}
{{- if and .Values.api.ingress.enabled (not (include "herd.api.auth" .)) (not (include "herd.api.ingressAuth" .)) (not .Values.api.ingress.allowUnauthenticated) -}}
api.ingress: an Ingress would publish the API without authentication. Set api.auth.existingSecret (a file of API keys), add the ingress controller's auth annotation (e.g. nginx.ingress.kubernetes.io/auth-url), or set api.ingress.allowUnauthenticated=true if an open API is intended
{{- end -}}
{{- end -}}

{{/*
Return a PodDisruptionBudget's budget: minAvailable or maxUnavailable, whichever is set.
*/}}
{{- define "herd.pdbBudget" -}}
{{- if ne (toString .minAvailable) "" }}
minAvailable: {{ .minAvailable }}
{{- else }}
maxUnavailable: {{ .maxUnavailable }}
{{- end }}
{{- end }}

{{/*
Return a Kubernetes quantity (`2Gi`, `512Mi`, `1G`, `1500000000`) as a number of bytes.
Usage: include "herd.quantityBytes" .Values.redis.resources.limits.memory
*/}}
{{- define "herd.quantityBytes" -}}
{{- if or (kindIs "float64" .) (kindIs "int64" .) (kindIs "int" .) -}}
{{- int64 . -}}
{{- else -}}
{{- $quantity := toString . | trim -}}
{{- $number := regexFind "^[0-9]+(\\.[0-9]+)?" $quantity -}}
{{- $unit := trimPrefix $number $quantity -}}
{{- $units := dict "" 1 "k" 1000 "M" 1000000 "G" 1000000000 "T" 1000000000000 "Ki" 1024 "Mi" 1048576 "Gi" 1073741824 "Ti" 1099511627776 -}}
{{- if or (not $number) (not (hasKey $units $unit)) -}}
{{- fail (printf "cannot read the quantity %q: use a number with an optional k, M, G, T, Ki, Mi, Gi or Ti suffix" $quantity) -}}
{{- end -}}
{{- mulf (float64 $number) (index $units $unit) | int64 -}}
{{- end -}}
{{- end }}

{{/*
Return the bundled Redis' maxmemory in bytes: redis.maxmemory as given, else redis.maxmemoryPercent
of the container's memory limit, else "" (no limit: Redis may grow until the kernel kills it).
*/}}
{{- define "herd.redis.maxmemory" -}}
{{- $limit := dig "limits" "memory" "" (default dict .Values.redis.resources) -}}
{{- if .Values.redis.maxmemory -}}
{{- .Values.redis.maxmemory -}}
{{- else if $limit -}}
{{- div (mul (include "herd.quantityBytes" $limit | int64) (int64 .Values.redis.maxmemoryPercent)) 100 -}}
{{- end -}}
{{- end }}

{{/*
Return "true" when the model store is one volume that every pod mounts (models.storage.type pvc or
existingClaim); the API then mounts it too (uploads, creates, copies and deletes write there).
*/}}
{{- define "herd.models.shared" -}}
{{- if has .Values.models.storage.type (list "pvc" "existingClaim") }}true{{- end }}
{{- end }}

{{/*
Return the `models` volume: the shared claim (type pvc or existingClaim) or a per-worker emptyDir.
*/}}
{{- define "herd.models.volume" -}}
- name: models
  {{- if eq .Values.models.storage.type "pvc" }}
  persistentVolumeClaim:
    claimName: {{ include "herd.componentName" (dict "ctx" . "component" "models") }}
  {{- else if eq .Values.models.storage.type "existingClaim" }}
  persistentVolumeClaim:
    claimName: {{ .Values.models.storage.existingClaim }}
  {{- else }}
  emptyDir:
    {{- with .Values.models.storage.emptyDirSizeLimit }}
    sizeLimit: {{ . }}
    {{- end }}
  {{- end }}
{{- end }}

{{/*
Return the worker container's resources: worker.resources, plus the GPU request of worker.gpu and,
when the models are on an emptyDir, an ephemeral-storage request (the emptyDir's size limit) and
limit (that plus models.storage.ephemeralStorageHeadroom), unless worker.resources sets its own.
*/}}
{{- define "herd.worker.resources" -}}
{{- $resources := deepCopy (default dict .Values.worker.resources) }}
{{- $requests := default dict $resources.requests }}
{{- $limits := default dict $resources.limits }}
{{- if .Values.worker.gpu.enabled }}
{{- $_ := set $limits .Values.worker.gpu.resourceName (int .Values.worker.gpu.count) }}
{{- $_ := set $requests .Values.worker.gpu.resourceName (int .Values.worker.gpu.count) }}
{{- end }}
{{- $storage := .Values.models.storage }}
{{- if and (eq $storage.type "emptyDir") $storage.emptyDirSizeLimit }}
{{- if not (hasKey $requests "ephemeral-storage") }}
{{- $_ := set $requests "ephemeral-storage" $storage.emptyDirSizeLimit }}
{{- end }}
{{- if not (hasKey $limits "ephemeral-storage") }}
{{- $bytes := add (include "herd.quantityBytes" $storage.emptyDirSizeLimit | int64) (include "herd.quantityBytes" $storage.ephemeralStorageHeadroom | int64) }}
{{- $_ := set $limits "ephemeral-storage" (printf "%dMi" (div $bytes 1048576)) }}
{{- end }}
{{- end }}
{{- if $requests }}{{ $_ := set $resources "requests" $requests }}{{ end }}
{{- if $limits }}{{ $_ := set $resources "limits" $limits }}{{ end }}
{{- toYaml $resources }}
{{- end }}

{{/*
Return the worker pods' tolerations: worker.tolerations, plus worker.gpu.tolerations when the
workers request GPUs (each once).
*/}}
{{- define "herd.worker.tolerations" -}}
{{- $tolerations := default list .Values.worker.tolerations }}
{{- if .Values.worker.gpu.enabled }}
{{- range .Values.worker.gpu.tolerations }}
{{- if not (has . $tolerations) }}
{{- $tolerations = append $tolerations . }}
{{- end }}
{{- end }}
{{- end }}
{{- with $tolerations }}
{{- toYaml . }}
{{- end }}
{{- end }}

{{/*
Return the NetworkPolicyPeer of Prometheus (networkPolicy.monitoringNamespace and, when set,
networkPolicy.monitoringPodSelector), as a one-item list; empty when no namespace is set.
*/}}
{{- define "herd.networkPolicy.monitoringPeers" -}}
{{- with .Values.networkPolicy.monitoringNamespace }}
- namespaceSelector:
    matchLabels:
      kubernetes.io/metadata.name: {{ . }}
  {{- with $.Values.networkPolicy.monitoringPodSelector }}
  podSelector:
    matchLabels:
      {{- toYaml . | nindent 6 }}
  {{- end }}
{{- end }}
{{- end }}

{{/*
Return the egress rules every Herd process needs: Redis (the bundled one's pods, the external
URL's port at any address, or the Sentinels' and the data port at any address) and DNS.
*/}}
{{- define "herd.networkPolicy.baseEgress" -}}
{{- if .Values.redis.enabled }}
- to:
    - podSelector:
        matchLabels:
          {{- include "herd.selectorLabels" (dict "ctx" . "component" "redis") | nindent 10 }}
  ports:
    - port: redis
      protocol: TCP
{{- else if include "herd.redis.sentinel" . }}
# your own Redis with Sentinels: the Sentinels' ports and the data port of every Redis node, at any
# address (a failover moves the master to another node; a NetworkPolicy cannot name a host)
- ports:
    {{- range include "herd.redis.sentinelPorts" . | fromJsonArray }}
    - port: {{ . }}
      protocol: TCP
    {{- end }}
{{- else }}
{{- $url := urlParse .Values.externalRedis.url }}
{{- $port := regexFind ":[0-9]+$" $url.host | trimPrefix ":" | default "6379" }}
# your own Redis: its port, at any address (a NetworkPolicy cannot name a host)
- ports:
    - port: {{ $port }}
      protocol: TCP
{{- end }}
{{- with .Values.networkPolicy.dnsPeers }}
- to:
    {{- toYaml . | nindent 4 }}
  ports:
    - port: 53
      protocol: UDP
    - port: 53
      protocol: TCP
{{- end }}
{{- end }}

{{/*
Return "true" when an Ingress annotation names an authentication of the ingress controller
(`<prefix>/auth-<anything>`: ingress-nginx's auth-url, auth-type, ALB's and HAProxy's auth-type).
*/}}
{{- define "herd.api.ingressAuth" -}}
{{- range $key, $_ := .Values.api.ingress.annotations }}
{{- if regexMatch "/auth-" $key }}true{{ end }}
{{- end }}
{{- end }}

{{/*
Return the label selector (PromQL) of one component's series: the release's namespace and the
job the chart's ServiceMonitor / PodMonitor give their targets.
Usage: include "herd.monitoring.selector" (dict "ctx" $ "component" "api")
*/}}
{{- define "herd.monitoring.selector" -}}
namespace="{{ .ctx.Release.Namespace }}", job="{{ include "herd.componentName" . }}"
{{- end }}
