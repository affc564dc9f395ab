{{/*
The agent's ClusterRole rules, one named template per feature.

Extension point: a feature that needs more of the API (NetworkPolicy
enforcement reading networkpolicies and namespaces, a Service
load-balancer controller writing services/status) defines its rules here
as "hostnic.rules.<feature>" and clusterrole in rbac.yaml includes them
under the feature's values flag; a component with an identity of its own
(a controller Deployment) gets its own ServiceAccount and role beside the
agent's rather than widening this one.
*/}}
{{- define "hostnic.rules.agent" -}}
- apiGroups: [""]
  resources: ["nodes"]
  verbs: ["get", "list", "watch", "patch"]
{{- if .Values.config.kubernetes.annotate }}
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["get", "list", "watch", "patch"]
{{- else }}
# config.kubernetes.annotate is off: no patch.
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["get", "list", "watch"]
{{- end }}
{{- if .Values.config.kubernetes.events }}
- apiGroups: ["events.k8s.io"]
  resources: ["events"]
  verbs: ["create", "patch"]
{{- end }}
# Sticky NICs: the node holding the Lease releases a kept NIC at once
# when its StatefulSet is gone or scaled below its ordinal. Read only.
- apiGroups: ["apps"]
  resources: ["statefulsets"]
  verbs: ["get"]
# Native multi-network ([kubernetes] networks = true): the networks a
# pod's k8s.v1.cni.cncf.io/networks annotation names. Read only.
- apiGroups: ["k8s.cni.cncf.io"]
  resources: ["network-attachment-definitions"]
  verbs: ["get", "list", "watch"]
{{- if .Values.config.kubernetes.network_policy }}
# NetworkPolicy ([kubernetes] network_policy = true): the policies, the
# namespaces' labels and the Services' ClusterIPs and selectors (a pod's
# egress to a Service is judged by the pods behind it). Read only; every
# pod's labels and address come from the pod rule above.
- apiGroups: ["networking.k8s.io"]
  resources: ["networkpolicies"]
  verbs: ["list", "watch"]
- apiGroups: [""]
  resources: ["namespaces", "services"]
  verbs: ["list", "watch"]
{{- end }}
{{- if .Values.config.load_balancer.enabled }}
# Services of type LoadBalancer ([load_balancer] enabled = true), on the
# node holding the Lease: the Services (patch: the hostnic.io/load-balancer
# finalizer), their status (the load balancer's address), and the
# EndpointSlices whose ready endpoints are the backends.
- apiGroups: [""]
  resources: ["services"]
  verbs: ["get", "list", "watch", "patch"]
- apiGroups: [""]
  resources: ["services/status"]
  verbs: ["patch"]
- apiGroups: ["discovery.k8s.io"]
  resources: ["endpointslices"]
  verbs: ["list", "watch"]
{{- end }}
# Shared-NIC mode ([[shared]]): a node claims blocks of a shared range
# (create decides a race), reads the claims, and gives idle ones back;
# a sticky identity's pinned address moves to its new node by an update
# conditional on its resourceVersion. The CRD is crds.yaml.
- apiGroups: ["hostnic.io"]
  resources: ["hostnicblocks"]
  verbs: ["list", "create", "update", "delete"]
{{- end }}
