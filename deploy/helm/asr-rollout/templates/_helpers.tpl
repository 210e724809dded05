{{/* Names and labels shared by every template. */}}

{{- define "asr-rollout.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "asr-rollout.fullname" -}}
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

{{- define "asr-rollout.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "asr-rollout.selectorLabels" -}}
app.kubernetes.io/name: {{ include "asr-rollout.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "asr-rollout.labels" -}}
helm.sh/chart: {{ include "asr-rollout.chart" . }}
{{ include "asr-rollout.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: asr-rollout
{{- end }}

{{- define "asr-rollout.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "asr-rollout.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "asr-rollout.webhookSecretName" -}}
{{- default (printf "%s-alert-webhook" (include "asr-rollout.fullname" .)) .Values.alertWebhook.existingSecret }}
{{- end }}

{{/*
The operator's API permissions, one rule per resource, only the verbs its code uses
(tests/deploy/test_helm_rbac.py compares them with the API calls of a real operator run).
Peering rules are added by rbac.yaml for the mode in use.
*/}}
{{- define "asr-rollout.rules" -}}
# The rollouts: watch them, add/remove the finalizer and annotations kopf and the alert webhook use.
- apiGroups: ["asr.rollout.dev"]
  resources: ["asrmodelrollouts"]
  verbs: ["get", "list", "watch", "patch"]
# Never called by the operator itself: the children's ownerReferences set blockOwnerDeletion,
# which the OwnerReferencesPermissionEnforcement admission plugin (on in OpenShift) allows only
# to users who may update the owner's finalizers.
- apiGroups: ["asr.rollout.dev"]
  resources: ["asrmodelrollouts/finalizers"]
  verbs: ["update"]
# Status only through the status subresource.
- apiGroups: ["asr.rollout.dev"]
  resources: ["asrmodelrollouts/status"]
  verbs: ["patch"]
# Children owned by a rollout: model-config ConfigMaps, per-track Deployments and Services.
- apiGroups: [""]
  resources: ["configmaps", "services"]
  verbs: ["get", "create", "patch"]
- apiGroups: ["apps"]
  resources: ["deployments"]
  verbs: ["get", "create", "patch"]
# Config push: the pods of a track (their podIP and http port), listed right after its ConfigMap
# is written; and the per-rollout admin token Secret, created once and read (never updated).
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["list"]
- apiGroups: [""]
  resources: ["secrets"]
  verbs: ["get", "create"]
# A PodDisruptionBudget per track, owned by the rollout.
- apiGroups: ["policy"]
  resources: ["poddisruptionbudgets"]
  verbs: ["get", "create", "patch"]
# Gateway API router: only the backendRef weights of the HTTPRoute named in the spec.
- apiGroups: ["gateway.networking.k8s.io"]
  resources: ["httproutes"]
  verbs: ["get", "patch"]
# Events about rollout progress (kopf posts core/v1 Events).
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create"]
{{- end }}

{{- define "asr-rollout.peeringRule" -}}
# kopf peering: watch the peers, write this replica's keep-alive into the object's status.
- apiGroups: ["kopf.dev"]
  resources: [{{ . | quote }}]
  verbs: ["list", "watch", "patch"]
{{- end }}
