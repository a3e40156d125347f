{{/* Name of the chart's objects: "<release>-accordion", or the release name if it says accordion. */}}
{{- define "accordion.fullname" -}}
{{- if contains "accordion" .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-accordion" .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "accordion.operatorName" -}}
{{- printf "%s-operator" (include "accordion.fullname" .) -}}
{{- end -}}

{{/* The launcher admission policy of this release (templates/rbac/launcher-policy.yaml). */}}
{{- define "accordion.launcherPolicyName" -}}
{{- printf "%s-launcher-own-run" (include "accordion.fullname" .) -}}
{{- end -}}

{{- define "accordion.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: accordion
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: accordion
{{- end -}}

{{- define "accordion.selectorLabels" -}}
app.kubernetes.io/name: accordion
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end -}}

{{- define "accordion.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "accordion.operatorName" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "accordion.operatorImage" -}}
{{- $img := .Values.operator.image -}}
{{- if $img.digest -}}
{{- printf "%s@%s" $img.repository $img.digest -}}
{{- else -}}
{{- printf "%s:%s" $img.repository (default .Chart.AppVersion $img.tag) -}}
{{- end -}}
{{- end -}}

{{- define "accordion.trainerImage" -}}
{{- printf "%s:%s" .Values.trainer.image.repository (default .Chart.AppVersion .Values.trainer.image.tag) -}}
{{- end -}}

{{/* The operator's ACCORDION_* settings (config.py), one per line, as a ConfigMap's data. */}}
{{- define "accordion.operatorSettings" -}}
ACCORDION_NAMESPACES: {{ join "," .Values.watch.namespaces | quote }}
ACCORDION_LOG_LEVEL: {{ .Values.operator.logLevel | quote }}
ACCORDION_LAUNCHER_POLICY: {{ ternary (include "accordion.launcherPolicyName" .) "" .Values.rbac.create | quote }}
ACCORDION_LEADER_ELECTION: {{ .Values.operator.leaderElection.enabled | quote }}
ACCORDION_LEADER_LEASE_NAME: {{ include "accordion.operatorName" . | quote }}
ACCORDION_LEADER_LEASE_NAMESPACE: {{ .Release.Namespace | quote }}
ACCORDION_LEADER_LEASE_CREATE: "false"
ACCORDION_LEADER_LEASE_SECONDS: {{ .Values.operator.leaderElection.leaseDurationSeconds | quote }}
ACCORDION_LEADER_RENEW_DEADLINE_SECONDS: {{ .Values.operator.leaderElection.renewDeadlineSeconds | quote }}
ACCORDION_LEADER_RETRY_SECONDS: {{ .Values.operator.leaderElection.retryPeriodSeconds | quote }}
ACCORDION_HEALTH_PORT: {{ .Values.operator.healthPort | quote }}
ACCORDION_OPERATOR_METRICS_PORT: {{ .Values.operator.metricsPort | quote }}
ACCORDION_BIND_ADDRESS: {{ .Values.operator.bindAddress | quote }}
ACCORDION_STORAGE_PREFLIGHT: {{ .Values.operator.storagePreflight | quote }}
ACCORDION_STORAGE_RETRY_SECONDS: {{ .Values.operator.storageRetrySeconds | quote }}
ACCORDION_LAUNCHER_IDENTITY_IDLE_SECONDS: {{ .Values.operator.launcherIdentityIdleSeconds | quote }}
ACCORDION_LAUNCHER_HOSTS_WORKER: {{ .Values.operator.launcherHostsWorker | quote }}
ACCORDION_RESYNC_SECONDS: {{ .Values.operator.reconcile.resyncSeconds | quote }}
ACCORDION_DEBOUNCE_SECONDS: {{ .Values.operator.reconcile.debounceSeconds | quote }}
ACCORDION_RELIST_SECONDS: {{ .Values.operator.reconcile.relistSeconds | quote }}
ACCORDION_MAX_CONCURRENT_REQUESTS: {{ .Values.operator.reconcile.maxConcurrentRequests | quote }}
ACCORDION_BATCH_RUNS: {{ .Values.operator.reconcile.batchRuns | quote }}
ACCORDION_PASS_YIELD_SECONDS: {{ .Values.operator.reconcile.passYieldSeconds | quote }}
ACCORDION_POD_FS_GROUP: {{ .Values.trainer.podFsGroup | quote }}
ACCORDION_POD_RUN_AS_USER: {{ .Values.trainer.podRunAsUser | quote }}
ACCORDION_GPU_RESOURCE: {{ .Values.operator.scheduling.gpuResource | quote }}
ACCORDION_SCALE_COOLDOWN_SECONDS: {{ .Values.operator.scheduling.scaleCooldownSeconds | quote }}
ACCORDION_LAUNCHER_BACKOFF_SECONDS: {{ .Values.operator.scheduling.launcherBackoffSeconds | quote }}
ACCORDION_LAUNCHER_BACKOFF_MAX_SECONDS: {{ .Values.operator.scheduling.launcherBackoffMaxSeconds | quote }}
ACCORDION_PROGRESS_DEADLINE_SECONDS: {{ .Values.operator.scheduling.progressDeadlineSeconds | quote }}
ACCORDION_WORLD_GRACE_SECONDS: {{ .Values.operator.scheduling.worldGraceSeconds | quote }}
ACCORDION_TRAINER_IMAGE: {{ include "accordion.trainerImage" . | quote }}
ACCORDION_IMAGE_PULL_POLICY: {{ .Values.trainer.image.pullPolicy | quote }}
ACCORDION_BUILTIN_MODELS: {{ join "," .Values.trainer.builtinModels | quote }}
ACCORDION_LAUNCHER_CPU: {{ .Values.trainer.launcher.cpu | quote }}
ACCORDION_LAUNCHER_MEMORY: {{ .Values.trainer.launcher.memory | quote }}
ACCORDION_SSH_PORT: {{ .Values.trainer.sshPort | quote }}
ACCORDION_METRICS_PORT: {{ .Values.trainer.metricsPort | quote }}
{{- $labels := list }}
{{- range $k, $v := .Values.trainer.extraPodLabels }}
{{- $labels = append $labels (printf "%s=%s" $k $v) }}
{{- end }}
ACCORDION_EXTRA_POD_LABELS: {{ join "," $labels | quote }}
{{- end -}}
