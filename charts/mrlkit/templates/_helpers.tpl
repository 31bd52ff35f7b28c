{{/* Names ------------------------------------------------------------------------------ */}}

{{- define "mrlkit.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The resource name prefix, short enough for the suffixes KubeRay adds to RayCluster names. */}}
{{- define "mrlkit.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "mrlkit.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "mrlkit.selectorLabels" -}}
app.kubernetes.io/name: {{ include "mrlkit.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "mrlkit.labels" -}}
helm.sh/chart: {{ include "mrlkit.chart" . }}
{{ include "mrlkit.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/* Labels on every Ray pod of the release: the NetworkPolicy selects them. */}}
{{- define "mrlkit.rayPodLabels" -}}
{{ include "mrlkit.selectorLabels" . }}
app.kubernetes.io/component: ray
{{- end }}

{{- define "mrlkit.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "mrlkit.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "mrlkit.configMapName" -}}
{{- printf "%s-pipeline" (include "mrlkit.fullname" .) }}
{{- end }}

{{- define "mrlkit.clusterName" -}}
{{- include "mrlkit.fullname" . }}
{{- end }}

{{- define "mrlkit.image" -}}
{{- printf "%s:%s" .Values.image.repository .Values.image.tag }}
{{- end }}

{{- define "mrlkit.gpuImage" -}}
{{- printf "%s:%s" .Values.image.repository .Values.image.gpuTag }}
{{- end }}

{{/* Storage --------------------------------------------------------------------------- */}}

{{- define "mrlkit.storageRoot" -}}
{{- $bucket := required "storage.bucket is required: the S3 bucket every stage reads and writes" .Values.storage.bucket }}
{{- if .Values.storage.prefix }}
{{- printf "s3://%s/%s" $bucket (trimAll "/" .Values.storage.prefix) }}
{{- else }}
{{- printf "s3://%s" $bucket }}
{{- end }}
{{- end }}

{{- define "mrlkit.devStoreName" -}}
{{- printf "%s-s3" (include "mrlkit.fullname" .) }}
{{- end }}

{{- define "mrlkit.storageEndpoint" -}}
{{- if .Values.storage.endpoint }}
{{- .Values.storage.endpoint }}
{{- else if .Values.devStore.enabled }}
{{- printf "http://%s.%s.svc:%d" (include "mrlkit.devStoreName" .) .Release.Namespace (int .Values.devStore.port) }}
{{- end }}
{{- end }}

{{/* The Secret pods read S3 credentials from (by reference only), or empty for none. */}}
{{- define "mrlkit.storageSecretName" -}}
{{- if .Values.storage.existingSecret }}
{{- .Values.storage.existingSecret }}
{{- else if .Values.devStore.enabled }}
{{- include "mrlkit.devStoreName" . }}
{{- end }}
{{- end }}

{{- define "mrlkit.authSecretName" -}}
{{- default (printf "%s-ray-auth" (include "mrlkit.fullname" .)) .Values.auth.existingSecret }}
{{- end }}

{{/* The user's pipeline config as a map: pipelineYaml (a whole file, e.g. --set-file) or pipeline. */}}
{{- define "mrlkit.pipelineMap" -}}
{{- if .Values.pipelineYaml }}
{{- $cfg := fromYaml .Values.pipelineYaml }}
{{- if hasKey $cfg "Error" }}
{{- fail (printf "pipelineYaml is not a YAML mapping of config sections: %s" (index $cfg "Error")) }}
{{- end }}
{{- toJson $cfg }}
{{- else }}
{{- toJson .Values.pipeline }}
{{- end }}
{{- end }}

{{/* The pipeline YAML the stages read: the user's config with storage.root set from `storage`. */}}
{{- define "mrlkit.pipelineConfig" -}}
{{- $cfg := include "mrlkit.pipelineMap" . | fromJson }}
{{- $_ := required "pipeline.name is required: the name of the pipeline's corpus and pairs" $cfg.name }}
{{- $storage := default dict $cfg.storage }}
{{- $root := include "mrlkit.storageRoot" . }}
{{- /* A root in the file (often a local folder) means nothing in the cluster: replace it, and say so. */}}
{{- $note := "" }}
{{- if and (hasKey $storage "root") (ne (toString $storage.root) $root) }}
{{- $note = printf "# storage.root %q replaced by the chart's storage.bucket/storage.prefix\n" (toString $storage.root) }}
{{- end }}
{{- $_ := set $storage "root" $root }}
{{- $_ := set $cfg "storage" $storage }}
{{- $note }}{{ toYaml $cfg }}
{{- end }}

{{/* The run name: pipeline.run, or pipeline.name when unset (as the config loader does). */}}
{{- define "mrlkit.runName" -}}
{{- $cfg := include "mrlkit.pipelineMap" . | fromJson }}
{{- default $cfg.name $cfg.run }}
{{- end }}

{{/* Pod pieces ---------------------------------------------------------------------------- */}}

{{/* Environment of every Ray container: plain storage settings, credentials by secretKeyRef only. */}}
{{- define "mrlkit.rayEnv" -}}
{{- $endpoint := include "mrlkit.storageEndpoint" . }}
{{- if $endpoint }}
- name: MRLKIT_S3_ENDPOINT
  value: {{ $endpoint | quote }}
{{- end }}
- name: AWS_REGION
  value: {{ .Values.storage.region | quote }}
{{- if .Values.devStore.enabled }}
# rclone's S3 does not check the newer default checksums boto3 sends.
- name: AWS_REQUEST_CHECKSUM_CALCULATION
  value: when_required
- name: AWS_RESPONSE_CHECKSUM_VALIDATION
  value: when_required
{{- end }}
{{- $secret := include "mrlkit.storageSecretName" . }}
{{- if $secret }}
- name: AWS_ACCESS_KEY_ID
  valueFrom:
    secretKeyRef:
      name: {{ $secret }}
      key: {{ ternary .Values.storage.accessKeyIdKey "AWS_ACCESS_KEY_ID" (not (empty .Values.storage.existingSecret)) }}
- name: AWS_SECRET_ACCESS_KEY
  valueFrom:
    secretKeyRef:
      name: {{ $secret }}
      key: {{ ternary .Values.storage.secretAccessKeyKey "AWS_SECRET_ACCESS_KEY" (not (empty .Values.storage.existingSecret)) }}
{{- end }}
{{- with .Values.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "mrlkit.podSpecCommon" -}}
serviceAccountName: {{ include "mrlkit.serviceAccountName" . }}
securityContext:
  {{- toYaml .Values.podSecurityContext | nindent 2 }}
{{- with .Values.image.pullSecrets }}
imagePullSecrets:
  {{- range . }}
  - name: {{ . }}
  {{- end }}
{{- end }}
{{- end }}

{{- define "mrlkit.rayVolumes" -}}
- name: pipeline-config
  configMap:
    name: {{ include "mrlkit.configMapName" . }}
# Ray's object store lives in shared memory; the container default (64Mi) is far too small.
- name: dshm
  emptyDir:
    medium: Memory
{{- end }}

{{- define "mrlkit.rayVolumeMounts" -}}
- name: pipeline-config
  mountPath: /etc/mrlkit
  readOnly: true
- name: dshm
  mountPath: /dev/shm
{{- end }}

{{/* One worker group; called with (dict "root" $ "name" "cpu" "group" .Values.workers.cpu "image" ...). */}}
{{- define "mrlkit.workerGroup" -}}
{{- $ := .root }}
{{- $g := .group }}
{{- if gt (int $g.minReplicas) (int $g.maxReplicas) }}
{{- fail (printf "workers.%s.minReplicas (%d) must not exceed workers.%s.maxReplicas (%d)" .name (int $g.minReplicas) .name (int $g.maxReplicas)) }}
{{- end }}
{{- if or (lt (int $g.replicas) (int $g.minReplicas)) (gt (int $g.replicas) (int $g.maxReplicas)) }}
{{- fail (printf "workers.%s.replicas (%d) must be between minReplicas (%d) and maxReplicas (%d)" .name (int $g.replicas) (int $g.minReplicas) (int $g.maxReplicas)) }}
{{- end }}
- groupName: {{ .name }}-workers
  replicas: {{ int $g.replicas }}
  minReplicas: {{ int $g.minReplicas }}
  maxReplicas: {{ int $g.maxReplicas }}
  rayStartParams: {{ include "mrlkit.rayStartParams" $g.rayStartParams }}
  template:
    metadata:
      labels:
        {{- include "mrlkit.rayPodLabels" $ | nindent 8 }}
    spec:
      {{- include "mrlkit.podSpecCommon" $ | nindent 6 }}
      automountServiceAccountToken: false
      containers:
        - name: ray-worker
          image: {{ .image }}
          imagePullPolicy: {{ $.Values.image.pullPolicy }}
          env:
            {{- include "mrlkit.rayEnv" $ | trim | nindent 12 }}
          resources:
            {{- $res := deepCopy $g.resources }}
            {{- if .gpus }}
            {{- $limits := default dict $res.limits }}
            {{- $_ := set $limits "nvidia.com/gpu" (int .gpus) }}
            {{- $_ := set $res "limits" $limits }}
            {{- end }}
            {{- toYaml $res | nindent 12 }}
          securityContext:
            {{- toYaml $.Values.containerSecurityContext | nindent 12 }}
          volumeMounts:
            {{- include "mrlkit.rayVolumeMounts" $ | nindent 12 }}
      volumes:
        {{- include "mrlkit.rayVolumes" $ | nindent 8 }}
      {{- with $g.nodeSelector }}
      nodeSelector:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with $g.tolerations }}
      tolerations:
        {{- toYaml . | nindent 8 }}
      {{- end }}
{{- end }}

{{/* The RayCluster spec, shared by the RayCluster, the RayJobs' own clusters and the RayService. */}}
{{- define "mrlkit.rayClusterSpec" -}}
rayVersion: {{ .Values.rayVersion | quote }}
{{- if .Values.auth.enabled }}
authOptions:
  mode: token
  secretName: {{ include "mrlkit.authSecretName" . }}
{{- end }}
enableInTreeAutoscaling: {{ .Values.autoscaling.enabled }}
{{- if .Values.autoscaling.enabled }}
autoscalerOptions:
  idleTimeoutSeconds: {{ int .Values.autoscaling.idleTimeoutSeconds }}
  upscalingMode: {{ .Values.autoscaling.upscalingMode }}
  securityContext:
    {{- toYaml .Values.containerSecurityContext | nindent 4 }}
{{- end }}
headGroupSpec:
  rayStartParams: {{ include "mrlkit.rayStartParams" (merge (dict "dashboard-host" "0.0.0.0") .Values.head.rayStartParams) }}
  template:
    metadata:
      labels:
        {{- include "mrlkit.rayPodLabels" . | nindent 8 }}
    spec:
      {{- include "mrlkit.podSpecCommon" . | nindent 6 }}
      # Only the autoscaler sidecar talks to the Kubernetes API (with the Role KubeRay binds to this account).
      automountServiceAccountToken: {{ .Values.autoscaling.enabled }}
      containers:
        - name: ray-head
          image: {{ include "mrlkit.image" . }}
          imagePullPolicy: {{ .Values.image.pullPolicy }}
          ports:
            - containerPort: 6379
              name: gcs-server
            - containerPort: 8265
              name: dashboard
            - containerPort: 10001
              name: client
            - containerPort: 8000
              name: serve
          env:
            {{- include "mrlkit.rayEnv" . | trim | nindent 12 }}
          resources:
            {{- toYaml .Values.head.resources | nindent 12 }}
          securityContext:
            {{- toYaml .Values.containerSecurityContext | nindent 12 }}
          volumeMounts:
            {{- include "mrlkit.rayVolumeMounts" . | nindent 12 }}
      volumes:
        {{- include "mrlkit.rayVolumes" . | nindent 8 }}
      {{- with .Values.head.nodeSelector }}
      nodeSelector:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with .Values.head.tolerations }}
      tolerations:
        {{- toYaml . | nindent 8 }}
      {{- end }}
{{- if or .Values.workers.cpu.enabled .Values.workers.gpu.enabled }}
workerGroupSpecs:
  {{- if .Values.workers.cpu.enabled }}
  {{- include "mrlkit.workerGroup" (dict "root" . "name" "cpu" "group" .Values.workers.cpu "image" (include "mrlkit.image" .) "gpus" 0) | trim | nindent 2 }}
  {{- end }}
  {{- if .Values.workers.gpu.enabled }}
  {{- include "mrlkit.workerGroup" (dict "root" . "name" "gpu" "group" .Values.workers.gpu "image" (include "mrlkit.gpuImage" .) "gpus" .Values.workers.gpu.gpusPerWorker) | trim | nindent 2 }}
  {{- end }}
{{- end }}
{{- end }}

{{/* A stage's entrypoint: the installed `mrlkit` CLI on the mounted pipeline config. */}}
{{- define "mrlkit.jobEntrypoint" -}}
{{- $parts := list "mrlkit" .stage "--config" "/etc/mrlkit/pipeline.yaml" }}
{{- range .overrides }}
{{- if not (regexMatch "^[A-Za-z0-9_.]+=[^']*$" .) }}
{{- fail (printf "jobs.<stage>.overrides: %q must look like section.key=value (no single quotes)" .) }}
{{- end }}
{{- $parts = append $parts (squote .) }}
{{- end }}
{{- join " " $parts }}
{{- end }}

{{/* rayStartParams as a one-line JSON map of strings (KubeRay's schema: map[string]string). */}}
{{- define "mrlkit.rayStartParams" -}}
{{- $params := dict }}
{{- range $k, $v := . }}
{{- /* YAML numbers arrive as float64: write 100000000, not 1e+08. */}}
{{- if and (kindIs "float64" $v) (eq $v (float64 (int64 $v))) }}
{{- $v = int64 $v }}
{{- end }}
{{- $_ := set $params $k (toString $v) }}
{{- end }}
{{- toJson $params }}
{{- end }}
