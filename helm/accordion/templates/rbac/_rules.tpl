{{/*
The operator's permissions, least privilege: exactly the calls in operator/accordion_operator/
(core/kube.py's callers, the watch tables, handlers.py) plus what it grants each run's launcher
(trainingrun/builders.build_role: RBAC lets only holders grant). tests/chart/test_chart_rbac.py derives that set from the code and compares.
"Framework:" rules are what kopf itself needs; "Application:" rules are Accordion's.
*/}}

{{/* Rules within the watched namespaces (a Role each, or part of the ClusterRole). */}}
{{- define "accordion.rbac.namespacedRules" -}}
# Application: watch TrainingRuns (the controllers' LIST+WATCH streams); delete finished ones
# after spec.ttlSecondsAfterFinished. An Experiment creates its trials as TrainingRuns and
# patches a trial's spec to stop it (pruning).
- apiGroups: [accordion.dev]
  resources: [trainingruns]
  verbs: [list, watch, create, patch, delete]
# Application: watch Experiments (the Experiment controller's LIST+WATCH stream).
- apiGroups: [accordion.dev]
  resources: [experiments]
  verbs: [list, watch]
# Application: phase, conditions and worker counts in status; the launchers are granted get/patch
# on runs' status (each its own run's only: the launcher admission policy), which the operator
# must therefore hold.
- apiGroups: [accordion.dev]
  resources: [trainingruns/status]
  verbs: [get, patch]
# Application: an Experiment's trial counts and best result in status.
- apiGroups: [accordion.dev]
  resources: [experiments/status]
  verbs: [patch]
# Application: the launcher and worker pods of each run; get is granted to the launcher (host
# discovery), so the operator must hold it.
- apiGroups: [""]
  resources: [pods]
  verbs: [get, list, watch, create, delete]
# Application: the per-run SSH key Secret (create), and the run's credentials Secret (get: a
# run whose Secret is missing or incomplete is not admitted).
- apiGroups: [""]
  resources: [secrets]
  verbs: [get, create]
# Application: the launchers' identity, one ServiceAccount, Role and RoleBinding
# (accordion-launcher) per namespace with runs: created before its first launcher (a 409 on an
# existing one counts as success, so no get/update), deleted once the namespace has had no run
# for operator.launcherIdentityIdleSeconds; the operator's own ServiceAccounts are listed (label
# selector) at start to find those an earlier process left.
- apiGroups: [""]
  resources: [serviceaccounts]
  verbs: [list, create, delete]
- apiGroups: [rbac.authorization.k8s.io]
  resources: [roles, rolebindings]
  verbs: [create, delete]
# Application: Events on runs (admission, scaling, failures). An Event's name says what it is:
# the same news again is a 409, and the existing Event's count is read and raised (get, patch).
- apiGroups: [""]
  resources: [events]
  verbs: [get, create, patch]
# Application: which PriorityClasses a namespace may use: its ResourceQuotas scoped to a
# PriorityClass (read-only: the cache's LIST + WATCH; docs/helm.md, "Priority classes").
- apiGroups: [""]
  resources: [resourcequotas]
  verbs: [list, watch]
# Application: the Kueue Workloads of runs labelled kueue.x-k8s.io/queue-name (created for the
# run's minimum and for each growth slice, deleted when replaced, evicted, or the run ends;
# docs/sharing.md, "Kueue"). Only the operator's own are watched (a label selector); no status
# writes: Kueue admits, the operator only reads its answer. Unused on clusters without Kueue.
- apiGroups: [kueue.x-k8s.io]
  resources: [workloads]
  verbs: [list, watch, create, delete]
{{- end -}}

{{/* Rules on cluster-scoped objects (always a ClusterRole). */}}
{{- define "accordion.rbac.clusterRules" -}}
# Application: the launcher admission policy this chart installs (templates/rbac/
# launcher-policy.yaml), read once at start: checked to exist, and made the owner of the
# launchers' identities so that removing it removes them.
- apiGroups: [admissionregistration.k8s.io]
  resources: [validatingadmissionpolicies]
  resourceNames: [{{ include "accordion.launcherPolicyName" . }}]
  verbs: [get]
# Application: GPU capacity (allocatable nvidia.com/gpu), taints and readiness of every node.
- apiGroups: [""]
  resources: [nodes]
  verbs: [list, watch]
# Framework: kopf notices CRDs created or deleted while it runs (read-only).
- apiGroups: [apiextensions.k8s.io]
  resources: [customresourcedefinitions]
  verbs: [list, watch]
# Application: a run's priority is the value of the PriorityClass its spec.priorityClassName
# names, and whether it may preempt other namespaces that class's annotation (read-only: the
# cache's LIST + WATCH).
- apiGroups: [scheduling.k8s.io]
  resources: [priorityclasses]
  verbs: [list, watch]
# Application: each namespace's fair-share weight, the accordion.dev/fair-share-weight
# annotation or label that a cluster admin sets (read-only: the cache's LIST + WATCH; only the
# weight is kept).
- apiGroups: [""]
  resources: [namespaces]
  verbs: [list, watch]
# Application: the node labels and tolerations of the ResourceFlavor Kueue assigned to a run's
# pods (read-only: the cache's LIST + WATCH, only on clusters that serve Kueue's API).
- apiGroups: [kueue.x-k8s.io]
  resources: [resourceflavors]
  verbs: [list, watch]
{{- end -}}
